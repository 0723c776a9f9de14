//! The placed instances by id, with an index by container.
//!
//! The scheduler, the autoscaler, the API and the mesh (on every request)
//! ask for one container's instances; a scan of every instance for each
//! made a scheduling pass over 1,000 containers × 5 instances cost most of
//! a core at idle. The index is kept by the only two ways in (`insert`,
//! `remove`) and rebuilt on deserialisation; it is not serialised, so
//! snapshots and state digests are the plain map they always were.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::key::ContainerKey;
use super::types::Instance;

#[derive(Clone, Debug, Default)]
pub struct Instances {
    by_id: BTreeMap<String, Instance>,
    by_container: HashMap<ContainerKey, BTreeSet<String>>,
}

impl Instances {
    /// Adds (or replaces) an instance, returning the one it replaced.
    pub fn insert(&mut self, inst: Instance) -> Option<Instance> {
        let key = ContainerKey::new(&inst.namespace, &inst.container);
        let id = inst.id.clone();
        let old = self.by_id.insert(id.clone(), inst);
        if let Some(o) = &old {
            self.unindex(o);
        }
        self.by_container.entry(key).or_default().insert(id);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    fn unindex(&mut self, inst: &Instance) {
        let key = ContainerKey::new(&inst.namespace, &inst.container);
        if let Some(ids) = self.by_container.get_mut(&key) {
            ids.remove(&inst.id);
            if ids.is_empty() {
                self.by_container.remove(&key);
            }
        }
    }

    /// One container's instances, in id order.
    pub fn of<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_container
            .get(&ContainerKey::new(namespace, name))
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }
}

impl Deref for Instances {
    type Target = BTreeMap<String, Instance>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl FromIterator<Instance> for Instances {
    fn from_iter<T: IntoIterator<Item = Instance>>(iter: T) -> Self {
        let mut out = Instances::default();
        for i in iter {
            out.insert(i);
        }
        out
    }
}

impl PartialEq for Instances {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl Eq for Instances {}

impl Serialize for Instances {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let by_id = BTreeMap::<String, Instance>::deserialize(d)?;
        Ok(by_id.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, ns: &str, name: &str) -> Instance {
        Instance {
            id: id.into(),
            namespace: ns.into(),
            container: name.into(),
            generation: 1,
            node: 1,
            created_at_ms: 0,
        }
    }

    #[test]
    fn the_index_follows_inserts_removes_and_a_round_trip() {
        let mut all = Instances::default();
        all.insert(inst("a-b-1", "a-b", "c"));
        all.insert(inst("a-b-c-2", "a", "b-c"));
        all.insert(inst("a-b-3", "a-b", "c"));
        let ids = |all: &Instances, ns, name| -> Vec<String> {
            all.of(ns, name).map(|i| i.id.clone()).collect()
        };
        assert_eq!(ids(&all, "a-b", "c"), ["a-b-1", "a-b-3"]);
        assert_eq!(ids(&all, "a", "b-c"), ["a-b-c-2"]);
        // Replacing an id with one of another container moves it.
        all.insert(inst("a-b-1", "a", "b-c"));
        assert_eq!(ids(&all, "a-b", "c"), ["a-b-3"]);
        assert_eq!(ids(&all, "a", "b-c"), ["a-b-1", "a-b-c-2"]);
        all.remove("a-b-3");
        assert!(ids(&all, "a-b", "c").is_empty());
        assert!(all.remove("nope").is_none());
        // Serialised as the plain map; the index comes back on reading.
        let json = serde_json::to_string(&all).unwrap();
        let plain: BTreeMap<String, Instance> = serde_json::from_str(&json).unwrap();
        assert_eq!(&plain, &*all);
        let back: Instances = serde_json::from_str(&json).unwrap();
        assert_eq!(back, all);
        assert_eq!(ids(&back, "a", "b-c"), ["a-b-1", "a-b-c-2"]);
    }
}
