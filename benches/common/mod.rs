//! The small harness both benches share: each case runs in 7 rounds of a fixed number of
//! iterations and reports the median per operation, so one noisy round does not move the
//! figure (a framework would cost more build time than it saves here).

use std::time::Instant;

/// Runs `f` `iters` times per round (each call is `ops_per_iter` operations) unless
/// `filter` excludes `name`, and prints the median and the fastest round.
pub fn bench(
    filter: &Option<String>,
    name: &str,
    ops_per_iter: u64,
    iters: u64,
    mut f: impl FnMut(),
) {
    if filter
        .as_ref()
        .is_some_and(|flt| !name.contains(flt.as_str()))
    {
        return;
    }
    for _ in 0..iters / 10 + 1 {
        f(); // warm-up
    }
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / (iters * ops_per_iter) as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    let (med, min) = (rounds[3], rounds[0]);
    if med >= 1e6 {
        println!(
            "{name:<60} {:>10.2} ms/op (median of 7; min {:.2})",
            med / 1e6,
            min / 1e6
        );
    } else {
        println!("{name:<60} {med:>10.1} ns/op (median of 7; min {min:.1})");
    }
}
