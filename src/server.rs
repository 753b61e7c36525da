//! Starting and stopping a node: the listeners, the shard threads, and the state they
//! share.
//!
//! [`Shared`] is the only state visible to every thread; it holds configuration, the
//! sequencer ([`Ingest`], one short lock per publish request) and a few process-wide
//! values (ticket table, draining flag, connection count). [`Server::drain`] carries out PROTOCOL.md §12: readiness
//! fails first, then every shard stops accepting and closes its sockets over
//! `drain_period_ms`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use mio::{Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::tickets::Tickets;
use crate::backend::Backend;
use crate::config::Config;
use crate::entities::Cursors;
use crate::router::{Mailbox, Router, ShardMsg};
use crate::shard::{Shard, ShardSeed};

/// State shared by all threads of a node.
pub struct Shared {
    pub config: Config,
    /// Sequencing, history, entity state (and, next, every other durable thing): see
    /// [`crate::backend`]. Shards call it for the requests they read.
    pub backend: Arc<dyn Backend>,
    /// Signs and checks entity list cursors.
    pub cursors: Cursors,
    pub tickets: Tickets,
    pub prometheus: PrometheusHandle,
    /// Set at SIGTERM: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// Open WebSocket connections on all shards (`max_connections`).
    pub ws_connections: AtomicUsize,
    /// A short random tag, so `connectionId`s differ across restarts.
    pub node_id: String,
}

impl Shared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// A running node.
pub struct Server {
    shared: Arc<Shared>,
    router: Arc<Router>,
    shards: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

/// Opens one `SO_REUSEPORT` listener; every shard gets its own on the same port.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

impl Server {
    /// Binds the port and starts the shards.
    pub fn start(config: Config, prometheus: PrometheusHandle) -> anyhow_lite::Result<Server> {
        let shards = config.shard_count();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow_lite::msg(format!(
                "cannot create data_dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        // SO_REUSEPORT would let a second process share a port already in use and take
        // part of its traffic silently; refuse a port that already has a listener, unless
        // sharing is asked for (several nodes on one port, ARCHITECTURE.md).
        let share = std::env::var("SHARDCAST_SHARE_PORT").is_ok_and(|v| v == "1" || v == "true");
        if !share
            && config.listen.port() != 0
            && std::net::TcpStream::connect_timeout(&config.listen, Duration::from_millis(300))
                .is_ok()
        {
            return Err(anyhow_lite::msg(format!(
                "cannot listen on {}: another process is already listening there \
                 (set SHARDCAST_SHARE_PORT=1 to run several nodes on one port)",
                config.listen
            )));
        }
        // Bind the first listener, then the others on the port it got (listen may say 0).
        let first = listener(config.listen)
            .map_err(|e| anyhow_lite::msg(format!("cannot listen on {}: {e}", config.listen)))?;
        let local_addr = first
            .local_addr()
            .map_err(|e| anyhow_lite::msg(e.to_string()))?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners
                .push(listener(local_addr).map_err(|e| {
                    anyhow_lite::msg(format!("cannot listen on {local_addr}: {e}"))
                })?);
        }
        let mut polls = Vec::with_capacity(shards);
        let mut mailboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let poll = Poll::new().map_err(|e| anyhow_lite::msg(e.to_string()))?;
            let waker = mio::Waker::new(poll.registry(), Token(usize::MAX - 2))
                .map_err(|e| anyhow_lite::msg(e.to_string()))?;
            mailboxes.push(Arc::new(Mailbox::new(
                config.delivery.shard_queue_capacity,
                waker,
            )));
            polls.push(poll);
        }
        let router = Arc::new(Router::new(mailboxes.clone()));
        let node_id = format!(
            "{:06x}",
            crate::time::unix_ms() & 0xFF_FFFF ^ std::process::id() as u64
        );
        let backend = crate::backend::open(&config, router.clone()).map_err(anyhow_lite::msg)?;
        let shared = Arc::new(Shared {
            cursors: Cursors::new(config.auth.jwt_secret.as_bytes()),
            backend,
            config,
            tickets: Tickets::default(),
            prometheus,
            draining: AtomicBool::new(false),
            ws_connections: AtomicUsize::new(0),
            node_id,
        });
        let mut handles = Vec::with_capacity(shards);
        for (id, ((poll, l), mailbox)) in
            polls.into_iter().zip(listeners).zip(mailboxes).enumerate()
        {
            let seed = ShardSeed {
                id,
                poll,
                listener: mio::net::TcpListener::from_std(l),
                mailbox,
                shared: shared.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("shardcast-shard-{id}"))
                .spawn(move || Shard::run(seed))
                .map_err(|e| anyhow_lite::msg(e.to_string()))?;
            handles.push(h);
        }
        tracing::info!(%local_addr, shards, "shardcast listening");
        Ok(Server {
            shared,
            router,
            shards: handles,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SIGTERM: fail readiness, close every socket over the drain period, stop.
    pub fn drain(mut self) {
        let period = self.shared.config.drain_period_ms;
        tracing::info!(drain_period_ms = period, "draining");
        self.shared.draining.store(true, Ordering::Release);
        for i in 0..self.router.shards() {
            self.router.send_control(i, ShardMsg::Drain);
        }
        let started = Instant::now();
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        // Every accepted write is answered or durable before the process exits.
        self.shared.backend.close();
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
    }
}

/// A minimal error type for start-up, where the message is all that matters.
pub mod anyhow_lite {
    /// A start-up failure, already phrased for the operator.
    #[derive(Debug)]
    pub struct Error(pub String);

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    pub type Result<T> = std::result::Result<T, Error>;

    pub fn msg(m: String) -> Error {
        Error(m)
    }
}
