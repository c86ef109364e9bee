//! Gatehouse's own signatures (session tokens): Ed25519 keys it makes, signs compact JWS
//! with, and verifies with through the same strict path as every other token
//! ([`super::parse`], [`super::Parsed::verify`]).

use super::jwks::Key;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use std::sync::Arc;

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the signing key could not be generated")]
    Generate,
    #[error("the stored signing key is not a valid Ed25519 key")]
    InvalidKey,
    #[error("the token could not be signed")]
    Sign,
}

/// A private signing key (Ed25519, PKCS#8). Its `Debug` never shows the key.
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("pkcs8", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A new random key named `kid`.
    pub fn generate(kid: &str) -> Result<SigningKey, SigningError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningError::Generate)?;
        SigningKey::from_pkcs8(kid, document.as_ref())
    }

    /// A key read back from storage.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<SigningKey, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| SigningError::InvalidKey)?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pkcs8: pkcs8.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key, for storage only.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The raw 32-byte public key.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// A compact JWS (`EdDSA`, with this key's `kid`) over `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, SigningError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|_| SigningError::Sign)
    }
}

/// The verification key for a raw Ed25519 public key.
pub fn verification_key(kid: &str, public: &[u8]) -> Arc<Key> {
    use sha2::{Digest, Sha256};
    Arc::new(Key {
        kid: Some(kid.to_owned()),
        alg: Algorithm::EdDSA,
        key: DecodingKey::from_ed_der(public),
        fingerprint: Sha256::digest(public).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_what_the_strict_parser_accepts_and_verifies() {
        let key = SigningKey::generate("k1").unwrap();
        let claims = serde_json::json!({"iss": "gatehouse", "exp": 2_000_000_000i64, "sub": "u"});
        let token = key.sign(&claims).unwrap();
        let parsed = super::super::parse(&token).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        parsed
            .verify(&verification_key("k1", key.public()))
            .unwrap();
        // Another key does not verify it; a key read back from storage does.
        let other = SigningKey::generate("k1").unwrap();
        assert!(parsed
            .verify(&verification_key("k1", other.public()))
            .is_err());
        let again = SigningKey::from_pkcs8("k1", key.pkcs8()).unwrap();
        parsed
            .verify(&verification_key("k1", again.public()))
            .unwrap();
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.pkcs8())));
        assert!(SigningKey::from_pkcs8("k", b"not a key").is_err());
    }
}
