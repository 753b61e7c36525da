//! The operator instruments against a real Prometheus: `dashboards/shardcast.json` and
//! `dashboards/alerts.yml` must only name metrics the engine exports (`src/metrics.rs`),
//! every panel query must be valid PromQL that returns series once the engine has served
//! some traffic, and every alert rule must load, evaluate and pass `promtool check rules`.
//!
//! Needs Debian's `prometheus` package (`prometheus`, `promtool`; `scripts/test` installs
//! it). Without it the test is skipped, unless `CI` is set, where it fails.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{in_ci, now, token, token_with, wait_until, Client, Server, API_KEY, SECRET};
use serde_json::{json, Value};

/// What `$__rate_interval` becomes: a few 1 s scrapes.
const RATE_INTERVAL: &str = "5s";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(bin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(bin)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A Prometheus server on loopback with a temporary config and TSDB; killed on drop.
struct Prometheus {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Prometheus {
    fn start(bin: &Path, target_port: u16, rules: &Path) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!(
            "shardcast-prometheus-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: shardcast\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n",
            rules = rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("prometheus exited at start ({st}):\n{}", p.log());
            }
            if http_get(port, "/-/ready").map(|r| r.0) == Some(200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in time:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; the whole answer on success, the error text otherwise.
    fn query(&self, expr: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={}", enc(expr)))
            .ok_or("no answer from prometheus")?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        Ok(v)
    }

    /// The largest sample value `expr` returns now (0 when it returns nothing).
    fn max_value(&self, expr: &str) -> f64 {
        self.query(expr)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path).expect("prometheus answers");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One HTTP/1.0 GET (so the answer is neither chunked nor kept alive).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// Percent-encodes a query-string value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana variables as a test run resolves them: every shard, a short rate window.
fn substitute(expr: &str) -> String {
    expr.replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${shard}", ".*")
        .replace("[[shard]]", ".*")
        .replace("$shard", ".*")
}

/// Every metric name `src/metrics.rs` defines, with `_bucket`, `_sum` and `_count` for
/// its histograms.
fn exported_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(manifest_dir().join("src/metrics.rs")).expect("metrics.rs");
    let mut consts = std::collections::HashMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        // Only metric names: `drop_reason::SHARD_QUEUE_FULL` is a label value that
        // shares a constant name with a metric.
        if let Some(value) = value
            .strip_suffix("\";")
            .filter(|v| v.starts_with("shardcast_"))
        {
            consts.insert(name.trim().to_string(), value.to_string());
        }
    }
    let mut names: BTreeSet<String> = consts.values().cloned().collect();
    assert!(
        names.len() >= 10,
        "could not parse metric constants from src/metrics.rs: {names:?}"
    );
    // Histograms the exporter renders (described), and those `metrics.rs` renders itself.
    let self_rendered = src
        .split("pub const SELF_RENDERED_HISTOGRAMS: &[&str] = &[")
        .nth(1)
        .and_then(|rest| rest.split_once(']'))
        .map(|(list, _)| list.to_string())
        .unwrap_or_default();
    let idents = src
        .split("describe_histogram!(")
        .skip(1)
        .chain(self_rendered.split(','))
        .map(|part| {
            part.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|ident| !ident.is_empty())
        .collect::<Vec<_>>();
    for ident in idents {
        let name = consts
            .get(&ident)
            .unwrap_or_else(|| panic!("describe_histogram!({ident}): no such constant"));
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// Every `shardcast_…` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("shardcast_") {
        let preceded = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !preceded {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
    out
}

/// (panel title, query) for every target of every panel, rows' nested panels included.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {title:?}: a target without a PromQL expr: {t}")
                });
                let r = t["refId"].as_str().unwrap_or("?");
                out.push((format!("{title} [{r}]"), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn dashboards_and_alerts_work_against_real_prometheus() {
    let started = Instant::now();
    let (prometheus, promtool) = match (on_path("prometheus"), on_path("promtool")) {
        (Some(p), Some(t)) => (p, t),
        _ if in_ci() => panic!(
            "prometheus/promtool not on PATH and CI is set: install Debian's `prometheus` \
             package (scripts/test does)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: prometheus/promtool not on PATH (install Debian's `prometheus` \
                 package, or run scripts/test)"
            );
            return;
        }
    };
    let root = manifest_dir();
    let rules_path = root.join("dashboards/alerts.yml");
    let dash_path = root.join("dashboards/shardcast.json");
    let rules_text = std::fs::read_to_string(&rules_path).expect("dashboards/alerts.yml");
    let dash_text = std::fs::read_to_string(&dash_path).expect("dashboards/shardcast.json");

    // promtool accepts the rules.
    let out = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules dashboards/alerts.yml failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the instruments name is one the engine defines.
    let exported = exported_metrics();
    for (file, text) in [
        ("dashboards/shardcast.json", &dash_text),
        ("dashboards/alerts.yml", &rules_text),
    ] {
        let used = metric_names_in(text);
        assert!(!used.is_empty(), "{file} names no shardcast_ metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics src/metrics.rs does not define: {unknown:?}\n\
             (defined: {exported:?})"
        );
    }

    // The dashboard's shape: a prometheus datasource variable and a multi/all shard one.
    let dashboard: Value = serde_json::from_str(&dash_text).expect("dashboard is JSON");
    assert!(
        dashboard.get("__inputs").is_none(),
        "the dashboard must not need __inputs"
    );
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let shard_var = var("shard");
    assert_eq!(shard_var["multi"], true);
    assert_eq!(shard_var["includeAll"], true);
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "only {} panel queries", queries.len());

    // The engine, with small rings so that a burst overflows one (and small channel
    // backlogs, so that a channel drops), and a Prometheus scraping it every second with
    // the alert rules loaded.
    let s = Server::start("shards = 2\n[delivery]\nqueue_capacity = 16\n[channels]\nbacklog = 2");
    let prom = Prometheus::start(&prometheus, s.port, &rules_path);

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Stops the publisher however this closure ends, so the scope can join it.
        let _stop = StopOnDrop(&stop);
        // A steady trickle of publications, so rates and quantiles have data.
        scope.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.publish("jobs/tick", "tick", json!(i));
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        // Subscribers that get every message at once, one that batches for a second.
        let mut clients: Vec<Client> = (0..4)
            .map(|i| {
                let mut c = Client::authed(
                    &s,
                    &token(&format!("u{i}"), "user", &["jobs"]),
                    "&batchMs=0",
                );
                c.subscribe(json!([{"id": "j", "path": "jobs"}]));
                c
            })
            .collect();
        let mut slow = Client::authed(&s, &token("slow", "user", &["jobs"]), "&batchMs=1000");
        slow.subscribe(json!([{"id": "j", "path": "jobs"}]));
        // A burst larger than the 16-message ring: the batching client drops its oldest.
        let events: Vec<Value> = (0..64)
            .map(|i| json!({"path": "jobs/burst", "eventType": "e", "data": i}))
            .collect();
        s.publish_batch(events);

        // A refused token, an unknown command, an unauthenticated publish, a close.
        let mut bad = Client::connect(&s, "/ws?token=not-a-valid-token");
        assert_eq!(bad.expect_close(Duration::from_secs(5)).0, 4001);
        let mut idle = Client::authed(&s, &token("idle", "user", &["jobs"]), "");
        idle.send(&json!({"type": "noSuchCommand", "requestId": "x"}));
        assert_eq!(idle.error()["code"], "UNKNOWN_TYPE");
        let (st, _) = s.http("POST", "/api/v1/publish", Some(&json!({})), None);
        assert_eq!(st, 401);
        // Entity writes (store commits), a filtered subscription that gets a refresh, a
        // live query, a `since` replay: the entity row's series.
        let mut watcher = Client::authed(&s, &token("w", "user", &["*"]), "&batchMs=0");
        watcher.subscribe(
            json!([{"id": "f", "path": "orders", "filter": "status == 'open'", "since": 0}]),
        );
        watcher.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "orders"}}));
        for (i, status) in ["open", "open", "done"].iter().enumerate() {
            let (st, b) = s.http(
                "PUT",
                "/api/v1/entities/orders/o1",
                Some(&json!({"status": status, "i": i})),
                Some(&format!("apikey {API_KEY}")),
            );
            assert_eq!(st, 200, "{b}");
        }
        while watcher.recv()["type"] != "subscriptionRefresh" {}
        clients.pop().expect("a client").close();
        // A service group: tasks from the trickle, completed (ack latency), one failed
        // (a redelivery), a lock taken: the services row's series.
        let svc_token = token_with(
            json!({"sub": "svc-1", "role": "service", "group": "svc", "exp": now() + 3600}),
            SECRET,
        );
        let mut svc = Client::authed(&s, &svc_token, "&batchMs=0");
        svc.subscribe(json!([{"id": "w", "path": "jobs"}]));
        let mut failed_one = false;
        let mut completed = 0;
        while completed < 3 {
            let t = svc.recv_type("event");
            if !failed_one {
                svc.send(&json!({"type": "taskFailed", "taskIds": [t["taskId"]]}));
                failed_one = true;
            } else {
                svc.send(&json!({"type": "taskComplete", "taskIds": [t["taskId"]]}));
                completed += 1;
            }
        }
        svc.send(&json!({"type": "lock", "requestId": "l", "name": "n", "ttlMs": 60000}));
        let granted = loop {
            let m = svc.recv();
            if m["type"] == "lockResult" {
                break m;
            }
        };
        assert_eq!(granted["acquired"], true, "{granted}");
        // A channel with no socket: 5 matching events into its 2-event backlog, so 3 are
        // dropped (oldest first) and 2 wait: the channels row's series. Prometheus first
        // scrapes the channel metrics at 0, so that the drops show as a rise (the rates,
        // the alert) rather than as the series' first value.
        let scraped_once = wait_until(Duration::from_secs(20), || {
            prom.max_value("count_over_time(shardcast_channel_dropped_total[1m])") >= 1.0
        });
        assert!(
            scraped_once,
            "no scrape of the channel metrics:\n{}",
            prom.log()
        );
        let chan_token = token_with(
            json!({"sub": "chan-user", "role": "user", "org": "org_1", "scopes": ["claims"], "exp": now() + 3600}),
            SECRET,
        );
        let (st, ch) = s.http(
            "POST",
            "/api/v1/realtime-subscriptions/user",
            Some(&json!({"user_id": "chan-user", "event_types": []})),
            Some(&format!("Bearer {chan_token}")),
        );
        assert_eq!(st, 201, "{ch}");
        assert!(ch["channel_id"].is_string(), "{ch}");
        for n in 0..5 {
            s.publish(
                &format!("claims/c{n}"),
                "status_changed",
                json!({"user_id": "chan-user", "n": n}),
            );
        }

        // Wait (with a deadline) until Prometheus holds several scrapes that include
        // the traffic above.
        let scraped = wait_until(Duration::from_secs(20), || {
            prom.max_value("count_over_time(shardcast_auth_failures_total[1m])") >= 4.0
                && prom.max_value("count_over_time(shardcast_service_ack_seconds_count[1m])") >= 2.0
                && prom.max_value(r#"shardcast_dropped_total{reason="queue_overflow"}"#) > 0.0
                && prom.max_value("shardcast_channel_events_total") >= 1.0
                && prom.max_value(r#"up{job="shardcast"}"#) == 1.0
        });
        assert!(
            scraped,
            "prometheus did not scrape the engine in time; targets: {}\nprometheus log:\n{}",
            prom.get_json("/api/v1/targets"),
            prom.log()
        );

        // Every panel query is valid and returns series.
        let mut failures = Vec::new();
        for (panel, expr) in &queries {
            let q = substitute(expr);
            if q.contains('$') {
                failures.push(format!("panel {panel}: unresolved variable in {q}"));
                continue;
            }
            match prom.query(&q) {
                Err(e) => failures.push(format!("panel {panel}: invalid query {q}: {e}")),
                Ok(v) => {
                    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                    if result.is_empty() {
                        failures.push(format!("panel {panel}: no series for {q}"));
                    } else {
                        let sample: Vec<String> = result
                            .iter()
                            .take(4)
                            .map(|r| {
                                format!("{} {}", r["metric"], r["value"][1].as_str().unwrap_or("?"))
                            })
                            .collect();
                        eprintln!("ok  {panel}: {}", sample.join(", "));
                    }
                }
            }
        }

        // The shard variable lists the engine's shards.
        let shards = prom.get_json(&format!(
            "/api/v1/label/shard/values?match[]={}",
            enc("shardcast_connections")
        ));
        let shards: BTreeSet<&str> = shards["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if shards != BTreeSet::from(["0", "1"]) {
            failures.push(format!(
                "label_values(shardcast_connections, shard) gave {shards:?}, not the 2 shards"
            ));
        }

        // Every alert rule loaded, evaluates without error, and is valid as a query.
        let declared = rules_text
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:"))
            .count();
        let mut rules = Vec::new();
        let evaluated = wait_until(Duration::from_secs(10), || {
            let v = prom.get_json("/api/v1/rules");
            rules = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["type"] == "alerting")
                .collect();
            rules.len() == declared && rules.iter().all(|r| r["health"] != "unknown")
        });
        if !evaluated {
            failures.push(format!(
                "{declared} alerts declared in alerts.yml, prometheus loaded and evaluated: {}",
                json!(rules)
            ));
        }
        for r in &rules {
            let name = r["name"].as_str().unwrap_or("?");
            let expr = r["query"].as_str().unwrap_or("");
            if r["health"] != "ok" {
                failures.push(format!(
                    "alert {name}: health {} ({}) for {expr}",
                    r["health"], r["lastError"]
                ));
            }
            match prom.query(expr) {
                Err(e) => failures.push(format!("alert {name}: invalid query {expr}: {e}")),
                Ok(v) => eprintln!(
                    "ok  alert {name}: {} series, state {}",
                    v["data"]["result"].as_array().map_or(0, Vec::len),
                    r["state"]
                ),
            }
        }

        drop(clients);
        drop(slow);
        drop(idle);
        assert!(
            failures.is_empty(),
            "{} problem(s) with the dashboards:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    });
    drop(prom);
    eprintln!(
        "{} panel queries and the alert rules checked in {:.1?}",
        queries.len(),
        started.elapsed()
    );
}

/// Issue: a fresh node exported none of the service and channel series until first used,
/// so their panels showed "No data" and alerts on them could not fire. Every metric name
/// the dashboards and alerts use must be in the first scrape of a node that has served
/// nothing (no Prometheus needed, so this never skips), and per-shard series exist for
/// every shard.
#[test]
fn a_fresh_node_exports_every_series_the_dashboards_use() {
    let root = manifest_dir();
    let mut wanted = BTreeSet::new();
    for f in ["dashboards/shardcast.json", "dashboards/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        wanted.extend(metric_names_in(&text));
    }
    assert!(
        wanted.len() >= 20,
        "found only {} metric names in dashboards/: {wanted:?}",
        wanted.len()
    );

    let server = Server::start("shards = 2");
    let (status, text) = server
        .try_http("GET", "/metrics", None, &[])
        .expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let names: BTreeSet<&str> = series
        .iter()
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "a node that served nothing does not export {missing:?}; it exports:\n{text}"
    );
    // Per-shard series: one for each shard, not only for the shard that did something.
    for shard in ["0", "1"] {
        let label = format!("shard=\"{shard}\"");
        for name in [
            "shardcast_connections",
            "shardcast_deliveries_total",
            "shardcast_dropped_total",
            "shardcast_shard_loop_turn_seconds_bucket",
            "shardcast_shard_loop_turn_seconds_count",
            "shardcast_shard_loop_turn_max_seconds",
        ] {
            assert!(
                series
                    .iter()
                    .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label)),
                "no {name} series for shard {shard}:\n{text}"
            );
        }
    }
}

/// `shardcast_shard_loop_turn_seconds`: one histogram per shard, cumulative buckets up to
/// `+Inf` equal to `_count`, counting turns as the shard works (issue 21).
#[test]
fn loop_turn_histogram_counts_turns_per_shard() {
    let server = Server::start("shards = 1");
    let read = || {
        let (status, text) = server
            .try_http("GET", "/metrics", None, &[])
            .expect("GET /metrics");
        assert_eq!(status, 200);
        let mut buckets: Vec<(String, f64)> = Vec::new();
        let mut count = None;
        let mut max = None;
        for l in text.lines() {
            let value = || l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
            if l.starts_with("shardcast_shard_loop_turn_seconds_bucket{") {
                assert!(l.contains("shard=\"0\"") && l.contains("node=\""), "{l}");
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                buckets.push((le.to_string(), value()));
            } else if l.starts_with("shardcast_shard_loop_turn_seconds_count{") {
                count = Some(value());
            } else if l.starts_with("shardcast_shard_loop_turn_max_seconds{") {
                max = Some(value());
            }
        }
        (buckets, count.expect("_count"), max.expect("max"), text)
    };
    let (buckets, count, _, text) = read();
    assert!(
        buckets.iter().any(|(le, _)| le == "0.005"),
        "a bucket at the 5 ms budget:\n{text}"
    );
    assert_eq!(buckets.last().map(|b| b.0.as_str()), Some("+Inf"));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().1, count);
    // Each request is at least one more turn of the loop.
    for _ in 0..5 {
        server.try_http("GET", "/healthz", None, &[]).unwrap();
    }
    let (_, later, max, _) = read();
    assert!(later >= count + 5.0, "{count} turns, then {later}");
    assert!(max > 0.0);
}
