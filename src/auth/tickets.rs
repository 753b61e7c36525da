//! One-time WebSocket tickets (`POST /api/v1/ws-tickets`, then `/ws?uuid=…`).
//!
//! Shared by all shards behind one mutex: issuing and redeeming are rare next to
//! deliveries and never on the fan-out path. A ticket is removed when redeemed, so a
//! second use fails; expired tickets are swept whenever one is issued. A ticket never
//! outlives the token it was issued for (PROTOCOL.md §2): it expires at its TTL or at the
//! token's `exp`, whichever comes first.

use std::collections::HashMap;
use std::sync::Mutex;

use super::jwt::Claims;

/// Why a ticket was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is unknown or was already used")]
    Unknown,
    #[error("ticket expired")]
    Expired,
    #[error("the ticket cannot be checked now: Redis cannot be reached (cluster mode); retry")]
    Unavailable,
}

impl TicketError {
    pub fn reason(&self) -> &'static str {
        match self {
            TicketError::Unknown => "ticket_unknown",
            TicketError::Expired => "ticket_expired",
            TicketError::Unavailable => "ticket_unavailable",
        }
    }
}

#[derive(Default)]
pub struct Tickets {
    table: Mutex<HashMap<String, (Claims, u64)>>,
}

/// A random UUID v4, lower-case hex with dashes.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    // getrandom only fails without an OS entropy source; a ticket must then still be
    // unguessable, so fall back to the time-seeded hash of the address space.
    if getrandom::getrandom(&mut b).is_err() {
        let seed = crate::time::unix_ms() ^ (&b as *const _ as u64);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (seed.rotate_left(i as u32 * 7) >> (i % 8)) as u8;
        }
    }
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Tickets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Claims, u64)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a ticket for `claims`; returns it and its expiry (ms since the epoch): `ttl_ms`
    /// from now, or the token's `exp` if that comes first (a token is expired from its
    /// `exp` second on, so the ticket is too).
    pub fn issue(&self, claims: Claims, now_ms: u64, ttl_ms: u64) -> (String, u64) {
        let id = uuid_v4();
        let expires = expiry(&claims, now_ms, ttl_ms);
        let mut t = self.lock();
        t.retain(|_, (_, exp)| *exp > now_ms);
        t.insert(id.clone(), (claims, expires));
        (id, expires)
    }

    /// Redeems a ticket once.
    pub fn redeem(&self, id: &str, now_ms: u64) -> Result<Claims, TicketError> {
        let (claims, expires) = self.lock().remove(id).ok_or(TicketError::Unknown)?;
        check_expiry(expires, now_ms)?;
        Ok(claims)
    }
}

/// A ticket as a backend that is not this process keeps it (cluster mode: a Redis
/// value): the claims it carries and when it expires (ms since the epoch), as JSON.
pub fn encode(claims: &Claims, expires_ms: u64) -> String {
    use super::jwt::Scopes;
    let scopes = match &claims.scopes {
        Scopes::All => serde_json::json!(null),
        Scopes::Prefixes(p) => serde_json::json!(p),
    };
    serde_json::json!({
        "sub": claims.sub, "exp": claims.exp, "role": claims.role.as_str(),
        "scopes": scopes, "group": claims.group, "org": claims.org, "expires": expires_ms,
    })
    .to_string()
}

/// Reads back what [`encode`] wrote: the claims and the expiry. `None` if it is not that
/// (a damaged or foreign value, refused like an unknown ticket).
pub fn decode(text: &[u8]) -> Option<(Claims, u64)> {
    use super::jwt::{Role, Scopes};
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    let scopes = match &v["scopes"] {
        serde_json::Value::Null => Scopes::All,
        serde_json::Value::Array(a) => Scopes::Prefixes(
            a.iter()
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    };
    let claims = Claims {
        sub: opt("sub")?,
        exp: v["exp"].as_u64()?,
        role: Role::from_claim(v["role"].as_str()?)?,
        scopes,
        group: opt("group"),
        org: opt("org"),
    };
    Some((claims, v["expires"].as_u64()?))
}

/// Whether a ticket that expires at `expires_ms` is still good at `now_ms`.
pub fn check_expiry(expires_ms: u64, now_ms: u64) -> Result<(), TicketError> {
    if expires_ms <= now_ms {
        return Err(TicketError::Expired);
    }
    Ok(())
}

/// When a ticket issued now for `claims` with `ttl_ms` expires: the TTL, or the token's
/// `exp` if that comes first (a token is expired from its `exp` second on).
pub fn expiry(claims: &Claims, now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms
        .saturating_add(ttl_ms)
        .min(claims.exp.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{Role, Scopes};

    fn claims() -> Claims {
        Claims {
            sub: "u".into(),
            exp: u64::MAX,
            role: Role::User,
            scopes: Scopes::All,
            group: None,
            org: None,
        }
    }

    #[test]
    fn encoded_tickets_read_back() {
        let mut c = claims();
        c.exp = 1_900_000_000;
        c.group = Some("g".into());
        let (back, exp) = decode(encode(&c, 42).as_bytes()).unwrap();
        assert_eq!((back, exp), (c.clone(), 42));
        c.scopes = Scopes::Prefixes(vec!["a/b".into()]);
        c.role = Role::Service;
        assert_eq!(decode(encode(&c, 1).as_bytes()).unwrap().0, c);
        assert_eq!(decode(b"{}"), None);
        assert_eq!(decode(b"not json"), None);
    }

    #[test]
    fn single_use_and_expiry() {
        let t = Tickets::default();
        let (id, exp) = t.issue(claims(), 1000, 30_000);
        assert_eq!(exp, 31_000);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(t.redeem(&id, 2000).unwrap().sub, "u");
        assert_eq!(t.redeem(&id, 2000).unwrap_err(), TicketError::Unknown);
        let (id2, _) = t.issue(claims(), 1000, 10);
        assert_eq!(t.redeem(&id2, 1010).unwrap_err(), TicketError::Expired);
    }

    #[test]
    fn capped_at_the_token_exp() {
        let t = Tickets::default();
        // The token expires at second 20, before the 30 s TTL ends.
        let short = Claims {
            exp: 20,
            ..claims()
        };
        let (id, exp) = t.issue(short.clone(), 1000, 30_000);
        assert_eq!(exp, 20_000);
        assert_eq!(t.redeem(&id, 20_000).unwrap_err(), TicketError::Expired);
        let (id, _) = t.issue(short, 1000, 30_000);
        assert_eq!(t.redeem(&id, 19_999).unwrap().sub, "u");
        // A token that outlives the TTL leaves the TTL in charge.
        let long = Claims {
            exp: 1_000,
            ..claims()
        };
        assert_eq!(t.issue(long, 1000, 30_000).1, 31_000);
    }
}
