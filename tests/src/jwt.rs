//! Client tokens.

/// An HS256 client token with `claims`, signed with `secret`.
pub fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

/// Seconds since the Unix epoch (for token claims).
pub fn unix_now() -> u64 {
    turnout_proto::now_ms() / 1000
}
