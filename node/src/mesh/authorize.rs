//! The second layer: a private container's caller must present a token
//! (`X-Auth-Token`, or `Authorization: Bearer`) signed by a cluster key,
//! not expired, not revoked, and scoped to the container or its namespace.
//! Checked on every node, hops included: the token travels with the
//! request, and a hop header proves nothing. Pure.

use crate::state::{ContainerKey, StateData};
use crate::tokens::TokenError;

/// The token a request carries, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
        })
        .filter(|t| !t.is_empty())
}

/// Whether `token` lets its holder call `key` at `now_s`.
pub fn authorize(
    token: Option<&str>,
    state: &StateData,
    key: &ContainerKey,
    now_s: u64,
) -> Result<(), TokenError> {
    let token = token.ok_or(TokenError::Missing)?;
    let keys: Vec<(String, Vec<u8>)> = state
        .signing_keys
        .iter()
        .filter_map(|k| hex::decode(&k.public_hex).ok().map(|p| (k.kid.clone(), p)))
        .collect();
    let claims = crate::tokens::verify(token, &keys, now_s)?;
    let (ns, name) = (key.namespace(), key.name());
    if let Some(id) = claims.jti.strip_prefix(crate::tokens::TRIGGER_JTI_PREFIX) {
        // A trigger's delivery: for its own container, while it exists.
        let t = state
            .triggers
            .get(id)
            .ok_or_else(|| TokenError::Invalid("unknown trigger".into()))?;
        if t.namespace != ns
            || t.container != name
            || claims.ns != ns
            || claims.ct.as_deref() != Some(name)
        {
            return Err(TokenError::WrongScope(format!("trigger {id}")));
        }
        return Ok(());
    }
    let record = state
        .tokens
        .get(&claims.jti)
        .ok_or_else(|| TokenError::Invalid("unknown token".into()))?;
    if record.revoked {
        return Err(TokenError::Revoked);
    }
    if claims.ns != ns || record.namespace != ns {
        return Err(TokenError::WrongScope(format!("namespace {}", claims.ns)));
    }
    match (&claims.ct, &record.container) {
        (None, None) => Ok(()),
        (Some(c), Some(rc)) if c == name && rc == name => Ok(()),
        (Some(c), _) => Err(TokenError::WrongScope(format!(
            "container {}/{c}",
            claims.ns
        ))),
        (None, Some(_)) => Err(TokenError::Invalid("claims and record disagree".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Proposal, SigningKey, TokenRecord};
    use crate::tokens::{generate, sign, Claims, ISSUER};

    fn world() -> (StateData, Vec<u8>) {
        let (private, public) = generate().unwrap();
        let mut s = StateData::default();
        let key = SigningKey {
            kid: "k1".into(),
            public_hex: hex::encode(public),
            sealed_private: crate::secrets::Envelope {
                nonce: vec![0; 12],
                ciphertext: vec![],
            },
            created_at_ms: 0,
        };
        s.apply(&Proposal::new(0, Command::AddSigningKey { key }));
        (s, private)
    }

    fn token(s: &mut StateData, private: &[u8], id: &str, ns: &str, ct: Option<&str>) -> String {
        s.tokens.insert(
            id.into(),
            TokenRecord {
                id: id.into(),
                namespace: ns.into(),
                container: ct.map(str::to_string),
                expires_at_ms: 2_000_000,
                created_at_ms: 0,
                revoked: false,
            },
        );
        let claims = Claims {
            iss: ISSUER.into(),
            jti: id.into(),
            ns: ns.into(),
            ct: ct.map(str::to_string),
            iat: 0,
            exp: 2_000,
        };
        sign(private, "k1", &claims).unwrap()
    }

    #[test]
    fn scope_revocation_and_absence() {
        let (mut s, private) = world();
        let web = ContainerKey::new("shop", "web");
        let api = ContainerKey::new("shop", "api");
        let ns_token = token(&mut s, &private, "t1", "shop", None);
        let web_token = token(&mut s, &private, "t2", "shop", Some("web"));
        let other = token(&mut s, &private, "t3", "blog", None);
        assert_eq!(authorize(None, &s, &web, 10), Err(TokenError::Missing));
        assert_eq!(authorize(Some(&ns_token), &s, &web, 10), Ok(()));
        assert_eq!(authorize(Some(&ns_token), &s, &api, 10), Ok(()));
        assert_eq!(authorize(Some(&web_token), &s, &web, 10), Ok(()));
        assert!(matches!(
            authorize(Some(&web_token), &s, &api, 10),
            Err(TokenError::WrongScope(_))
        ));
        assert!(matches!(
            authorize(Some(&other), &s, &web, 10),
            Err(TokenError::WrongScope(_))
        ));
        assert_eq!(
            authorize(Some(&ns_token), &s, &web, 3_000),
            Err(TokenError::Expired)
        );
        s.tokens.get_mut("t1").unwrap().revoked = true;
        assert_eq!(
            authorize(Some(&ns_token), &s, &web, 10),
            Err(TokenError::Revoked)
        );
        s.tokens.remove("t2");
        assert!(matches!(
            authorize(Some(&web_token), &s, &web, 10),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn bearer_reads_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("x-auth-token", " xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
    }
}
