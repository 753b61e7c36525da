//! Results: per-thread client counters (mergeable, and carried as JSON from worker
//! processes), the final report, its human table and its JSON file.

use std::collections::BTreeMap;
use std::io::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::kernel::{KernelSample, PerSocket};
use crate::util::{human_bytes, human_count};

/// Latency histogram in microseconds: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What the client connections of one thread, process or whole run saw.
#[derive(Debug, Clone)]
pub struct ClientStats {
    /// Connections attempted.
    pub requested: u64,
    /// Connections that were authenticated and subscribed.
    pub ready: u64,
    /// Connections that failed before being subscribed.
    pub failed: u64,
    /// Subscribed connections the server closed (or that broke) before the end.
    pub disconnected: u64,
    /// Events received.
    pub delivered: u64,
    /// Sum of `dropped` of the `QUEUE_OVERFLOW` warnings received.
    pub dropped_reported: u64,
    pub pongs_sent: u64,
    /// `error` messages received by subscribed connections.
    pub server_errors: u64,
    /// Unix nanos of the last event received (0: none).
    pub last_delivery_ns: u64,
    /// churn: cycles that ended with the server's close echo (`requested` = started).
    pub cycles_completed: u64,
    /// overflow: slow readers among the subscribed connections.
    pub slow_readers: u64,
    /// overflow: `dropped` reported to connections that read normally.
    pub dropped_fast: u64,
    /// Subscribed connections per publication path.
    pub subs_per_path: Vec<u64>,
    /// Setup failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Close codes of connections the server closed (1006: no close frame).
    pub close_codes: BTreeMap<u16, u64>,
    pub latency: Histogram<u64>,
}

impl ClientStats {
    pub fn new(paths: usize) -> ClientStats {
        ClientStats {
            requested: 0,
            ready: 0,
            failed: 0,
            disconnected: 0,
            delivered: 0,
            dropped_reported: 0,
            pongs_sent: 0,
            server_errors: 0,
            last_delivery_ns: 0,
            cycles_completed: 0,
            slow_readers: 0,
            dropped_fast: 0,
            subs_per_path: vec![0; paths],
            failures: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            latency: new_histogram(),
        }
    }

    pub fn merge(&mut self, o: &ClientStats) {
        self.requested += o.requested;
        self.ready += o.ready;
        self.failed += o.failed;
        self.disconnected += o.disconnected;
        self.delivered += o.delivered;
        self.dropped_reported += o.dropped_reported;
        self.pongs_sent += o.pongs_sent;
        self.server_errors += o.server_errors;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.cycles_completed += o.cycles_completed;
        self.slow_readers += o.slow_readers;
        self.dropped_fast += o.dropped_fast;
        if self.subs_per_path.len() < o.subs_per_path.len() {
            self.subs_per_path.resize(o.subs_per_path.len(), 0);
        }
        for (a, b) in self.subs_per_path.iter_mut().zip(&o.subs_per_path) {
            *a += b;
        }
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(*k).or_default() += v;
        }
        self.latency
            .add(&o.latency)
            .expect("histograms with the same bounds");
    }

    /// For the worker-to-parent pipe. The histogram goes as [value, count] pairs.
    pub fn to_json(&self) -> Value {
        let hist: Vec<[u64; 2]> = self
            .latency
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        json!({
            "requested": self.requested,
            "ready": self.ready,
            "failed": self.failed,
            "disconnected": self.disconnected,
            "delivered": self.delivered,
            "dropped_reported": self.dropped_reported,
            "pongs_sent": self.pongs_sent,
            "server_errors": self.server_errors,
            "last_delivery_ns": self.last_delivery_ns,
            "cycles_completed": self.cycles_completed,
            "slow_readers": self.slow_readers,
            "dropped_fast": self.dropped_fast,
            "subs_per_path": self.subs_per_path,
            "failures": self.failures,
            "close_codes": self.close_codes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "latency": hist,
        })
    }

    pub fn from_json(v: &Value) -> Result<ClientStats, String> {
        let u = |k: &str| -> Result<u64, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("missing {k}"))
        };
        let subs: Vec<u64> = v
            .get("subs_per_path")
            .and_then(Value::as_array)
            .ok_or("missing subs_per_path")?
            .iter()
            .map(|x| x.as_u64().unwrap_or(0))
            .collect();
        let mut s = ClientStats::new(subs.len());
        s.subs_per_path = subs;
        s.requested = u("requested")?;
        s.ready = u("ready")?;
        s.failed = u("failed")?;
        s.disconnected = u("disconnected")?;
        s.delivered = u("delivered")?;
        s.dropped_reported = u("dropped_reported")?;
        s.pongs_sent = u("pongs_sent")?;
        s.server_errors = u("server_errors")?;
        s.last_delivery_ns = u("last_delivery_ns")?;
        s.cycles_completed = u("cycles_completed")?;
        s.slow_readers = u("slow_readers")?;
        s.dropped_fast = u("dropped_fast")?;
        if let Some(m) = v.get("failures").and_then(Value::as_object) {
            for (k, n) in m {
                s.failures.insert(k.clone(), n.as_u64().unwrap_or(0));
            }
        }
        if let Some(m) = v.get("close_codes").and_then(Value::as_object) {
            for (k, n) in m {
                if let Ok(code) = k.parse() {
                    s.close_codes.insert(code, n.as_u64().unwrap_or(0));
                }
            }
        }
        for pair in v
            .get("latency")
            .and_then(Value::as_array)
            .ok_or("missing latency")?
        {
            let (Some(val), Some(n)) = (
                pair.get(0).and_then(Value::as_u64),
                pair.get(1).and_then(Value::as_u64),
            ) else {
                return Err("bad latency pair".into());
            };
            s.latency
                .record_n(val.max(1), n)
                .map_err(|e| format!("latency: {e:?}"))?;
        }
        Ok(s)
    }
}

/// Server-side measurements (from --server-pid).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerStats {
    pub rss_before: Option<u64>,
    /// After everything connected and subscribed.
    pub rss_connected: Option<u64>,
    pub rss_window_start: Option<u64>,
    pub rss_window_end: Option<u64>,
    /// CPU seconds over the publishing window and the grace period (idle: the holding
    /// window; churn: the window and the end of the cycles in flight).
    pub cpu_seconds: Option<f64>,
}

/// The final report.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub requested: u64,
    pub clients: ClientStats,
    pub published: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub expected: u64,
    /// Seconds over which deliveries-per-second is computed.
    pub delivery_window_secs: f64,
    pub publish_window_secs: f64,
    pub server: ServerStats,
    pub processes: usize,
    pub loadtest_cpu_seconds: f64,
    /// churn: cycles the schedule asked for over the window (rate × window).
    pub cycles_scheduled: u64,
    /// idle `--storm` (the latency histogram then holds setup times).
    pub storm: Option<Storm>,
    /// scenario scale: client processes, kernel and node readings.
    pub scale: Option<Scale>,
}

/// scale: one client process (a worker, or this process when there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientProcess {
    pub pid: u32,
    pub ready: u64,
    pub delivered: u64,
    /// VmRSS once connected (None: could not be read).
    pub rss_bytes: Option<u64>,
    /// From the publication's send to its last delivery in this process, µs (None:
    /// nothing delivered).
    pub reach_us: Option<u64>,
}

/// scale: what the run measured around its one publication.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scale {
    pub processes: Vec<ClientProcess>,
    pub kernel_before: Option<KernelSample>,
    pub kernel_connected: Option<KernelSample>,
    /// Open files of each server process (`--server-pid`) once connected: how evenly
    /// the kernel spread the connections over the nodes, and how near each came to its
    /// open-file limit.
    pub server_open_files: Vec<(u32, u64)>,
    /// Why connecting ended before every connection was set up (None: it did not).
    pub connect_stopped: Option<String>,
    pub connect_secs: f64,
    /// Setups that failed, and subscribed connections closed before the end, over all
    /// processes (what a machine past its limit shows first).
    pub failed: u64,
    pub disconnected: u64,
}

impl Scale {
    /// Σ RSS / Σ connections of the client processes.
    pub fn client_rss_per_connection(&self) -> Option<f64> {
        let rss: u64 = self.processes.iter().filter_map(|p| p.rss_bytes).sum();
        let ready: u64 = self.processes.iter().map(|p| p.ready).sum();
        (ready > 0 && rss > 0).then(|| rss as f64 / ready as f64)
    }

    /// Slowest process's reach (µs): when the publication had reached every connection.
    pub fn reach_all_us(&self) -> Option<u64> {
        self.processes.iter().filter_map(|p| p.reach_us).max()
    }

    pub fn per_socket(&self) -> Option<PerSocket> {
        crate::kernel::per_socket(
            self.kernel_before.as_ref()?,
            self.kernel_connected.as_ref()?,
        )
    }

    fn open_files_range(&self) -> Option<(u64, u64)> {
        let it = self.server_open_files.iter().map(|(_, n)| *n);
        Some((it.clone().min()?, it.max()?))
    }

    pub fn to_json(&self) -> Value {
        let (min, max) = self.open_files_range().unzip();
        json!({
            "connect_secs": round3(self.connect_secs),
            "connect_stopped": self.connect_stopped,
            "failed": self.failed,
            "disconnected": self.disconnected,
            "reach_all_us": self.reach_all_us(),
            "client_rss_bytes_per_connection": self.client_rss_per_connection().map(round2),
            "server_open_files": {
                "min": min,
                "max": max,
                "per_pid": self.server_open_files.iter()
                    .map(|(pid, n)| json!({"pid": pid, "open_files": n}))
                    .collect::<Vec<_>>(),
            },
            "kernel": {
                "before": self.kernel_before.as_ref().map(KernelSample::to_json),
                "connected": self.kernel_connected.as_ref().map(KernelSample::to_json),
                "per_socket": self.per_socket().map(|p| p.to_json()),
            },
            "workers": self.processes.iter().map(|p| json!({
                "pid": p.pid,
                "connections": p.ready,
                "delivered": p.delivered,
                "rss_bytes": p.rss_bytes,
                "reach_us": p.reach_us,
            })).collect::<Vec<_>>(),
        })
    }

    fn print_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let ready: u64 = self.processes.iter().map(|p| p.ready).sum();
        row(
            out,
            "connect phase",
            format!(
                "{:.1} s ({}/s){}",
                self.connect_secs,
                human_count(per_sec(ready, self.connect_secs)),
                self.connect_stopped
                    .as_ref()
                    .map_or(String::new(), |w| format!(", stopped: {w}"))
            ),
        )?;
        row(
            out,
            "reached all after",
            self.reach_all_us()
                .map_or("-".into(), |v| format!("{:.1} ms", v as f64 / 1000.0)),
        )?;
        let reach: Vec<String> = self
            .processes
            .iter()
            .map(|p| {
                p.reach_us
                    .map_or("-".into(), |v| format!("{:.0}", v as f64 / 1000.0))
            })
            .collect();
        row(out, "per worker reach ms", reach.join(" "))?;
        row(
            out,
            "client rss per connection",
            self.client_rss_per_connection()
                .map_or("-".into(), |v| format!("{v:.0} B")),
        )?;
        if let Some((min, max)) = self.open_files_range() {
            row(
                out,
                "server open files",
                format!(
                    "{min} .. {max} over {} processes",
                    self.server_open_files.len()
                ),
            )?;
        }
        if let Some(p) = self.per_socket() {
            row(
                out,
                "kernel per socket",
                format!(
                    "{} sockets added: slab {:.0} B ({} socket caches), tcp buffers {:.0} B",
                    p.sockets_added,
                    p.slab,
                    p.socket_caches.map_or("-".into(), |v| format!("{v:.0} B")),
                    p.tcp_buffers
                ),
            )?;
        }
        if let (Some(a), Some(b)) = (&self.kernel_before, &self.kernel_connected) {
            row(
                out,
                "MemAvailable before/conn",
                format!(
                    "{} / {}",
                    human_bytes(a.mem_available as f64),
                    human_bytes(b.mem_available as f64)
                ),
            )?;
        }
        Ok(())
    }
}

/// idle `--storm`: the schedule and what the connect phase took.
#[derive(Clone, Copy, Debug)]
pub struct Storm {
    /// Connections per step, and the step.
    pub step: u64,
    pub every: std::time::Duration,
    /// From the first connect until every connection was subscribed or had failed.
    pub connect_secs: f64,
    /// The server's CPU time (user + system) over the connect phase.
    pub server_cpu_seconds: Option<f64>,
}

impl Report {
    fn is_churn(&self) -> bool {
        self.scenario == "churn"
    }

    /// churn: completed cycles per second of the window.
    pub fn cycles_per_sec(&self) -> f64 {
        per_sec(self.clients.cycles_completed, self.publish_window_secs)
    }

    /// churn: server CPU microseconds per completed cycle.
    pub fn server_cpu_us_per_cycle(&self) -> Option<f64> {
        let c = self.server.cpu_seconds?;
        (self.clients.cycles_completed > 0).then(|| c * 1e6 / self.clients.cycles_completed as f64)
    }

    /// idle `--storm`: connections subscribed per second of the connect phase.
    pub fn handshakes_per_sec(&self) -> Option<f64> {
        let st = self.storm?;
        Some(per_sec(self.clients.ready, st.connect_secs))
    }

    /// idle `--storm`: server CPU microseconds per subscribed connection (a figure that
    /// other load on the machine disturbs less than the rate).
    pub fn server_cpu_us_per_handshake(&self) -> Option<f64> {
        let c = self.storm?.server_cpu_seconds?;
        (self.clients.ready > 0).then(|| c * 1e6 / self.clients.ready as f64)
    }

    pub fn lost(&self) -> i64 {
        self.expected as i64 - self.clients.delivered as i64 - self.clients.dropped_reported as i64
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        per_sec(self.clients.delivered, self.delivery_window_secs)
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        if self.scenario == "idle" {
            self.server.rss_connected
        } else {
            self.server.rss_window_end.or(self.server.rss_connected)
        }
    }

    pub fn rss_per_connection(&self) -> Option<f64> {
        let (a, b) = (self.server.rss_connected?, self.server.rss_before?);
        if self.clients.ready == 0 || self.is_churn() {
            return None;
        }
        Some((a as f64 - b as f64) / self.clients.ready as f64)
    }

    pub fn deliveries_per_cpu_second(&self) -> Option<f64> {
        let c = self.server.cpu_seconds?;
        (c > 0.0).then(|| self.clients.delivered as f64 / c)
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let h = &self.clients.latency;
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    }

    /// The two table rows of the latency histogram, named `what` (latency or setup).
    fn quantile_rows(
        &self,
        out: &mut dyn std::io::Write,
        what: &str,
        c: &ClientStats,
    ) -> std::io::Result<()> {
        row(
            out,
            &format!("{what} us p50/p90/p99"),
            format!(
                "{} / {} / {}",
                opt(self.quantile(0.5)),
                opt(self.quantile(0.9)),
                opt(self.quantile(0.99))
            ),
        )?;
        row(
            out,
            &format!("{what} us p99.9/max"),
            format!(
                "{} / {}",
                opt(self.quantile(0.999)),
                opt((!c.latency.is_empty()).then(|| c.latency.max()))
            ),
        )
    }

    /// The report file: exactly the contract's keys (churn and overflow add one object
    /// of their own at the end).
    pub fn to_json(&self) -> Value {
        let h = &self.clients.latency;
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "connections": self.clients.ready,
            "published": self.published,
            "expected": self.expected,
            "delivered": self.clients.delivered,
            "lost": self.lost(),
            "dropped_reported": self.clients.dropped_reported,
            "deliveries_per_sec": round2(self.deliveries_per_sec()),
            "latency_us": {
                "p50": self.quantile(0.50),
                "p90": self.quantile(0.90),
                "p99": self.quantile(0.99),
                "p999": self.quantile(0.999),
                "max": (!h.is_empty()).then(|| h.max()),
            },
            "server": {
                "cpu_seconds": self.server.cpu_seconds.map(round3),
                "rss_bytes": self.rss_bytes(),
                "rss_bytes_per_connection": self.rss_per_connection().map(round2),
                "deliveries_per_cpu_second": self.deliveries_per_cpu_second().map(round2),
            },
        });
        if let Some((key, extra)) = self.extra_json() {
            v[key] = extra;
        }
        v
    }

    /// The scenario's own object: `churn` or `overflow`.
    fn extra_json(&self) -> Option<(&'static str, Value)> {
        let c = &self.clients;
        match self.scenario.as_str() {
            "churn" => Some((
                "churn",
                json!({
                    "cycles_scheduled": self.cycles_scheduled,
                    "cycles_started": c.requested,
                    "cycles_completed": c.cycles_completed,
                    "cycles_failed": c.failed,
                    "connects_per_sec": round2(self.cycles_per_sec()),
                    "server_cpu_us_per_cycle": self.server_cpu_us_per_cycle().map(round2),
                }),
            )),
            "overflow" => Some((
                "overflow",
                json!({
                    "slow_readers": c.slow_readers,
                    "dropped_on_fast_readers": c.dropped_fast,
                }),
            )),
            "scale" => self.scale.as_ref().map(|sc| ("scale", sc.to_json())),
            _ => self.storm.map(|st| {
                (
                    "storm",
                    json!({
                        "step": st.step,
                        "every_ms": round3(st.every.as_secs_f64() * 1000.0),
                        "connect_secs": round3(st.connect_secs),
                        "handshakes_per_sec": self.handshakes_per_sec().map(round2),
                        "server_cpu_us_per_handshake":
                            self.server_cpu_us_per_handshake().map(round2),
                        "setup_us": {
                            "p50": self.quantile(0.50),
                            "p90": self.quantile(0.90),
                            "p99": self.quantile(0.99),
                            "max": (!self.clients.latency.is_empty())
                                .then(|| self.clients.latency.max()),
                        },
                    }),
                )
            }),
        }
    }

    /// Healthy: every connection subscribed, no publish error, nothing lost (churn: every
    /// cycle started completed).
    pub fn healthy(&self) -> bool {
        if self.is_churn() {
            return self.clients.failed == 0
                && self.clients.cycles_completed == self.clients.requested;
        }
        self.clients.failed == 0
            && self.clients.ready == self.requested
            && self.publish_errors.is_empty()
            && self.lost() == 0
    }

    pub fn print_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let c = &self.clients;
        writeln!(out)?;
        writeln!(out, "loadtest {} against {}", self.scenario, self.target)?;
        if self.is_churn() {
            return self.print_churn(out);
        }
        row(
            out,
            "connections",
            format!(
                "{} subscribed of {} ({} failed, {} disconnected later, {} process{})",
                c.ready,
                self.requested,
                c.failed,
                c.disconnected,
                self.processes,
                if self.processes == 1 { "" } else { "es" }
            ),
        )?;
        let perr: u64 = self.publish_errors.values().sum();
        row(
            out,
            "published",
            format!(
                "{} in {:.1}s ({:.1}/s, {} errors)",
                self.published,
                self.publish_window_secs,
                per_sec(self.published, self.publish_window_secs),
                perr
            ),
        )?;
        row(out, "expected deliveries", self.expected.to_string())?;
        row(out, "delivered", c.delivered.to_string())?;
        row(out, "dropped (reported)", c.dropped_reported.to_string())?;
        row(out, "lost", self.lost().to_string())?;
        if self.scenario == "overflow" {
            row(
                out,
                "slow readers",
                format!(
                    "{} ({} dropped reported to the others)",
                    c.slow_readers, c.dropped_fast
                ),
            )?;
        }
        row(
            out,
            "deliveries/s",
            format!(
                "{} (over {:.2}s)",
                human_count(self.deliveries_per_sec()),
                self.delivery_window_secs
            ),
        )?;
        if let Some(st) = self.storm {
            row(
                out,
                "storm",
                format!(
                    "{} every {:.1} ms: {} subscribed in {:.2} s ({}/s)",
                    st.step,
                    st.every.as_secs_f64() * 1000.0,
                    c.ready,
                    st.connect_secs,
                    human_count(self.handshakes_per_sec().unwrap_or(0.0))
                ),
            )?;
            row(
                out,
                "server cpu per handshake",
                self.server_cpu_us_per_handshake()
                    .map_or("-".into(), |v| format!("{v:.1} us")),
            )?;
        }
        let what = if self.storm.is_some() {
            "setup"
        } else {
            "latency"
        };
        self.quantile_rows(out, what, c)?;
        if let Some(sc) = &self.scale {
            sc.print_table(out)?;
        }
        let s = &self.server;
        row(
            out,
            "server cpu (window)",
            s.cpu_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
        )?;
        let b = |v: Option<u64>| v.map_or("-".to_string(), |v| human_bytes(v as f64));
        row(
            out,
            "server rss before/conn/end",
            format!(
                "{} / {} / {}",
                b(s.rss_before),
                b(s.rss_connected),
                b(s.rss_window_end)
            ),
        )?;
        row(
            out,
            "server rss per connection",
            self.rss_per_connection()
                .map_or("-".into(), |v| format!("{v:.0} B")),
        )?;
        row(
            out,
            "deliveries per server cpu-s",
            self.deliveries_per_cpu_second()
                .map_or("-".into(), human_count),
        )?;
        self.print_footer(out)
    }

    fn print_churn(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let c = &self.clients;
        row(
            out,
            "cycles",
            format!(
                "{} completed of {} started ({} scheduled over {:.1}s, {} failed, {} process{})",
                c.cycles_completed,
                c.requested,
                self.cycles_scheduled,
                self.publish_window_secs,
                c.failed,
                self.processes,
                if self.processes == 1 { "" } else { "es" }
            ),
        )?;
        row(
            out,
            "connects/s achieved",
            format!(
                "{:.1} (asked {:.1})",
                self.cycles_per_sec(),
                per_sec(self.cycles_scheduled, self.publish_window_secs)
            ),
        )?;
        self.quantile_rows(out, "setup", c)?;
        let s = &self.server;
        row(
            out,
            "server cpu (window)",
            s.cpu_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
        )?;
        row(
            out,
            "server cpu per cycle",
            self.server_cpu_us_per_cycle()
                .map_or("-".into(), |v| format!("{v:.1} us")),
        )?;
        let b = |v: Option<u64>| v.map_or("-".to_string(), |v| human_bytes(v as f64));
        row(
            out,
            "server rss before/end",
            format!("{} / {}", b(s.rss_before), b(s.rss_window_end)),
        )?;
        self.print_footer(out)
    }

    fn print_footer(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let c = &self.clients;
        row(
            out,
            "loadtest cpu",
            format!("{:.2} s", self.loadtest_cpu_seconds),
        )?;
        row(
            out,
            "pongs sent / server errors",
            format!("{} / {}", c.pongs_sent, c.server_errors),
        )?;
        if !c.close_codes.is_empty() {
            let v: Vec<String> = c
                .close_codes
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            row(out, "server close codes", v.join(", "))?;
        }
        for (reason, n) in &c.failures {
            row(out, "connect failure", format!("{n} x {reason}"))?;
        }
        for (reason, n) in &self.publish_errors {
            row(out, "publish error", format!("{n} x {reason}"))?;
        }
        Ok(())
    }

    /// The report file's text, keys in the contract's order.
    pub fn to_json_string(&self) -> String {
        let v = self.to_json();
        let obj = |v: &Value, keys: &[&str], indent: &str| -> String {
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{indent}  \"{k}\": {}", v[*k]))
                .collect();
            format!("{{\n{}\n{indent}}}", inner.join(",\n"))
        };
        let mut parts: Vec<String> = [
            "scenario",
            "target",
            "connections",
            "published",
            "expected",
            "delivered",
            "lost",
            "dropped_reported",
            "deliveries_per_sec",
        ]
        .iter()
        .map(|k| format!("  \"{k}\": {}", v[*k]))
        .collect();
        parts.push(format!(
            "  \"latency_us\": {}",
            obj(
                &v["latency_us"],
                &["p50", "p90", "p99", "p999", "max"],
                "  "
            )
        ));
        parts.push(format!(
            "  \"server\": {}",
            obj(
                &v["server"],
                &[
                    "cpu_seconds",
                    "rss_bytes",
                    "rss_bytes_per_connection",
                    "deliveries_per_cpu_second"
                ],
                "  "
            )
        ));
        if let Some((key, _)) = self.extra_json() {
            let keys: Vec<&str> = v[key]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            // serde_json's map is sorted; keep the order extra_json() wrote instead
            let order = match key {
                "churn" => &[
                    "cycles_scheduled",
                    "cycles_started",
                    "cycles_completed",
                    "cycles_failed",
                    "connects_per_sec",
                    "server_cpu_us_per_cycle",
                ][..],
                "storm" => &[
                    "step",
                    "every_ms",
                    "connect_secs",
                    "handshakes_per_sec",
                    "server_cpu_us_per_handshake",
                    "setup_us",
                ][..],
                "scale" => &[
                    "connect_secs",
                    "connect_stopped",
                    "failed",
                    "disconnected",
                    "reach_all_us",
                    "client_rss_bytes_per_connection",
                    "server_open_files",
                    "kernel",
                    "workers",
                ][..],
                _ => &["slow_readers", "dropped_on_fast_readers"][..],
            };
            debug_assert_eq!(keys.len(), order.len());
            parts.push(format!("  \"{key}\": {}", obj(&v[key], order, "  ")));
        }
        format!("{{\n{}\n}}\n", parts.join(",\n"))
    }

    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = self.to_json_string();
        if path.as_os_str() == "-" {
            std::io::stdout().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `count` per second of a window; 0 for an empty window.
fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// A value or `-` in the human table.
fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

/// One row of the human table.
fn row(out: &mut dyn std::io::Write, k: &str, v: String) -> std::io::Result<()> {
    writeln!(out, "  {k:<28} {v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_stats() -> ClientStats {
        let mut s = ClientStats::new(2);
        s.requested = 10;
        s.ready = 9;
        s.failed = 1;
        s.delivered = 100;
        s.dropped_reported = 3;
        s.subs_per_path = vec![5, 4];
        s.failures.insert("timeout".into(), 1);
        s.close_codes.insert(4003, 2);
        for v in [10, 20, 30, 4000] {
            s.latency.record(v).unwrap();
        }
        s
    }

    #[test]
    fn json_roundtrip_and_merge() {
        let s = sample_stats();
        let back = ClientStats::from_json(&s.to_json()).unwrap();
        assert_eq!(back.ready, 9);
        assert_eq!(back.subs_per_path, vec![5, 4]);
        assert_eq!(back.failures["timeout"], 1);
        assert_eq!(back.close_codes[&4003], 2);
        assert_eq!(back.latency.len(), 4);
        assert_eq!(
            back.latency.value_at_quantile(0.5),
            s.latency.value_at_quantile(0.5)
        );
        assert!(back.latency.equivalent(back.latency.max(), s.latency.max()));
        let mut m = back.clone();
        m.merge(&s);
        assert_eq!(m.ready, 18);
        assert_eq!(m.subs_per_path, vec![10, 8]);
        assert_eq!(m.latency.len(), 8);
        assert_eq!(m.failures["timeout"], 2);
    }

    #[test]
    fn scale_reports_each_process_the_kernel_and_the_nodes() {
        let kernel = |inuse, slab| KernelSample {
            tcp_inuse: inuse,
            tcp_mem_pages: 10,
            mem_available: 8 << 30,
            slab,
            slab_unreclaimable: 0,
            caches: vec![("TCP".into(), slab / 2)],
        };
        let sc = Scale {
            processes: vec![
                ClientProcess {
                    pid: 10,
                    ready: 100,
                    delivered: 100,
                    rss_bytes: Some(200_000),
                    reach_us: Some(5_000),
                },
                ClientProcess {
                    pid: 11,
                    ready: 100,
                    delivered: 100,
                    rss_bytes: Some(100_000),
                    reach_us: Some(7_000),
                },
            ],
            kernel_before: Some(kernel(10, 1_000_000)),
            kernel_connected: Some(kernel(410, 3_000_000)),
            server_open_files: vec![(1, 120), (2, 90)],
            connect_stopped: None,
            connect_secs: 2.0,
            failed: 0,
            disconnected: 0,
        };
        assert_eq!(sc.reach_all_us(), Some(7_000));
        assert_eq!(sc.client_rss_per_connection(), Some(1500.0));
        let v = sc.to_json();
        assert_eq!(v["reach_all_us"], 7_000);
        assert_eq!(v["server_open_files"]["min"], 90);
        assert_eq!(v["server_open_files"]["max"], 120);
        assert_eq!(v["kernel"]["per_socket"]["sockets_added"], 400);
        assert_eq!(v["kernel"]["per_socket"]["slab_bytes_per_socket"], 5000.0);
        assert_eq!(
            v["kernel"]["per_socket"]["socket_caches_bytes_per_socket"],
            2500.0
        );
        assert_eq!(v["workers"][1]["reach_us"], 7_000);
        let mut r = Report {
            scenario: "scale".into(),
            target: "shardcast".into(),
            requested: 200,
            clients: sample_stats(),
            published: 1,
            publish_errors: BTreeMap::new(),
            expected: 200,
            delivery_window_secs: 2.0,
            publish_window_secs: 2.0,
            server: ServerStats::default(),
            processes: 2,
            loadtest_cpu_seconds: 0.1,
            cycles_scheduled: 0,
            storm: None,
            scale: Some(sc),
        };
        let text = r.to_json_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["scale"]["workers"][0]["pid"], 10);
        assert!(text.find("\"connect_secs\"").unwrap() < text.find("\"workers\"").unwrap());
        let mut table = Vec::new();
        r.print_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("reached all after            7.0 ms"),
            "{table}"
        );
        // nothing connected: no figures, and no panic
        r.scale = Some(Scale::default());
        assert!(r.to_json()["scale"]["reach_all_us"].is_null());
        let mut table = Vec::new();
        r.print_table(&mut table).unwrap();
    }

    #[test]
    fn report_json_has_exactly_the_contract_keys() {
        let r = Report {
            scenario: "fanout".into(),
            target: "shardcast".into(),
            requested: 10,
            clients: sample_stats(),
            published: 12,
            publish_errors: BTreeMap::new(),
            expected: 108,
            delivery_window_secs: 2.0,
            publish_window_secs: 2.0,
            server: ServerStats {
                rss_before: Some(1000),
                rss_connected: Some(10_000),
                rss_window_start: Some(10_000),
                rss_window_end: Some(12_000),
                cpu_seconds: Some(0.5),
            },
            processes: 1,
            loadtest_cpu_seconds: 0.1,
            cycles_scheduled: 0,
            storm: None,
            scale: None,
        };
        let v = r.to_json();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = vec![
            "scenario",
            "target",
            "connections",
            "published",
            "expected",
            "delivered",
            "lost",
            "dropped_reported",
            "deliveries_per_sec",
            "latency_us",
            "server",
        ];
        want.sort();
        assert_eq!(keys, want);
        let mut lk: Vec<&str> = v["latency_us"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        lk.sort();
        assert_eq!(lk, vec!["max", "p50", "p90", "p99", "p999"]);
        let mut sk: Vec<&str> = v["server"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        sk.sort();
        assert_eq!(
            sk,
            vec![
                "cpu_seconds",
                "deliveries_per_cpu_second",
                "rss_bytes",
                "rss_bytes_per_connection"
            ]
        );
        assert_eq!(v["connections"], 9);
        assert_eq!(v["lost"], 5);
        assert_eq!(v["deliveries_per_sec"], 50.0);
        assert_eq!(v["server"]["rss_bytes"], 12_000);
        assert_eq!(v["server"]["rss_bytes_per_connection"], 1000.0);
        assert_eq!(v["server"]["deliveries_per_cpu_second"], 200.0);
        assert!(!r.healthy());
        let text = r.to_json_string();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, v);
        assert!(text.find("\"scenario\"").unwrap() < text.find("\"target\"").unwrap());
        assert!(text.find("\"latency_us\"").unwrap() < text.find("\"server\"").unwrap());
        let mut buf = Vec::new();
        r.print_table(&mut buf).unwrap();
        let t = String::from_utf8(buf).unwrap();
        assert!(t.contains("lost"), "{t}");
    }
}
