//! Typed keys of the replicated state. Both serialise as the strings the log
//! and snapshots have always held (`namespace/name`, `namespace` or
//! `namespace/container`) and order as those strings do, so maps keyed by
//! them encode, sort and digest exactly as before.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A container's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerKey(String);

impl ContainerKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ContainerKey(format!("{namespace}/{name}"))
    }

    /// A key as stored (`namespace/name`); `None` unless it has both parts.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| ContainerKey::new(ns, name))
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(ns, _)| ns)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, name)| name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where secrets live: a namespace (every container of it sees them) or one
/// container (its values win over the namespace's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scope(String);

impl Scope {
    pub fn namespace(namespace: &str) -> Self {
        Scope(namespace.to_string())
    }

    pub fn container(key: &ContainerKey) -> Self {
        Scope(key.as_str().to_string())
    }

    /// `namespace`, or `namespace/container` when a container is named.
    pub fn of(namespace: &str, container: Option<&str>) -> Self {
        match container {
            Some(c) => Scope::container(&ContainerKey::new(namespace, c)),
            None => Scope::namespace(namespace),
        }
    }

    /// A scope as stored (`namespace` or `namespace/container`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('/') {
            Some(_) => ContainerKey::parse(s).map(|k| Scope::container(&k)),
            None => (!s.is_empty()).then(|| Scope::namespace(s)),
        }
    }

    /// The namespace the scope belongs to.
    pub fn namespace_name(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(ns, _)| ns)
    }

    /// The container, for a container scope.
    pub fn container_key(&self) -> Option<ContainerKey> {
        self.0
            .split_once('/')
            .map(|(ns, c)| ContainerKey::new(ns, c))
    }

    /// Whether the secrets of this scope reach the instances of `key`.
    pub fn covers(&self, key: &ContainerKey) -> bool {
        match self.container_key() {
            Some(c) => &c == key,
            None => self.0 == key.namespace(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_and_encode_as_strings() {
        let k = ContainerKey::new("shop", "web");
        assert_eq!((k.namespace(), k.name()), ("shop", "web"));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"shop/web\"");
        let s = Scope::of("shop", Some("web"));
        assert_eq!(s.container_key(), Some(k.clone()));
        assert_eq!(s.namespace_name(), "shop");
        assert!(s.covers(&k));
        let ns = Scope::namespace("shop");
        assert!(ns.covers(&k) && ns.container_key().is_none());
        assert!(!Scope::namespace("shop-2").covers(&k));
        assert_eq!(serde_json::to_string(&ns).unwrap(), "\"shop\"");
    }

    #[test]
    fn order_is_the_order_of_the_strings() {
        // '-' sorts before '/': the typed key must not reorder maps.
        let mut keys = [ContainerKey::new("a", "x"), ContainerKey::new("a-b", "x")];
        keys.sort();
        assert_eq!(keys[0].as_str(), "a-b/x");
    }
}
