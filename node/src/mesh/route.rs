//! Host → container, and which instances may take a request. Pure.

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
    fn least_loaded_respects_the_limit() {
        assert_eq!(least_loaded(&[(0, 3), (1, 1), (2, 2)], 4), Some(1));
        assert_eq!(least_loaded(&[(0, 1), (1, 1)], 1), None);
        assert_eq!(least_loaded(&[], 1), None);
    }
}
