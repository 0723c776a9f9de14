//! Access tokens for private containers: EdDSA (Ed25519) JWTs signed with
//! a cluster key whose private half lives in the replicated state sealed
//! under the data key. Verification pins the algorithm; a token is valid
//! only while its record exists and is not revoked.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims rouse puts in a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// Token id (also the record's key in the replicated state).
    pub jti: String,
    pub ns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

pub const ISSUER: &str = "rouse";

/// A trigger's delivery token names the trigger in its id: it has no
/// record and is valid while the trigger exists.
pub const TRIGGER_JTI_PREFIX: &str = "trigger:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing token: send it in X-Auth-Token or Authorization: Bearer")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("token is scoped to {0}, not to this container")]
    WrongScope(String),
    /// Making a key or a signature failed (not the caller's fault).
    #[error("signing: {0}")]
    Crypto(String),
}

/// A fresh Ed25519 key pair: (PKCS#8 private key, raw public key).
pub fn generate() -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    use ring::signature::KeyPair;
    let crypto = |e: ring::error::Unspecified| TokenError::Crypto(e.to_string());
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(crypto)?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| TokenError::Crypto(e.to_string()))?;
    Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

pub fn sign(private_pkcs8: &[u8], kid: &str, claims: &Claims) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(private_pkcs8))
        .map_err(|e| TokenError::Crypto(e.to_string()))
}

/// Verifies signature (EdDSA only), issuer and expiry against the public
/// keys `keys` (kid → raw key). Revocation and scope are the caller's.
pub fn verify(token: &str, keys: &[(String, Vec<u8>)], now_s: u64) -> Result<Claims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Invalid(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| TokenError::Invalid("no key id".into()))?;
    let (_, public) = keys
        .iter()
        .find(|(k, _)| *k == kid)
        .ok_or_else(|| TokenError::Invalid("unknown key id".into()))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[ISSUER]);
    v.validate_exp = false; // checked below against the caller's clock
    v.required_spec_claims = ["exp", "iss"].iter().map(|s| s.to_string()).collect();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(public), &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    if data.claims.exp <= now_s {
        return Err(TokenError::Expired);
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            jti: "t1".into(),
            ns: "shop".into(),
            ct: None,
            iat: 0,
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let (private, public) = generate().unwrap();
        let t = sign(&private, "k1", &claims(100)).unwrap();
        let c = verify(&t, &[("k1".into(), public)], 50).unwrap();
        assert_eq!(c, claims(100));
    }

    #[test]
    fn forged_expired_and_wrong_key_fail() {
        let (private, public) = generate().unwrap();
        let (_, other) = generate().unwrap();
        let t = sign(&private, "k1", &claims(100)).unwrap();
        assert_eq!(
            verify(&t, &[("k1".into(), public.clone())], 100),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            verify(&t, &[("k1".into(), other)], 50),
            Err(TokenError::Invalid(_))
        ));
        // Tamper with the payload: the signature no longer matches.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let forged = sign(
            &private,
            "k1",
            &Claims {
                ns: "other".into(),
                ..claims(100)
            },
        )
        .unwrap();
        parts[1] = forged.split('.').nth(1).unwrap().to_string();
        let tampered = parts.join(".");
        assert!(matches!(
            verify(&tampered, &[("k1".into(), public.clone())], 50),
            Err(TokenError::Invalid(_))
        ));
        // alg: none is refused.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiazEifQ",
            t.split('.').nth(1).unwrap()
        );
        assert!(matches!(
            verify(&none, &[("k1".into(), public)], 50),
            Err(TokenError::Invalid(_))
        ));
    }
}
