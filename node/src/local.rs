//! What this node knows of its own instances that the replicated state does
//! not: requests in flight per instance (the concurrency slots), when each
//! last had a request, which are suspended, and when each became ready.
//! Shared by the mesh (which fills slots and wakes suspended instances) and
//! the agent (which drains, suspends and forgets them).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::state::ContainerKey;

/// A request to thaw a suspended local instance, answered once it runs.
pub struct ResumeRequest {
    pub id: String,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Where the mesh sends resume requests (the agent answers them).
pub type Resumer = mpsc::Sender<ResumeRequest>;

/// Asks the agent to resume `id` and waits for the answer.
pub async fn resume(resumer: &Resumer, id: &str) -> Result<(), String> {
    let (done, answer) = oneshot::channel();
    resumer
        .send(ResumeRequest {
            id: id.to_string(),
            done,
        })
        .await
        .map_err(|_| "the node agent is not running".to_string())?;
    answer
        .await
        .map_err(|_| "the node agent stopped".to_string())?
}

#[derive(Default)]
pub struct LocalInstances {
    slots: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Per container: woken whenever a slot of one of its instances frees
    /// or one of them becomes ready.
    freed: Mutex<HashMap<ContainerKey, Arc<Notify>>>,
    /// Instances that answer on their port, by this node's own
    /// observation: routable before the cluster has committed their
    /// status (a cold start saves a Raft round), until they exit.
    answering: Mutex<HashMap<String, (ContainerKey, SocketAddr)>>,
    last_used: Mutex<HashMap<String, Instant>>,
    suspended: Mutex<HashSet<String>>,
    ready_at: Mutex<HashMap<String, Instant>>,
    /// Instances stopping (drained, then removed), by container.
    stopping: Mutex<HashMap<String, ContainerKey>>,
    /// Slots held for requests about to hop here: token → (instance,
    /// slot, when it lapses).
    reservations: Mutex<HashMap<String, (String, SlotGuard, Instant)>>,
    /// Instances being drained or removed, and since when: they take no new
    /// request, even from a view of the state read just before they left
    /// it. Kept for [`RETIRED_FOR`] after they started draining.
    retired: Mutex<HashMap<String, Instant>>,
    /// Requests each instance took since metering last asked.
    requests: Mutex<HashMap<String, u64>>,
}

/// How long a reserved slot waits for its request.
pub const RESERVATION_TTL: Duration = Duration::from_secs(2);

/// How long a retired instance id is remembered (ids are never reused; this
/// only bounds the memory).
const RETIRED_FOR: Duration = Duration::from_secs(3600);

/// One of an instance's concurrency slots; released when dropped.
pub struct SlotGuard {
    slot: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

impl LocalInstances {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn slot(&self, id: &str) -> Arc<AtomicUsize> {
        self.slots.lock().entry(id.to_string()).or_default().clone()
    }

    /// Woken when a slot of one of `key`'s local instances frees.
    pub fn freed(&self, key: &ContainerKey) -> Arc<Notify> {
        self.freed.lock().entry(key.clone()).or_default().clone()
    }

    /// Requests in flight to a local instance.
    pub fn in_flight(&self, id: &str) -> usize {
        self.slots
            .lock()
            .get(id)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Takes one of `id`'s slots if fewer than `limit` are taken, and
    /// records the use.
    pub fn try_acquire(&self, key: &ContainerKey, id: &str, limit: usize) -> Option<SlotGuard> {
        if self.is_retired(id) {
            return None;
        }
        let slot = self.slot(id);
        if slot.fetch_add(1, Ordering::AcqRel) >= limit {
            slot.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.last_used.lock().insert(id.to_string(), Instant::now());
        *self.requests.lock().entry(id.to_string()).or_default() += 1;
        Some(SlotGuard {
            slot,
            freed: self.freed(key),
        })
    }

    /// Requests `id` took since the last call (for metering).
    pub fn take_requests(&self, id: &str) -> u64 {
        self.requests.lock().remove(id).unwrap_or(0)
    }

    /// How long a local instance has had no request (none yet: since `since`).
    pub fn idle_for(&self, id: &str, since: Instant) -> Duration {
        let last = self.last_used.lock().get(id).copied().unwrap_or(since);
        last.max(since).elapsed()
    }

    pub fn mark_suspended(&self, id: &str) {
        self.suspended.lock().insert(id.to_string());
    }

    pub fn mark_resumed(&self, id: &str) {
        self.suspended.lock().remove(id);
        self.ready_at.lock().insert(id.to_string(), Instant::now());
    }

    pub fn is_suspended(&self, id: &str) -> bool {
        self.suspended.lock().contains(id)
    }

    /// When the instance last became ready or was resumed (first asked: now).
    pub fn ready_since(&self, id: &str) -> Instant {
        *self
            .ready_at
            .lock()
            .entry(id.to_string())
            .or_insert_with(Instant::now)
    }

    /// The instance `id` of `key` answers at `addr`: requests waiting for
    /// `key` are woken.
    pub fn mark_ready(&self, key: &ContainerKey, id: &str, addr: SocketAddr) {
        self.ready_at.lock().insert(id.to_string(), Instant::now());
        self.answering
            .lock()
            .insert(id.to_string(), (key.clone(), addr));
        self.freed(key).notify_waiters();
    }

    /// The instance exited (it may start again, elsewhere on the bridge).
    pub fn mark_exited(&self, id: &str) {
        self.answering.lock().remove(id);
    }

    /// `key`'s instances this node saw answering (and not retired).
    pub fn answering(&self, key: &ContainerKey) -> Vec<(String, SocketAddr)> {
        self.answering
            .lock()
            .iter()
            .filter(|(id, (k, _))| k == key && !self.is_retired(id))
            .map(|(id, (_, addr))| (id.clone(), *addr))
            .collect()
    }

    /// Holds `slot` of instance `id` for a request about to hop here, for
    /// at most [`RESERVATION_TTL`]; returns the token it must present.
    pub fn reserve(&self, id: &str, slot: SlotGuard) -> String {
        let token = hex::encode(rand::random::<[u8; 12]>());
        let now = Instant::now();
        let mut r = self.reservations.lock();
        // Lapsed ones give their slot back.
        r.retain(|_, (_, _, until)| *until > now);
        r.insert(token.clone(), (id.to_string(), slot, now + RESERVATION_TTL));
        token
    }

    /// The instance and slot held under `token`, if it has not lapsed.
    pub fn take_reserved(&self, token: &str) -> Option<(String, SlotGuard)> {
        let (id, slot, until) = self.reservations.lock().remove(token)?;
        (until > Instant::now()).then_some((id, slot))
    }

    /// `id` of `key` is stopping: it counts against its container's
    /// max-scale until [`Self::stopped`].
    pub fn stopping(&self, key: &ContainerKey, id: &str) {
        self.stopping.lock().insert(id.to_string(), key.clone());
    }

    pub fn stopped(&self, id: &str) {
        self.stopping.lock().remove(id);
    }

    /// Instances stopping here, per container.
    pub fn stopping_counts(&self) -> HashMap<ContainerKey, u32> {
        let mut out: HashMap<ContainerKey, u32> = HashMap::new();
        for key in self.stopping.lock().values() {
            *out.entry(key.clone()).or_default() += 1;
        }
        out
    }

    /// Whether `id` is being drained or removed (it takes no new request).
    pub fn is_retired(&self, id: &str) -> bool {
        self.retired.lock().contains_key(id)
    }

    /// Waits until a (no longer routable) instance has no request in
    /// flight, or `max` passes, then forgets it. From the start it takes no
    /// new request.
    pub async fn drain(&self, id: &str, max: Duration) {
        {
            let mut retired = self.retired.lock();
            retired.retain(|_, at| at.elapsed() < RETIRED_FOR);
            retired.insert(id.to_string(), Instant::now());
        }
        let deadline = tokio::time::Instant::now() + max;
        while self.in_flight(id) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.forget(id);
    }

    pub fn forget(&self, id: &str) {
        self.slots.lock().remove(id);
        self.last_used.lock().remove(id);
        self.suspended.lock().remove(id);
        self.ready_at.lock().remove(id);
        self.answering.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released_by_their_guard() {
        let l = LocalInstances::new();
        let k = ContainerKey::new("ns", "web");
        let a = l.try_acquire(&k, "i1", 2).expect("first slot");
        let b = l.try_acquire(&k, "i1", 2).expect("second slot");
        assert!(l.try_acquire(&k, "i1", 2).is_none(), "limit 2");
        assert_eq!(l.in_flight("i1"), 2);
        drop(a);
        assert_eq!(l.in_flight("i1"), 1);
        assert!(l.try_acquire(&k, "i1", 2).is_some());
        drop(b);
        assert!(l.idle_for("i1", Instant::now()) < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn answering_instances_are_routable_until_they_exit_or_retire() {
        let l = LocalInstances::new();
        let k = ContainerKey::new("ns", "web");
        let addr: SocketAddr = "10.88.1.2:8080".parse().unwrap();
        let freed = l.freed(&k);
        let woken = freed.notified();
        l.mark_ready(&k, "i1", addr);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("waiting requests are woken");
        l.mark_ready(&k, "i2", addr);
        assert_eq!(l.answering(&k).len(), 2);
        assert!(l.answering(&ContainerKey::new("ns", "other")).is_empty());
        l.mark_exited("i1");
        assert_eq!(l.answering(&k), vec![("i2".to_string(), addr)]);
        let drain = {
            let l = l.clone();
            tokio::spawn(async move { l.drain("i2", Duration::from_secs(1)).await })
        };
        drain.await.unwrap();
        assert!(l.answering(&k).is_empty(), "retired");
    }

    #[tokio::test]
    async fn a_drained_instance_takes_no_new_request() {
        let l = LocalInstances::new();
        let k = ContainerKey::new("ns", "web");
        let held = l.try_acquire(&k, "i1", 5).expect("a slot");
        let drain = {
            let l = l.clone();
            tokio::spawn(async move { l.drain("i1", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(l.try_acquire(&k, "i1", 5).is_none(), "draining");
        drop(held);
        drain.await.unwrap();
        // A request that read the state before the instance left it.
        assert!(l.try_acquire(&k, "i1", 5).is_none(), "drained");
        assert!(l.try_acquire(&k, "i2", 5).is_some());
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_waiters() {
        let l = LocalInstances::new();
        let k = ContainerKey::new("ns", "web");
        let g = l.try_acquire(&k, "i1", 1).unwrap();
        let freed = l.freed(&k);
        let waiter = tokio::spawn(async move { freed.notified().await });
        tokio::task::yield_now().await;
        drop(g);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
