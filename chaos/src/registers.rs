//! Which register each client operation goes to: a pure decider over the
//! run's registers, with the I/O (creating and deleting their namespaces)
//! left to the keeper in [`crate::workload`].
//!
//! Like an independent-key generator, clients move to a fresh register once
//! the current one has had its share of operations or of unknown-outcome
//! writes, so every key's history stays small however long the run is.
//!
//! ```text
//!   spare (created ahead, "init") ──▶ in a slot (clients use it)
//!       ──(ops or unknown writes used up)──▶ retired ──(nothing in flight)──▶ deleted
//! ```
//!
//! Registers are named `r0`, `r1`, … and a name is never reused. Retired
//! registers are deleted once no operation on them is in flight, so the
//! cluster holds about `slots + spare` register namespaces at any time.
//! Deleting one cannot change a verdict: its history is closed, and a
//! timed-out write that lands after the delete is refused (not found),
//! while one that lands before it is already allowed for by "unknown".

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;

/// How registers rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegisterConfig {
    /// Registers in use at once (clients pick one at random per operation).
    pub slots: usize,
    /// Operations begun on one register before clients move on.
    pub ops_per_register: usize,
    /// Unknown-outcome writes on one register before clients move on
    /// (operations already in flight may add up to one per client).
    pub unknown_writes_per_register: usize,
    /// Fresh registers created ahead, so clients can move on during faults.
    pub spare: usize,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            slots: 3,
            ops_per_register: 300,
            unknown_writes_per_register: 20,
            spare: 6,
        }
    }
}

pub fn name(n: u64) -> String {
    format!("r{n}")
}

#[derive(Debug, Default)]
struct Usage {
    ops: usize,
    unknown_writes: usize,
    in_flight: usize,
}

/// The run's registers. Not thread-safe on its own: the workload keeps it
/// behind a mutex.
#[derive(Debug)]
pub struct Registers {
    cfg: RegisterConfig,
    /// `None`: retired, waiting for a spare.
    slots: Vec<Option<String>>,
    spares: VecDeque<String>,
    /// The next register number to create.
    next: u64,
    /// Created and not yet deleted.
    live: HashMap<String, Usage>,
    retired: BTreeSet<String>,
    created: usize,
    deleted: usize,
}

impl Registers {
    /// Slots point at `r0..r{slots}`, which [`Registers::initial`] names for
    /// creating before any client starts.
    pub fn new(cfg: RegisterConfig) -> Self {
        let slots = cfg.slots.max(1);
        let names: Vec<String> = (0..slots as u64).map(name).collect();
        Registers {
            cfg,
            live: names
                .iter()
                .map(|n| (n.clone(), Usage::default()))
                .collect(),
            slots: names.into_iter().map(Some).collect(),
            spares: VecDeque::new(),
            next: slots as u64,
            retired: BTreeSet::new(),
            created: slots,
            deleted: 0,
        }
    }

    pub fn config(&self) -> RegisterConfig {
        self.cfg
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The registers to create before the run.
    pub fn initial(&self) -> Vec<String> {
        self.slots.iter().flatten().cloned().collect()
    }

    /// The register slot `k` uses, counting one operation begun on it; `None`
    /// while the slot waits for a fresh register.
    pub fn begin(&mut self, k: usize) -> Option<String> {
        let k = k % self.slots.len();
        if let Some(current) = &self.slots[k] {
            let used_up = self.live.get(current).is_none_or(|u| {
                u.ops >= self.cfg.ops_per_register
                    || u.unknown_writes >= self.cfg.unknown_writes_per_register
            });
            if used_up {
                self.retired.insert(current.clone());
                self.slots[k] = self.spares.pop_front();
            }
        }
        let current = self.slots[k].clone()?;
        let u = self.live.entry(current.clone()).or_default();
        u.ops += 1;
        u.in_flight += 1;
        Some(current)
    }

    /// An operation on `register` completed (`unknown_write`: a write whose
    /// outcome is unknown).
    pub fn end(&mut self, register: &str, unknown_write: bool) {
        if let Some(u) = self.live.get_mut(register) {
            u.in_flight = u.in_flight.saturating_sub(1);
            u.unknown_writes += usize::from(unknown_write);
        }
    }

    /// The register the keeper should create next (the same name until
    /// [`Registers::created`] says it exists).
    pub fn to_create(&self) -> Option<String> {
        let waiting = self.slots.iter().filter(|s| s.is_none()).count();
        (self.spares.len() < self.cfg.spare + waiting).then(|| name(self.next))
    }

    /// `register` exists with the initial value: a spare, or straight into
    /// a slot that waits.
    pub fn created(&mut self, register: &str) {
        if register != name(self.next) {
            return;
        }
        self.next += 1;
        self.created += 1;
        self.live.insert(register.to_string(), Usage::default());
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(register.to_string()),
            None => self.spares.push_back(register.to_string()),
        }
    }

    /// A retired register with nothing in flight, for the keeper to delete.
    pub fn to_delete(&self) -> Option<String> {
        self.retired
            .iter()
            .find(|r| self.live.get(*r).is_none_or(|u| u.in_flight == 0))
            .cloned()
    }

    pub fn deleted(&mut self, register: &str) {
        if self.retired.remove(register) {
            self.live.remove(register);
            self.deleted += 1;
        }
    }

    /// Registers created so far (the initial ones included).
    pub fn created_count(&self) -> usize {
        self.created
    }

    pub fn deleted_count(&self) -> usize {
        self.deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ops: usize, unknown: usize, spare: usize) -> RegisterConfig {
        RegisterConfig {
            slots: 2,
            ops_per_register: ops,
            unknown_writes_per_register: unknown,
            spare,
        }
    }

    #[test]
    fn clients_move_to_a_spare_after_their_share_of_operations() {
        let mut r = Registers::new(cfg(3, 100, 1));
        assert_eq!(r.initial(), vec!["r0", "r1"]);
        assert_eq!(r.to_create().as_deref(), Some("r2"));
        r.created("r2");
        assert_eq!(r.to_create(), None, "one spare is enough");
        for _ in 0..3 {
            assert_eq!(r.begin(0).as_deref(), Some("r0"));
            r.end("r0", false);
        }
        assert_eq!(r.begin(0).as_deref(), Some("r2"));
        assert_eq!(r.begin(1).as_deref(), Some("r1"));
        assert_eq!(r.to_delete().as_deref(), Some("r0"));
        r.deleted("r0");
        assert_eq!(r.to_delete(), None);
        assert_eq!((r.created_count(), r.deleted_count()), (3, 1));
        assert_eq!(r.to_create().as_deref(), Some("r3"));
    }

    #[test]
    fn unknown_writes_retire_a_register_too() {
        let mut r = Registers::new(cfg(1000, 2, 2));
        r.created("r2");
        for _ in 0..2 {
            let k = r.begin(1).unwrap();
            r.end(&k, true);
        }
        assert_eq!(r.begin(1).as_deref(), Some("r2"));
    }

    #[test]
    fn a_slot_without_spares_waits_and_gets_the_next_one_created() {
        let mut r = Registers::new(cfg(1, 100, 0));
        assert_eq!(r.to_create(), None);
        assert_eq!(r.begin(0).as_deref(), Some("r0"));
        // Used up, no spare: the slot waits instead of growing r0's history.
        assert_eq!(r.begin(0), None);
        assert_eq!(r.to_create().as_deref(), Some("r2"));
        // A stale confirmation for another name changes nothing.
        r.created("r7");
        assert_eq!(r.begin(0), None);
        r.created("r2");
        assert_eq!(r.begin(0).as_deref(), Some("r2"));
    }

    #[test]
    fn a_retired_register_is_deleted_only_when_idle() {
        let mut r = Registers::new(cfg(1, 100, 1));
        r.created("r2");
        let k = r.begin(0).unwrap();
        assert_eq!(r.begin(0).as_deref(), Some("r2"));
        assert_eq!(r.to_delete(), None, "{k} still has an operation in flight");
        r.end(&k, false);
        assert_eq!(r.to_delete().as_deref(), Some("r0"));
        // Deleting what is not retired is refused.
        r.deleted("r1");
        assert_eq!(r.deleted_count(), 0);
    }

    #[test]
    fn live_registers_stay_bounded_over_a_long_run() {
        let mut r = Registers::new(RegisterConfig::default());
        let mut max_live = 0;
        for i in 0..300_000usize {
            while let Some(n) = r.to_create() {
                r.created(&n);
            }
            if let Some(k) = r.begin(i % 7) {
                r.end(&k, i % 50 == 0);
            }
            while let Some(d) = r.to_delete() {
                r.deleted(&d);
            }
            max_live = max_live.max(r.live.len());
        }
        assert!(r.created_count() >= 1000, "{}", r.created_count());
        assert!(max_live <= 3 + 6 + 1, "{max_live}");
    }
}
