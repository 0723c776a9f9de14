//! The first layer: Host → container, with what the rest of the stack
//! needs to know of it (timeout, protocol, concurrency, privacy). Pure.

use std::time::Duration;

use super::error::MeshError;
use crate::state::{ContainerKey, Privacy, Protocol, StateData};

/// A request's container and the settings that govern it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub key: ContainerKey,
    pub timeout: Duration,
    pub protocol: Protocol,
    pub max_concurrency: usize,
    pub private: bool,
}

/// Resolves `host` against the state.
pub fn resolve(state: &StateData, base_domain: &str, host: &str) -> Result<Route, MeshError> {
    let (ns, name) =
        parse_host(host, base_domain).ok_or_else(|| MeshError::UnknownHost(host.to_string()))?;
    let key = ContainerKey::new(&ns, &name);
    let c = state
        .containers
        .get(&key)
        .ok_or_else(|| MeshError::UnknownContainer(key.clone()))?;
    Ok(Route {
        timeout: Duration::from_secs(u64::from(c.spec.timeout_secs)),
        protocol: c.spec.protocol,
        max_concurrency: c.spec.max_concurrency as usize,
        private: c.spec.privacy == Privacy::Private,
        key,
    })
}

/// `NAME.NAMESPACE.BASE_DOMAIN[:port]` → `(namespace, name)`.
pub fn parse_host(host: &str, base_domain: &str) -> Option<(String, String)> {
    let host = host.trim_end_matches('.');
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.to_ascii_lowercase();
    let prefix = host.strip_suffix(base_domain)?.strip_suffix('.')?;
    let (name, namespace) = prefix.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some((namespace.to_string(), name.to_string()))
}

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Picks the least-loaded instance with a free slot: `(index, in_flight)`
/// pairs in, the index out.
pub fn least_loaded(loads: &[(usize, usize)], limit: usize) -> Option<usize> {
    loads
        .iter()
        .filter(|(_, n)| *n < limit)
        .min_by_key(|(i, n)| (*n, *i))
        .map(|(i, _)| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let d = "rouse.localhost";
        assert_eq!(
            parse_host("web.shop.rouse.localhost", d),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(
            parse_host("web.shop.rouse.localhost:8080", d),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(
            parse_host("WEB.Shop.rouse.localhost.", d),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(parse_host("shop.rouse.localhost", d), None);
        assert_eq!(parse_host("a.b.c.rouse.localhost", d), None);
        assert_eq!(parse_host("web.shop.example.com", d), None);
        assert_eq!(parse_host("xrouse.localhost", d), None);
    }

    #[test]
    fn resolve_names_what_is_missing() {
        let mut s = StateData::default();
        assert!(matches!(
            resolve(&s, "rouse.localhost", "nope.example"),
            Err(MeshError::UnknownHost(_))
        ));
        assert!(matches!(
            resolve(&s, "rouse.localhost", "web.shop.rouse.localhost"),
            Err(MeshError::UnknownContainer(_))
        ));
        s.apply(&crate::state::Proposal::new(
            1,
            crate::state::Command::CreateNamespace {
                name: "shop".into(),
                env: Default::default(),
            },
        ));
        s.apply(&crate::state::Proposal::new(
            2,
            crate::state::Command::PutContainer {
                namespace: "shop".into(),
                name: "web".into(),
                spec: crate::state::ContainerSpec {
                    privacy: Privacy::Private,
                    timeout_secs: 12,
                    ..crate::state::ContainerSpec::with_image("i")
                },
                expected_revision: None,
            },
        ));
        let r = resolve(&s, "rouse.localhost", "web.shop.rouse.localhost:80").unwrap();
        assert_eq!(r.key, ContainerKey::new("shop", "web"));
        assert!(r.private);
        assert_eq!(r.timeout, Duration::from_secs(12));
    }

    #[test]
    fn least_loaded_respects_the_limit() {
        assert_eq!(least_loaded(&[(0, 3), (1, 1), (2, 2)], 4), Some(1));
        assert_eq!(least_loaded(&[(0, 1), (1, 1)], 1), None);
        assert_eq!(least_loaded(&[], 1), None);
    }
}
