//! Scenario stalls (issue 21, "no shard stalls"): a fan-out's publish -> receive latency
//! with and without live-query creations over a big collection on the same shard, in
//! alternating phases of one run, and the shard's loop-turn histogram from `/metrics`.
//!
//! The run: seed `--entities` entities in collection `stalls` (pipelined `PUT`s; skipped
//! when the collection holds that many already, so a rerun against the same store starts
//! at once); connect `--connections` subscribers to `load` (batchMs 0) and [`CREATORS`]
//! live-query connections; publish to `load/stalls` at `--rate` for four phases of
//! `--duration` ([`PHASES`]: quiet, live queries, quiet, live queries). In a live-query
//! phase each creator creates a query over the whole collection (a filter and an order:
//! every entity is evaluated and ranked), reads `liveQueryCreated` and every page,
//! destroys it, and again, until the phase ends. Each event carries its phase and its
//! send time; a subscriber files its latency under that phase. Around each phase,
//! `/metrics` gives shard 0's loop-turn buckets (`shardcast_shard_loop_turn_seconds`):
//! the phase's p99 and max are read from the difference (to the bucket's upper bound).
//!
//! Plain blocking sockets, one thread per connection: a few hundred connections at a few
//! hundred publications per second need no event loop, and the subscribers' reading
//! never waits on each other.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cli::{Auth, Config};
use crate::conn::{url_encode, ws_target};
use crate::publish::HttpConn;
use crate::report::new_histogram;
use crate::util::{unix_nanos, Rng};
use crate::ws;

/// The collection the live queries scan.
pub const COLLECTION: &str = "stalls";
/// Connections creating live queries during a live-query phase.
pub const CREATORS: usize = 2;
/// The phases, in order.
pub const PHASES: [Phase; 4] = [
    Phase::Quiet,
    Phase::LiveQueries,
    Phase::Quiet,
    Phase::LiveQueries,
];
/// Shortest time between two creations of one creator (two commands each).
const MIN_CYCLE: Duration = Duration::from_millis(50);
/// Longest a connect, a read or a seeding answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Quiet,
    LiveQueries,
}

impl Phase {
    fn index(self) -> usize {
        match self {
            Phase::Quiet => 0,
            Phase::LiveQueries => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Quiet => "fan-out alone",
            Phase::LiveQueries => "fan-out + live queries",
        }
    }
}

/// A blocking WebSocket client connection.
struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    rng: Rng,
}

impl Client {
    fn connect(cfg: &Config, token: &str) -> Result<Client, String> {
        let sock = TcpStream::connect_timeout(&cfg.url.addr, IO_TIMEOUT)
            .map_err(|e| format!("connect {}: {e}", cfg.url.addr))?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut rng = Rng::from_os();
        let key = ws::random_key(&mut rng);
        let target = ws_target(&cfg.url.path, &url_encode(token), "batchMs=0");
        let mut c = Client {
            sock,
            buf: Vec::new(),
            rng,
        };
        c.sock
            .write_all(&ws::handshake_request(&cfg.url.host_header, &target, &key))
            .map_err(|e| e.to_string())?;
        loop {
            match ws::check_handshake_response(&c.buf, &key) {
                Ok(Some(n)) => {
                    c.buf.drain(..n);
                    // The token is in the URL: the server greets with `authenticated`.
                    c.recv_type("authenticated")?;
                    return Ok(c);
                }
                Ok(None) => c.fill()?,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 64 * 1024];
        match self.sock.read(&mut chunk) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn send(&mut self, v: &Value) -> Result<(), String> {
        self.send_frame(ws::OP_TEXT, &serde_json::to_vec(v).unwrap_or_default())
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mask = (self.rng.next_u64() as u32).to_ne_bytes();
        let mut out = Vec::with_capacity(payload.len() + 14);
        ws::encode_frame(&mut out, opcode, payload, Some(mask));
        self.sock.write_all(&out).map_err(|e| e.to_string())
    }

    /// The next text message (pings answered on the way).
    fn recv(&mut self) -> Result<Value, String> {
        loop {
            let (msg, used) = match ws::decode_frame(&mut self.buf) {
                ws::Decode::Frame(f, used) => match f.opcode {
                    ws::OP_TEXT => (Some(f.payload.to_vec()), used),
                    ws::OP_PING => {
                        let p = f.payload.to_vec();
                        self.buf.drain(..used);
                        self.send_frame(ws::OP_PONG, &p)?;
                        continue;
                    }
                    ws::OP_CLOSE => {
                        return Err(format!("closed {}", ws::close_code(f.payload)));
                    }
                    _ => (None, used),
                },
                ws::Decode::Incomplete { .. } => {
                    self.fill()?;
                    continue;
                }
                ws::Decode::Error(e) => return Err(e.to_string()),
            };
            self.buf.drain(..used);
            if let Some(m) = msg {
                let v: Value = serde_json::from_slice(&m).map_err(|e| e.to_string())?;
                if v["type"] == "ping" {
                    self.send(&json!({"type": "pong"}))?;
                    continue;
                }
                return Ok(v);
            }
        }
    }

    fn recv_type(&mut self, typ: &str) -> Result<Value, String> {
        let m = self.recv()?;
        if m["type"] == typ {
            Ok(m)
        } else {
            Err(format!("expected {typ}, got {m}"))
        }
    }
}

/// What one kind of phase measured.
#[derive(Default)]
struct PhaseStats {
    /// Publish -> receive, µs, over every subscriber.
    latency: Option<Histogram<u64>>,
    /// Live queries created (all pages read).
    creations: u64,
    /// `createLiveQuery` -> last page, µs.
    creation: Option<Histogram<u64>>,
    /// Loop-turn bucket counts gained during phases of this kind (`None`: no histogram).
    turns: Option<Vec<(f64, f64)>>,
}

fn token(cfg: &Config, i: u64) -> String {
    match &cfg.auth {
        Auth::Token(t) => t.clone(),
        Auth::Secret(s) => crate::jwt::client_token(s, i, crate::util::unix_secs(), 24 * 3600),
        Auth::None => String::new(),
    }
}

fn http_request(cfg: &Config, method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {}\r\n",
        cfg.http.path,
        cfg.http.host_header,
        cfg.api_key.as_deref().unwrap_or("")
    )
    .into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Entities the collection holds (`totalCount` of a one-item list).
fn collection_size(cfg: &Config) -> Result<u64, String> {
    let mut c = HttpConn::connect(cfg.http.addr).map_err(|e| e.to_string())?;
    let (status, _, body) = c
        .round_trip(&http_request(
            cfg,
            "GET",
            &format!("/api/v1/entities/{COLLECTION}?limit=1"),
            None,
        ))
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (status, v["totalCount"].as_u64()) {
        (200, Some(n)) => Ok(n),
        _ => Err(format!(
            "GET entities/{COLLECTION}: {status} {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// Writes `stalls/e0..e{n-1}` with pipelined `PUT`s on a few connections.
fn seed(cfg: &Config, n: u64) -> Result<(), String> {
    const CONNS: u64 = 8;
    const CHUNK: u64 = 500;
    let failed = Mutex::new(None::<String>);
    std::thread::scope(|sc| {
        for c in 0..CONNS {
            let failed = &failed;
            sc.spawn(move || {
                let run = || -> Result<(), String> {
                    let mut sock = TcpStream::connect_timeout(&cfg.http.addr, IO_TIMEOUT)
                        .map_err(|e| e.to_string())?;
                    sock.set_read_timeout(Some(IO_TIMEOUT))
                        .map_err(|e| e.to_string())?;
                    let ids: Vec<u64> = (c..n).step_by(CONNS as usize).collect();
                    for chunk in ids.chunks(CHUNK as usize) {
                        let mut req = Vec::new();
                        for &i in chunk {
                            let status = if i % 10 == 0 { "open" } else { "closed" };
                            let body = format!(r#"{{"n":{i},"status":"{status}"}}"#);
                            req.extend_from_slice(&http_request(
                                cfg,
                                "PUT",
                                &format!("/api/v1/entities/{COLLECTION}/e{i}"),
                                Some(body.as_bytes()),
                            ));
                        }
                        sock.write_all(&req).map_err(|e| e.to_string())?;
                        let mut got = Vec::new();
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let text = String::from_utf8_lossy(&got);
                            let answers = text.matches("HTTP/1.1 ").count();
                            let ok = text.matches("HTTP/1.1 200 ").count();
                            if answers != ok {
                                return Err(format!("a seeding PUT failed: {text:.300}"));
                            }
                            if ok == chunk.len() && text.ends_with('}') {
                                break;
                            }
                            let r = sock.read(&mut buf).map_err(|e| e.to_string())?;
                            if r == 0 {
                                return Err("the server closed a seeding connection".into());
                            }
                            got.extend_from_slice(&buf[..r]);
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    *failed.lock().unwrap() = Some(e);
                }
            });
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Shard 0's loop-turn buckets, cumulative: (upper bound in seconds, count); `None` when
/// the server does not export the histogram (before issue 21).
fn loop_turns(cfg: &Config) -> Option<Vec<(f64, f64)>> {
    let mut c = HttpConn::connect(cfg.http.addr).ok()?;
    let (status, _, body) = c
        .round_trip(&http_request(cfg, "GET", "/metrics", None))
        .ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("shardcast_shard_loop_turn_seconds_bucket{") && l.contains("shard=\"0\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, v))
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// `after - before`, bucket by bucket.
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0, a.1 - b.1))
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets`, and of the
/// highest non-empty bucket (the max, to its bucket).
pub fn turn_quantiles(buckets: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = buckets.iter().find(|b| b.1 >= total * q)?.0;
    let mut max = 0.0;
    let mut prev = 0.0;
    for b in buckets {
        if b.1 > prev {
            max = b.0;
        }
        prev = b.1;
    }
    Some((at, max))
}

fn fmt_bound(s: f64) -> String {
    if s.is_infinite() {
        "> 5 s".into()
    } else if s < 0.001 {
        format!("≤ {:.2} ms", s * 1e3)
    } else {
        format!("≤ {} ms", s * 1e3)
    }
}

pub fn run(cfg: &Config) -> i32 {
    match run_inner(cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: stalls: {e}");
            3
        }
    }
}

fn run_inner(cfg: &Config) -> Result<i32, String> {
    let have = collection_size(cfg)?;
    if have < cfg.entities {
        let t = Instant::now();
        eprintln!("seeding {} entities in '{COLLECTION}'...", cfg.entities);
        seed(cfg, cfg.entities)?;
        eprintln!("seeded in {:.1} s", t.elapsed().as_secs_f64());
    }
    let total = collection_size(cfg)?;

    // Subscribers.
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Arc<Mutex<[PhaseStats; 2]>> = Arc::new(Mutex::new(Default::default()));
    let received = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for i in 0..cfg.connections {
        let mut c = Client::connect(cfg, &token(cfg, i))?;
        c.send(&json!({"type": "subscribeEvents", "requestId": "s",
            "subscriptions": [{"id": "load", "path": "load"}]}))?;
        c.recv_type("subscribedEvents")?;
        let (stop, stats, received, ready) =
            (stop.clone(), stats.clone(), received.clone(), ready.clone());
        subs.push(std::thread::spawn(move || {
            let _ = c.sock.set_read_timeout(Some(Duration::from_millis(200)));
            let mut local: [Histogram<u64>; 2] = [new_histogram(), new_histogram()];
            ready.fetch_add(1, SeqCst);
            while !stop.load(SeqCst) {
                match c.recv() {
                    Ok(m) if m["type"] == "event" => {
                        let now = unix_nanos();
                        let t = m["data"]["t"].as_u64().unwrap_or(now);
                        let phase = m["data"]["phase"].as_u64().unwrap_or(0) as usize;
                        let _ = local[phase.min(1)].record(now.saturating_sub(t) / 1000);
                        received.fetch_add(1, SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) if e.contains("Resource temporarily") || e.contains("timed out") => {}
                    Err(e) => {
                        eprintln!("loadtest: stalls: a subscriber failed: {e}");
                        break;
                    }
                }
            }
            let mut s = stats.lock().unwrap();
            for (k, h) in local.into_iter().enumerate() {
                match &mut s[k].latency {
                    Some(all) => {
                        let _ = all.add(&h);
                    }
                    None => s[k].latency = Some(h),
                }
            }
        }));
    }
    while ready.load(SeqCst) < cfg.connections as usize {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Live-query creators: create, read every page, destroy, again, while `creating`.
    let creating = Arc::new(AtomicBool::new(false));
    let mut creators = Vec::new();
    for k in 0..CREATORS {
        let mut c = Client::connect(cfg, &token(cfg, cfg.connections + k as u64))?;
        let (stop, creating, stats) = (stop.clone(), creating.clone(), stats.clone());
        creators.push(std::thread::spawn(move || -> Result<(), String> {
            let mut h = new_histogram();
            let mut n = 0u64;
            let mut last = Instant::now() - MIN_CYCLE;
            while !stop.load(SeqCst) {
                if !creating.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                // At most one creation per MIN_CYCLE: a small collection loads at once, and
                // a creator must stay under the server's command rate limit.
                if let Some(wait) = MIN_CYCLE.checked_sub(last.elapsed()) {
                    std::thread::sleep(wait);
                }
                last = Instant::now();
                let t = last;
                c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {
                    "edge": COLLECTION, "filter": "n >= 0",
                    "orderBy": "n desc", "limit": 1000}}))?;
                c.recv_type("liveQueryCreated")?;
                loop {
                    let d = c.recv_type("liveQueryData")?;
                    if d["hasMore"] == false {
                        break;
                    }
                }
                let _ = h.record(t.elapsed().as_micros() as u64);
                n += 1;
                c.send(&json!({"type": "destroyLiveQuery", "id": "lq"}))?;
                c.recv_type("liveQueryDestroyed")?;
            }
            let mut s = stats.lock().unwrap();
            let p = &mut s[Phase::LiveQueries.index()];
            p.creations += n;
            match &mut p.creation {
                Some(all) => {
                    let _ = all.add(&h);
                }
                None => p.creation = Some(h),
            }
            Ok(())
        }));
    }

    // The publisher, phase by phase.
    let mut http = HttpConn::connect(cfg.http.addr).map_err(|e| e.to_string())?;
    let interval = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut published = [0u64; 2];
    let mut errors = 0u64;
    for phase in PHASES {
        creating.store(phase == Phase::LiveQueries, SeqCst);
        let before = loop_turns(cfg);
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < cfg.duration {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            next += interval;
            let body = format!(
                r#"{{"path":"load/stalls","eventType":"tick","data":{{"t":{},"phase":{}}}}}"#,
                unix_nanos(),
                phase.index()
            );
            match http.round_trip(&http_request(
                cfg,
                "POST",
                "/api/v1/publish",
                Some(body.as_bytes()),
            )) {
                Ok((202, _, _)) => published[phase.index()] += 1,
                _ => {
                    errors += 1;
                    http = HttpConn::connect(cfg.http.addr).map_err(|e| e.to_string())?;
                }
            }
        }
        creating.store(false, SeqCst);
        if let (Some(b), Some(a)) = (before, loop_turns(cfg)) {
            let d = bucket_delta(&b, &a);
            let mut s = stats.lock().unwrap();
            let t = &mut s[phase.index()].turns;
            *t = Some(match t.take() {
                None => d,
                Some(prev) => prev.iter().zip(&d).map(|(p, q)| (p.0, p.1 + q.1)).collect(),
            });
        }
    }
    // Every event published is in (or 5 s passed), then stop.
    let want = (published[0] + published[1]) * cfg.connections;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(SeqCst) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, SeqCst);
    for s in subs {
        let _ = s.join();
    }
    for c in creators {
        if let Ok(Err(e)) = c.join() {
            eprintln!("loadtest: stalls: a live-query creator failed: {e}");
        }
    }
    let got = received.load(SeqCst);

    // Report.
    let stats = stats.lock().unwrap();
    println!(
        "stalls: {} subscribers, {}/s, {} entities in '{COLLECTION}', phases of {:?}",
        cfg.connections, cfg.rate, total, cfg.duration
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>13} {:>13}",
        "phase",
        "events",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lq made",
        "lq p50 ms",
        "turn p99",
        "turn max"
    );
    let mut phases_json = Vec::new();
    for phase in [Phase::Quiet, Phase::LiveQueries] {
        let s = &stats[phase.index()];
        let lat = s.latency.as_ref();
        let q = |h: Option<&Histogram<u64>>, q: f64| {
            h.filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        let max = lat
            .filter(|h| !h.is_empty())
            .map(|h| h.max() as f64 / 1000.0);
        let turns = s.turns.as_ref().and_then(|t| turn_quantiles(t, 0.99));
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>13} {:>13}",
            phase.name(),
            lat.map_or(0, |h| h.len()),
            show(q(lat, 0.5)),
            show(q(lat, 0.99)),
            show(max),
            s.creations,
            show(q(s.creation.as_ref(), 0.5)),
            turns.map_or("n/a".into(), |t| fmt_bound(t.0)),
            turns.map_or("n/a".into(), |t| fmt_bound(t.1)),
        );
        phases_json.push(json!({
            "phase": phase.name(),
            "published": published[phase.index()],
            "events": lat.map_or(0, |h| h.len()),
            "latency_ms": {"p50": q(lat, 0.5), "p99": q(lat, 0.99), "max": max},
            "live_queries_created": s.creations,
            "creation_ms": {"p50": q(s.creation.as_ref(), 0.5), "max": s.creation.as_ref().filter(|h| !h.is_empty()).map(|h| h.max() as f64 / 1000.0)},
            "loop_turn_s": turns.map(|t| json!({"p99_bucket": t.0, "max_bucket": if t.1.is_finite() { json!(t.1) } else { json!("+Inf") }})),
        }));
    }
    let lost = want.saturating_sub(got);
    println!(
        "published {} ({} failed), received {got} of {want}",
        published[0] + published[1],
        errors
    );
    if let Some(path) = &cfg.json {
        let report = json!({
            "scenario": "stalls",
            "connections": cfg.connections,
            "rate": cfg.rate,
            "entities": total,
            "phase_s": cfg.duration.as_secs_f64(),
            "phases": phases_json,
            "publish_errors": errors,
            "lost": lost,
        });
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        let written = if path.as_os_str() == "-" {
            println!("{text}");
            Ok(())
        } else {
            std::fs::write(path, text)
        };
        if let Err(e) = written {
            eprintln!("loadtest: --json {}: {e}", path.display());
            return Ok(3);
        }
    }
    let creations = stats[Phase::LiveQueries.index()].creations;
    if lost > 0 || errors > 0 || creations == 0 {
        eprintln!(
            "loadtest: stalls: {lost} events lost, {errors} publish failures, {creations} live queries created"
        );
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_cumulative_buckets() {
        let b = [
            (0.001, 90.0),
            (0.005, 99.0),
            (0.05, 99.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(turn_quantiles(&b, 0.5), Some((0.001, f64::INFINITY)));
        assert_eq!(turn_quantiles(&b, 0.99), Some((0.005, f64::INFINITY)));
        let b = [(0.001, 10.0), (0.005, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(turn_quantiles(&b, 0.99), Some((0.001, 0.001)));
        assert_eq!(turn_quantiles(&[(0.001, 0.0)], 0.99), None);
    }
}
