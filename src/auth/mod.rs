//! Who is calling: JWT claims ([`jwt`]), one-time WebSocket tickets ([`tickets`]), the
//! REST `Authorization` header (api key or Bearer token), and what is done about a
//! refused credential ([`failures`]: counted and logged, rate-limited).
//!
//! Pure checks plus the ticket table, which is shared by all shards (a ticket is issued
//! by whichever shard took the `POST` and redeemed by whichever takes the socket). The
//! table takes a mutex, but tickets are off the publish → socket path.

pub mod failures;
pub mod jwt;
pub mod tickets;

use jwt::{Claims, Role, TokenError};

/// An authenticated REST caller.
#[derive(Debug)]
pub enum Principal {
    /// A configured api key: a server-side publisher or operator.
    ApiKey,
    Token(Claims),
}

impl Principal {
    /// Api keys, admins and services may publish (PROTOCOL.md §1, §8).
    pub fn may_publish(&self) -> bool {
        match self {
            Principal::ApiKey => true,
            Principal::Token(c) => matches!(c.role, Role::Admin | Role::Service),
        }
    }
}

/// Why a REST caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header (use 'apikey <key>' or 'Bearer <jwt>')")]
    Missing,
    #[error("Authorization header must be 'apikey <key>' or 'Bearer <jwt>'")]
    Malformed,
    #[error("api key is not valid")]
    BadApiKey,
    /// `Bearer` with something that is not a JWT: most often an api key under the wrong
    /// scheme, so the message says which scheme takes it.
    #[error("a Bearer credential must be a JWT (three dot-separated parts); an api key goes in 'Authorization: apikey <key>'")]
    NotAJwt,
    #[error("{0}")]
    Token(#[from] TokenError),
}

impl AuthError {
    /// Label for `shardcast_auth_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed | AuthError::NotAJwt => "malformed",
            AuthError::BadApiKey => "bad_api_key",
            AuthError::Token(e) => e.reason(),
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a key
/// matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks an `Authorization` header value.
pub fn authorize(
    header: Option<&str>,
    api_keys: &[String],
    keys: &jwt::Keys,
    now_secs: u64,
) -> Result<Principal, AuthError> {
    let h = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, value) = h.split_once(' ').ok_or(AuthError::Malformed)?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("apikey") {
        let mut ok = false;
        for k in api_keys {
            ok |= constant_time_eq(k.as_bytes(), value.as_bytes());
        }
        if ok {
            Ok(Principal::ApiKey)
        } else {
            Err(AuthError::BadApiKey)
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if value.split('.').count() != 3 {
            return Err(AuthError::NotAJwt);
        }
        Ok(Principal::Token(jwt::verify_with(keys, value, now_secs)?))
    } else {
        Err(AuthError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_under_bearer_points_at_apikey() {
        let keys = vec!["dev-key".to_string()];
        let s = &jwt::Keys::hs256(b"s");
        let e = authorize(Some("Bearer dev-key"), &keys, s, 0).unwrap_err();
        assert!(matches!(e, AuthError::NotAJwt), "{e:?}");
        assert!(e.to_string().contains("apikey <key>"), "{e}");
        assert_eq!(e.reason(), "malformed");
    }

    #[test]
    fn api_keys_and_schemes() {
        let keys = vec!["k1".to_string()];
        let s = &jwt::Keys::hs256(b"s");
        assert!(matches!(
            authorize(Some("apikey k1"), &keys, s, 0),
            Ok(Principal::ApiKey)
        ));
        assert!(matches!(
            authorize(Some("ApiKey  k1 "), &keys, s, 0),
            Ok(Principal::ApiKey)
        ));
        assert!(matches!(
            authorize(Some("apikey k2"), &keys, s, 0),
            Err(AuthError::BadApiKey)
        ));
        assert!(matches!(
            authorize(None, &keys, s, 0),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            authorize(Some("Basic x"), &keys, s, 0),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            authorize(Some("Bearer x.y.z"), &keys, s, 0),
            Err(AuthError::Token(_))
        ));
    }
}
