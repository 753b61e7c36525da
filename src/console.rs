//! The operator console: `/console`, a page the node serves itself (README, "Operator
//! console"; docs/PROTOCOL-NOTES.md).
//!
//! Owns only the static assets and how they are served. They are compiled into the binary
//! (`include_str!`), so the console works offline and needs no CDN: `console/index.html`
//! and `console/console.css` as written, and `console/dist/console.js`, the bundle
//! `scripts/test` builds from `console/src/*.ts` with esbuild and checks is up to date
//! (it is committed, so a plain `cargo build` needs no npm). The page logs in with an
//! admin token kept in the tab's session storage and then uses only the REST API, the
//! read-only `/api/v1/admin/…` views ([`crate::api`]) and a WebSocket: it has no power
//! the REST API does not already give an admin.
//!
//! `console.enabled = false`: every `/console` path answers 404. A request whose `Origin`
//! is not allowed (`auth.allowed_origins`) is refused with 403, like the REST API.

use crate::api::Route;
use crate::http::{self, Request};
use crate::node::Node;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const CONSOLE_JS: &str = include_str!("../console/dist/console.js");

/// Scripts and styles from this origin only, no inline code, no framing; requests and
/// sockets to this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if there is one: (content type, body).
fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/console" | "/console/" | "/console/index.html" => {
            Some(("text/html; charset=utf-8", INDEX_HTML))
        }
        "/console/console.css" => Some(("text/css; charset=utf-8", CONSOLE_CSS)),
        "/console/console.js" => Some(("text/javascript; charset=utf-8", CONSOLE_JS)),
        _ => None,
    }
}

/// Answers a request under `/console`.
pub fn route(req: &Request, node: &Node, close: bool) -> Route {
    let refuse = |status: u16, code: &str, message: &str| {
        Route::Respond(http::error_response(status, code, message, None, close))
    };
    if !node.config().console.enabled {
        return refuse(
            404,
            "NOT_FOUND",
            "the operator console is off on this node (console.enabled = false)",
        );
    }
    if let Some(origin) = req.header("origin").map(str::trim) {
        if !node.origins().allows(origin) {
            let m = format!(
                "origin '{}' is not allowed (auth.allowed_origins)",
                crate::protocol::truncate(origin, 200)
            );
            return refuse(403, "FORBIDDEN", &m);
        }
    }
    let Some((content_type, body)) = asset(req.path.as_str()) else {
        return refuse(
            404,
            "NOT_FOUND",
            &format!(
                "no console asset at {} (the console is at /console)",
                crate::protocol::truncate(&req.path, 200)
            ),
        );
    };
    if req.method != "GET" && req.method != "HEAD" {
        return refuse(
            405,
            "BAD_MESSAGE",
            &format!(
                "method {} is not allowed on {} (allowed: GET, HEAD)",
                crate::protocol::truncate(&req.method, 16),
                req.path
            ),
        );
    }
    let headers = [
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        // Small, and must change with the binary: never cached.
        ("Cache-Control", "no-store"),
    ];
    let body = if req.method == "HEAD" { "" } else { body };
    Route::Respond(http::response_with(
        200,
        &headers,
        content_type,
        body.as_bytes(),
        close,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_names_them() {
        for p in [
            "/console",
            "/console/",
            "/console/console.js",
            "/console/console.css",
        ] {
            let (_, body) = asset(p).unwrap();
            assert!(!body.is_empty(), "{p}");
        }
        assert!(INDEX_HTML.contains("/console/console.js"));
        assert!(INDEX_HTML.contains("/console/console.css"));
        assert!(asset("/console/nope").is_none());
        // No inline script: the policy forbids it.
        assert!(!INDEX_HTML.contains("<script>"));
    }
}
