//! Per-container demand on this node: requests in flight or queued, and
//! when the last one arrived. Reported to the leader's autoscaler; a
//! request counts from its arrival until its response body ends (its guard
//! is dropped).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cluster::now_ms;
use crate::loads::ContainerLoad;
use crate::state::ContainerKey;

#[derive(Default)]
struct Entry {
    in_flight: usize,
    last_request_ms: u64,
}

#[derive(Default, Clone)]
pub struct Demand {
    inner: Arc<Mutex<HashMap<ContainerKey, Entry>>>,
}

/// A request's place in its container's demand.
pub struct DemandGuard {
    inner: Arc<Mutex<HashMap<ContainerKey, Entry>>>,
    key: ContainerKey,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        if let Some(e) = self.inner.lock().get_mut(&self.key) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

impl Demand {
    /// Counts a request for `key` until the guard drops.
    pub fn enter(&self, key: &ContainerKey) -> DemandGuard {
        {
            let mut d = self.inner.lock();
            let e = d.entry(key.clone()).or_default();
            e.in_flight += 1;
            e.last_request_ms = now_ms();
        }
        DemandGuard {
            inner: self.inner.clone(),
            key: key.clone(),
        }
    }

    /// Requests for `key` in flight or queued here.
    pub fn of(&self, key: &ContainerKey) -> usize {
        self.inner.lock().get(key).map_or(0, |e| e.in_flight)
    }

    /// Every container's demand here.
    pub fn loads(&self) -> Vec<ContainerLoad> {
        self.inner
            .lock()
            .iter()
            .map(|(key, e)| ContainerLoad {
                key: key.clone(),
                in_flight: u32::try_from(e.in_flight).unwrap_or(u32::MAX),
                last_request_ms: e.last_request_ms,
                draining: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_the_guard_drops() {
        let d = Demand::default();
        let k = ContainerKey::new("a", "b");
        let g1 = d.enter(&k);
        let g2 = d.enter(&k);
        assert_eq!(d.of(&k), 2);
        drop(g1);
        assert_eq!(d.of(&k), 1);
        drop(g2);
        let l = d.loads();
        assert_eq!((l[0].in_flight, l[0].last_request_ms > 0), (0, true));
    }
}
