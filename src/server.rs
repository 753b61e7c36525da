//! Starting and stopping a node: the listeners, the shard threads, the backend, and the
//! [`Node`] they share. [`Server::drain`] carries out PROTOCOL.md §12: readiness fails
//! first, then every shard stops accepting and closes its sockets over
//! `drain_period_ms`, then the backend finishes what it accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use mio::{Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::node::Node;
use crate::router::{Mailbox, Router, ShardMsg};
use crate::shard::{Shard, ShardSeed};

/// A running node.
pub struct Server {
    node: Arc<Node>,
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
        let backend = crate::backend::open(&config, router.clone()).map_err(anyhow_lite::msg)?;
        // Validated with the configuration already; read again here so that the node
        // holds exactly what was checked, or does not start.
        let keys = config
            .load_keys()
            .map_err(|e| anyhow_lite::msg(e.to_string()))?;
        let node = Arc::new(Node::new(config, keys, backend, prometheus));
        let mut handles = Vec::with_capacity(shards);
        for (id, ((poll, l), mailbox)) in
            polls.into_iter().zip(listeners).zip(mailboxes).enumerate()
        {
            let seed = ShardSeed {
                id,
                poll,
                listener: mio::net::TcpListener::from_std(l),
                mailbox,
                node: node.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("shardcast-shard-{id}"))
                .spawn(move || Shard::run(seed))
                .map_err(|e| anyhow_lite::msg(e.to_string()))?;
            handles.push(h);
        }
        tracing::info!(%local_addr, shards, "shardcast listening");
        Ok(Server {
            node,
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
        let period = self.node.config().drain_period_ms;
        tracing::info!(drain_period_ms = period, "draining");
        self.node.start_draining();
        for i in 0..self.router.shards() {
            self.router.send_control(i, ShardMsg::Drain);
        }
        let started = Instant::now();
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        // Every accepted write is answered or durable before the process exits.
        self.node.backend().close();
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
