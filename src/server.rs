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

/// Raises the soft open-file limit to the hard one (every connection is a file); returns
/// the limit in force.
fn raise_open_files() -> u64 {
    // SAFETY: getrlimit and setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// One shard's share of the open files that connections may use: the process's limit
/// less a reserve for everything else (the store's journals and tables, the log, poll
/// and waker handles: a sixteenth, at least 64), split evenly, as `SO_REUSEPORT` spreads
/// connections evenly. It is no cap on clients: past it, a shard evicts connections
/// that have not sent a whole request, oldest first, and nothing else.
pub fn connection_budget(open_files: u64, shards: usize) -> usize {
    let reserve = (open_files / 16).max(64);
    let usable = open_files.saturating_sub(reserve).max(shards as u64);
    (usable / shards.max(1) as u64) as usize
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
    pub fn start(mut config: Config, prometheus: PrometheusHandle) -> anyhow_lite::Result<Server> {
        let shards = config.shard_count();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow_lite::msg(format!(
                "cannot create data_dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        // `serve` resolved it already (for logs and metrics); this is the same id.
        config.cluster.node_id = crate::node_id::resolve(&config.cluster.node_id, &config.data_dir)
            .map_err(anyhow_lite::msg)?;
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
        let open_files = raise_open_files();
        let conn_budget = connection_budget(open_files, shards);
        let node = Arc::new(Node::new(config, keys, backend, prometheus));
        // Cluster mode: the operator console's row of this node, for the others' consoles.
        let (handle, node_id, started) = (
            node.prometheus().clone(),
            node.node_id().to_string(),
            node.started_ms(),
        );
        node.backend().share_node_row(Box::new(move || {
            crate::api::node_row(&handle, &node_id, started)
        }));
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
                conn_budget,
            };
            let h = std::thread::Builder::new()
                .name(format!("shardcast-shard-{id}"))
                // The node's log span goes with the thread (see `serve`).
                .spawn({
                    let span = tracing::Span::current();
                    move || span.in_scope(|| Shard::run(seed))
                })
                .map_err(|e| anyhow_lite::msg(e.to_string()))?;
            handles.push(h);
        }
        tracing::info!(%local_addr, shards, open_files, conn_budget, "shardcast listening");
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

#[cfg(test)]
mod tests {
    use super::connection_budget;

    #[test]
    fn the_budget_leaves_a_reserve_and_splits_over_shards() {
        // 20,000 files: 1,250 kept for the rest, the other 18,750 for connections.
        assert_eq!(connection_budget(20_000, 1), 18_750);
        assert_eq!(connection_budget(20_000, 2), 9_375);
        // A small limit keeps at least 64 files for the rest.
        assert_eq!(connection_budget(256, 1), 192);
        // Never zero: every shard may hold a connection.
        assert_eq!(connection_budget(10, 4), 1);
    }
}
