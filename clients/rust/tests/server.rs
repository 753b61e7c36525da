//! The client against the real server binary on loopback: authentication, subscriptions,
//! errors, reconnect after a drain (and a drop while a live query's re-creation is in
//! flight), no retry on 4001, overflow, live queries, services, channel sockets, and the
//! attempt deadline (`connect_timeout`) through a TCP proxy that closes, black-holes or
//! resets attempts.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::json;
use shardcast_client::{
    Auth, Client, ClientEvent, ClientOptions, ConnectionOptions, ConnectionState, Error, Framing,
    LiveChange, LiveQuerySpec, LogLevel, Rest, Subscription,
};

async fn connect(s: &Server, auth: Auth) -> Client {
    within(
        "connect",
        Client::connect(ClientOptions::new(s.ws("/ws"), auth)),
    )
    .await
    .expect("connect")
}

/// Subscribes `id` to `jobs`, publishes one event, and checks it arrives with its seq.
async fn roundtrip(s: &Server, c: &Client, id: &str) {
    let mut sub = within("subscribe", c.subscribe(Subscription::new(id, "jobs")))
        .await
        .expect("subscribe");
    let accepted = s
        .rest()
        .publish("jobs/1", "done", json!({"by": id}))
        .await
        .unwrap();
    let e = within("event", sub.next_event()).await.expect("event");
    assert_eq!(e.seq, accepted.first_seq);
    assert_eq!(e.subscription_ids, vec![id.to_string()]);
    assert_eq!((e.path.as_str(), e.event_type.as_str()), ("jobs/1", "done"));
    assert_eq!(e.data, json!({"by": id}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ticket_and_auth_message() {
    let s = Server::start("");
    let t = token("u1", "user", &["jobs"]);
    let by_token = connect(&s, Auth::token(t.clone())).await;
    roundtrip(&s, &by_token, "by-token").await;
    // Connection options in the URL (with the ticket) and in the auth message; with
    // `framing=array` every flush is a `batch`, which the client unwraps.
    let array = ConnectionOptions {
        batch_ms: Some(0),
        framing: Some(Framing::Array),
        ..Default::default()
    };
    let mut opts = ClientOptions::new(
        s.ws("/ws"),
        Auth::ticket_from(Rest::new(&s.http()).unwrap().bearer(&t)),
    );
    opts.options = array.clone();
    let by_ticket = within("connect", Client::connect(opts)).await.unwrap();
    roundtrip(&s, &by_ticket, "by-ticket").await;
    let mut opts = ClientOptions::new(s.ws("/ws"), Auth::auth_message(t));
    opts.options = array;
    let by_message = within("connect", Client::connect(opts)).await.unwrap();
    roundtrip(&s, &by_message, "by-message").await;
    // Options out of range are the server's BAD_MESSAGE, returned at once (the socket
    // would stay unauthenticated until the auth timeout).
    for auth in [
        Auth::auth_message(token("u1", "user", &[])),
        Auth::token(token("u1", "user", &[])),
    ] {
        let mut opts = ClientOptions::new(s.ws("/ws"), auth);
        opts.options.batch_max = Some(0);
        match within("refusal", Client::connect(opts)).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "BAD_MESSAGE");
                assert!(message.contains("batchMax"), "{message}");
            }
            Err(e) => panic!("expected the server's BAD_MESSAGE, got {e}"),
            Ok(_) => panic!("batchMax = 0 was accepted"),
        }
    }
    // A bad credential is refused with 4001 and the server's reason, on the first attempt.
    let bad = Client::connect(ClientOptions::new(s.ws("/ws"), Auth::token("nope"))).await;
    match bad {
        Err(Error::Refused {
            code: 4001,
            message: Some(m),
            ..
        }) => assert!(m.starts_with("UNAUTHORIZED"), "{m}"),
        Err(e) => panic!("expected a 4001 refusal, got {e}"),
        Ok(_) => panic!("expected a 4001 refusal, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_event_unsubscribe_and_error_code() {
    let s = Server::start("");
    let c = connect(&s, Auth::token(token("u1", "user", &["*"]))).await;
    let a = c.subscribe(Subscription::new("a", "jobs")).await.unwrap();
    let mut b = c
        .subscribe(Subscription::new("b", "jobs").events(["done"]))
        .await
        .unwrap();
    assert_eq!(b.subscribed().events, vec!["done".to_string()]);
    within("unsubscribe", a.unsubscribe()).await.unwrap();
    let first = s.rest().publish("jobs/7", "done", json!(1)).await.unwrap();
    let e = within("event", b.next_event()).await.unwrap();
    // `a` is gone: the event lists only `b`.
    assert_eq!(
        (e.seq, e.subscription_ids.clone()),
        (first.first_seq, vec!["b".to_string()])
    );

    let err = c
        .subscribe(Subscription::new("f", "jobs").filter("status =="))
        .await
        .err()
        .expect("a malformed filter is rejected");
    match err {
        Error::Server { code, message } => {
            assert_eq!(code, "INVALID_FILTER");
            assert!(message.contains("byte"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // A user may not publish over the socket: FORBIDDEN, as an answer to that request.
    match c.publish("jobs/1", "x", json!(null)).await {
        Err(Error::Server { code, .. }) => assert_eq!(code, "FORBIDDEN"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_drain_and_resubscribes_with_since() {
    let mut s = Server::start("");
    // Through a proxy, so that the connection after the restart can be dropped while the
    // live query's re-creation is in flight.
    let proxy = Proxy::start(s.port);
    let c = within(
        "connect",
        Client::connect(ClientOptions::new(
            proxy.ws("/ws"),
            Auth::token(token("u1", "user", &["jobs"])),
        )),
    )
    .await
    .expect("connect");
    let mut events = c.events();
    let mut sub = c
        .subscribe(Subscription::new("jobs", "jobs"))
        .await
        .unwrap();
    let r = s
        .rest()
        .send("PUT", "/api/v1/entities/jobs/j1", Some(&json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The entity write is an event too.
    let e = within("entity event", sub.next_event()).await.unwrap();
    assert_eq!(
        (e.path.as_str(), e.event_type.as_str()),
        ("jobs/j1", "created")
    );
    let spec = LiveQuerySpec {
        edge: "jobs".into(),
        ..Default::default()
    };
    let mut q = within("live query", c.live_query("lq", spec))
        .await
        .unwrap();
    within("pages", q.loaded()).await.unwrap();
    assert_eq!(q.view().ids(), ["j1"]);
    let before = s.rest().publish("jobs/1", "a", json!(1)).await.unwrap();
    assert_eq!(
        within("event", sub.next_event()).await.unwrap().seq,
        before.first_seq
    );

    // The next connection's answers are held from its `createLiveQuery` on.
    proxy.hold_answers_after(Some("createLiveQuery"));
    s.drain();
    let (code, retry_in) = wait_event(&mut events, "Disconnected", |e| match e {
        ClientEvent::State(ConnectionState::Disconnected { code, retry_in, .. }) => {
            Some((*code, *retry_in))
        }
        _ => None,
    })
    .await;
    // The drain close: 1001 with `reconnect in <ms>`, ms in [1000, 1000 + drain_period_ms].
    assert_eq!(code, Some(1001));
    assert!(
        retry_in >= Duration::from_millis(1000) && retry_in <= Duration::from_millis(1200),
        "{retry_in:?}"
    );
    s.spawn();
    connected(&mut events).await;
    // The re-creation went out and its answer is held: drop the connection now.
    until("createLiveQuery sent on the new connection", || {
        proxy.held() == 1
    })
    .await;
    proxy.hold_answers_after(None);
    assert_eq!(proxy.drop_connections(), 1);
    let code = wait_event(&mut events, "Disconnected after the drop", |e| match e {
        ClientEvent::State(ConnectionState::Disconnected { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, None, "a lost connection, not a close frame");
    connected(&mut events).await;
    // History is memory: after a restart the resubscription (since = the last seq seen) is
    // answered recovered: false, and the app is told to re-sync.
    let (id, since) = wait_event(&mut events, "Resync", |e| match e {
        ClientEvent::Resync {
            subscription_id,
            since,
        } => Some((subscription_id.clone(), *since)),
        _ => None,
    })
    .await;
    assert_eq!((id.as_str(), since), ("jobs", before.first_seq));
    // The live query was created again on the connection after the drop (the one it was
    // in flight on never answered): its view starts over and loads the (durable) entity
    // again.
    assert!(matches!(
        within("live query reset", q.changed()).await,
        Some(LiveChange::Reset { .. })
    ));
    within("pages again", q.loaded()).await.unwrap();
    assert_eq!(q.view().ids(), ["j1"]);
    let after = s.rest().publish("jobs/2", "b", json!(2)).await.unwrap();
    assert!(after.first_seq > before.first_seq);
    let e = within("event after restart", sub.next_event())
        .await
        .unwrap();
    assert_eq!((e.seq, e.path.as_str()), (after.first_seq, "jobs/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_on_4001() {
    let mut s = Server::start("");
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let good = token("u1", "user", &["jobs"]);
    // The refresh callback: a good token first, then one the server refuses.
    let auth = Auth::token_with(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let t = if n == 0 {
            good.clone()
        } else {
            "expired".to_string()
        };
        async move { Ok(t) }
    });
    let c = connect(&s, auth).await;
    let mut events = c.events();
    s.drain();
    s.spawn();
    let code = wait_event(&mut events, "Closed", |e| match e {
        ClientEvent::State(ConnectionState::Closed { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(4001));
    // Closed is final: the driver has ended, so no attempt follows the refused one.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(matches!(
        c.subscribe(Subscription::new("x", "jobs")).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_warning_is_surfaced() {
    let s = Server::start("queue_capacity = 10");
    let mut opts = ClientOptions::new(s.ws("/ws"), Auth::token(token("u1", "user", &["o"])));
    // Everything waits in the 10-message ring for a second, so a batch of 25 overflows it.
    opts.options = ConnectionOptions {
        batch_ms: Some(1000),
        ..Default::default()
    };
    let c = within("connect", Client::connect(opts)).await.unwrap();
    let mut events = c.events();
    let mut sub = c.subscribe(Subscription::new("wide", "o")).await.unwrap();
    let batch: Vec<_> = (0..25)
        .map(|i| json!({"path": "o/1", "eventType": "e", "data": i}))
        .collect();
    let r = s
        .rest()
        .send("POST", "/api/v1/publish", Some(&json!({"events": batch})))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let w = wait_event(&mut events, "QUEUE_OVERFLOW", |e| match e {
        ClientEvent::Overflow(w) => Some(w.clone()),
        _ => None,
    })
    .await;
    assert_eq!(w.code, "QUEUE_OVERFLOW");
    assert_eq!(w.subscription_id.as_deref(), Some("wide"));
    assert_eq!(w.dropped, 15);
    // The ring kept the newest ten.
    let first = within("event", sub.next_event()).await.unwrap();
    assert_eq!(first.data, json!(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_query_keeps_a_sorted_view() {
    let s = Server::start("");
    let rest = s.rest();
    for (id, n) in [("o1", 1), ("o2", 2), ("o3", 3)] {
        let r = rest
            .send(
                "PUT",
                &format!("/api/v1/entities/orders/{id}"),
                Some(&json!({"n": n, "status": "open"})),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let c = connect(&s, Auth::token(token("u1", "user", &["orders"]))).await;
    let spec = LiveQuerySpec {
        edge: "orders".into(),
        filter: Some("status == 'open'".into()),
        order_by: Some("n desc".into()),
        limit: Some(10),
    };
    let mut q = within("live query", c.live_query("lq", spec))
        .await
        .unwrap();
    within("pages", q.loaded()).await.unwrap();
    assert_eq!(q.view().ids(), ["o3", "o2", "o1"]);
    assert_eq!(q.view().total_count(), 3);

    let put = |id: &'static str, body: serde_json::Value| {
        let rest = rest.clone();
        async move {
            let r = rest
                .send("PUT", &format!("/api/v1/entities/orders/{id}"), Some(&body))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    put("o4", json!({"n": 2, "status": "open"})).await;
    assert_eq!(
        within("added", q.changed()).await,
        Some(LiveChange::Added("o4".into()))
    );
    // Ties (n = 2) order by id.
    assert_eq!(q.view().ids(), ["o3", "o2", "o4", "o1"]);
    put("o1", json!({"n": 9, "status": "open"})).await;
    assert_eq!(
        within("updated", q.changed()).await,
        Some(LiveChange::Updated("o1".into()))
    );
    assert_eq!(q.view().ids(), ["o1", "o3", "o2", "o4"]);
    put("o3", json!({"n": 3, "status": "closed"})).await;
    assert_eq!(
        within("removed", q.changed()).await,
        Some(LiveChange::Removed("o3".into()))
    );
    assert_eq!(q.view().ids(), ["o1", "o2", "o4"]);
    assert_eq!(q.view().nodes()[0]["n"], 9);
    within("destroy", q.destroy()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tasks_locks_publish_and_log() {
    let s = Server::start("");
    let admin = connect(&s, Auth::token(token("ops", "admin", &["*"]))).await;
    let mut logs = admin
        .subscribe(Subscription::new("logs", "$logs"))
        .await
        .unwrap();
    let svc = connect(
        &s,
        Auth::token(token_with(
            json!({"sub": "svc-1", "role": "service", "group": "billing"}),
        )),
    )
    .await;
    let mut tasks = svc
        .subscribe(Subscription::new("invoices", "invoices"))
        .await
        .unwrap();

    let p = s
        .rest()
        .publish("invoices/1", "created", json!({"amount": 5}))
        .await
        .unwrap();
    let t1 = within("task", tasks.next_event()).await.unwrap();
    assert_eq!(t1.seq, p.first_seq);
    assert_eq!(
        t1.task_id.as_deref(),
        Some(format!("billing:{}", p.first_seq).as_str())
    );
    assert_eq!(t1.attempt, Some(1));
    // Failed: redelivered with attempt 2.
    svc.task_failed(&[t1.task_id.clone().unwrap()], 0).unwrap();
    let t2 = within("redelivery", tasks.next_event()).await.unwrap();
    assert_eq!(
        (t2.task_id.clone(), t2.attempt),
        (t1.task_id.clone(), Some(2))
    );
    svc.task_complete(&[t2.task_id.clone().unwrap()]).unwrap();

    // A publish over the socket answers its seq, and becomes the group's next task (the
    // completed one does not come back before it).
    let seq = within(
        "published",
        svc.publish("invoices/2", "created", json!({"amount": 7})),
    )
    .await
    .unwrap();
    assert!(seq > p.first_seq);
    let t3 = within("next task", tasks.next_event()).await.unwrap();
    assert_eq!((t3.seq, t3.attempt), (seq, Some(1)));
    svc.task_complete(&[t3.task_id.unwrap()]).unwrap();

    let l1 = within("lock", svc.lock("invoice-42", 10_000, 0))
        .await
        .unwrap();
    assert!(l1.acquired);
    let f1 = l1.fencing_token.expect("fencing token");
    assert!(l1.expires_at.is_some());
    assert!(within("unlock", svc.unlock("invoice-42")).await.unwrap());
    assert!(!within("unlock again", svc.unlock("invoice-42"))
        .await
        .unwrap());
    let l2 = within("lock again", svc.lock("invoice-42", 10_000, 0))
        .await
        .unwrap();
    assert!(l2.fencing_token.expect("fencing token") > f1);

    let mut fields = serde_json::Map::new();
    fields.insert("invoice".into(), json!(42));
    svc.log(LogLevel::Warn, "slow invoice", Some(fields))
        .unwrap();
    let e = within("log event", logs.next_event()).await.unwrap();
    assert_eq!(
        (e.path.as_str(), e.event_type.as_str()),
        ("$logs/billing", "warn")
    );
    assert_eq!(e.data["message"], "slow invoice");
    assert_eq!(e.data["fields"]["invoice"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_socket_events_carry_channel_id() {
    let s = Server::start("");
    let admin = token("ops", "admin", &["*"]);
    let r = Rest::new(&s.http())
        .unwrap()
        .bearer(&admin)
        .send(
            "POST",
            "/api/v1/realtime-subscriptions",
            Some(&json!({"path": "claims", "event_types": []})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let channel_id = r.json()["channel_id"].as_str().unwrap().to_string();
    // Collected before the socket attaches, delivered first.
    let early = s
        .rest()
        .publish("claims/1", "filed", json!({"n": 1}))
        .await
        .unwrap();
    let c = within(
        "channel connect",
        Client::connect(ClientOptions::new(
            s.ws(&format!("/channels/{channel_id}")),
            Auth::token(admin),
        )),
    )
    .await
    .unwrap();
    let mut events = c.channel_events().expect("channel events");
    assert!(c.channel_events().is_none());
    let e = within("backlog event", events.recv()).await.unwrap();
    assert_eq!(e.seq, early.first_seq);
    assert_eq!(e.channel_id.as_deref(), Some(channel_id.as_str()));
    assert!(e.subscription_ids.is_empty());
    let live = s
        .rest()
        .publish("claims/2", "filed", json!({"n": 2}))
        .await
        .unwrap();
    let e = within("live event", events.recv()).await.unwrap();
    assert_eq!(
        (e.seq, e.channel_id.as_deref()),
        (live.first_seq, Some(channel_id.as_str()))
    );
}

/// The attempt deadline, through a proxy: a connected client with a subscription loses
/// its connection when the proxy drops it; while its attempts meet `mode`, events are
/// published; `cut_off` returns once the attempts have met it (they are being retried).
/// Then the proxy passes again, and the client ends `Connected` and resumes with `since`:
/// what was published meanwhile arrives, in order, with no re-sync. Returns the reasons
/// of the `Disconnected` states after the drop.
async fn drop_and_resume(name: &str, mode: Mode, cut_off: impl AsyncFnOnce(&Proxy)) -> Vec<String> {
    let s = Server::start("");
    let proxy = Proxy::start(s.port);
    let mut opts = ClientOptions::new(
        proxy.ws("/ws"),
        Auth::token(token("u1", "user", &["deadline"])),
    );
    opts.connect_timeout = Duration::from_millis(500);
    opts.reconnect.initial = Duration::from_millis(100);
    opts.reconnect.max = Duration::from_millis(400);
    // The first attempt's failure is `connect`'s error; on a loaded machine a debug
    // server may miss the short deadline once: the test is about the attempts after.
    let c = within("connect", async {
        loop {
            match Client::connect(opts.clone()).await {
                Ok(c) => return c,
                Err(Error::ConnectTimeout(_)) => continue,
                Err(e) => panic!("connect: {e}"),
            }
        }
    })
    .await;
    let path = format!("deadline/{name}");
    let mut sub = c
        .subscribe(Subscription::new(name, path.as_str()))
        .await
        .unwrap();
    let publish = |ns: &[i64]| {
        let events: Vec<_> = ns
            .iter()
            .map(|n| json!({"path": format!("{path}/x"), "eventType": "e", "data": n}))
            .collect();
        let rest = s.rest();
        async move {
            let r = rest
                .send(
                    "POST",
                    "/api/v1/publish",
                    Some(&json!({ "events": events })),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 202, "{}", r.body);
        }
    };
    publish(&[0]).await;
    assert_eq!(within("event 0", sub.next_event()).await.unwrap().data, 0);

    let mut events = c.events();
    let mut first = c.events();
    proxy.set_mode(mode);
    assert_eq!(proxy.drop_connections(), 1, "the client's one connection");
    let mut reasons = Vec::new();
    wait_event(&mut first, "Disconnected", |e| {
        matches!(e, ClientEvent::State(ConnectionState::Disconnected { .. })).then_some(())
    })
    .await;
    // Published while every attempt fails: only `since` can bring these.
    publish(&[1, 2]).await;
    cut_off(&proxy).await;
    proxy.set_mode(Mode::Pass);
    // Every state since the drop, up to `Connected`: never `Closed`.
    within("Connected", async {
        loop {
            match events.recv().await.expect("events") {
                ClientEvent::State(ConnectionState::Connected { .. }) => return,
                ClientEvent::State(ConnectionState::Disconnected { reason, .. }) => {
                    reasons.push(reason)
                }
                ClientEvent::State(ConnectionState::Closed { code, reason }) => {
                    panic!("closed for good ({code:?}): {reason}")
                }
                _ => {}
            }
        }
    })
    .await;
    for n in [1, 2] {
        let e = within("event published meanwhile", sub.next_event())
            .await
            .unwrap();
        assert_eq!(e.data, n, "the replay comes in order");
    }
    publish(&[3]).await;
    assert_eq!(
        within("live event", sub.next_event()).await.unwrap().data,
        3
    );
    // The resubscription's answer came before the replay: a re-sync would be queued by now.
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, ClientEvent::Resync { .. }),
            "nothing was lost, yet: {e:?}"
        );
    }
    reasons
}

const DEADLINE_REASON: &str = "not authenticated within connect_timeout (500ms)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_a_proxy_closes_at_once_are_retried_until_it_passes() {
    let reasons = drop_and_resume("close", Mode::Close, async |p: &Proxy| {
        until("two attempts closed by the proxy", || {
            p.accepted(Mode::Close) >= 2
        })
        .await
    })
    .await;
    // The drop, then at least the first closed attempt, each with its cause.
    assert!(reasons.len() >= 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_a_proxy_never_answers_are_given_up_at_connect_timeout() {
    let reasons = drop_and_resume("blackhole", Mode::BlackHole, async |p: &Proxy| {
        until("a retry after a given-up attempt", || {
            p.accepted(Mode::BlackHole) >= 2
        })
        .await
    })
    .await;
    assert!(
        reasons.iter().any(|r| r == DEADLINE_REASON),
        "the state says why: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_resets_connections_for_a_moment_is_survived() {
    let reasons = drop_and_resume("blip", Mode::Reset, async |p: &Proxy| {
        until("an attempt reset by the proxy", || {
            p.accepted(Mode::Reset) >= 1
        })
        .await
    })
    .await;
    assert!(reasons.len() >= 2, "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_attempt_fails_at_connect_timeout() {
    let s = Server::start("");
    let proxy = Proxy::start(s.port);
    proxy.set_mode(Mode::BlackHole);
    let mut opts = ClientOptions::new(proxy.ws("/ws"), Auth::token(token("u1", "user", &[])));
    opts.connect_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    match within("connect", Client::connect(opts)).await {
        Err(e @ Error::ConnectTimeout(_)) => {
            assert_eq!(
                e.to_string(),
                "not authenticated within connect_timeout (300ms)"
            )
        }
        Err(e) => panic!("expected ConnectTimeout, got {e}"),
        Ok(_) => panic!("a black hole authenticated"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the deadline"
    );
}
