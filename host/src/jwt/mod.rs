//! External JWTs: strict compact-JWS parsing, signature checks and claim checks.
//!
//! The only module naming `jsonwebtoken`. Parsing is ours and deliberately narrow (SPEC §4
//! step 1): a size limit before any decoding, exactly three base64url segments, a header
//! that names an asymmetric algorithm and carries none of `jwk`, `jku`, `x5u`, `x5c`,
//! `crit`, `cty`, duplicate-free JSON, and claims whose types are checked (a string `exp`
//! is refused, not coerced). The signature is checked by `jsonwebtoken`'s crypto
//! provider (`aws_lc_rs`) over the exact bytes received. Claim times are checked against
//! the `now` the caller passes, so tests pin the clock.

pub mod jwks;
pub mod signing;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest token accepted, in bytes, checked before anything is decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest encoded header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 2 * 1024;

/// Why a JWT was refused. Each maps to a stable reason code (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("the token header carries {0}, which is never accepted")]
    ForbiddenHeader(&'static str),
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no identity provider of this tenant has this issuer")]
    UnknownIssuer,
    #[error("no key with this id in the identity provider's key set")]
    UnknownKid,
    #[error("the identity provider's keys cannot be fetched and no usable copy is left")]
    KeysUnavailable,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("the {0} claim has the wrong type")]
    ClaimType(&'static str),
}

impl JwtError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_)
            | JwtError::ForbiddenHeader(_)
            | JwtError::MissingClaim(_)
            | JwtError::ClaimType(_) => "malformed",
            JwtError::Algorithm(_) => "algorithm",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::KeysUnavailable => "keys_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Audience => "audience",
        }
    }
}

/// The header fields Gatehouse reads; the forbidden ones are only detected. Deserializing
/// into a struct refuses duplicate fields (`{"alg":"RS256","alg":"none"}`).
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    #[allow(dead_code)]
    typ: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    crit: Option<IgnoredAny>,
    cty: Option<IgnoredAny>,
}

/// A token that passed strict parsing; its signature is not checked yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
    /// `exp` as seconds since the epoch (required).
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub aud: Vec<String>,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: &'a str,
}

/// Parses a compact JWS strictly. Nothing is trusted yet.
pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("the token is too large"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a JWT has exactly three segments"));
    };
    // An empty signature is checked after the algorithm: an unsecured JWT (RFC 7519 §6,
    // `alg: none` with an empty signature) is refused for its algorithm.
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed("a segment is empty"));
    }
    if header.len() > MAX_HEADER_BYTES {
        return Err(JwtError::Malformed("the header is too large"));
    }
    let header_bytes = decode_segment(header)?;
    let raw: RawHeader = serde_json::from_slice(&header_bytes)
        .map_err(|_| JwtError::Malformed("the header is not a valid JOSE header"))?;
    for (present, name) in [
        (raw.jwk.is_some(), "jwk"),
        (raw.jku.is_some(), "jku"),
        (raw.x5u.is_some(), "x5u"),
        (raw.x5c.is_some(), "x5c"),
        (raw.crit.is_some(), "crit"),
        (raw.cty.is_some(), "cty"),
    ] {
        if present {
            return Err(JwtError::ForbiddenHeader(name));
        }
    }
    let alg = asymmetric_algorithm(&raw.alg)?;
    if signature.is_empty() {
        return Err(JwtError::Malformed("a segment is empty"));
    }
    // The signature segment is decoded by the verifier; check its alphabet now so a
    // malformed one is `malformed`, not `bad_signature`.
    if !is_base64url(signature) {
        return Err(JwtError::Malformed("the signature is not base64url"));
    }
    let payload_bytes = decode_segment(payload)?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload_bytes)
        .map_err(|_| JwtError::Malformed("the claims are not a JSON object"))?;
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(JwtError::ClaimType("iss")),
        None => return Err(JwtError::MissingClaim("iss")),
    };
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    let nbf = numeric_date(&claims, "nbf")?;
    let iat = numeric_date(&claims, "iat")?;
    let aud = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::ClaimType("aud"))?,
        Some(_) => return Err(JwtError::ClaimType("aud")),
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(Parsed {
        alg,
        kid: raw.kid,
        iss,
        exp,
        nbf,
        iat,
        aud,
        claims,
        signing_input,
        signature,
    })
}

/// What an identity provider accepts beyond the signature.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub audiences: &'a [String],
    pub leeway_seconds: i64,
}

impl Parsed<'_> {
    /// Checks the signature with `key`, which is bound to `key_alg`.
    pub fn verify(&self, key: &jwks::Key) -> Result<(), JwtError> {
        if key.alg != self.alg {
            return Err(JwtError::Algorithm(format!(
                "{:?} (this key is for {:?})",
                self.alg, key.alg
            )));
        }
        match jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            &key.key,
            key.alg,
        ) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(JwtError::BadSignature),
        }
    }

    /// Checks `exp`, `nbf`, `iat` (with leeway) and `aud` (any of the accepted ones; when
    /// the IdP lists audiences, a token without `aud` is refused).
    pub fn check_claims(&self, rules: &ClaimRules<'_>, now: i64) -> Result<(), JwtError> {
        let leeway = rules.leeway_seconds;
        if now > self.exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = self.nbf {
            if nbf > now.saturating_add(leeway) {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(iat) = self.iat {
            if iat > now.saturating_add(leeway) {
                return Err(JwtError::NotYetValid);
            }
        }
        if !rules.audiences.is_empty()
            && !self
                .aud
                .iter()
                .any(|a| rules.audiences.iter().any(|b| a == b))
        {
            return Err(JwtError::Audience);
        }
        Ok(())
    }
}

/// The algorithms Gatehouse verifies: asymmetric ones only. `none` and HMAC are refused
/// for JWKS-backed providers (an HMAC "key" from a public JWKS is the classic confusion).
pub fn asymmetric_algorithm(name: &str) -> Result<Algorithm, JwtError> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            let shown: String = other.chars().take(16).collect();
            return Err(JwtError::Algorithm(shown));
        }
    })
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    if !is_base64url(segment) {
        return Err(JwtError::Malformed("a segment is not base64url"));
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed("a segment is not base64url"))
}

fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A NumericDate claim: a JSON number (fractions floored). Strings, booleans and
/// out-of-range numbers are refused.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.floor() as i64))
            } else {
                Err(JwtError::ClaimType(name))
            }
        }
        Some(_) => Err(JwtError::ClaimType(name)),
    }
}

/// The values at a dot path (`realm_access.roles`): a string gives one value, an array
/// its string and number items, a number or boolean its text; anything else nothing.
pub fn claim_values(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    // A claim whose name itself contains dots (`https://x.io/groups`) wins when present.
    let mut value = match claims.get(path) {
        Some(v) => v,
        None => match claims.get(first) {
            Some(v) => v,
            None => return Vec::new(),
        },
    };
    if !claims.contains_key(path) {
        for part in parts {
            match value.get(part) {
                Some(v) => value = v,
                None => return Vec::new(),
            }
        }
    }
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Value::Null | Value::Object(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    fn good_claims() -> Value {
        json!({"iss": "https://idp.example", "exp": 2_000_000_000, "aud": "api"})
    }

    #[test]
    fn refuses_what_spec_section_4_step_1_lists() {
        let cases: Vec<(String, &str)> = vec![
            (token(json!({"alg": "none"}), good_claims()), "algorithm"),
            // An unsecured JWT as RFC 7519 §6.1 writes it: an empty signature.
            (
                format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&good_claims())),
                "algorithm",
            ),
            (
                format!("{}.{}.", b64(&json!({"alg": "RS256"})), b64(&good_claims())),
                "malformed",
            ),
            (token(json!({"alg": "HS256"}), good_claims()), "algorithm"),
            (
                token(json!({"alg": "RS256", "jwk": {}}), good_claims()),
                "malformed",
            ),
            (
                token(json!({"alg": "RS256", "jku": "https://x"}), good_claims()),
                "malformed",
            ),
            (
                token(json!({"alg": "RS256", "x5u": "https://x"}), good_claims()),
                "malformed",
            ),
            (
                token(json!({"alg": "RS256", "x5c": []}), good_claims()),
                "malformed",
            ),
            (
                token(json!({"alg": "RS256", "crit": ["exp"]}), good_claims()),
                "malformed",
            ),
            ("a.b".into(), "malformed"),
            ("a.b.c.d".into(), "malformed"),
            ("a.b.c.d.e".into(), "malformed"),
            (
                format!("{}..c2ln", b64(&json!({"alg": "RS256"}))),
                "malformed",
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "malformed"),
            (
                format!(
                    "{}.{}.c2ln",
                    URL_SAFE_NO_PAD
                        .encode(format!(r#"{{"alg":"RS256","pad":"{}"}}"#, "x".repeat(3000))),
                    b64(&good_claims())
                ),
                "malformed",
            ),
            (
                token(
                    json!({"alg": "RS256"}),
                    json!({"iss": "https://idp.example", "exp": "2000000000"}),
                ),
                "malformed",
            ),
            (
                token(
                    json!({"alg": "RS256"}),
                    json!({"iss": "https://idp.example"}),
                ),
                "malformed",
            ),
            (
                token(json!({"alg": "RS256"}), json!({"exp": 2_000_000_000})),
                "malformed",
            ),
            (
                token(
                    json!({"alg": "RS256"}),
                    json!({"iss": "i", "exp": 2_000_000_000, "aud": 7}),
                ),
                "malformed",
            ),
            (
                format!(
                    "{}.{}.c2ln",
                    URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#),
                    b64(&good_claims())
                ),
                "malformed",
            ),
            (
                format!(
                    "{}.{}.c2l+",
                    b64(&json!({"alg": "RS256"})),
                    b64(&good_claims())
                ),
                "malformed",
            ),
        ];
        for (token, reason) in cases {
            let error = parse(&token).expect_err(&token[..token.len().min(80)]);
            assert_eq!(error.reason(), reason, "{token:.80}: {error}");
        }
    }

    #[test]
    fn parses_a_well_formed_token_and_checks_times_and_audience() {
        let token = token(
            json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
            json!({"iss": "https://idp.example", "exp": 1000, "nbf": 900.5, "iat": 900,
                   "aud": ["other", "api"], "sub": "u"}),
        );
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.alg, Algorithm::ES256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(
            (parsed.exp, parsed.nbf, parsed.iat),
            (1000, Some(900), Some(900))
        );
        let api = ["api".to_owned()];
        let rules = ClaimRules {
            audiences: &api,
            leeway_seconds: 10,
        };
        assert_eq!(parsed.check_claims(&rules, 950), Ok(()));
        assert_eq!(parsed.check_claims(&rules, 1010), Ok(()));
        assert_eq!(parsed.check_claims(&rules, 1011), Err(JwtError::Expired));
        assert_eq!(parsed.check_claims(&rules, 889), Err(JwtError::NotYetValid));
        let web = ["web".to_owned()];
        let rules = ClaimRules {
            audiences: &web,
            leeway_seconds: 0,
        };
        assert_eq!(parsed.check_claims(&rules, 950), Err(JwtError::Audience));
    }

    #[test]
    fn claim_values_follow_dot_paths() {
        let claims = json!({
            "email": "a@b.io",
            "realm_access": {"roles": ["x", "y", {"no": 1}, 3]},
            "https://acme.io/groups": ["g"],
            "n": {"deep": {"er": true}}
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(claim_values(claims, "email"), ["a@b.io"]);
        assert_eq!(claim_values(claims, "realm_access.roles"), ["x", "y", "3"]);
        assert_eq!(claim_values(claims, "https://acme.io/groups"), ["g"]);
        assert_eq!(claim_values(claims, "n.deep.er"), ["true"]);
        assert!(claim_values(claims, "n.deep").is_empty());
        assert!(claim_values(claims, "missing.path").is_empty());
    }
}
