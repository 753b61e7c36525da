use loadtest::cli::{self, Command};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match cli::parse(&args) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return;
        }
        Ok(Command::Run(c)) => c,
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::exit(2);
        }
    };
    let code = if cfg.worker_offset.is_some() {
        loadtest::run::worker(&cfg)
    } else {
        loadtest::run::run(&cfg)
    };
    std::process::exit(code);
}
