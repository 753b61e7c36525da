//! Micro-benchmarks of the entity features' hot pieces (docs/PERFORMANCE.md, "Entities,
//! filters, live queries, since"): filter evaluation, filtered matching with the equality
//! index from 1k to 100k subscriptions, live-query creation over 100k entities, one write
//! touching 10k live queries, and `since` replay of 100k retained publications.
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
use shardcast::shard::conn::{LiveQuery, LQ_BIT};
use shardcast::shard::filtered::{FilteredEntry, FilteredIndex};
use shardcast::shard::replay::encode_replay;

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

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));

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
