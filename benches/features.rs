//! Micro-benchmarks of the entity features' hot pieces (docs/PERFORMANCE.md, "Entities,
//! filters, live queries, since"): filter evaluation, filtered matching with the equality
//! index from 1k to 100k subscriptions, live-query creation over 100k entities, one write
//! touching 10k live queries, `since` replay of 100k retained publications, and the
//! operator console's busiest-paths sketch per publication.
//!
//! The same small harness as `hot_path.rs`: 7 rounds of a fixed number of iterations,
//! the median reported. Run: `cargo bench --bench features` (optionally with a substring
//! filter: `cargo bench --bench features -- replay`).

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

use hashbrown::HashSet;
use serde_json::{json, Value};
use shardcast::config::Framing;
use shardcast::entities::Replica;
use shardcast::filter::{Filter, OrderBy};
use shardcast::history::History;
use shardcast::publication::{EntityChange, Publication};
use shardcast::services::index::{DurableSub, GroupIndex};
use shardcast::services::queue::{Addr, Changes, Group};
use shardcast::services::record;
use shardcast::shard::conn::{LiveQuery, LQ_BIT};
use shardcast::shard::filtered::{FilteredEntry, FilteredIndex};
use shardcast::shard::replay::encode_replay;
use shardcast::store::{Job, JobOutcome, Store, StoreOptions, Table, WriteTx};

mod common;
use common::bench;

/// An entity publication on `collection/id` from `before` to `after`.
fn entity_pub(seq: u64, collection: &str, id: &str, before: Value, after: Value) -> Publication {
    let mut p = Publication::new(
        seq,
        &format!("{collection}/{id}"),
        "updated",
        &after.to_string(),
        0,
    );
    p.entity = Some(Box::new(EntityChange {
        collection: collection.into(),
        id: id.into(),
        before: Some(Arc::new(before)),
        after: Some(Arc::new(after)),
    }));
    p
}

/// Puts `(key, value)`s into the tasks table; reports when durable.
struct Fill(Vec<(Vec<u8>, Vec<u8>)>, crossbeam_channel::Sender<()>);

impl Job for Fill {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        for (k, v) in &self.0 {
            tx.put(Table::Tasks, k, v).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    fn committed(self: Box<Self>, _: JobOutcome) {
        let _ = self.1.send(());
    }
}

fn task_value(seq: u64) -> Vec<u8> {
    let tail = format!(
        r#""eventType":"job","path":"load/x","data":{{"n":{seq},"pad":"0123456789012345678901234567890123456789"}},"timestamp":"2026-12-01T00:00:00.000Z","seq":{seq}}}"#
    );
    record::encode(0, 0, br#""work""#, tail.as_bytes())
}

/// The cost of one acknowledgement (and its share of dispatch, the ack-deadline timer
/// and paging the backlog in) with `pending` tasks waiting in the group: a steady state
/// where one task is sent, one completed and one enqueued per operation.
fn service_ack(filter: &Option<String>, pending: u64) {
    let name = format!("service ack ({pending} pending, 1 instance, prefetch 1000)");
    if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "shardcast-bench-ack-{}-{pending}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    let window = 4096;
    let mut g = Group::new("bench".into());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut seq = 0u64;
    let mut jobs = 0;
    // `pending` waiting behind the 1000 the instance holds.
    let total = pending + 1000;
    while seq < total {
        let chunk: Vec<(Vec<u8>, Vec<u8>)> = (seq + 1..=(seq + 10_000).min(total))
            .map(|s| (record::task_key("bench", s), task_value(s)))
            .collect();
        for (k, v) in &chunk {
            let s = record::parse_key(k).unwrap().1;
            g.enqueued(s, v.clone().into(), window);
        }
        seq += chunk.len() as u64;
        store
            .submit(Box::new(Fill(chunk, tx.clone())))
            .ok()
            .unwrap();
        jobs += 1;
    }
    for _ in 0..jobs {
        rx.recv().unwrap();
    }
    let inst = Addr {
        shard: 0,
        conn: 1,
        gen: 1,
    };
    g.attach(inst);
    let mut out = Vec::new();
    let mut c = Changes::default();
    let mut held = std::collections::VecDeque::new();
    let mut now = 0u64;
    g.dispatch(&store, now, 1000, 2000, window, &mut out);
    held.extend(out.drain(..).map(|d| d.seq));
    bench(filter, &name, 1, 50_000, || {
        now += 1;
        let done = held.pop_front().unwrap();
        g.complete(done, &mut c);
        c.steps.clear();
        c.outcomes.completed.clear();
        seq += 1;
        // Above the window the new task stays on disk (only counted), as in the server.
        g.enqueued(seq, task_value(seq).into(), window);
        g.tick(&store, now, 10, &mut c);
        g.dispatch(&store, now, 1000, 2000, window, &mut out);
        held.extend(out.drain(..).map(|d| d.seq));
    });
    println!(
        "    ({} pending: {} of them held in memory, {} in flight)",
        g.pending(),
        g.in_memory(),
        g.in_flight()
    );
    store.close();
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));

    for pending in [1_000, 100_000, 1_000_000] {
        service_ack(&filter, pending);
    }

    // Channels: N organisation channels on `claims` (`organisation_id == 'org-i'`), one
    // publication for one of them. Indexed by the equality term like the shard's filtered
    // subscriptions, so flat in N (compare "filtered match" below).
    for n in [1_000usize, 10_000, 100_000] {
        let channels: Vec<(Arc<str>, DurableSub)> = (0..n)
            .map(|i| {
                (
                    Arc::<str>::from(format!("chan_{i:016x}")),
                    DurableSub {
                        id: format!("chan_{i:016x}"),
                        path: "claims".into(),
                        events: vec![],
                        filter: Some(
                            Filter::parse(&format!("organisation_id == 'org-{i}'")).unwrap(),
                        ),
                    },
                )
            })
            .collect();
        let ix = GroupIndex::build(&Default::default(), &channels);
        let p = Publication::new(
            1,
            "claims/c1",
            "status_changed",
            &json!({"organisation_id": format!("org-{}", n / 2), "user_id": "u"}).to_string(),
            0,
        );
        let _ = p.data(); // parsed once per publication, as in ingest
        bench(
            &filter,
            &format!("channel match ({n} organisation channels, 1 matching)"),
            1,
            100_000,
            || {
                let mut hits = 0;
                ix.matches(black_box(&p), &mut |_, _| hits += 1);
                black_box(hits);
            },
        );
    }

    // The operator console's busiest paths (src/topk.rs): what each publish request adds
    // (one lock, then a note per publication), on one hot path and on 10,000 distinct
    // paths (every note past the 64th replaces the least counted). Compare with "ingest
    // publish" in hot_path.rs, per publication.
    let hot: Vec<String> = vec!["jobs/550e".to_string(); 1000];
    let spread: Vec<String> = (0..10_000).map(|i| format!("jobs/{i}")).collect();
    let busiest = shardcast::topk::BusiestPaths::new();
    bench(
        &filter,
        "busiest paths note, 1000 items on one path (per publication)",
        1000,
        200,
        || busiest.note(hot.iter().map(String::as_str)),
    );
    let busiest = shardcast::topk::BusiestPaths::new();
    bench(
        &filter,
        "busiest paths note, 10000 distinct paths (per publication)",
        10_000,
        20,
        || busiest.note(spread.iter().map(String::as_str)),
    );

    // Filter evaluation on a small object.
    let f = Filter::parse("status == 'failed' && attempts >= 2").unwrap();
    let data = json!({"jobId": "550e", "status": "failed", "attempts": 3, "queue": "billing"});
    bench(
        &filter,
        "filter eval (2 terms, small object)",
        1,
        2_000_000,
        || {
            black_box(f.matches(black_box(&data)));
        },
    );

    // Filtered matching: N subscriptions on one collection, each `assigneeId == '<me>'`
    // with a distinct value; one write moves a task from one assignee to another (an event
    // for the new one, a refresh for the old one). Flat in N thanks to the index.
    for n in [1_000u32, 10_000, 100_000] {
        let mut ix = FilteredIndex::default();
        for i in 0..n {
            ix.insert(
                "tasks",
                FilteredEntry {
                    conn: i,
                    sub: 0,
                    events: None,
                    filter: Rc::new(Filter::parse(&format!("assigneeId == 'user-{i}'")).unwrap()),
                },
            );
        }
        let p = entity_pub(
            1,
            "tasks",
            "t1",
            json!({"id": "t1", "assigneeId": "user-7", "title": "x"}),
            json!({"id": "t1", "assigneeId": "user-9", "title": "x"}),
        );
        let (mut ev, mut rf) = (Vec::new(), Vec::new());
        ix.collect(&p, &mut ev, &mut rf);
        assert_eq!((ev.len(), rf.len()), (1, 1), "one event, one refresh");
        bench(
            &filter,
            &format!("filtered match, {n} equality subscriptions (per write)"),
            1,
            200_000,
            || {
                ev.clear();
                rf.clear();
                ix.collect(black_box(&p), &mut ev, &mut rf);
                black_box((ev.len(), rf.len()));
            },
        );
    }

    // Live-query creation over 100k entities: filter (half match), orderBy, capped at
    // 1000, plus encoding the initial pages.
    let replica = Replica::default();
    for i in 0..100_000u64 {
        replica.load(
            "orders",
            &format!("o{i}"),
            json!({"id": format!("o{i}"), "status": if i % 2 == 0 { "processing" } else { "done" },
                   "createdAt": (i * 7919) % 100_000, "total": i % 977}),
            0,
        );
    }
    let lqf = Filter::parse("status == 'processing'").unwrap();
    let all: Vec<Arc<Value>> = (0..100_000u64)
        .map(|i| replica.get("orders", &format!("o{i}")).unwrap())
        .collect();
    bench(
        &filter,
        "live-query scan only: filter over 100k",
        1,
        20,
        || {
            black_box(all.iter().filter(|v| lqf.matches(v)).count());
        },
    );
    let unf = Filter::parse("total >= 0").unwrap();
    bench(
        &filter,
        "live-query scan only: total>=0 over 100k",
        1,
        20,
        || {
            black_box(all.iter().filter(|v| unf.matches(v)).count());
        },
    );
    bench(
        &filter,
        "live-query query no filter no order",
        1,
        20,
        || {
            black_box(
                replica
                    .query("orders", None, &OrderBy { keys: vec![] }, None, 1000)
                    .0
                    .total,
            );
        },
    );
    let order = OrderBy::parse("createdAt desc").unwrap();
    bench(
        &filter,
        "live-query creation, 100k entities, filtered, ordered, cap 1000",
        1,
        20,
        || {
            let (page, _) = replica.query("orders", Some(&lqf), &order, None, 1000);
            let mut bytes = 0;
            for chunk in page.data.chunks(100) {
                let mut m = Vec::new();
                shardcast::protocol::live_query_data(
                    &mut m,
                    "lq",
                    chunk.iter().map(|v| &**v),
                    true,
                    false,
                );
                bytes += m.len();
            }
            black_box((page.total, bytes));
        },
    );

    // One write touching 10k live queries (each tracking the entity): 10k updated-node
    // messages built.
    let mut lqs: Vec<LiveQuery> = (0..10_000u32)
        .map(|i| LiveQuery {
            id: format!("lq-{i}").into(),
            tag: LQ_BIT | i,
            collection: "orders".into(),
            filter: Some(Filter::parse("status == 'processing' && total >= 0").unwrap()),
            order: OrderBy { keys: Vec::new() },
            cap: 1000,
            base_seq: 0,
            tracked: HashSet::from_iter([Box::<str>::from("o42")]),
            loading: 0,
            pending: Vec::new(),
            stale: false,
        })
        .collect();
    let p = entity_pub(
        5,
        "orders",
        "o42",
        json!({"id": "o42", "status": "processing", "total": 1}),
        json!({"id": "o42", "status": "processing", "total": 2, "note": "a small change"}),
    );
    bench(
        &filter,
        "one write touching 10k live queries (per write)",
        1,
        50,
        || {
            let mut n = 0;
            for lq in lqs.iter_mut() {
                if let Some(frame) = lq.message(black_box(&p), 0) {
                    n += frame.buf.len();
                }
            }
            black_box(n);
        },
    );

    // `since` replay: 100k retained publications, a subscription matching all of them,
    // read out of the window and encoded as frames.
    let history = History::new(100_000, u64::MAX, 0);
    let payload = format!(r#"{{"jobId":"550e","pad":"{}"}}"#, "x".repeat(100));
    for seq in 1..=100_000u64 {
        let p = Arc::new(Publication::new(
            seq,
            "jobs/550e",
            "jobCompleted",
            &payload,
            0,
        ));
        history.append(&[p], 0);
    }
    bench(
        &filter,
        "since replay, 100k retained publications (per publication)",
        100_000,
        5,
        || {
            let mut found = Vec::with_capacity(100_000);
            history.replay(0, 100_000, 0, &mut |p| found.push((p.clone(), true)));
            let out = encode_replay(&found, b"\"my-jobs\"", Framing::Frames, 1000);
            black_box(out.len());
        },
    );
}
