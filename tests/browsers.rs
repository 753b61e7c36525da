//! Browsers (PROTOCOL.md §11): the `Origin` allow-list on every upgrade and CORS on the
//! REST API (`auth.allowed_origins`), against the real binary; and one page in headless
//! Chromium (Debian's `chromium`, driven by playwright-core) that, from another origin,
//! fetches a ticket and opens a socket with it, then creates, reads, attaches to and
//! deletes a channel.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn upgrade_headers(origin: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if let Some(o) = origin {
        h.push(("Origin", o));
    }
    h
}

#[test]
fn upgrades_check_the_origin_before_anything_else() {
    let s = Server::start("[testing]\necho_path = \"/echo\"\n");
    let t = token("u", "user", &["*"]);
    let ws = format!("/ws?token={t}");
    // No Origin (a server, a CLI) and loopback origins (the default): upgraded.
    for origin in [
        None,
        Some("http://localhost:5173"),
        Some("http://127.0.0.1:9"),
        Some("https://[::1]"),
    ] {
        let (st, _, body) = raw_http(&s, "GET", &ws, &upgrade_headers(origin), "");
        assert_eq!(st, 101, "{origin:?}: {body}");
    }
    // Another site: 403 FORBIDDEN with a JSON body, on every upgrade path, even with a
    // bad token (the origin is checked first), counted with its own reason.
    for path in [
        ws.as_str(),
        "/ws?token=garbage",
        "/channels/chan_0000000000000000",
        "/echo",
    ] {
        let (st, h, body) = raw_http(
            &s,
            "GET",
            path,
            &upgrade_headers(Some("https://evil.example")),
            "",
        );
        assert_eq!(st, 403, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "FORBIDDEN", "{body}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example"));
        assert!(!h.contains_key("access-control-allow-origin"));
    }
    assert!(
        s.metric_where("shardcast_auth_failures_total", "reason=\"origin\"")
            .unwrap()
            >= 4.0
    );
}

#[test]
fn a_configured_list_or_star_replaces_the_loopback_default() {
    let s = Server::start("[auth]\njwt_secret = \"test-secret-0123456789abcdef\"\napi_keys = [\"test-api-key\"]\nallowed_origins = [\"https://app.example.com\", \"http://localhost:8080\"]\n");
    let t = token("u", "user", &["*"]);
    let ws = format!("/ws?token={t}");
    for (origin, want) in [
        ("https://app.example.com", 101),
        ("https://APP.example.com", 101),
        ("http://localhost:8080", 101),
        ("http://localhost:8081", 403),
        ("http://app.example.com", 403),
        ("https://app.example.com:8443", 403),
    ] {
        assert_eq!(
            raw_http(&s, "GET", &ws, &upgrade_headers(Some(origin)), "").0,
            want,
            "{origin}"
        );
    }
    let star = Server::start("[auth]\njwt_secret = \"test-secret-0123456789abcdef\"\napi_keys = [\"test-api-key\"]\nallowed_origins = [\"*\"]\n");
    let ws = format!("/ws?token={}", token("u", "user", &["*"]));
    assert_eq!(
        raw_http(
            &star,
            "GET",
            &ws,
            &upgrade_headers(Some("https://anything.example")),
            ""
        )
        .0,
        101
    );
}

#[test]
fn bad_origin_lists_stop_start_up_naming_the_key() {
    let err = serve_refused(&[("SHARDCAST_AUTH__ALLOWED_ORIGINS", "[\"app.example.com\"]")]);
    assert!(
        err.contains("auth.allowed_origins") && err.contains("app.example.com"),
        "{err}"
    );
}

#[test]
fn the_rest_api_answers_preflights_and_names_allowed_origins() {
    let s = Server::start("");
    let origin = "http://localhost:5173";
    // A preflight for the ticket endpoint.
    let (st, h, _) = raw_http(
        &s,
        "OPTIONS",
        "/api/v1/ws-tickets",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        "",
    );
    assert_eq!(st, 204);
    assert_eq!(
        h.get("access-control-allow-origin").map(String::as_str),
        Some(origin)
    );
    assert_eq!(h.get("vary").map(String::as_str), Some("Origin"));
    assert_eq!(
        h.get("access-control-allow-methods").map(String::as_str),
        Some("POST")
    );
    assert_eq!(
        h.get("access-control-allow-headers").map(String::as_str),
        Some("Authorization, Content-Type")
    );
    assert!(h
        .get("access-control-max-age")
        .is_some_and(|v| v.parse::<u32>().unwrap() > 0));
    assert!(
        !h.contains_key("access-control-allow-credentials"),
        "no credentials mode"
    );
    // The methods are the route's.
    for (path, methods) in [
        ("/api/v1/entities/orders/o1", "GET, PUT, PATCH, DELETE"),
        ("/api/v1/realtime-subscriptions", "GET, POST"),
        ("/api/v1/realtime-subscriptions/chan_1/reconnect", "PUT"),
        ("/api/v1/services/g/dead-letters", "GET, DELETE"),
    ] {
        let (st, h, _) = raw_http(
            &s,
            "OPTIONS",
            path,
            &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
            "",
        );
        assert_eq!(
            (
                st,
                h.get("access-control-allow-methods").map(String::as_str)
            ),
            (204, Some(methods)),
            "{path}"
        );
    }
    // A disallowed origin: 403 on the request, no CORS headers on the preflight.
    let (st, h, _) = raw_http(
        &s,
        "OPTIONS",
        "/api/v1/ws-tickets",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    );
    assert_eq!(st, 403);
    assert!(!h.contains_key("access-control-allow-origin"));
    let (st, h, body) = raw_http(
        &s,
        "POST",
        "/api/v1/publish",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &apikey()),
        ],
        r#"{"path":"a","eventType":"e"}"#,
    );
    assert_eq!(st, 403, "{body}");
    assert!(!h.contains_key("access-control-allow-origin"));
    // Every answer to an allowed origin names it, errors included.
    let tok = format!("Bearer {}", token("u", "user", &["*"]));
    let (st, h, body) = raw_http(
        &s,
        "POST",
        "/api/v1/ws-tickets",
        &[("Origin", origin), ("Authorization", &tok)],
        "",
    );
    assert_eq!(st, 201, "{body}");
    assert_eq!(
        h.get("access-control-allow-origin").map(String::as_str),
        Some(origin)
    );
    for (method, path, auth) in [
        ("POST", "/api/v1/publish", None),
        ("GET", "/api/v1/entities/orders/nope", Some(apikey())),
        ("GET", "/api/v1/nothing", None),
    ] {
        let mut hs = vec![("Origin", origin)];
        if let Some(a) = &auth {
            hs.push(("Authorization", a));
        }
        let (st, h, body) = raw_http(&s, method, path, &hs, "");
        assert!(st >= 400, "{path}: {st} {body}");
        assert_eq!(
            h.get("access-control-allow-origin").map(String::as_str),
            Some(origin),
            "{path}: {st}"
        );
        assert_eq!(h.get("vary").map(String::as_str), Some("Origin"));
    }
    // Durable answers (they come through the mailbox) carry it too.
    let (st, h, _) = raw_http(
        &s,
        "PUT",
        "/api/v1/entities/orders/o1",
        &[("Origin", origin), ("Authorization", &apikey())],
        r#"{"n":1}"#,
    );
    assert_eq!(
        (st, h.get("access-control-allow-origin").map(String::as_str)),
        (200, Some(origin))
    );
    // Without an Origin header: no CORS headers at all.
    let (st, h, _) = raw_http(
        &s,
        "POST",
        "/api/v1/ws-tickets",
        &[("Authorization", &tok)],
        "",
    );
    assert_eq!(st, 201);
    assert!(!h.contains_key("access-control-allow-origin"));
}

/// Serves one HTML page on another loopback port (another origin) until dropped.
struct Page {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Page {
    fn serve(html: String) -> Page {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).ok();
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                            html.len()
                        );
                        let _ = c.write_all(r.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Page { port, stop }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_page_on_another_origin_fetches_a_ticket_and_opens_a_socket() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready("browser test", &root) {
        return;
    }
    let s = Server::start("");
    let t = token("browser-user", "user", &["jobs"]);
    let api = format!("http://127.0.0.1:{}", s.port);
    let html = std::fs::read_to_string(root.join("tests/browser/ticket.html"))
        .unwrap()
        .replace("__API__", &api)
        .replace("__TOKEN__", &t);
    // Served from `localhost`, another origin than the API's 127.0.0.1 (and another port).
    let page = Page::serve(html);
    let url = format!("http://localhost:{}/", page.port);
    let publisher = std::thread::spawn({
        let port = s.port;
        move || {
            // Publishes until the page has seen one (the page reports it).
            for i in 0..200 {
                let body = format!(
                    r#"{{"events":[{{"path":"jobs/1","eventType":"done","data":{{"i":{i}}}}},{{"path":"claims/c1","eventType":"status_changed","data":{{"user_id":"browser-user","i":{i}}}}}]}}"#
                );
                let mut c = match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let req = format!(
                    "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(req.as_bytes());
                let mut sink = Vec::new();
                let _ = c.read_to_end(&mut sink);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let out = std::process::Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .arg(&url)
        .output()
        .expect("node");
    drop(publisher);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node failed: {stdout}\n{stderr}\n{}",
        s.log()
    );
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(report["ticket"], "ok", "{report}");
    assert_eq!(report["authenticated"], true, "{report}");
    assert_eq!(report["subscribed"], true, "{report}");
    assert_eq!(report["event"]["path"], "jobs/1", "{report}");
    // The channels REST API and a channel socket from the same page.
    assert_eq!(report["channel"]["status"], 200, "{report}");
    assert_eq!(
        report["channel"]["subscription_type"], "user_claims",
        "{report}"
    );
    assert_eq!(report["channelEvent"]["channelId"], true, "{report}");
    assert_eq!(report["channelEvent"]["path"], "claims/c1", "{report}");
    assert_eq!(
        report["channelClosed"], 1000,
        "deleting the channel closed its socket: {report}"
    );
}
