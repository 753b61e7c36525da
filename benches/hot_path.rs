//! Micro-benchmarks of the fan-out hot path: index match, ring push/drain, ring against
//! feed for a batched fan-out, frame assembly, command parse, publish-body parse.
//!
//! A small harness instead of a framework keeps the build lean: each case runs in
//! 7 rounds of a fixed number of iterations and reports the median ns per operation,
//! so one noisy round does not move the figure. Run: `cargo bench --bench hot_path`
//! (optionally with a substring filter: `cargo bench --bench hot_path -- ring`).

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

use shardcast::ingest::{Ingest, PublishItem};
use shardcast::metrics::Source;
use shardcast::protocol::{self, deflate, ws};
use shardcast::publication::Publication;
use shardcast::router::{Mailbox, Router};
use shardcast::shard::conn::Frame;
use shardcast::shard::feed::{Feed, FeedKey};
use shardcast::shard::index::{Entry, Index};
use shardcast::shard::interner::Interner;
use shardcast::shard::ring::Ring;

mod common;
use common::bench;

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));

    // Index: 10,000 subscriptions on 1,000 paths `p{i}/x`, plus one broad `p1`.
    let mut index = Index::default();
    for i in 0..10_000u32 {
        index.insert(
            &format!("p{}/x", i % 1000),
            Entry {
                conn: i,
                sub: 0,
                events: None,
            },
        );
    }
    index.insert(
        "p1",
        Entry {
            conn: 99_999,
            sub: 1,
            events: None,
        },
    );
    let mut out = Vec::with_capacity(64);
    bench(
        &filter,
        "index match (depth 3, 11 matches)",
        1,
        200_000,
        || {
            out.clear();
            black_box(index.collect(black_box("p1/x/y"), "e", &mut out));
        },
    );
    bench(
        &filter,
        "index match (depth 3, no match)",
        1,
        200_000,
        || {
            out.clear();
            black_box(index.collect(black_box("zz/x/y"), "e", &mut out));
        },
    );
    let mut big = Index::default();
    for i in 0..10_000u32 {
        big.insert(
            "fan",
            Entry {
                conn: i,
                sub: 0,
                events: None,
            },
        );
    }
    let mut out = Vec::with_capacity(10_000);
    bench(
        &filter,
        "index match, per delivery (10k on one path)",
        10_000,
        200,
        || {
            out.clear();
            black_box(big.collect(black_box("fan/x"), "e", &mut out));
        },
    );

    // Ring: push 1,000 shared frames, drain them.
    let frame = Rc::new(7u64);
    let mut ring: Ring<Rc<u64>> = Ring::new(10_000);
    bench(
        &filter,
        "ring push+consume (per message, batches of 1000)",
        1000,
        2_000,
        || {
            for _ in 0..1000 {
                black_box(ring.push(frame.clone()));
            }
            ring.consume(1000);
        },
    );
    let mut full: Ring<Rc<u64>> = Ring::new(100);
    for _ in 0..100 {
        full.push(frame.clone());
    }
    bench(
        &filter,
        "ring push when full (drop oldest)",
        1,
        1_000_000,
        || {
            black_box(full.push(frame.clone()));
        },
    );

    // Batched fan-out bookkeeping, per delivery, without the writes: 10k connections on
    // one subscription get 100 messages, then each is flushed once. With a ring each, a
    // message is 10k pushes into 10k rings; with one feed, one append, and each flush
    // reads the shared log from the member's cursor.
    const MEMBERS: usize = 10_000;
    const MESSAGES: usize = 100;
    let frames: Vec<Rc<Frame>> = (0..MESSAGES)
        .map(|i| {
            Rc::new(Frame::build(
                ws::OpCode::Text,
                8,
                Box::new([1]),
                None,
                i as u32,
                |b| b.extend_from_slice(&(i as u64).to_be_bytes()),
            ))
        })
        .collect();
    let mut rings: Vec<Ring<Rc<Frame>>> = (0..MEMBERS).map(|_| Ring::new(10_000)).collect();
    bench(
        &filter,
        "batched fan-out, ring per connection (per delivery, 10k x 100)",
        (MEMBERS * MESSAGES) as u64,
        5,
        || {
            for f in &frames {
                for r in rings.iter_mut() {
                    black_box(r.push(f.clone()));
                }
            }
            for r in rings.iter_mut() {
                black_box(r.front(1000).map(|f| f.frame_bytes().len()).sum::<usize>());
                r.consume(1000);
            }
        },
    );
    let key = FeedKey {
        sub: 1,
        path: "fan".into(),
        events: None,
        batch_ms: 1000,
        batch_max: 1000,
        framing: shardcast::config::Framing::Frames,
    };
    let mut feed = Feed::new(key, 10_000);
    let mut cursors: Vec<u64> = (0..MEMBERS as u32).map(|m| feed.join((m, 0)).1).collect();
    bench(
        &filter,
        "batched fan-out, one feed (per delivery, 10k x 100)",
        (MEMBERS * MESSAGES) as u64,
        5,
        || {
            for f in &frames {
                black_box(feed.append(f.clone(), 0));
            }
            while feed.pop_due(u64::MAX).is_some() {}
            for (m, c) in cursors.iter_mut().enumerate() {
                let (start, _) = feed.start(*c);
                let frames = feed.frames(start, 1000);
                let n = frames.len();
                black_box(frames.map(|f| f.frame_bytes().len()).sum::<usize>());
                feed.advance(start, start + n as u64);
                *c = start + n as u64;
                black_box(feed.requeue((m as u32, 0), *c, 0));
            }
        },
    );

    // Frame assembly: the shared tail once per publication, then one frame per distinct
    // subscriptionIds list.
    let mut interner = Interner::default();
    let ids = [interner.intern("my-jobs"), interner.intern("all")];
    let data = format!(r#"{{"jobId":"550e","pad":"{}"}}"#, "x".repeat(100));
    bench(
        &filter,
        "publication encode (tail, once per publication)",
        1,
        200_000,
        || {
            black_box(Publication::new(
                1303,
                "jobs/550e",
                "jobCompleted",
                &data,
                1_774_512_862_123,
            ));
        },
    );
    // The whole of ingest for a 1,000-item publish request with two shards: encoding
    // (outside the sequencer lock), then sequencing and queue pushes (inside it). The
    // lock is held for this figure minus the encode above, per publication.
    let polls: Vec<mio::Poll> = (0..2).map(|_| mio::Poll::new().unwrap()).collect();
    let mailboxes: Vec<Arc<Mailbox>> = polls
        .iter()
        .map(|p| {
            let waker = mio::Waker::new(p.registry(), mio::Token(0)).unwrap();
            Arc::new(Mailbox::new(65_536, waker))
        })
        .collect();
    let ingest = Ingest::new(Arc::new(Router::new(mailboxes.clone())));
    let items: Vec<PublishItem> = (0..1000)
        .map(|_| PublishItem {
            path: "jobs/550e".into(),
            event_type: "jobCompleted".into(),
            data: serde_json::value::RawValue::from_string(data.clone()).unwrap(),
        })
        .collect();
    bench(
        &filter,
        "ingest publish, 1000 items to 2 shards (per publication)",
        1000,
        200,
        || {
            black_box(ingest.publish(&items, Source::Http));
            for m in &mailboxes {
                while m.try_recv().is_some() {}
                m.clear_notified();
            }
        },
    );
    let p = Publication::new(1303, "jobs/550e", "jobCompleted", &data, 1_774_512_862_123);
    bench(
        &filter,
        "frame assembly (two ids, once per distinct list)",
        1,
        200_000,
        || {
            let len = 37 + p.tail.len() + 24;
            black_box(Frame::build(
                ws::OpCode::Text,
                len,
                ids[..].into(),
                None,
                0,
                |b| {
                    protocol::event_prefix(b, ids.iter().map(|&i| interner.json(i)));
                    b.extend_from_slice(&p.tail);
                },
            ));
        },
    );

    // permessage-deflate: one event frame compressed once per shard (shared by every
    // connection that negotiated it), and a `framing=array` batch of 200 events
    // compressed per flush. Level and backend: docs/PERFORMANCE.md, "Compression".
    let one = [interner.intern("my-jobs")];
    let data = format!(
        r#"{{"jobId":"550e","status":"done","pad":"{}"}}"#,
        "x".repeat(60)
    );
    let pe = Publication::new(1303, "jobs/550e", "jobCompleted", &data, 1_774_512_862_123);
    let event = Frame::build(ws::OpCode::Text, 300, one[..].into(), None, 0, |b| {
        protocol::event_prefix(b, one.iter().map(|&i| interner.json(i)));
        b.extend_from_slice(&pe.tail);
    });
    let mut compressor = deflate::Compressor::default();
    let mut out = Vec::with_capacity(4096);
    compressor.frame(ws::OpCode::Text, &[event.message()], 15, &mut out);
    println!(
        "(deflate: event frame {} B -> {} B compressed)",
        event.frame_bytes().len(),
        out.len()
    );
    bench(
        &filter,
        "deflate event frame (once per shard)",
        1,
        50_000,
        || {
            out.clear();
            black_box(compressor.frame(ws::OpCode::Text, &[event.message()], 15, &mut out));
        },
    );
    let mut parts: Vec<&[u8]> = vec![b"{\"type\":\"batch\",\"messages\":["];
    for i in 0..200 {
        if i > 0 {
            parts.push(b",");
        }
        parts.push(event.message());
    }
    parts.push(b"]}");
    out.clear();
    compressor.frame(ws::OpCode::Text, &parts, 15, &mut out);
    println!(
        "(deflate: batch of 200 events {} B -> {} B compressed)",
        parts.iter().map(|p| p.len()).sum::<usize>(),
        out.len()
    );
    bench(
        &filter,
        "deflate batch of 200 events (framing=array, per flush)",
        1,
        2_000,
        || {
            out.clear();
            black_box(compressor.frame(ws::OpCode::Text, &parts, 15, &mut out));
        },
    );
    let compressed = out[4..].to_vec();
    let mut inflater = deflate::Inflater::default();
    let mut plain = Vec::with_capacity(64 * 1024);
    bench(&filter, "inflate batch of 200 events", 1, 2_000, || {
        plain.clear();
        black_box(inflater.message(&compressed, 1 << 20, &mut plain).is_ok());
    });

    // Command parse.
    let sub = br#"{"type":"subscribeEvents","requestId":"req-1","subscriptions":[{"id":"my-jobs","path":"jobs","events":["jobCompleted","jobFailed"]}]}"#;
    bench(
        &filter,
        "command parse (subscribeEvents)",
        1,
        200_000,
        || {
            black_box(protocol::parse_command(black_box(sub)).is_ok());
        },
    );
    bench(&filter, "command parse (pong)", 1, 500_000, || {
        black_box(protocol::parse_command(black_box(br#"{"type":"pong"}"#)).is_ok());
    });

    // Publish body: a 10,000-event batch, validated whole.
    let batch = format!(
        "{{\"events\":[{}]}}",
        (0..10_000)
            .map(|i| format!(
                r#"{{"path":"jobs/{i}","eventType":"jobCompleted","data":{{"i":{i},"ok":true}}}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    bench(
        &filter,
        "publish body parse (per event, batch of 10000)",
        10_000,
        20,
        || {
            black_box(
                shardcast::api::parse_publish(batch.as_bytes(), 10_000)
                    .map(|v| v.len())
                    .ok(),
            );
        },
    );

    // The same batch with simd-json: to a borrowed DOM, then each item's fields taken
    // out and `data` serialized back to text (simd-json has no raw-value type, and the
    // engine hands each publication's `data` on as JSON text).
    let batch_bytes = batch.as_bytes().to_vec();
    bench(
        &filter,
        "publish body parse, simd-json DOM + data to text (per event)",
        10_000,
        20,
        || {
            let mut buf = batch_bytes.clone();
            let v = simd_json::to_borrowed_value(&mut buf).expect("valid");
            use simd_json::prelude::*;
            let mut n = 0usize;
            if let Some(events) = v.get("events").and_then(|e| e.as_array()) {
                for e in events {
                    let path = e.get("path").and_then(|p| p.as_str()).unwrap_or("");
                    let data = e.get("data").map(|d| d.encode()).unwrap_or_default();
                    n += path.len() + data.len();
                }
            }
            black_box(n);
        },
    );
    bench(
        &filter,
        "publish body parse, serde_json DOM (per event)",
        10_000,
        20,
        || {
            black_box(
                serde_json::from_slice::<serde_json::Value>(batch.as_bytes())
                    .map(|v| v.is_object())
                    .ok(),
            );
        },
    );
    bench(
        &filter,
        "publish body parse, simd-json DOM only (per event)",
        10_000,
        20,
        || {
            let mut buf = batch_bytes.clone();
            black_box(simd_json::to_borrowed_value(&mut buf).map(|_| ()).ok());
        },
    );

    // The shard mailbox queue: crossbeam-channel (the engine's) against flume, both
    // bounded, carrying an `Arc` per message as the router does. One producer thread
    // pushes with try_send, spinning when full (a producer that must never block); the
    // consumer drains with try_recv. Per message.
    let message = Arc::new(0u64);
    bench(
        &filter,
        "mailbox queue, crossbeam bounded(8192), cross-thread (per message)",
        QUEUED as u64,
        5,
        || {
            let (tx, rx) = crossbeam_channel::bounded::<Arc<u64>>(8192);
            spsc(
                &message,
                move |m| tx.try_send(m).err().map(|e| e.into_inner()),
                move || rx.try_recv().ok(),
            );
        },
    );
    bench(
        &filter,
        "mailbox queue, flume bounded(8192), cross-thread (per message)",
        QUEUED as u64,
        5,
        || {
            let (tx, rx) = flume::bounded::<Arc<u64>>(8192);
            spsc(
                &message,
                move |m| tx.try_send(m).err().map(|e| e.into_inner()),
                move || rx.try_recv().ok(),
            );
        },
    );

    // A batched flush of 200 event frames (231 B each, 46 KB) to a loopback socket whose
    // reader drains on another thread: one iovec per frame (the flush before the feed's
    // flat runs), the flat run built and written (a member alone at its cursor), and the
    // flat run written (the other members of its cohort: the copy is shared).
    let frames: Vec<Rc<Frame>> = (0..200u32)
        .map(|i| {
            Rc::new(Frame::build(
                ws::OpCode::Text,
                225,
                Box::new([1]),
                None,
                i,
                |b| b.resize(b.len() + 225, b'x'),
            ))
        })
        .collect();
    let mut sink = Sink::new();
    bench(
        &filter,
        "flush 200 frames to a socket: 200 iovecs",
        1,
        4_000,
        || {
            let parts: Vec<std::io::IoSlice<'_>> = frames
                .iter()
                .map(|f| std::io::IoSlice::new(f.frame_bytes()))
                .collect();
            sink.write_all_vectored(&parts);
        },
    );
    bench(
        &filter,
        "flush 200 frames to a socket: flatten + 1 write",
        1,
        4_000,
        || {
            let run =
                shardcast::shard::feed::flatten(frames.iter(), shardcast::config::Framing::Frames);
            sink.write_all_vectored(&[std::io::IoSlice::new(&run)]);
        },
    );
    let run = shardcast::shard::feed::flatten(frames.iter(), shardcast::config::Framing::Frames);
    bench(
        &filter,
        "flush 200 frames to a socket: shared flat run, 1 write",
        1,
        4_000,
        || {
            sink.write_all_vectored(&[std::io::IoSlice::new(&run)]);
        },
    );
    drop(sink);

    // WebSocket unmask (client commands and echo).
    let mut buf = vec![0u8; 64 * 1024];
    bench(&filter, "unmask 64 KiB", 1, 2_000, || {
        ws::unmask(black_box(&mut buf), [1, 2, 3, 4]);
    });
}

/// A loopback TCP connection whose far end a thread reads and discards, for the flush
/// benchmarks: what a write costs the writer, with a reader as fast as the kernel lets it.
struct Sink {
    sock: std::net::TcpStream,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn new() -> Sink {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        sock.set_nodelay(true).unwrap();
        let (mut far, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while far.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        Sink {
            sock,
            reader: Some(reader),
        }
    }

    /// Writes every byte of `parts` (blocking socket: a full buffer waits for the reader).
    fn write_all_vectored(&mut self, parts: &[std::io::IoSlice<'_>]) {
        use std::io::Write;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut n = self.sock.write_vectored(parts).unwrap();
        if n < total {
            // Rare (the socket buffer filled): the rest as one copy.
            let rest: Vec<u8> = parts
                .iter()
                .flat_map(|p| p.iter().copied())
                .skip(n)
                .collect();
            self.sock.write_all(&rest).unwrap();
            n = total;
        }
        black_box(n);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Messages per round of the mailbox queue benchmarks.
const QUEUED: usize = 200_000;

/// One producer thread sends [`QUEUED`] clones of `message` through `send` (which gives a
/// message back when the queue is full: the producer spins and retries, as one that must
/// never block does); this thread receives them all through `recv`.
fn spsc(
    message: &Arc<u64>,
    mut send: impl FnMut(Arc<u64>) -> Option<Arc<u64>> + Send + 'static,
    mut recv: impl FnMut() -> Option<Arc<u64>>,
) {
    let m = message.clone();
    let producer = std::thread::spawn(move || {
        for _ in 0..QUEUED {
            let mut next = m.clone();
            while let Some(back) = send(next) {
                next = back;
                std::hint::spin_loop();
            }
        }
    });
    let mut got = 0;
    while got < QUEUED {
        match recv() {
            Some(m) => {
                black_box(m);
                got += 1;
            }
            None => std::hint::spin_loop(),
        }
    }
    producer.join().unwrap();
}
