//! services: service groups (PROTOCOL.md §10). The pure pieces of scenario services:
//! the publish request (a batch of `--batch` events to `load/job`), the service token's
//! claims, the messages an instance sends (`subscribeEvents` on `load`, `taskComplete`,
//! `lock`, `unlock`), a cheap task scanner (with a full parse as its fallback), the answers
//! of `POST /api/v1/publish` and `GET /api/v1/services`, the fairness of the task counts
//! per instance, and the lock book that checks fencing tokens and grants. The event loops,
//! the run and the report are [`crate::services`].

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Scenario;
use crate::net::Endpoint;
use crate::scan::parse_u64;

/// What every instance subscribes to: one durable subscription of the group.
pub const SUBSCRIPTION_ID: &str = "work";
pub const SUBSCRIPTION_PATH: &str = "load";
/// Where every published event goes (under the subscription), and its type.
pub const PUBLISH_PATH: &str = "load/job";
pub const EVENT_TYPE: &str = "job";
/// Largest `taskComplete` message sent (the server's default message limit is 64 KiB):
/// a read burst's ids are split over several messages beyond this.
pub const MAX_ACK_BYTES: usize = 60_000;

pub struct Services;

impl Scenario for Services {
    fn name(&self) -> &'static str {
        "services"
    }
    /// Not through the shared publisher: the scenario has its own pipelined publishers.
    fn publishes(&self) -> bool {
        false
    }
    fn publish_path(&self, _i: usize) -> String {
        PUBLISH_PATH.to_string()
    }
    fn subscription(&self, _conn: u64) -> (usize, String) {
        (0, SUBSCRIPTION_PATH.to_string())
    }
}

/// The publishers' requests: `batch` events each, each `data` about `payload` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishBatches {
    pub batch: usize,
    pub payload: usize,
}

/// The claims of service instance `sub` of `group`.
pub fn service_claims(sub: &str, group: &str, exp: u64) -> Value {
    json!({"sub": sub, "exp": exp, "role": "service", "group": group})
}

/// Appends event `i`'s `data` object `{"t":T,"i":I,"pad":"xx…"}`, padded with `x` to
/// `payload` bytes (never shorter than without padding). `t` (the request's send time,
/// Unix µs) comes first: the task scanner looks for `"data":{"t":`.
pub fn push_data(out: &mut Vec<u8>, t_us: u64, i: u64, payload: usize) {
    let start = out.len();
    let _ = write!(out, r#"{{"t":{t_us},"i":{i},"pad":""#);
    let pad = payload.saturating_sub(out.len() - start + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Appends publish request `n` (HTTP/1.1, keep-alive): `POST {http}/api/v1/publish` with
/// `{"events":[...]}`, events `n*batch .. (n+1)*batch` of the run, all stamped `t_us`.
pub fn push_publish_request(
    out: &mut Vec<u8>,
    http: &Endpoint,
    api_key: &str,
    n: u64,
    b: PublishBatches,
    t_us: u64,
) {
    let mut body = Vec::with_capacity(b.batch * (b.payload + 64) + 16);
    body.extend_from_slice(b"{\"events\":[");
    let first = n.saturating_mul(b.batch as u64);
    for k in 0..b.batch as u64 {
        if k > 0 {
            body.push(b',');
        }
        let _ = write!(
            body,
            r#"{{"path":"{PUBLISH_PATH}","eventType":"{EVENT_TYPE}","data":"#
        );
        push_data(&mut body, t_us, first + k, b.payload);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    let _ = write!(
        out,
        "POST {}/api/v1/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        http.path,
        http.host_header,
        body.len()
    );
    out.extend_from_slice(&body);
}

/// The request of `GET {http}/api/v1/services`.
pub fn services_request(http: &Endpoint, api_key: &str) -> Vec<u8> {
    format!(
        "GET {}/api/v1/services HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {api_key}\r\n\r\n",
        http.path, http.host_header
    )
    .into_bytes()
}

/// The instances' subscription (one per connection; the group's, durable).
pub fn subscribe_message() -> String {
    json!({
        "type": "subscribeEvents",
        "requestId": "s1",
        "subscriptions": [{"id": SUBSCRIPTION_ID, "path": SUBSCRIPTION_PATH}],
    })
    .to_string()
}

pub fn lock_message(request_id: u64, name: &str, ttl_ms: u64, wait_ms: u64) -> String {
    json!({
        "type": "lock",
        "requestId": request_id.to_string(),
        "name": name,
        "ttlMs": ttl_ms,
        "waitMs": wait_ms,
    })
    .to_string()
}

pub fn unlock_message(request_id: u64, name: &str) -> String {
    json!({"type": "unlock", "requestId": request_id.to_string(), "name": name}).to_string()
}

/// `taskComplete` messages being put together: ids are appended JSON-encoded; a message
/// is cut when it would pass [`MAX_ACK_BYTES`].
#[derive(Debug, Default)]
pub struct AckBuilder {
    /// The ids so far, `"a","b"` (without brackets).
    ids: Vec<u8>,
    pub count: usize,
    /// Whole messages ready to be sent, with the number of ids each holds.
    pub ready: Vec<(Vec<u8>, usize)>,
}

const ACK_HEAD: &[u8] = br#"{"type":"taskComplete","taskIds":["#;
const ACK_TAIL: &[u8] = b"]}";

impl AckBuilder {
    pub fn push(&mut self, task_id: &str) {
        let encoded = if task_id.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            Value::from(task_id).to_string()
        } else {
            format!("\"{task_id}\"")
        };
        if self.count > 0
            && ACK_HEAD.len() + self.ids.len() + 1 + encoded.len() + ACK_TAIL.len() > MAX_ACK_BYTES
        {
            self.cut();
        }
        if self.count > 0 {
            self.ids.push(b',');
        }
        self.ids.extend_from_slice(encoded.as_bytes());
        self.count += 1;
    }

    /// Ends the message being put together (if it holds ids).
    pub fn cut(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut m = Vec::with_capacity(ACK_HEAD.len() + self.ids.len() + ACK_TAIL.len());
        m.extend_from_slice(ACK_HEAD);
        m.extend_from_slice(&self.ids);
        m.extend_from_slice(ACK_TAIL);
        self.ready.push((m, self.count));
        self.ids.clear();
        self.count = 0;
    }

    /// Every message, the one being put together included.
    pub fn take(&mut self) -> Vec<(Vec<u8>, usize)> {
        self.cut();
        std::mem::take(&mut self.ready)
    }
}

/// One task delivered to an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Task<'a> {
    pub task_id: std::borrow::Cow<'a, str>,
    pub seq: Option<u64>,
    pub attempt: u64,
    /// `data.t`: the publisher's send time (Unix µs); `None` for data not the harness's.
    pub t: Option<u64>,
}

impl Task<'_> {
    /// The key duplicates are counted by: the event's `seq`, else the number after the
    /// last `:` of the task id.
    pub fn key(&self) -> Option<u64> {
        self.seq.or_else(|| parse_task_seq(&self.task_id))
    }
}

/// The number in a task id `<group>:<N>` (task ids are opaque to clients; this is only
/// the harness's fallback key).
pub fn parse_task_seq(task_id: &str) -> Option<u64> {
    let (_, n) = task_id.rsplit_once(':')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The fast path over a text message: `Some((tasks, pings))` for an event with a
/// `taskId` or a batch of such events and pings; `None` for anything else (then
/// [`parse_messages`] decides). It walks the JSON structure without building values
/// (nested values are skipped whole, strings honour escapes), so the envelope's keys
/// are found whatever their order and whatever `data` holds; `t` is `data`'s own.
pub fn scan_tasks(msg: &[u8]) -> Option<(Vec<Task<'_>>, u32)> {
    let mut ty = None;
    let mut messages = None;
    for_each_member(msg, |k, v| match k {
        b"type" => ty = Some(v),
        b"messages" => messages = Some(v),
        _ => {}
    })?;
    match ty? {
        br#""event""# => Some((vec![event_task(msg)?], 0)),
        br#""batch""# => {
            let mut tasks = Vec::new();
            let mut pings = 0;
            let mut other = false;
            for_each_element(messages?, |m| {
                if other {
                    return;
                }
                let mut ty = None;
                if for_each_member(m, |k, v| {
                    if k == b"type" {
                        ty = Some(v)
                    }
                })
                .is_none()
                {
                    other = true;
                    return;
                }
                match ty {
                    Some(br#""event""#) => match event_task(m) {
                        Some(t) => tasks.push(t),
                        None => other = true,
                    },
                    Some(br#""ping""#) => pings += 1,
                    _ => other = true,
                }
            })?;
            (!other).then_some((tasks, pings))
        }
        _ => None,
    }
}

/// The task of an event object (`None` without a string `taskId`).
fn event_task(ev: &[u8]) -> Option<Task<'_>> {
    let (mut id, mut seq, mut attempt, mut data) = (None, None, None, None);
    for_each_member(ev, |k, v| match k {
        b"taskId" => id = Some(v),
        b"seq" => seq = Some(v),
        b"attempt" => attempt = Some(v),
        b"data" => data = Some(v),
        _ => {}
    })?;
    let id = id?;
    if id.len() < 2 || id[0] != b'"' {
        return None;
    }
    let inner = &id[1..id.len() - 1];
    let task_id: std::borrow::Cow<'_, str> = if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(id).ok()?.into()
    } else {
        std::str::from_utf8(inner).ok()?.into()
    };
    let mut t = None;
    if let Some(d) = data.filter(|d| d.first() == Some(&b'{')) {
        for_each_member(d, |k, v| {
            if k == b"t" {
                t = parse_u64(v).filter(|_| v.iter().all(u8::is_ascii_digit));
            }
        })?;
    }
    Some(Task {
        task_id,
        seq: seq.and_then(parse_u64),
        attempt: attempt.and_then(parse_u64).unwrap_or(1),
        t,
    })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `b[i] == '"'`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', &b[i..])?;
        if b[i] == b'\\' {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// The end (exclusive) of the value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let n = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// Calls `f(key, value)` for every member of the object `obj` (the key without its
/// quotes, escapes kept; the value's bytes as written). `None`: not an object.
fn for_each_member<'a>(obj: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Option<()> {
    let mut i = skip_ws(obj, 0);
    if obj.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(obj, i + 1);
    if obj.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        if obj.get(i) != Some(&b'"') {
            return None;
        }
        let k_end = skip_string(obj, i)?;
        let key = &obj[i + 1..k_end - 1];
        i = skip_ws(obj, k_end);
        if obj.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(obj, i + 1);
        let v_end = skip_value(obj, i)?;
        f(key, &obj[i..v_end]);
        i = skip_ws(obj, v_end);
        match obj.get(i)? {
            b',' => i = skip_ws(obj, i + 1),
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

/// Calls `f(value)` for every element of the array `arr`. `None`: not an array.
fn for_each_element<'a>(arr: &'a [u8], mut f: impl FnMut(&'a [u8])) -> Option<()> {
    let mut i = skip_ws(arr, 0);
    if arr.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(arr, i + 1);
    if arr.get(i) == Some(&b']') {
        return Some(());
    }
    loop {
        let end = skip_value(arr, i)?;
        f(&arr[i..end]);
        i = skip_ws(arr, end);
        match arr.get(i)? {
            b',' => i = skip_ws(arr, i + 1),
            b']' => return Some(()),
            _ => return None,
        }
    }
}

/// The messages of a text message, parsed in full: the message, or a batch's `messages`.
pub fn parse_messages(msg: &[u8]) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_slice(msg).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("type").and_then(Value::as_str) == Some("batch") {
        match v.get("messages") {
            Some(Value::Array(a)) => Ok(a.clone()),
            _ => Err("a batch without messages".into()),
        }
    } else {
        Ok(vec![v])
    }
}

/// The task of a parsed message, when it is an event with a `taskId`.
pub fn task_of(v: &Value) -> Option<Task<'_>> {
    if v.get("type").and_then(Value::as_str) != Some("event") {
        return None;
    }
    let task_id = v.get("taskId")?.as_str()?;
    Some(Task {
        task_id: task_id.into(),
        seq: v.get("seq").and_then(Value::as_u64),
        attempt: v.get("attempt").and_then(Value::as_u64).unwrap_or(1),
        t: v.get("data")
            .and_then(|d| d.get("t"))
            .and_then(Value::as_u64),
    })
}

/// A `202` publish answer: `{"accepted":N,"firstSeq":A,"lastSeq":B}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    pub accepted: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// The publish answer, when it acknowledges: `202` with a numeric `accepted`.
pub fn parse_publish_answer(status: u16, body: &[u8]) -> Option<PublishAck> {
    if status != 202 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(PublishAck {
        accepted: v.get("accepted")?.as_u64()?,
        first_seq: v.get("firstSeq").and_then(Value::as_u64),
        last_seq: v.get("lastSeq").and_then(Value::as_u64),
    })
}

/// One group of `GET /api/v1/services`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub instances: u64,
}

impl GroupStats {
    /// Tasks the group holds that are not completed (nor dead).
    pub fn queued(&self) -> u64 {
        self.pending + self.in_flight
    }

    pub fn to_json(&self) -> Value {
        json!({
            "pending": self.pending,
            "inFlight": self.in_flight,
            "dead": self.dead,
            "instances": self.instances,
        })
    }
}

/// `group`'s entry of a `GET /api/v1/services` body: `Ok(None)` when it is not listed
/// (a group without a subscription yet: nothing queued).
pub fn parse_group_stats(body: &[u8], group: &str) -> Result<Option<GroupStats>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let groups = v
        .get("groups")
        .and_then(Value::as_array)
        .ok_or("no \"groups\" array")?;
    let Some(g) = groups
        .iter()
        .find(|g| g.get("group").and_then(Value::as_str) == Some(group))
    else {
        return Ok(None);
    };
    let n = |k: &str| -> Result<u64, String> {
        g.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("group {group:?}: no number {k:?}"))
    };
    Ok(Some(GroupStats {
        pending: n("pending")?,
        in_flight: n("inFlight")?,
        dead: n("dead")?,
        instances: n("instances").unwrap_or(0),
    }))
}

/// How evenly the tasks went over the instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Fairness {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    /// max / mean (1: perfectly even); `None` when nothing was received.
    pub max_over_mean: Option<f64>,
    /// Jain's index (Σx)² / (n·Σx²): 1 when even, 1/n when one instance got everything.
    pub jain: Option<f64>,
}

pub fn fairness(counts: &[u64]) -> Option<Fairness> {
    if counts.is_empty() {
        return None;
    }
    let n = counts.len() as f64;
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let sq: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    let mean = sum / n;
    let max = counts.iter().copied().max().unwrap_or(0);
    Some(Fairness {
        min: counts.iter().copied().min().unwrap_or(0),
        max,
        mean,
        max_over_mean: (sum > 0.0).then(|| max as f64 / mean),
        jain: (sq > 0.0).then(|| sum * sum / (n * sq)),
    })
}

/// Seq ranges of accepted publications, for telling the run's tasks from others.
#[derive(Debug, Clone, Default)]
pub struct SeqRanges {
    ranges: Vec<(u64, u64)>,
    sorted: bool,
}

impl SeqRanges {
    pub fn add(&mut self, first: u64, last: u64) {
        self.ranges.push((first.min(last), first.max(last)));
        self.sorted = false;
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Seqs covered (ranges of distinct requests do not overlap).
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.ranges.sort_unstable();
            self.sorted = true;
        }
    }

    pub fn contains(&mut self, seq: u64) -> bool {
        self.sort();
        let i = self.ranges.partition_point(|&(a, _)| a <= seq);
        i > 0 && seq <= self.ranges[i - 1].1
    }
}

/// Client-side checks of lock grants over all connections of the run: per name, fencing
/// tokens must grow with every grant, and a grant must not be observed while another
/// holder still holds the name. A holder stops holding when its `unlock` is queued (the
/// server cannot release before it reads it) or its connection ends; its lease is
/// counted from when its `lock` request was queued plus `ttlMs` (the server's lease
/// starts no earlier), so a grant after that may legitimately follow an expiry. Both
/// rules only ever undercount: what they count is a real violation.
#[derive(Debug, Clone, Default)]
pub struct LockBook {
    names: Vec<NameBook>,
    pub grants: u64,
    /// A grant whose fencing token was not above the name's previous one.
    pub token_regressions: u64,
    /// A grant observed while another connection held the name.
    pub overlaps: u64,
    /// Grants observed after the previous holder's lease had run out without an unlock.
    pub after_expiry: u64,
    /// The first few violations, described.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct NameBook {
    last_token: Option<u64>,
    holder: Option<(usize, Instant)>,
}

impl LockBook {
    pub fn new(names: usize) -> LockBook {
        LockBook {
            names: vec![NameBook::default(); names],
            ..LockBook::default()
        }
    }

    pub fn violations(&self) -> u64 {
        self.token_regressions + self.overlaps
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < 5 {
            self.samples.push(s);
        }
    }

    /// Connection `conn` was granted name `name` (index) with `token`; its request was
    /// queued at `requested`; the grant is seen at `now`.
    pub fn granted(
        &mut self,
        name: usize,
        conn: usize,
        token: u64,
        requested: Instant,
        ttl: Duration,
        now: Instant,
    ) {
        self.grants += 1;
        let b = &mut self.names[name];
        let last = b.last_token;
        let prev = b.holder;
        b.last_token = Some(last.map_or(token, |l| l.max(token)));
        b.holder = Some((conn, requested + ttl));
        if let Some(l) = last {
            if token <= l {
                self.token_regressions += 1;
                self.sample(format!(
                    "name #{name}: fencing token {token} granted to connection {conn} after {l}"
                ));
            }
        }
        if let Some((h, lease_until)) = prev.filter(|(h, _)| *h != conn) {
            if now < lease_until {
                self.overlaps += 1;
                self.sample(format!(
                    "name #{name}: granted to connection {conn} while connection {h} held it"
                ));
            } else {
                self.after_expiry += 1;
            }
        }
    }

    /// `conn` stops holding `name` (its unlock is queued, or it disconnected).
    pub fn released(&mut self, name: usize, conn: usize) {
        let b = &mut self.names[name];
        if matches!(b.holder, Some((h, _)) if h == conn) {
            b.holder = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_seq_parsing() {
        assert_eq!(parse_task_seq("billing:1303"), Some(1303));
        assert_eq!(parse_task_seq("a:b:7"), Some(7));
        assert_eq!(parse_task_seq("loadtest:"), None);
        assert_eq!(parse_task_seq("loadtest:12x"), None);
        assert_eq!(parse_task_seq("1303"), None);
        assert_eq!(parse_task_seq("g:-1"), None);
        assert_eq!(parse_task_seq("g:99999999999999999999999"), None);
    }

    /// As the server writes them: taskId and attempt before the event's tail.
    const EV1: &str = r#"{"type":"event","subscriptionIds":["work"],"taskId":"loadtest:17","attempt":1,"eventType":"job","path":"load/job","data":{"t":1774512862123456,"i":0,"pad":"xx"},"timestamp":"2026-03-26T08:14:22.123Z","seq":17}"#;
    const EV2: &str = r#"{"type":"event","subscriptionIds":["work"],"eventType":"job","path":"load/job","data":{"t":5,"i":1,"pad":""},"timestamp":"2026-03-26T08:14:22.123Z","seq":18,"taskId":"loadtest:18","attempt":3}"#;

    /// The tasks of `msg` by the fast path and by the full parse.
    fn both(msg: &str) -> (Option<Vec<Task<'_>>>, Vec<Task<'static>>) {
        let fast = scan_tasks(msg.as_bytes()).map(|(t, _)| t);
        let full = parse_messages(msg.as_bytes())
            .unwrap()
            .iter()
            .filter_map(|v| {
                task_of(v).map(|t| Task {
                    task_id: t.task_id.into_owned().into(),
                    ..t
                })
            })
            .collect();
        (fast, full)
    }

    #[test]
    fn tasks_fast_and_full_agree() {
        let (fast, full) = both(EV1);
        let want = vec![Task {
            task_id: "loadtest:17".into(),
            seq: Some(17),
            attempt: 1,
            t: Some(1774512862123456),
        }];
        assert_eq!(fast.unwrap(), want);
        assert_eq!(full, want);
        let batch = format!(r#"{{"type":"batch","messages":[{EV1},{{"type":"ping"}},{EV2}]}}"#);
        let (tasks, pings) = scan_tasks(batch.as_bytes()).unwrap();
        assert_eq!(pings, 1);
        let (_, full) = both(&batch);
        assert_eq!(tasks, full);
        assert_eq!(tasks[1].attempt, 3);
        assert_eq!(tasks[1].key(), Some(18));
        // any key order, spaces, escapes, nested look-alikes in data: same as the full parse
        for msg in [
            r#"{"taskId":"g:1","type":"event","seq":1}"#,
            r#" { "type" : "event" , "taskId" : "g:1" , "seq" : 1 , "data" : { "x" : [1, {"t": 2}], "t" : 9 } } "#,
            r#"{"type":"event","taskId":"g\"1\\","seq":1,"data":{"s":"}{\"taskId\":\"no\"","t":3}}"#,
            r#"{"type":"event","data":{"taskId":"no","seq":5,"attempt":9,"t":"x"},"seq":6,"taskId":"g:6","attempt":2}"#,
            r#"{"type":"event","data":{"t":-1},"seq":6,"taskId":"g:6"}"#,
            r#"{"type":"event","data":[1],"taskId":"g:6"}"#,
            r#"{"type":"batch","messages":[]}"#,
        ] {
            let (fast, full) = both(msg);
            assert_eq!(fast.as_ref(), Some(&full), "{msg}");
        }
        let (fast, _) = both(
            r#"{"type":"event","data":{"taskId":"no","seq":5,"t":"x"},"seq":6,"taskId":"g:6","attempt":2}"#,
        );
        let t = &fast.unwrap()[0];
        assert_eq!(
            (t.task_id.as_ref(), t.seq, t.t, t.attempt),
            ("g:6", Some(6), None, 2)
        );
        let (fast, _) = both(r#"{"type":"event","taskId":"g\"1\\","seq":1}"#);
        assert_eq!(fast.unwrap()[0].task_id, "g\"1\\");
    }

    #[test]
    fn tasks_other_shapes_fall_back() {
        // not tasks (or not only tasks): the full parse decides
        for msg in [
            r#"{"type":"batch","messages":[{"type":"warning","code":"X"}]}"#,
            r#"{"type":"batch","messages":[{"type":"event","seq":3}]}"#,
            r#"{"type":"event","seq":3}"#,
            r#"{"type":"event","taskId":7}"#,
            r#"{"type":"authenticated","connectionId":"c"}"#,
            r#"{"type":"event","taskId":"g:1""#,
            r#"{"type":"event","taskId":"g:1",}"#,
            r#"{"type":"batch","messages":[{"type":"ping"},]}"#,
            "",
            "[]",
            "{\"type\":\"event\",\"taskId\":\"unterminated}",
        ] {
            assert!(scan_tasks(msg.as_bytes()).is_none(), "{msg}");
        }
        assert!(task_of(&serde_json::json!({"type":"event","seq":1})).is_none());
    }

    #[test]
    fn ack_messages_are_cut_under_the_limit() {
        let mut a = AckBuilder::default();
        assert!(a.take().is_empty());
        a.push("g:1");
        a.push("g:\"2");
        let m = a.take();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].1, 2);
        let v: Value = serde_json::from_slice(&m[0].0).unwrap();
        assert_eq!(v["type"], "taskComplete");
        assert_eq!(v["taskIds"], json!(["g:1", "g:\"2"]));
        for i in 0..10_000 {
            a.push(&format!("loadtest:{i}"));
        }
        let msgs = a.take();
        assert!(msgs.len() > 1);
        let mut n = 0;
        for (m, count) in &msgs {
            assert!(m.len() <= MAX_ACK_BYTES);
            let v: Value = serde_json::from_slice(m).unwrap();
            assert_eq!(v["taskIds"].as_array().unwrap().len(), *count);
            n += count;
        }
        assert_eq!(n, 10_000);
    }

    #[test]
    fn fairness_of_counts() {
        assert_eq!(fairness(&[]), None);
        let f = fairness(&[100, 100, 100, 100]).unwrap();
        assert_eq!((f.min, f.max, f.mean), (100, 100, 100.0));
        assert_eq!(f.max_over_mean, Some(1.0));
        assert!((f.jain.unwrap() - 1.0).abs() < 1e-12);
        let f = fairness(&[400, 0, 0, 0]).unwrap();
        assert_eq!(f.max_over_mean, Some(4.0));
        assert!((f.jain.unwrap() - 0.25).abs() < 1e-12);
        let f = fairness(&[0, 0]).unwrap();
        assert_eq!((f.max_over_mean, f.jain), (None, None));
        let f = fairness(&[90, 110]).unwrap();
        assert!((f.max_over_mean.unwrap() - 1.1).abs() < 1e-12);
    }

    #[test]
    fn publish_request_bytes() {
        let http = crate::net::parse_url("http://127.0.0.1:9000", "http").unwrap();
        let mut out = Vec::new();
        let b = PublishBatches {
            batch: 3,
            payload: 60,
        };
        push_publish_request(&mut out, &http, "k", 2, b, 1234);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /api/v1/publish HTTP/1.1\r\n"));
        assert!(head.contains("\r\nAuthorization: apikey k\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let v: Value = serde_json::from_str(body).unwrap();
        let evs = v["events"].as_array().unwrap();
        assert_eq!(evs.len(), 3);
        for (k, e) in evs.iter().enumerate() {
            assert_eq!(e["path"], PUBLISH_PATH);
            assert_eq!(e["eventType"], EVENT_TYPE);
            assert_eq!(e["data"]["t"], 1234);
            assert_eq!(e["data"]["i"], 6 + k as u64);
            assert_eq!(e["data"].to_string().len(), 60);
        }
        assert!(body.contains(r#""data":{"t":1234,"#));
        let mut small = Vec::new();
        push_data(&mut small, 1, 2, 0);
        assert_eq!(small, br#"{"t":1,"i":2,"pad":""}"#);
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_publish_answer(202, br#"{"accepted":2,"firstSeq":1303,"lastSeq":1304}"#),
            Some(PublishAck {
                accepted: 2,
                first_seq: Some(1303),
                last_seq: Some(1304)
            })
        );
        assert_eq!(parse_publish_answer(200, br#"{"accepted":2}"#), None);
        assert_eq!(parse_publish_answer(202, b"{}"), None);
        let body = br#"{"groups":[{"group":"a","pending":1,"inFlight":2,"dead":3,"instances":4},{"group":"loadtest","pending":10,"inFlight":0,"dead":0,"instances":2}]}"#;
        let g = parse_group_stats(body, "loadtest").unwrap().unwrap();
        assert_eq!(
            (g.pending, g.in_flight, g.instances, g.queued()),
            (10, 0, 2, 10)
        );
        assert_eq!(parse_group_stats(body, "other").unwrap(), None);
        assert!(parse_group_stats(b"[]", "a").is_err());
        assert!(parse_group_stats(br#"{"groups":[{"group":"a"}]}"#, "a").is_err());
    }

    #[test]
    fn seq_ranges() {
        let mut r = SeqRanges::default();
        assert!(!r.contains(1));
        r.add(10, 19);
        r.add(1, 5);
        r.add(30, 30);
        assert_eq!(r.covered(), 16);
        for (s, want) in [
            (0, false),
            (1, true),
            (5, true),
            (6, false),
            (19, true),
            (20, false),
            (30, true),
            (31, false),
        ] {
            assert_eq!(r.contains(s), want, "{s}");
        }
    }

    #[test]
    fn lock_book() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let ms = Duration::from_millis;
        let mut b = LockBook::new(2);
        b.granted(0, 1, 5, t0, ttl, t0 + ms(1));
        b.released(0, 1);
        b.granted(0, 2, 7, t0 + ms(2), ttl, t0 + ms(3));
        assert_eq!(b.violations(), 0);
        // connection 3 granted while 2 holds it, with a smaller token: two violations
        b.granted(0, 3, 6, t0 + ms(4), ttl, t0 + ms(5));
        assert_eq!((b.overlaps, b.token_regressions), (1, 1));
        assert_eq!(b.samples.len(), 2);
        // the holder's lease ran out: not an overlap
        b.granted(0, 4, 9, t0 + ms(6), ttl, t0 + ms(4) + ttl + ms(1));
        assert_eq!((b.overlaps, b.after_expiry), (1, 1));
        // another connection's release does not free the name
        b.released(0, 1);
        b.granted(0, 5, 10, t0, ttl, t0 + ms(7));
        assert_eq!(b.overlaps, 2);
        // names are independent
        b.granted(1, 1, 1, t0, ttl, t0);
        assert_eq!(b.violations(), 3);
        assert_eq!(b.grants, 6);
    }

    #[test]
    fn messages() {
        let v: Value = serde_json::from_str(&subscribe_message()).unwrap();
        assert_eq!(v["subscriptions"][0]["id"], "work");
        assert_eq!(v["subscriptions"][0]["path"], "load");
        let v: Value = serde_json::from_str(&lock_message(4, "n", 100, 5)).unwrap();
        assert_eq!(
            v,
            json!({"type":"lock","requestId":"4","name":"n","ttlMs":100,"waitMs":5})
        );
        let v: Value = serde_json::from_str(&unlock_message(5, "n")).unwrap();
        assert_eq!(v["type"], "unlock");
        let c = service_claims("svc-1", "g", 99);
        assert_eq!(
            (c["role"].as_str(), c["group"].as_str()),
            (Some("service"), Some("g"))
        );
    }
}
