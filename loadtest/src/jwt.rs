//! HS256 JSON Web Tokens, signed locally so the load generator needs no token service.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs `claims` (a JSON object) with HS256.
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// The token of load client `i`: a user allowed everywhere, valid for `ttl_secs`.
pub fn client_token(secret: &str, i: u64, now_secs: u64, ttl_secs: u64) -> String {
    let claims = serde_json::json!({
        "sub": format!("load-{i}"),
        "role": "user",
        "scopes": ["*"],
        "exp": now_secs + ttl_secs,
    });
    sign_hs256(&claims, secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // jwt.io's HS256 example ("your-256-bit-secret")
        let claims: serde_json::Value =
            serde_json::from_str(r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#)
                .unwrap();
        // serde_json keeps keys sorted, so compute the expectation independently
        let tok = sign_hs256(&claims, b"your-256-bit-secret");
        let parts: Vec<&str> = tok.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"your-256-bit-secret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        mac.verify_slice(&sig).unwrap();
    }

    #[test]
    fn client_claims() {
        let tok = client_token("s3cret", 7, 1_000, 3_600);
        let payload = tok.split('.').nth(1).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(v["sub"], "load-7");
        assert_eq!(v["role"], "user");
        assert_eq!(v["scopes"][0], "*");
        assert_eq!(v["exp"], 4_600);
    }
}
