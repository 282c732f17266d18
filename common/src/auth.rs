//! Authentication: client JWTs, the server API key, the internal token, and
//! the rule for running open (see `docs/SECURITY.md`).

use crate::settings::{ListenSpec, SettingsError};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use std::path::Path;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// gRPC metadata carrying the internal token.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";
/// HTTP header / gRPC metadata carrying the server API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The claims turnout reads from a client token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The user id (overrides any `user` query parameter).
    pub sub: String,
    pub exp: u64,
    /// Rooms the user may join: exact names or `prefix*`; absent = any room.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

/// Characters a `prefix*` room claim must end its prefix with: the claim
/// covers a name space (`team-7:*` covers `team-7:general`), never a bare
/// string prefix (`team-7*` would cover `team-70` too, so it covers nothing).
pub const CLAIM_BOUNDARIES: [char; 5] = [':', '.', '-', '_', '@'];

impl Claims {
    /// Whether these claims allow joining `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => prefix.ends_with(CLAIM_BOUNDARIES) && room.starts_with(prefix),
                None => p == room,
            }),
        }
    }
}

/// Why a token was refused (shown to the client: no secrets in it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYet,
    #[error("token is for another audience (aud)")]
    Audience,
    #[error("token is from another issuer (iss)")]
    Issuer,
    #[error("invalid token")]
    Invalid,
    #[error("token subject is not a valid user id")]
    BadSubject,
}

/// Verifies client JWTs: HS256 with a shared secret and/or RS256 with a
/// PEM public key. Only the configured algorithms are accepted (`alg: none`
/// never is); `exp` and `sub` are required.
pub struct ClientAuth {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

/// How client tokens are checked: the keys, and the `aud` and `iss` they
/// must name when set.
#[derive(Debug, Clone, Copy, Default)]
pub struct JwtSettings<'a> {
    pub secret: Option<&'a str>,
    pub public_key: Option<&'a Path>,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

impl ClientAuth {
    /// None when neither a secret nor a public key is configured.
    pub fn from_settings(jwt: JwtSettings<'_>) -> Result<Option<Self>, SettingsError> {
        let JwtSettings {
            secret, public_key, ..
        } = jwt;
        let hs256 = match secret {
            Some(s) if s.len() < 16 => {
                return Err(SettingsError::invalid(
                    "jwt_secret",
                    "must be at least 16 bytes",
                ));
            }
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let rs256 = match public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    SettingsError::invalid(
                        "jwt_public_key",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    SettingsError::invalid(
                        "jwt_public_key",
                        format!("{} is not an RSA public key in PEM: {e}", path.display()),
                    )
                })?)
            }
            None => None,
        };
        Ok((hs256.is_some() || rs256.is_some()).then_some(ClientAuth {
            hs256,
            rs256,
            audience: jwt.audience.map(str::to_owned),
            issuer: jwt.issuer.map(str::to_owned),
        }))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            other => return Err(AuthError::Algorithm(format!("{other:?}"))),
        }
        .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?;
        let mut v = Validation::new(header.alg);
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v.validate_nbf = true;
        v.leeway = 5;
        let data = decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYet,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::Audience,
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => AuthError::Issuer,
            _ => AuthError::Invalid,
        })?;
        turnout_proto::names::check_user(&data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        Ok(data.claims)
    }
}

/// The client token of a request: `?token=` or `Authorization: Bearer`.
pub fn token_from(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| t.to_owned())
}

/// Compares secrets in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A process may run without its secrets only when told to (`insecure`),
/// whatever address it listens on: a loopback-bound process behind a local
/// TLS proxy is as exposed as any. Then it says so loudly. `missing` names
/// the absent secrets.
pub fn check_open_mode(
    process: &str,
    listen: &ListenSpec,
    insecure: bool,
    missing: &[&str],
) -> Result<(), SettingsError> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(", ");
    if insecure {
        tracing::warn!(
            process,
            missing = %list,
            "running OPEN (no {list}): anyone who reaches {listen} is trusted; set the secrets before exposing it"
        );
        Ok(())
    } else {
        Err(SettingsError::invalid(
            missing[0],
            format!(
                "{process} on {listen} has no {list}; set them, or set insecure (--insecure, TURNOUT_INSECURE=true) to run open on purpose"
            ),
        ))
    }
}

/// Adds or checks the internal token on gRPC calls between processes.
#[derive(Clone, Default)]
pub struct InternalToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl InternalToken {
    pub fn new(token: Option<&str>) -> Result<Self, SettingsError> {
        match token {
            None => Ok(InternalToken(None)),
            Some(t) if t.len() < 16 => Err(SettingsError::invalid(
                "internal_token",
                "must be at least 16 bytes",
            )),
            Some(t) => MetadataValue::try_from(t)
                .map(|v| InternalToken(Some(v)))
                .map_err(|_| SettingsError::invalid("internal_token", "must be printable ASCII")),
        }
    }

    /// A server-side check: calls without the token get `Unauthenticated`.
    pub fn checker(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
        let want = self.0.clone();
        move |mut req: Request<()>| {
            if let Some(want) = &want {
                match req.metadata().get(INTERNAL_TOKEN_HEADER) {
                    Some(got) if ct_eq(got.as_bytes(), want.as_bytes()) => {}
                    _ => return Err(Status::unauthenticated("internal token missing or wrong")),
                }
            }
            crate::telemetry::extract(&mut req);
            Ok(req)
        }
    }
}

/// Client side: attaches the token to every call.
impl Interceptor for InternalToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(INTERNAL_TOKEN_HEADER, v.clone());
        }
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_patterns() {
        let c = Claims {
            sub: "u".into(),
            exp: 0,
            rooms: Some(vec!["lobby".into(), "team-*".into()]),
        };
        assert!(c.may_join("lobby"));
        assert!(c.may_join("team-7"));
        assert!(!c.may_join("lobby2"));
        assert!(!c.may_join("other"));
        // A prefix without a boundary covers nothing.
        let bare = Claims {
            rooms: Some(vec!["team7*".into()]),
            ..c.clone()
        };
        assert!(!bare.may_join("team7"));
        assert!(!bare.may_join("team70"));
        assert!(Claims { rooms: None, ..c }.may_join("anything"));
    }

    #[test]
    fn tokens_from_header_or_query() {
        let mut h = http::HeaderMap::new();
        assert_eq!(token_from(&h, Some("room=a&token=abc")), Some("abc".into()));
        h.insert(http::header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(token_from(&h, Some("token=abc")), Some("xyz".into()));
        assert_eq!(token_from(&http::HeaderMap::new(), Some("room=a")), None);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
    }
}
