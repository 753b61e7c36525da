//! soak's samples and what is concluded from them: one reading of the server (RSS, open
//! files, CPU, the `/metrics` gauges, the store's size) and of the harness's counters,
//! the growth verdict per series, and the plot-ready markdown tables (in cluster mode one
//! more, per node). Pure functions over the samples, so the rules are unit-tested without
//! a server.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

/// The `/metrics` series a sample keeps, each summed over its labels.
pub const METRICS: &[&str] = &[
    "shardcast_shard_queue_depth",
    "shardcast_service_tasks_pending",
    "shardcast_service_tasks_in_flight",
    "shardcast_connections",
    "shardcast_subscriptions",
    "shardcast_live_queries",
    "shardcast_history_bytes",
    "shardcast_deliveries_total",
    "shardcast_dropped_total",
    // cluster mode: publications sequenced in Redis and not yet applied by the node
    "shardcast_stream_lag",
];

/// One reading, `t` seconds into the window.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t: f64,
    pub rss_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// The server's CPU seconds since the window opened.
    pub cpu_seconds: Option<f64>,
    /// [`METRICS`] by name (absent: not exported, or `/metrics` unreadable).
    pub metrics: BTreeMap<String, f64>,
    pub store_bytes: Option<u64>,
    pub store_allocated_bytes: Option<u64>,
    /// The harness's own counters (cumulative).
    pub harness: BTreeMap<&'static str, u64>,
    /// Cluster mode: each node's own reading (process and `/metrics`; this sample holds
    /// their sums). Empty for one server.
    pub nodes: Vec<Sample>,
}

impl Sample {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// Tasks the server holds for the soak's (and any other) groups: pending + in flight.
    pub fn service_backlog(&self) -> Option<f64> {
        Some(
            self.metric("shardcast_service_tasks_pending")?
                + self.metric("shardcast_service_tasks_in_flight")?,
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "t": (self.t * 10.0).round() / 10.0,
            "rss_bytes": self.rss_bytes,
            "open_files": self.open_files,
            "cpu_seconds": self.cpu_seconds.map(|c| (c * 100.0).round() / 100.0),
            "store_bytes": self.store_bytes,
            "store_allocated_bytes": self.store_allocated_bytes,
            "metrics": self.metrics,
            "harness": self.harness,
            "nodes": self.nodes.iter().map(Sample::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The sum of the nodes' readings: RSS, open files and CPU only when every node has
/// them (a sum over some nodes would read as a drop), each metric over the nodes that
/// export it.
pub fn sum_nodes(nodes: &[Sample]) -> Sample {
    let mut total = Sample {
        t: nodes.first().map_or(0.0, |n| n.t),
        rss_bytes: nodes.iter().map(|n| n.rss_bytes).sum(),
        open_files: nodes.iter().map(|n| n.open_files).sum(),
        cpu_seconds: nodes.iter().map(|n| n.cpu_seconds).sum(),
        ..Sample::default()
    };
    for n in nodes {
        for (k, v) in &n.metrics {
            *total.metrics.entry(k.clone()).or_insert(0.0) += v;
        }
    }
    total
}

/// Sums each wanted series of a Prometheus text exposition over its labels. Comment
/// lines and other series are skipped; `name_bucket`/`_sum`/`_count` are other names.
pub fn parse_metrics(text: &str, wanted: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !wanted.contains(&name) {
            continue;
        }
        // the value follows the labels (which may hold spaces inside quotes)
        let rest = match line[name_end..].rfind('}') {
            Some(i) if line[name_end..].starts_with('{') => &line[name_end + i + 1..],
            _ => &line[name_end..],
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// Bytes of the regular files under `dir`, recursively (symlinks are not followed): their
/// lengths, and the disk blocks they hold (a preallocated journal is long but mostly
/// unallocated, a sparse file the other way round).
pub fn dir_bytes(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut total, mut allocated) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // a directory the store removed between listing and reading it
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue; // removed meanwhile (compaction)
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    Ok((total, allocated))
}

/// Entries of `/proc/PID/fd`: the server's open files (sockets included).
pub fn open_files(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// A series' growth rule: it fails when the last quarter's median exceeds the second
/// quarter's by more than `ratio` (relative) and by more than `floor` (absolute).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub series: &'static str,
    pub ratio: f64,
    pub floor: f64,
}

/// The rules (README "soak"): 20% for memory, files and queues, each with a floor that
/// noise on a small base cannot cross; the store may double (a log-structured store grows
/// until it compacts, so its median moves in steps), but not by more than 256 MiB. The
/// store is judged by the disk blocks it holds: its journal is preallocated (64 MiB
/// long from the start), so the files' lengths stay flat while it fills.
pub const RULES: &[Rule] = &[
    Rule {
        series: "rss_bytes",
        ratio: 0.20,
        floor: 32.0 * 1024.0 * 1024.0,
    },
    Rule {
        series: "open_files",
        ratio: 0.20,
        floor: 50.0,
    },
    Rule {
        series: "shard_queue_depth",
        ratio: 0.20,
        floor: 1000.0,
    },
    Rule {
        series: "service_backlog",
        ratio: 0.20,
        floor: 1000.0,
    },
    Rule {
        series: "store_allocated_bytes",
        ratio: 1.0,
        floor: 256.0 * 1024.0 * 1024.0,
    },
];

/// The rules also judged per node in cluster mode (a leak on one node hides in the sum
/// of three): the node's process and its queues.
pub const NODE_RULES: &[Rule] = &[RULES[0], RULES[1], RULES[2]];

/// The fraction of the window whose samples the verdict ignores (start-up: history
/// filling, allocator arenas, the first compactions).
pub const WARMUP: f64 = 0.10;

/// Samples the verdict needs after the warm-up (two per quarter).
pub const MIN_SAMPLES: usize = 8;

pub fn series_value(s: &Sample, series: &str) -> Option<f64> {
    match series {
        "rss_bytes" => s.rss_bytes.map(|v| v as f64),
        "open_files" => s.open_files.map(|v| v as f64),
        "shard_queue_depth" => s.metric("shardcast_shard_queue_depth"),
        "service_backlog" => s.service_backlog(),
        "store_bytes" => s.store_bytes.map(|v| v as f64),
        "store_allocated_bytes" => s.store_allocated_bytes.map(|v| v as f64),
        _ => None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One series' verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub series: &'static str,
    /// Medians of the second and the last quarter after the warm-up (`None`: too few
    /// samples, or the series was not measured).
    pub q2: Option<f64>,
    pub q4: Option<f64>,
    /// Least-squares slope over the samples after the warm-up, per hour.
    pub slope_per_hour: Option<f64>,
    pub grew: bool,
}

impl Verdict {
    pub fn to_json(&self, rule: &Rule) -> Value {
        json!({
            "series": self.series,
            "q2_median": self.q2,
            "q4_median": self.q4,
            "ratio": match (self.q2, self.q4) {
                (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                _ => None,
            },
            "slope_per_hour": self.slope_per_hour,
            "rule": format!("fails when q4 > q2 x {} and q4 - q2 > {}", 1.0 + rule.ratio, rule.floor),
            "grew": self.grew,
            "verdict": if self.q2.is_none() { "not enough samples" } else if self.grew { "grows" } else { "bounded" },
        })
    }
}

/// The verdict of `rule` over `samples` of a window `window_secs` long.
pub fn verdict(samples: &[Sample], window_secs: f64, rule: &Rule) -> Verdict {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= window_secs * WARMUP)
        .filter_map(|s| Some((s.t, series_value(s, rule.series)?)))
        .collect();
    let mut v = Verdict {
        series: rule.series,
        q2: None,
        q4: None,
        slope_per_hour: None,
        grew: false,
    };
    if pts.len() < MIN_SAMPLES {
        return v;
    }
    let n = pts.len();
    let quarter = |k: usize| -> f64 {
        let mut xs: Vec<f64> = pts[n * k / 4..n * (k + 1) / 4]
            .iter()
            .map(|p| p.1)
            .collect();
        median(&mut xs)
    };
    let (q2, q4) = (quarter(1), quarter(3));
    let mt = pts.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    v.slope_per_hour = (sxx > 0.0).then(|| sxy / sxx * 3600.0);
    v.q2 = Some(q2);
    v.q4 = Some(q4);
    v.grew = q4 > q2 * (1.0 + rule.ratio) && q4 - q2 > rule.floor;
    v
}

/// The plot-ready table: one row per sample.
pub fn markdown_table(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| t (s) | RSS MiB | open files | shard queue depth | tasks pending+inFlight | store MiB | store on disk MiB | history MiB | deliveries/s | server CPU % |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mib = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{:.1}", b / 1048576.0));
    let num = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{b:.0}"));
    let mut prev: Option<&Sample> = None;
    for s in samples {
        let delivered = |x: &Sample| x.harness.get("delivered").copied().unwrap_or(0);
        let (rate, cpu) = match prev {
            Some(p) if s.t > p.t => {
                let dt = s.t - p.t;
                let r = delivered(s).saturating_sub(delivered(p)) as f64 / dt;
                let c = match (s.cpu_seconds, p.cpu_seconds) {
                    (Some(a), Some(b)) => format!("{:.0}", (a - b) / dt * 100.0),
                    _ => "-".into(),
                };
                (format!("{r:.0}"), c)
            }
            _ => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.t,
            mib(s.rss_bytes.map(|v| v as f64)),
            num(s.open_files.map(|v| v as f64)),
            num(s.metric("shardcast_shard_queue_depth")),
            num(s.service_backlog()),
            mib(s.store_bytes.map(|v| v as f64)),
            mib(s.store_allocated_bytes.map(|v| v as f64)),
            mib(s.metric("shardcast_history_bytes")),
            rate,
            cpu,
        ));
        prev = Some(s);
    }
    out
}

/// Cluster mode: one row per sample and node (CPU % and deliveries/s over the interval
/// before the row, the latter from the node's `shardcast_deliveries_total`).
pub fn node_table(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| t (s) | node | RSS MiB | open files | CPU % | deliveries/s | connections | shard queue depth | stream lag | history MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mib = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{:.1}", b / 1048576.0));
    let num = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{b:.0}"));
    let mut prev: Option<&Sample> = None;
    for s in samples {
        for (k, n) in s.nodes.iter().enumerate() {
            let before = prev.and_then(|p| p.nodes.get(k)).filter(|p| n.t > p.t);
            let per_sec = |a: Option<f64>, b: Option<f64>, scale: f64| match (a, b, before) {
                (Some(a), Some(b), Some(p)) => format!("{:.0}", (a - b) / (n.t - p.t) * scale),
                _ => "-".to_string(),
            };
            let cpu = per_sec(n.cpu_seconds, before.and_then(|p| p.cpu_seconds), 100.0);
            let d = "shardcast_deliveries_total";
            let rate = per_sec(n.metric(d), before.and_then(|p| p.metric(d)), 1.0);
            out.push_str(&format!(
                "| {:.0} | {k} | {} | {} | {cpu} | {rate} | {} | {} | {} | {} |\n",
                s.t,
                mib(n.rss_bytes.map(|v| v as f64)),
                num(n.open_files.map(|v| v as f64)),
                num(n.metric("shardcast_connections")),
                num(n.metric("shardcast_shard_queue_depth")),
                num(n.metric("shardcast_stream_lag")),
                mib(n.metric("shardcast_history_bytes")),
            ));
        }
        prev = Some(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_summed_and_tabled() {
        let node = |t: f64, rss: Option<u64>, d: f64| Sample {
            t,
            rss_bytes: rss,
            open_files: Some(10),
            cpu_seconds: Some(t / 10.0),
            metrics: [("shardcast_deliveries_total".to_string(), d)].into(),
            ..Sample::default()
        };
        let a = [node(0.0, Some(100), 0.0), node(0.0, Some(50), 0.0)];
        let s = sum_nodes(&a);
        assert_eq!((s.rss_bytes, s.open_files), (Some(150), Some(20)));
        // one node unmeasured: no sum (it would read as a drop)
        assert_eq!(
            sum_nodes(&[node(0.0, Some(1), 0.0), node(0.0, None, 0.0)]).rss_bytes,
            None
        );
        let samples = vec![
            Sample {
                t: 0.0,
                nodes: a.to_vec(),
                ..Sample::default()
            },
            Sample {
                t: 10.0,
                nodes: vec![node(10.0, Some(100), 500.0), node(10.0, Some(50), 2000.0)],
                ..Sample::default()
            },
        ];
        let t = node_table(&samples);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 2 + 4, "{t}");
        // node 1 delivered 2000 in 10 s and used 1 CPU-s of 10
        assert!(
            rows[5].starts_with("| 10 | 1 | 0.0 | 10 | 10 | 200 |"),
            "{}",
            rows[5]
        );
        assert_eq!(s.to_json()["nodes"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP shardcast_shard_queue_depth depth\n\
            # TYPE shardcast_shard_queue_depth gauge\n\
            shardcast_shard_queue_depth{shard=\"0\"} 3\n\
            shardcast_shard_queue_depth{shard=\"1\"} 4.5\n\
            shardcast_shard_queue_depth_other 100\n\
            shardcast_connections{shard=\"0\",role=\"a b\"} 7\n\
            shardcast_service_tasks_pending 12\n\
            shardcast_batch_size_bucket{le=\"1\"} 9\n\
            garbage line\n";
        let m = parse_metrics(text, METRICS);
        assert_eq!(m["shardcast_shard_queue_depth"], 7.5);
        assert_eq!(m["shardcast_connections"], 7.0);
        assert_eq!(m["shardcast_service_tasks_pending"], 12.0);
        assert_eq!(m.len(), 3, "{m:?}");
    }

    #[test]
    fn dir_bytes_walks_subdirectories() {
        let d = std::env::temp_dir().join(format!("soak-du-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("x"), [0u8; 100]).unwrap();
        std::fs::write(d.join("a/b/y"), [0u8; 23]).unwrap();
        let (len, allocated) = dir_bytes(&d).unwrap();
        assert_eq!(len, 123);
        assert!(allocated >= 123, "{allocated}");
        std::fs::remove_dir_all(&d).unwrap();
        assert!(
            dir_bytes(&d).is_err(),
            "a missing data dir is an error, not 0"
        );
    }

    fn series(vals: &[f64]) -> Vec<Sample> {
        vals.iter()
            .enumerate()
            .map(|(i, &v)| Sample {
                t: i as f64 * 10.0,
                rss_bytes: Some(v as u64),
                open_files: Some(v as u64),
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn a_plateau_is_bounded_and_a_ramp_grows() {
        let rss = &RULES[0];
        let mib = 1048576.0;
        // warm-up ramp then flat with noise: bounded
        let mut flat: Vec<f64> = (0..4).map(|i| i as f64 * 50.0 * mib).collect();
        flat.extend((0..36).map(|i| (200.0 + (i % 3) as f64) * mib));
        let s = series(&flat);
        let window = 400.0;
        let v = verdict(&s, window, rss);
        assert!(!v.grew, "{v:?}");
        assert!(v.q2.is_some());
        // a steady leak of 2 MiB per sample: 35% up from q2 to q4 and > 32 MiB
        let ramp: Vec<f64> = (0..40).map(|i| (100.0 + 2.0 * i as f64) * mib).collect();
        let v = verdict(&series(&ramp), window, rss);
        assert!(v.grew, "{v:?}");
        assert!(v.slope_per_hour.unwrap() > 0.0);
        // the same relative growth on a tiny base stays under the floor
        let small: Vec<f64> = (0..40).map(|i| 100.0 + 2.0 * i as f64).collect();
        assert!(!verdict(&series(&small), window, &RULES[0]).grew);
        // but not for open files, whose floor is 50
        let files: Vec<f64> = (0..40).map(|i| 100.0 + 5.0 * i as f64).collect();
        assert!(verdict(&series(&files), window, &RULES[1]).grew);
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        let s = series(&[1.0, 2.0, 1e12, 1e13, 1e14]);
        let v = verdict(&s, 50.0, &RULES[0]);
        assert_eq!((v.q2, v.grew), (None, false));
        let missing = verdict(&series(&[1.0; 20]), 200.0, &RULES[4]);
        assert_eq!(missing.q2, None, "store size not measured");
    }

    #[test]
    fn table_has_a_row_per_sample() {
        let mut s = series(&[1048576.0, 2097152.0, 3145728.0]);
        for (i, x) in s.iter_mut().enumerate() {
            x.harness.insert("delivered", i as u64 * 1000);
            x.cpu_seconds = Some(i as f64 * 5.0);
        }
        let t = markdown_table(&s);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 2 + 3);
        assert_eq!(rows[0].matches('|').count(), 11, "10 columns");
        assert!(rows[3].starts_with("| 10 | 2.0 | 2097152 |"), "{}", rows[3]);
        // 1000 deliveries and 5 CPU-s over 10 s
        assert!(rows[3].ends_with("| 100 | 50 |"), "{}", rows[3]);
    }
}
