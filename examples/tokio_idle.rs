//! The idle path of shardcast written the tokio way, for one measurement: user-space RSS
//! per idle, authenticated, subscribed WebSocket connection with a task per connection
//! (the README's reason for running the shards on mio directly cites it).
//!
//! Same work as the engine up to idling: HTTP upgrade (the engine's parser), token in
//! the query (the engine's HS256 check), `authenticated`, one `subscribeEvents` answered
//! with `subscribedEvents`, the subscription kept (id and path), then waiting for input
//! with no buffer of its own (reads go to a per-thread scratch buffer, as in a shard).
//! One current-thread runtime, like one shard. Nothing else (no fan-out, no heartbeats):
//! it exists to be measured by the load harness's `idle` scenario:
//!
//!     cargo run --release --example tokio_idle -- 127.0.0.1:18090 SECRET &
//!     target/release/loadtest idle --url ws://127.0.0.1:18090/ws \
//!         --http http://127.0.0.1:18090 --secret SECRET --api-key unused \
//!         --connections 18000 --duration 5s --server-pid $!

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use serde_json::{json, Value};
use shardcast::http::{self, Parsed};
use shardcast::protocol::ws::{self, OpCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

thread_local! {
    /// Read buffer shared by every connection of the thread.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 64 * 1024]);
}

/// What a connection keeps while idle.
struct Session {
    subscription: Option<(Box<str>, Box<str>)>,
    /// A partial frame, only while one is split over reads.
    partial: Vec<u8>,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let secret: Rc<[u8]> = args
        .next()
        .unwrap_or_else(|| "secret".into())
        .as_bytes()
        .into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let secret = secret.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(stream, &secret).await;
            });
        }
    })
}

/// Reads into the scratch buffer and hands the bytes to `f`; `Ok(false)` at EOF.
async fn read_with(stream: &TcpStream, mut f: impl FnMut(&[u8])) -> io::Result<bool> {
    loop {
        stream.readable().await?;
        let r = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s[..]) {
                Ok(0) => Ok(false),
                Ok(n) => {
                    f(&s[..n]);
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn serve(mut stream: TcpStream, secret: &[u8]) -> io::Result<()> {
    // The upgrade request.
    let mut head = Vec::new();
    let req = loop {
        if !read_with(&stream, |b| head.extend_from_slice(b)).await? {
            return Ok(());
        }
        match http::parse(&head, 0) {
            Parsed::Complete(req, _) => break req,
            Parsed::NeedHead | Parsed::NeedBody { .. } => continue,
            Parsed::Error(..) => return Ok(()),
        }
    };
    drop(head);
    let token = http::query_pairs(&req.query)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let Some(key) = req.header("sec-websocket-key") else {
        return Ok(());
    };
    let accept = ws::accept_key(key);
    drop(req);
    stream
        .write_all(&http::upgrade_response(&accept, None))
        .await?;
    let now = shardcast::time::unix_secs();
    let Ok(claims) = shardcast::auth::jwt::verify(secret, &token, now) else {
        return Ok(());
    };
    drop(token);
    send(
        &mut stream,
        &json!({"type": "authenticated", "connectionId": "tokio", "sub": claims.sub}),
    )
    .await?;
    drop(claims);
    let mut session = Session {
        subscription: None,
        partial: Vec::new(),
    };
    loop {
        let mut replies: Vec<Value> = Vec::new();
        let mut closed = false;
        let open = read_with(&stream, |b| {
            closed |= on_bytes(&mut session, b, &mut replies);
        })
        .await?;
        for r in &replies {
            send(&mut stream, r).await?;
        }
        if !open || closed {
            return Ok(());
        }
    }
}

/// Handles every complete frame in `partial` + `bytes`; true when the peer closed.
fn on_bytes(session: &mut Session, bytes: &[u8], replies: &mut Vec<Value>) -> bool {
    let mut buf = std::mem::take(&mut session.partial);
    buf.extend_from_slice(bytes);
    let mut at = 0;
    while let Ok(Some(h)) = ws::parse_header(&buf[at..]) {
        let end = at + h.header_len + h.payload_len as usize;
        if end > buf.len() {
            break;
        }
        let payload = &mut buf[at + h.header_len..end];
        ws::unmask(payload, h.mask);
        match h.opcode {
            OpCode::Close => return true,
            OpCode::Text => {
                if let Ok(m) = serde_json::from_slice::<Value>(payload) {
                    if m["type"] == "subscribeEvents" {
                        let s = &m["subscriptions"][0];
                        let id = s["id"].as_str().unwrap_or_default();
                        let path = s["path"].as_str().unwrap_or_default();
                        session.subscription = Some((id.into(), path.into()));
                        replies.push(json!({
                            "type": "subscribedEvents",
                            "requestId": m["requestId"],
                            "subscriptions": [{"id": id, "path": path, "seq": 0}],
                        }));
                    } else if m["type"] == "ping" {
                        replies.push(json!({"type": "pong"}));
                    }
                }
            }
            _ => {}
        }
        at = end;
    }
    if at < buf.len() {
        buf.drain(..at);
        session.partial = buf;
    }
    false
}

async fn send(stream: &mut TcpStream, v: &Value) -> io::Result<()> {
    let mut f = Vec::new();
    ws::write_frame(&mut f, OpCode::Text, v.to_string().as_bytes());
    stream.write_all(&f).await
}
