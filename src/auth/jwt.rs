//! JSON Web Tokens (PROTOCOL.md section 1): verification into typed [`Claims`] with the
//! node's [`Keys`], and HS256 signing for the `shardcast token` command and tests.
//!
//! The cryptography is `jsonwebtoken`'s (on its RustCrypto backend); this module is the
//! thin layer around it that pins algorithms to keys, reads our claims and scopes, and
//! words the errors. Pure functions with no clock and no I/O: the caller passes the current
//! time, so any thread (connection handshakes on the shards, REST handlers, the CLI) may
//! use them. Guarantees of [`verify_with`]: a token's `alg` must be one the node has a key
//! for (HS256 with `auth.jwt_secret`; RS256 or ES256, whichever the key in
//! `auth.jwt_public_key` is), checked before the signature, so `none`, a swapped algorithm
//! or a public key used as an HMAC secret never reach it; the claims are only looked at
//! once the signature holds; a returned [`Claims`] has a non-empty `sub` and `exp > now`.
//! Errors are sentences fit to send to the client, and [`TokenError::reason`] gives a
//! short metric label.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Map, Value};
use thiserror::Error;

/// `nbf` may be this many seconds in the future: a token minted on a machine whose clock
/// runs a little ahead is usable at once. `exp` has no leeway: an expired token is refused
/// from its second of expiry on (the contract says so, and clients refresh on reconnect).
pub const NBF_LEEWAY_SECS: u64 = 5;

/// The verification keys of a node: the HS256 secret always, and at most one public key
/// whose type fixed its algorithm when it was loaded.
pub struct Keys {
    hmac: DecodingKey,
    public: Option<(Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of debug output.
        f.debug_struct("Keys")
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish_non_exhaustive()
    }
}

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), as it appears in a P-256 key's
/// SubjectPublicKeyInfo.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

impl Keys {
    /// HS256 with `secret` only.
    pub fn hs256(secret: &[u8]) -> Keys {
        Keys {
            hmac: DecodingKey::from_secret(secret),
            public: None,
        }
    }

    /// HS256 with `secret`, plus the PEM public key `pem` if given: an RSA key means
    /// RS256, a P-256 key ES256; anything else is refused with a sentence naming why.
    pub fn new(secret: &[u8], pem: Option<&[u8]>) -> Result<Keys, String> {
        let mut keys = Keys::hs256(secret);
        let Some(pem) = pem else {
            return Ok(keys);
        };
        let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM text file".to_string())?;
        if text.contains("PRIVATE KEY") {
            return Err("holds a private key; give the public key only".to_string());
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            keys.public = Some((Algorithm::RS256, key));
            return Ok(keys);
        }
        let block = pem::parse(pem).map_err(|e| format!("is not a PEM public key ({e})"))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(format!(
                "holds a '{}' PEM block; expected 'PUBLIC KEY' (RSA or P-256)",
                clip(block.tag())
            ));
        }
        if !block
            .contents()
            .windows(P256_OID.len())
            .any(|w| w == P256_OID)
        {
            return Err("is neither an RSA nor a P-256 public key (ES256 needs P-256)".to_string());
        }
        let key = DecodingKey::from_ec_pem(pem)
            .map_err(|e| format!("is not a usable P-256 public key ({e})"))?;
        keys.public = Some((Algorithm::ES256, key));
        Ok(keys)
    }

    /// The algorithms tokens may use, for error messages.
    fn accepted(&self) -> String {
        match &self.public {
            None => "HS256 only".to_string(),
            Some((alg, _)) => format!("HS256 or {alg:?}"),
        }
    }

    /// The key for `alg`, if the node has one.
    fn for_alg(&self, alg: &str) -> Option<(Algorithm, &DecodingKey)> {
        match (alg, &self.public) {
            ("HS256", _) => Some((Algorithm::HS256, &self.hmac)),
            ("RS256", Some((Algorithm::RS256, k))) => Some((Algorithm::RS256, k)),
            ("ES256", Some((Algorithm::ES256, k))) => Some((Algorithm::ES256, k)),
            _ => None,
        }
    }
}

/// What a token holder is (claim `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Service,
    Admin,
}

impl Role {
    /// The claim string: `"user"`, `"service"` or `"admin"` (exact, lower case).
    pub fn from_claim(name: &str) -> Option<Role> {
        match name {
            "user" => Some(Role::User),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which paths a holder may subscribe to (claim `scopes`). This is only the scope check:
/// system paths (`$...`, admins only) are the caller's to refuse, whatever the scopes say.
#[derive(Clone, Debug, PartialEq)]
pub enum Scopes {
    All,
    /// Path prefixes, without trailing `/`; empty: nothing.
    Prefixes(Vec<String>),
}

impl Scopes {
    /// Whether a subscription to `path` is within scope: with prefix `p`, `path == p` or
    /// `path` starts with `p + "/"` (segment-wise, so `jobs` does not cover `jobsx`).
    pub fn allows(&self, path: &str) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Prefixes(prefixes) => prefixes.iter().any(|p| {
                path.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
        }
    }
}

/// A verified token's identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub sub: String,
    /// Expiry, whole seconds since the epoch (a fractional `exp` is rounded up); always
    /// greater than the `now` it was verified at.
    pub exp: u64,
    pub role: Role,
    pub scopes: Scopes,
    /// Absent, null or empty in the token: None.
    pub group: Option<String>,
    /// Absent, null or empty in the token: None.
    pub org: Option<String>,
}

impl Claims {
    /// The service group: the `group` claim, or `sub` when there is none.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.sub)
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or a header without a usable `alg`.
    #[error("{0}")]
    Malformed(&'static str),
    #[error("token algorithm '{alg}' is not accepted ({accepted})")]
    UnsupportedAlg { alg: String, accepted: String },
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired at {}", crate::time::rfc3339_ms(*.exp_ms))]
    Expired { exp_ms: u64 },
    #[error("token is not valid before {}", crate::time::rfc3339_ms(*.nbf_ms))]
    NotYetValid { nbf_ms: u64 },
    /// A required claim is missing, or a claim has the wrong type or an unknown value.
    #[error("{0}")]
    InvalidClaims(String),
}

impl TokenError {
    /// A short, fixed label for metrics (`shardcast_auth_failures_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnsupportedAlg { .. } => "unsupported_alg",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// Signs `claims` (normally a JSON object) as an HS256 JWT with header
/// `{"typ":"JWT","alg":"HS256"}`. No claim is checked or added.
pub fn sign(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    // HMAC takes any key, and a JSON value always serialises.
    .expect("HS256 signing of a JSON value cannot fail")
}

/// [`verify_with`] a node that has only the HS256 `secret`.
pub fn verify(secret: &[u8], token: &str, now_unix_secs: u64) -> Result<Claims, TokenError> {
    verify_with(&Keys::hs256(secret), token, now_unix_secs)
}

/// Checks `token` against `keys` at `now_unix_secs` and returns its claims. `exp <= now`
/// is expired; `nbf` may be up to [`NBF_LEEWAY_SECS`] ahead.
pub fn verify_with(keys: &Keys, token: &str, now_unix_secs: u64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "token must have three dot-separated parts",
        ));
    };

    let header = decode_json(header_b64, "token header is not valid base64url JSON")?;
    let Value::Object(header) = header else {
        return Err(TokenError::Malformed("token header is not a JSON object"));
    };
    // The algorithm is settled here, against the keys the node has, before anything else:
    // "none", a swapped algorithm, or an HS256 token made with the public key's bytes
    // (checked against the secret, never the public key) cannot get further.
    let (alg, key) = match header.get("alg") {
        Some(Value::String(alg)) => {
            keys.for_alg(alg)
                .ok_or_else(|| TokenError::UnsupportedAlg {
                    alg: clip(alg),
                    accepted: keys.accepted(),
                })?
        }
        Some(other) => {
            return Err(TokenError::UnsupportedAlg {
                alg: clip(&other.to_string()),
                accepted: keys.accepted(),
            });
        }
        None => return Err(TokenError::Malformed("token header has no 'alg'")),
    };
    // RFC 7515: a recipient must refuse extensions it is told are critical; we know none.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "token header lists critical extensions ('crit'); none are supported",
        ));
    }

    // The signature over `header.payload`, with this one algorithm and key. Everything
    // else (the payload's JSON, our claims, `exp` and `nbf`) is read here, and only once
    // the signature holds, so the wording and the rules are ours.
    if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
        return Err(TokenError::Malformed(
            "token signature is not valid base64url",
        ));
    }
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    // An error here is a key the crate cannot use for this algorithm or a signature of
    // the wrong shape for it: either way not a signature by our key.
    match jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), key, alg) {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(TokenError::BadSignature),
    }
    let payload = decode_json(payload_b64, "token payload is not valid base64url JSON")?;
    let Value::Object(payload) = payload else {
        return Err(TokenError::Malformed("token payload is not a JSON object"));
    };
    claims_from(&payload, now_unix_secs)
}

fn decode_json(part: &str, complaint: &'static str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(complaint))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(complaint))
}

/// Attacker-chosen text echoed in an error is cut short, so a client cannot make us send
/// (or log) a large blob back.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Seconds since the epoch as milliseconds, for messages; before the epoch shows as 1970.
fn secs_to_ms(secs: f64) -> u64 {
    // `as` saturates (and maps NaN to 0), which is the clamping wanted here.
    (secs * 1000.0) as u64
}

/// An optional claim, with JSON null treated as absent (some encoders write None as null).
fn optional<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).filter(|v| !v.is_null())
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match optional(claims, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::InvalidClaims(format!(
            "token claim '{name}' must be a string"
        ))),
    }
}

fn time_claim(value: &Value, name: &str) -> Result<f64, TokenError> {
    value.as_f64().ok_or_else(|| {
        TokenError::InvalidClaims(format!(
            "token claim '{name}' must be a number of seconds since 1970-01-01T00:00:00Z"
        ))
    })
}

fn claims_from(claims: &Map<String, Value>, now: u64) -> Result<Claims, TokenError> {
    let sub = match claims.get("sub") {
        None => {
            return Err(TokenError::InvalidClaims(
                "token has no 'sub' claim".to_string(),
            ))
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(TokenError::InvalidClaims(
                "token claim 'sub' must be a non-empty string".to_string(),
            ))
        }
    };

    let Some(exp_value) = claims.get("exp") else {
        return Err(TokenError::InvalidClaims(
            "token has no 'exp' claim".to_string(),
        ));
    };
    let exp_secs = time_claim(exp_value, "exp")?;
    // Integers are compared exactly; only fractional or out-of-range values go through f64.
    let exp = match exp_value.as_u64() {
        Some(exp) if exp > now => exp,
        Some(exp) => {
            return Err(TokenError::Expired {
                exp_ms: exp.saturating_mul(1000),
            })
        }
        None if exp_secs > now as f64 => exp_secs.ceil() as u64,
        None => {
            return Err(TokenError::Expired {
                exp_ms: secs_to_ms(exp_secs),
            })
        }
    };

    if let Some(nbf_value) = optional(claims, "nbf") {
        let nbf_secs = time_claim(nbf_value, "nbf")?;
        let too_early = match nbf_value.as_u64() {
            Some(nbf) => nbf > now.saturating_add(NBF_LEEWAY_SECS),
            None => nbf_secs > now.saturating_add(NBF_LEEWAY_SECS) as f64,
        };
        if too_early {
            return Err(TokenError::NotYetValid {
                nbf_ms: secs_to_ms(nbf_secs),
            });
        }
    }

    let role = match optional(claims, "role") {
        None => Role::User,
        Some(Value::String(name)) => Role::from_claim(name).ok_or_else(|| {
            TokenError::InvalidClaims(format!(
                "token role '{}' is not known (user, service or admin)",
                clip(name)
            ))
        })?,
        Some(_) => {
            return Err(TokenError::InvalidClaims(
                "token claim 'role' must be a string".to_string(),
            ))
        }
    };

    let scopes = match optional(claims, "scopes") {
        None => match role {
            Role::User => Scopes::Prefixes(Vec::new()),
            Role::Service | Role::Admin => Scopes::All,
        },
        Some(Value::Array(items)) => scopes_from(items)?,
        Some(_) => {
            return Err(TokenError::InvalidClaims(
                "token claim 'scopes' must be an array of path prefixes".to_string(),
            ))
        }
    };

    Ok(Claims {
        sub,
        exp,
        role,
        scopes,
        group: optional_string(claims, "group")?,
        org: optional_string(claims, "org")?,
    })
}

fn scopes_from(items: &[Value]) -> Result<Scopes, TokenError> {
    let mut prefixes = Vec::with_capacity(items.len());
    let mut all = false;
    for (i, item) in items.iter().enumerate() {
        let Value::String(scope) = item else {
            return Err(TokenError::InvalidClaims(format!(
                "token claim 'scopes' must contain only strings (entry {i} is not)"
            )));
        };
        if scope == "*" {
            all = true;
        }
        // "jobs/" is read as "jobs": a trailing slash would otherwise match nothing.
        let prefix = scope.trim_end_matches('/');
        if !prefix.is_empty() {
            prefixes.push(prefix.to_string());
        }
    }
    Ok(if all {
        Scopes::All
    } else {
        Scopes::Prefixes(prefixes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use serde_json::json;

    type HmacSha256 = Hmac<sha2::Sha256>;

    fn hs256(secret: &[u8]) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length")
    }

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_774_512_862;

    fn token_with_header(header: &str, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature
        )
    }

    fn err(token: &str) -> TokenError {
        verify(SECRET, token, NOW).unwrap_err()
    }

    fn claims_err(claims: Value) -> TokenError {
        err(&sign(SECRET, &claims))
    }

    #[test]
    fn round_trip() {
        let token = sign(
            SECRET,
            &json!({"sub":"svc-1","exp":NOW + 60,"role":"service","group":"billing","org":"acme"}),
        );
        let claims = verify(SECRET, &token, NOW).unwrap();
        assert_eq!(claims.sub, "svc-1");
        assert_eq!(claims.exp, NOW + 60);
        assert_eq!(claims.role, Role::Service);
        assert_eq!(claims.scopes, Scopes::All);
        assert_eq!(claims.group(), "billing");
        assert_eq!(claims.org.as_deref(), Some("acme"));
    }

    #[test]
    fn defaults_for_a_plain_user() {
        let claims = verify(
            SECRET,
            &sign(SECRET, &json!({"sub":"u1","exp":NOW + 1})),
            NOW,
        )
        .unwrap();
        assert_eq!(claims.role, Role::User);
        assert_eq!(claims.scopes, Scopes::Prefixes(vec![]));
        assert!(!claims.scopes.allows("jobs"));
        assert_eq!(claims.group, None);
        assert_eq!(claims.group(), "u1");
        assert_eq!(claims.org, None);
    }

    #[test]
    fn admin_defaults_to_all_scopes_but_explicit_scopes_restrict() {
        let c = verify(
            SECRET,
            &sign(SECRET, &json!({"sub":"a","exp":NOW + 1,"role":"admin"})),
            NOW,
        )
        .unwrap();
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.scopes, Scopes::All);
        let c = verify(
            SECRET,
            &sign(
                SECRET,
                &json!({"sub":"a","exp":NOW + 1,"role":"service","scopes":["jobs"]}),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(c.scopes, Scopes::Prefixes(vec!["jobs".into()]));
    }

    #[test]
    fn matches_an_independently_computed_signature() {
        // HMAC-SHA256 of the signing input, computed with the hmac crate's own key setup,
        // for a short and a longer-than-block secret.
        for secret in [b"k".to_vec(), vec![0xaa; 131]] {
            let token = sign(&secret, &json!({"sub":"x","exp":1}));
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut mac = hs256(&secret);
            mac.update(input.as_bytes());
            assert_eq!(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()), sig);
        }
    }

    #[test]
    fn known_token_from_another_implementation() {
        // jwt.io's HS256 example, secret "your-256-bit-secret"; iat and no exp, so the
        // signature passes and the missing exp is what is reported.
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            verify(b"your-256-bit-secret", token, NOW).unwrap_err(),
            TokenError::InvalidClaims("token has no 'exp' claim".into())
        );
        assert_eq!(
            verify(b"another-secret", token, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn wrong_secret() {
        let token = sign(b"other", &json!({"sub":"u","exp":NOW + 10}));
        let e = err(&token);
        assert_eq!(e, TokenError::BadSignature);
        assert_eq!(e.reason(), "bad_signature");
        assert_eq!(e.to_string(), "token signature does not match");
    }

    #[test]
    fn tampered_payload() {
        let token = sign(SECRET, &json!({"sub":"u","exp":NOW + 10}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(json!({"sub":"u","exp":NOW + 10,"role":"admin"}).to_string());
        parts[1] = &forged;
        assert_eq!(err(&parts.join(".")), TokenError::BadSignature);
    }

    #[test]
    fn alg_none_with_empty_signature() {
        for alg in ["none", "None", "NONE"] {
            let token = token_with_header(
                &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
                &json!({"sub":"u","exp":NOW + 10,"role":"admin"}),
                "",
            );
            let e = err(&token);
            assert_eq!(
                e,
                TokenError::UnsupportedAlg {
                    alg: alg.to_string(),
                    accepted: "HS256 only".into()
                }
            );
            assert_eq!(e.reason(), "unsupported_alg");
        }
        let e = err(&token_with_header(r#"{"alg":"none"}"#, &json!({}), ""));
        assert_eq!(
            e.to_string(),
            "token algorithm 'none' is not accepted (HS256 only)"
        );
    }

    #[test]
    fn alg_hs512_and_others_are_refused_before_the_signature() {
        let claims = json!({"sub":"u","exp":NOW + 10});
        let valid_sig = sign(SECRET, &claims)
            .rsplit('.')
            .next()
            .unwrap()
            .to_string();
        for alg in ["HS512", "RS256", "hs256"] {
            let token = token_with_header(&format!(r#"{{"alg":"{alg}"}}"#), &claims, &valid_sig);
            assert_eq!(
                err(&token),
                TokenError::UnsupportedAlg {
                    alg: alg.into(),
                    accepted: "HS256 only".into()
                }
            );
        }
        let token = token_with_header(r#"{"alg":256}"#, &claims, &valid_sig);
        assert_eq!(
            err(&token),
            TokenError::UnsupportedAlg {
                alg: "256".into(),
                accepted: "HS256 only".into()
            }
        );
        let token = token_with_header(r#"{"typ":"JWT"}"#, &claims, &valid_sig);
        assert_eq!(
            err(&token),
            TokenError::Malformed("token header has no 'alg'")
        );
    }

    #[test]
    fn long_alg_is_clipped_in_the_message() {
        let alg = "X".repeat(10_000);
        let token = token_with_header(&format!(r#"{{"alg":"{alg}"}}"#), &json!({}), "");
        let msg = err(&token).to_string();
        assert!(msg.len() < 120, "{msg}");
    }

    #[test]
    fn crit_header_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"]}"#);
        let payload = URL_SAFE_NO_PAD.encode(json!({"sub":"u","exp":NOW + 10}).to_string());
        let mut mac = hs256(SECRET);
        mac.update(format!("{header}.{payload}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let e = err(&format!("{header}.{payload}.{sig}"));
        assert_eq!(e.reason(), "malformed");
    }

    #[test]
    fn expired() {
        let e = claims_err(json!({"sub":"u","exp":NOW}));
        assert_eq!(e, TokenError::Expired { exp_ms: NOW * 1000 });
        assert_eq!(e.reason(), "expired");
        assert_eq!(e.to_string(), "token expired at 2026-03-26T08:14:22.000Z");
        assert!(matches!(
            claims_err(json!({"sub":"u","exp":NOW - 1})),
            TokenError::Expired { .. }
        ));
        assert!(matches!(
            claims_err(json!({"sub":"u","exp":-5})),
            TokenError::Expired { exp_ms: 0 }
        ));
        // One second before expiry it is still good.
        assert!(verify(
            SECRET,
            &sign(SECRET, &json!({"sub":"u","exp":NOW})),
            NOW - 1
        )
        .is_ok());
    }

    #[test]
    fn float_exp() {
        let c = verify(
            SECRET,
            &sign(SECRET, &json!({"sub":"u","exp":NOW as f64 + 0.5})),
            NOW,
        )
        .unwrap();
        assert_eq!(c.exp, NOW + 1);
        assert!(c.exp > NOW);
        assert!(matches!(
            claims_err(json!({"sub":"u","exp":NOW as f64 - 0.5})),
            TokenError::Expired { .. }
        ));
        let c = verify(SECRET, &sign(SECRET, &json!({"sub":"u","exp":1e300})), NOW).unwrap();
        assert_eq!(c.exp, u64::MAX);
    }

    #[test]
    fn not_yet_valid() {
        let early = NOW + NBF_LEEWAY_SECS + 1;
        let e = claims_err(json!({"sub":"u","exp":NOW + 100,"nbf":early}));
        assert_eq!(
            e,
            TokenError::NotYetValid {
                nbf_ms: early * 1000
            }
        );
        assert_eq!(e.reason(), "not_yet_valid");
        assert_eq!(
            e.to_string(),
            "token is not valid before 2026-03-26T08:14:28.000Z"
        );
        // Within the leeway (a clock a little ahead), and at or before now: valid.
        for nbf in [NOW + NBF_LEEWAY_SECS, NOW + 1, NOW, NOW - 100] {
            let t = sign(SECRET, &json!({"sub":"u","exp":NOW + 100,"nbf":nbf}));
            assert!(verify(SECRET, &t, NOW).is_ok(), "nbf {nbf}");
        }
        let t = sign(
            SECRET,
            &json!({"sub":"u","exp":NOW + 100,"nbf":(NOW + NBF_LEEWAY_SECS) as f64 + 0.5}),
        );
        assert!(verify(SECRET, &t, NOW).is_err());
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 100,"nbf":"soon"})).reason(),
            "invalid_claims"
        );
    }

    #[test]
    fn missing_sub() {
        let e = claims_err(json!({"exp":NOW + 10}));
        assert_eq!(
            e,
            TokenError::InvalidClaims("token has no 'sub' claim".into())
        );
        assert_eq!(e.reason(), "invalid_claims");
        for bad in [json!(""), json!(5), json!(null)] {
            assert_eq!(
                claims_err(json!({"sub":bad,"exp":NOW + 10})),
                TokenError::InvalidClaims("token claim 'sub' must be a non-empty string".into())
            );
        }
    }

    #[test]
    fn missing_exp() {
        assert_eq!(
            claims_err(json!({"sub":"u"})),
            TokenError::InvalidClaims("token has no 'exp' claim".into())
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":"tomorrow"})).reason(),
            "invalid_claims"
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":null})).reason(),
            "invalid_claims"
        );
    }

    #[test]
    fn bad_base64() {
        let token = sign(SECRET, &json!({"sub":"u","exp":NOW + 10}));
        let (h, rest) = token.split_once('.').unwrap();
        assert_eq!(
            err(&format!("{h}!.{rest}")),
            TokenError::Malformed("token header is not valid base64url JSON")
        );
        let (input, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            err(&format!("{input}.@@@")),
            TokenError::Malformed("token signature is not valid base64url")
        );
        // Padding is not part of JWS compact serialization.
        assert_eq!(err(&format!("{token}=")).reason(), "malformed");
        assert_eq!(err("a.b.c").reason(), "malformed");
    }

    #[test]
    fn wrong_number_of_parts() {
        let token = sign(SECRET, &json!({"sub":"u","exp":NOW + 10}));
        let (two, _) = token.rsplit_once('.').unwrap();
        let e = err(two);
        assert_eq!(
            e,
            TokenError::Malformed("token must have three dot-separated parts")
        );
        assert_eq!(e.reason(), "malformed");
        assert_eq!(err(&format!("{token}.x")).reason(), "malformed");
        assert_eq!(err("").reason(), "malformed");
        assert_eq!(err("..").reason(), "malformed");
    }

    #[test]
    fn header_and_payload_must_be_objects() {
        let token = token_with_header("[1]", &json!({}), "");
        assert_eq!(
            err(&token),
            TokenError::Malformed("token header is not a JSON object")
        );
        let token = sign(SECRET, &json!(["sub"]));
        assert_eq!(
            err(&token),
            TokenError::Malformed("token payload is not a JSON object")
        );
    }

    #[test]
    fn role_claim() {
        let e = claims_err(json!({"sub":"u","exp":NOW + 10,"role":"root"}));
        assert_eq!(
            e,
            TokenError::InvalidClaims(
                "token role 'root' is not known (user, service or admin)".into()
            )
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"role":"Admin"})).reason(),
            "invalid_claims"
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"role":1})).reason(),
            "invalid_claims"
        );
        let c = verify(
            SECRET,
            &sign(SECRET, &json!({"sub":"u","exp":NOW + 10,"role":null})),
            NOW,
        )
        .unwrap();
        assert_eq!(c.role, Role::User);
    }

    #[test]
    fn scopes_claim() {
        let c = verify(
            SECRET,
            &sign(
                SECRET,
                &json!({"sub":"u","exp":NOW + 10,"scopes":["jobs","accounts/"]}),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(
            c.scopes,
            Scopes::Prefixes(vec!["jobs".into(), "accounts".into()])
        );
        assert!(c.scopes.allows("accounts/acc_7"));
        let c = verify(
            SECRET,
            &sign(
                SECRET,
                &json!({"sub":"u","exp":NOW + 10,"scopes":["jobs","*"]}),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(c.scopes, Scopes::All);
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"scopes":["jobs",3]})),
            TokenError::InvalidClaims(
                "token claim 'scopes' must contain only strings (entry 1 is not)".into()
            )
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"scopes":"jobs"})).reason(),
            "invalid_claims"
        );
    }

    #[test]
    fn scopes_semantics() {
        let s = Scopes::Prefixes(vec!["jobs".into()]);
        assert!(s.allows("jobs"));
        assert!(s.allows("jobs/1"));
        assert!(s.allows("jobs/1/steps/2"));
        assert!(!s.allows("jobsx"));
        assert!(!s.allows("job"));
        assert!(!s.allows(""));
        assert!(Scopes::All.allows("anything/at/all"));
        assert!(!Scopes::Prefixes(vec![]).allows("jobs"));
    }

    #[test]
    fn group_and_org_claims() {
        let c = verify(
            SECRET,
            &sign(
                SECRET,
                &json!({"sub":"i-1","exp":NOW + 10,"group":"","org":null}),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(c.group, None);
        assert_eq!(c.group(), "i-1");
        assert_eq!(c.org, None);
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"group":7})),
            TokenError::InvalidClaims("token claim 'group' must be a string".into())
        );
        assert_eq!(
            claims_err(json!({"sub":"u","exp":NOW + 10,"org":["a"]})),
            TokenError::InvalidClaims("token claim 'org' must be a string".into())
        );
    }

    #[test]
    fn role_names() {
        for role in [Role::User, Role::Service, Role::Admin] {
            assert_eq!(Role::from_claim(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(Role::from_claim("ADMIN"), None);
    }

    mod asymmetric {
        use super::*;

        const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa-public.pem");
        const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa-private.pem");
        const OTHER_RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/other-rsa-private.pem");
        const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec-public.pem");
        const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec-private.pem");
        const P384_PUBLIC: &[u8] = include_bytes!("../../tests/keys/p384-public.pem");

        fn signed(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
            jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
        }

        fn rsa(private: &[u8]) -> EncodingKey {
            EncodingKey::from_rsa_pem(private).unwrap()
        }

        fn ec() -> EncodingKey {
            EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
        }

        fn claims() -> Value {
            json!({"sub":"u","exp":NOW + 10,"role":"admin"})
        }

        #[test]
        fn the_key_type_picks_the_algorithm() {
            let rs = Keys::new(SECRET, Some(RSA_PUBLIC)).unwrap();
            let es = Keys::new(SECRET, Some(EC_PUBLIC)).unwrap();
            let rs_token = signed(Algorithm::RS256, &rsa(RSA_PRIVATE), &claims());
            let es_token = signed(Algorithm::ES256, &ec(), &claims());
            assert_eq!(verify_with(&rs, &rs_token, NOW).unwrap().role, Role::Admin);
            assert_eq!(verify_with(&es, &es_token, NOW).unwrap().sub, "u");
            // HS256 keeps working beside either.
            let hs = sign(SECRET, &claims());
            assert!(verify_with(&rs, &hs, NOW).is_ok() && verify_with(&es, &hs, NOW).is_ok());
            // The other asymmetric algorithm has no key: refused before any signature.
            let e = verify_with(&rs, &es_token, NOW).unwrap_err();
            assert_eq!(
                e.to_string(),
                "token algorithm 'ES256' is not accepted (HS256 or RS256)"
            );
            let e = verify_with(&es, &rs_token, NOW).unwrap_err();
            assert_eq!(e.reason(), "unsupported_alg");
            // And without a public key, neither.
            let e = verify(SECRET, &rs_token, NOW).unwrap_err();
            assert_eq!(
                e.to_string(),
                "token algorithm 'RS256' is not accepted (HS256 only)"
            );
        }

        #[test]
        fn another_key_and_key_confusion_are_refused() {
            let rs = Keys::new(SECRET, Some(RSA_PUBLIC)).unwrap();
            let foreign = signed(Algorithm::RS256, &rsa(OTHER_RSA_PRIVATE), &claims());
            assert_eq!(
                verify_with(&rs, &foreign, NOW).unwrap_err(),
                TokenError::BadSignature
            );
            // The classic confusion: HS256 "signed" with the public key's bytes as the
            // secret. HS256 is checked with jwt_secret only, so it fails.
            for public in [RSA_PUBLIC, EC_PUBLIC] {
                let keys = Keys::new(SECRET, Some(public)).unwrap();
                let forged = sign(public, &claims());
                assert_eq!(
                    verify_with(&keys, &forged, NOW).unwrap_err(),
                    TokenError::BadSignature
                );
            }
            // A tampered payload under a real RS256 signature.
            let token = signed(Algorithm::RS256, &rsa(RSA_PRIVATE), &claims());
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = URL_SAFE_NO_PAD.encode(json!({"sub":"root","exp":NOW + 10}).to_string());
            parts[1] = &forged;
            assert_eq!(
                verify_with(&rs, &parts.join("."), NOW).unwrap_err(),
                TokenError::BadSignature
            );
            // Claims rules are ours whatever the algorithm.
            let expired = signed(
                Algorithm::RS256,
                &rsa(RSA_PRIVATE),
                &json!({"sub":"u","exp":NOW}),
            );
            assert_eq!(
                verify_with(&rs, &expired, NOW).unwrap_err().reason(),
                "expired"
            );
        }

        #[test]
        fn unusable_key_files_are_refused_naming_why() {
            let e = Keys::new(SECRET, Some(P384_PUBLIC)).unwrap_err();
            assert!(e.contains("P-256"), "{e}");
            let e = Keys::new(SECRET, Some(RSA_PRIVATE)).unwrap_err();
            assert!(e.contains("private key"), "{e}");
            let e = Keys::new(SECRET, Some(b"not a key")).unwrap_err();
            assert!(e.contains("PEM"), "{e}");
            let e = Keys::new(SECRET, Some(&[0xff, 0xfe])).unwrap_err();
            assert!(e.contains("PEM"), "{e}");
            let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
            let e = Keys::new(SECRET, Some(cert)).unwrap_err();
            assert!(e.contains("CERTIFICATE"), "{e}");
            assert!(
                format!("{:?}", Keys::new(SECRET, Some(RSA_PUBLIC)).unwrap()).contains("RS256")
            );
        }
    }
}
