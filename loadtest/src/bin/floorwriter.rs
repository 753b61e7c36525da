//! The write floor: see `loadtest::floor`.

use loadtest::floor::{parse_args, Floor, FloorCommand, USAGE};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(FloorCommand::Help) => {
            print!("{USAGE}");
            return;
        }
        Ok(FloorCommand::Run(c)) => c,
        Err(e) => {
            eprintln!("floorwriter: {e}");
            std::process::exit(2);
        }
    };
    let floor = match Floor::bind(cfg.clone()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("floorwriter: --listen {}: {e}", cfg.listen);
            std::process::exit(3);
        }
    };
    eprintln!(
        "floorwriter: listening on {} ({}{})",
        floor.local_addr().map_or(cfg.listen, |a| a),
        cfg.mode.as_str(),
        if cfg.mode == loadtest::floor::WriteMode::PerFlush {
            format!(
                ", {} messages per writev, at most {} ms",
                cfg.batch,
                cfg.flush.as_millis()
            )
        } else {
            String::new()
        }
    );
    let stats = floor.run();
    let summary = stats.to_json(&cfg);
    eprintln!("floorwriter: {summary}");
    if let Some(path) = &cfg.json {
        let text = format!("{summary}\n");
        let r = if path.as_os_str() == "-" {
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
        } else {
            std::fs::write(path, text)
        };
        if let Err(e) = r {
            eprintln!("floorwriter: --json {}: {e}", path.display());
            std::process::exit(3);
        }
    }
}
