//! The one rule for REST query parameters (docs/PROTOCOL-NOTES.md, REST), against the real
//! server on every list endpoint: entities, channels and dead letters each refuse a
//! repeated parameter and a number that is not plain decimal digits with 400
//! `BAD_MESSAGE` naming the parameter, and take the plain forms.

mod common;

use common::*;
use serde_json::{json, Value};

const ENTITIES: &str = "/api/v1/entities/items";
const CHANNELS: &str = "/api/v1/realtime-subscriptions";
const DEAD_LETTERS: &str = "/api/v1/services/g/dead-letters";

fn get(s: &Server, path: &str) -> (u16, Value) {
    s.http("GET", path, None, Some(&apikey()))
}

/// `GET path` is 400 `BAD_MESSAGE` whose message contains `needle`.
fn refused(s: &Server, path: &str, needle: &str) {
    let (st, body) = get(s, path);
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("BAD_MESSAGE")),
        "GET {path}: {body}"
    );
    let m = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(needle),
        "GET {path}: {m:?} does not name {needle:?}"
    );
}

#[test]
fn repeated_parameters_are_refused_on_every_list() {
    let s = Server::start("");
    for base in [ENTITIES, CHANNELS, DEAD_LETTERS] {
        // The same value twice is refused too: a repeat is a client's mistake either way.
        for (query, name) in [
            ("limit=1&limit=2", "limit"),
            ("limit=5&limit=5", "limit"),
            ("limit=1&%6Cimit=1", "limit"),
            // The repeat is found before the bad value is looked at.
            ("limit=x&limit=1", "limit"),
        ] {
            refused(
                &s,
                &format!("{base}?{query}"),
                &format!("query parameter '{name}' is given more than once"),
            );
        }
    }
    refused(
        &s,
        &format!("{ENTITIES}?filter=a&orderBy=id&filter=b"),
        "'filter' is given more than once",
    );
    refused(
        &s,
        &format!("{ENTITIES}?cursor=&cursor="),
        "'cursor' is given more than once",
    );
    refused(
        &s,
        &format!("{CHANNELS}?status=connected&status=disconnected"),
        "'status' is given more than once",
    );
    refused(
        &s,
        &format!("{DEAD_LETTERS}?cursor=1&cursor=2"),
        "'cursor' is given more than once",
    );
}

#[test]
fn numbers_are_plain_decimal_digits_on_every_list() {
    let s = Server::start("");
    for (base, name, max) in [
        (ENTITIES, "limit", "1000"),
        (CHANNELS, "limit", "100"),
        (CHANNELS, "page", "1000000"),
        (DEAD_LETTERS, "limit", "1000"),
    ] {
        // `%2B` is a `+` (a bare `+` decodes to a space).
        for bad in ["%2B5", "007", "05", "+5", "5%20", "-5", "5.0", ""] {
            refused(
                &s,
                &format!("{base}?{name}={bad}"),
                &format!("{name} must be a whole number from 1 to {max} in plain decimal digits"),
            );
        }
    }
    for bad in ["%2B5", "007", "00"] {
        refused(
            &s,
            &format!("{DEAD_LETTERS}?cursor={bad}"),
            "cursor must be a whole number from 0 to",
        );
    }
}

#[test]
fn plain_parameters_still_work() {
    let s = Server::start("");
    for i in 0..3 {
        s.put_entity("items", &format!("e{i}"), json!({"n": i}));
    }
    let (st, page) = get(&s, &format!("{ENTITIES}?limit=2&orderBy=n"));
    assert_eq!(st, 200, "{page}");
    assert_eq!(
        page["data"],
        json!([{"id": "e0", "n": 0}, {"id": "e1", "n": 1}])
    );
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (st, rest) = get(
        &s,
        &format!("{ENTITIES}?orderBy=n&cursor={cursor}&limit=10"),
    );
    assert_eq!(
        (st, &rest["data"]),
        (200, &json!([{"id": "e2", "n": 2}])),
        "{rest}"
    );

    let (st, l) = get(&s, &format!("{CHANNELS}?page=1&limit=10"));
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["pagination"]["limit"], 10, "{l}");
    // Past the query's checks: group `g` has never existed, so the answer is its 404.
    let (st, dl) = get(&s, &format!("{DEAD_LETTERS}?limit=10&cursor=0"));
    assert_eq!(
        (st, &dl["error"]["code"]),
        (404, &json!("NOT_FOUND")),
        "{dl}"
    );
}
