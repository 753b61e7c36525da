//! The `shardcast` binary: parse the command line, then run a node until SIGTERM or
//! SIGINT (drain, exit 0), print a token, or act as an operator's client: `sub` (events as
//! JSON lines until ctrl-c) and `pub` (one REST publish), both on `shardcast-client`.
//!
//! Exit codes: 0 done, 2 bad arguments or configuration (nothing was sent), 1 anything
//! that failed after that (refused connection, non-2xx answer, server gone for good).

use std::process::ExitCode;

use shardcast::cli::{self, Command};
use shardcast::config::{self, Config, LogFormat};
use shardcast::server::Server;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(args.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "shardcast: {e}\n\n{}",
                cli::help(cli::error_topic(&args, &e))
            );
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help(topic) => {
            println!("{}", cli::help(topic));
            ExitCode::SUCCESS
        }
        Command::Sub(args) => run_client("sub", sub(args)),
        Command::Pub(args) => run_client("pub", publish(args)),
        Command::Version => {
            println!("{}", cli::version());
            ExitCode::SUCCESS
        }
        Command::Token(args) => {
            println!("{}", args.token(shardcast::time::unix_secs()));
            ExitCode::SUCCESS
        }
        Command::Config => {
            print!("{}", config::default_toml());
            ExitCode::SUCCESS
        }
        Command::Serve { config } => serve(config.as_deref()),
    }
}

fn serve(file: Option<&std::path::Path>) -> ExitCode {
    let config = match config::process_env().and_then(|env| Config::load(file, env)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcast: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = config;
    // Before logging and metrics: every log line and series carries it.
    match shardcast::node_id::resolve(&config.cluster.node_id, &config.data_dir) {
        Ok(id) => config.cluster.node_id = id,
        Err(e) => {
            eprintln!("shardcast: configuration error: {e}");
            return ExitCode::from(2);
        }
    }
    init_logging(config.log_format);
    // Entered here and by every thread the server spawns (they enter the span current
    // where they are spawned), so each log line names the node.
    let node_span = tracing::info_span!("node", node_id = %config.cluster.node_id);
    let _node = node_span.enter();
    for warning in config.env_warnings() {
        tracing::warn!("{warning}");
    }
    // Block the stop signals before any thread starts, so every thread inherits the mask
    // and only `wait_for_stop` below receives them.
    let signals = stop_signals();
    let prometheus = shardcast::metrics::install(&config.cluster.node_id);
    let server = match Server::start(config, prometheus) {
        Ok(s) => s,
        Err(e) => {
            // Once, through the log (stderr, in the configured format).
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let sig = wait_for_stop(&signals);
    tracing::info!(signal = sig, "stop signal received");
    server.drain();
    ExitCode::SUCCESS
}

/// Runs a client command on a current-thread runtime: one connection needs no more.
fn run_client(name: &str, work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardcast {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `shardcast sub`: one subscription, each event (and refresh) one JSON line on stdout;
/// everything about the connection on stderr, so stdout stays machine-readable.
async fn sub(args: cli::SubArgs) -> Result<(), String> {
    use shardcast_client::{
        Auth, Client, ClientEvent, ClientOptions, ConnectionState, Delivery, Subscription,
    };
    use std::io::Write;
    use tokio::signal::unix::{signal, SignalKind};

    // Registered before connecting, so a ctrl-c at any point ends the command cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let url = args.url.clone();
    let mut options = ClientOptions::new(args.url, Auth::token(args.token));
    options.options.batch_ms = Some(args.batch_ms);
    let connect = Client::connect(options);
    let client = tokio::select! {
        c = connect => c.map_err(|e| format!("{url}: {e}"))?,
        _ = interrupt.recv() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    let mut events = client.events();
    let subscription = Subscription {
        id: "sub".into(),
        path: args.path.clone(),
        events: Vec::new(),
        filter: args.filter,
        since: args.since,
    };
    let mut handle = tokio::select! {
        h = client.subscribe(subscription) => {
            h.map_err(|e| format!("subscribing to {}: {e}", args.path))?
        }
        _ = interrupt.recv() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    eprintln!(
        "shardcast sub: subscribed to {} (live after seq {})",
        args.path,
        handle.subscribed().seq
    );
    if handle.subscribed().recovered == Some(false) {
        eprintln!("shardcast sub: not every event after --since is retained; some may be missing");
    }
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            d = handle.next() => {
                let line = match d {
                    Some(Delivery::Event(e)) => {
                        serde_json::to_string(&shardcast_client::protocol::ServerMessage::Event(e))
                    }
                    Some(Delivery::Refresh(r)) => serde_json::to_string(
                        &shardcast_client::protocol::ServerMessage::SubscriptionRefresh(r),
                    ),
                    None => return Err("the connection ended".into()),
                };
                let line = line.map_err(|e| e.to_string())?;
                let mut out = stdout.lock();
                // A closed pipe (`| head`) is the reader saying it has enough.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    client.close();
                    return Ok(());
                }
            }
            e = events.recv() => match e {
                Ok(ClientEvent::State(ConnectionState::Disconnected { code, reason, retry_in })) => {
                    let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                    eprintln!("shardcast sub: disconnected{code}: {reason}; reconnecting in {} ms", retry_in.as_millis());
                }
                Ok(ClientEvent::State(ConnectionState::Connected { connection_id })) => {
                    eprintln!("shardcast sub: connected ({connection_id})");
                }
                Ok(ClientEvent::State(ConnectionState::Closed { code, reason })) => {
                    let code = code.map(|c| format!(" {c}")).unwrap_or_default();
                    return Err(format!("connection closed for good{code}: {reason}"));
                }
                Ok(ClientEvent::Resync { since, .. }) => {
                    eprintln!("shardcast sub: reconnected, but events after seq {since} may be missing (not all retained)");
                }
                Ok(ClientEvent::Overflow(w)) => eprintln!("shardcast sub: {}: {}", w.code, w.message),
                Ok(ClientEvent::Error(e)) => eprintln!("shardcast sub: {}: {}", e.code, e.message),
                Ok(ClientEvent::State(ConnectionState::Connecting)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("shardcast sub: {n} connection notices skipped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err("the connection ended".into());
                }
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    // Let the driver send its close frame before the runtime goes away.
    client.close();
    let closed = async {
        while let Ok(e) = events.recv().await {
            if let ClientEvent::State(ConnectionState::Closed { .. }) = e {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closed).await;
    Ok(())
}

/// `shardcast pub`: the REST publish; the server's answer on stdout.
async fn publish(args: cli::PubArgs) -> Result<(), String> {
    let rest = shardcast_client::Rest::new(&args.url)
        .map_err(|e| e.to_string())?
        .api_key(&args.api_key);
    let body =
        serde_json::json!({"path": args.path, "eventType": args.event_type, "data": args.data});
    let answer = rest
        .send("POST", "/api/v1/publish", Some(&body))
        .await
        .map_err(|e| format!("{}: {e}", args.url))?;
    if answer.is_success() {
        println!("{}", answer.body.trim_end());
        Ok(())
    } else {
        Err(format!(
            "HTTP {}: {}",
            answer.status,
            answer.body.trim_end()
        ))
    }
}

fn init_logging(format: LogFormat) {
    let level = std::env::var("SHARDCAST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_ansi(false).init(),
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask (inherited by threads it spawns).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is an initialised signal set; `sig` is a valid out-pointer.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r == 0 {
            return sig;
        }
    }
}
