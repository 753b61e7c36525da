//! The `shardcast` binary: parse the command line, load the config, run a node until
//! SIGTERM or SIGINT, then drain and exit 0.

use std::process::ExitCode;

use shardcast::cli::{self, Command};
use shardcast::config::{self, Config, LogFormat};
use shardcast::server::Server;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcast: {e}\n\n{}", cli::usage());
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::usage());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("{}", cli::version());
            ExitCode::SUCCESS
        }
        Command::Token(args) => {
            println!("{}", args.token(shardcast::time::unix_secs()));
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
    init_logging(config.log_format);
    for name in &config.ignored_env {
        tracing::debug!("ignoring environment variable {name}: not a configuration key");
    }
    // Block the stop signals before any thread starts, so every thread inherits the mask
    // and only `wait_for_stop` below receives them.
    let signals = stop_signals();
    let prometheus = shardcast::metrics::install();
    let server = match Server::start(config, prometheus) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shardcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sig = wait_for_stop(&signals);
    tracing::info!(signal = sig, "stop signal received");
    server.drain();
    ExitCode::SUCCESS
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
