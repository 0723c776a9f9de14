//! Per-key linearizability of a register history.
//!
//! ```text
//!  ops of one key ─▶ prepare ─────────────────────────▶ search ─▶ verdict + stats
//!                    · drop reads without an answer      (Wing & Gong / Lowe,
//!                    · drop unknown writes no read saw    porcupine-style: entries
//!                    · bound seen unknown writes by       in a linked list, a
//!                      their first reader                 bitset of linearized
//!                    · values → small integers            ops, a cache of
//!                                                         (bitset, state))
//! ```
//!
//! Completed operations must take effect between their invocation and
//! completion; a write whose outcome is unknown may take effect at any time
//! after its invocation, or never. Reads that failed or timed out carry no
//! information and are left out. The search runs within a [`Budget`] of
//! time and memory; a search over budget answers [`Verdict::Unknown`], which
//! callers treat as a failure, never as a pass.
//!
//! Keys are independent registers, so checking them one at a time is exact
//! (linearizability is compositional over objects).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One operation on a register. Times are in any unit, the same for all
/// operations (the chaos run uses nanoseconds since its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub invoke: u64,
    /// `None`: outcome unknown (a timed-out write, or one that failed in a
    /// way that does not say whether it was applied).
    pub complete: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(String),
    /// The value the read returned.
    Read(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search exceeded its budget: a failure, never a pass.
    Unknown,
}

/// What one key's search may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    #[serde(rename = "time_s", serialize_with = "as_secs")]
    pub time: Duration,
    /// Estimated bytes held by the search (cache, bitsets, stack).
    pub memory_bytes: usize,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            time: Duration::from_secs(20),
            memory_bytes: 256 << 20,
        }
    }
}

/// One key's verdict and what deciding it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyCheck {
    pub verdict: Verdict,
    /// Operations given (reads without an answer excluded).
    pub operations: usize,
    /// Writes whose outcome is unknown.
    pub unknown_writes: usize,
    /// Unknown writes dropped because no read returned their value.
    pub pruned_unknown_writes: usize,
    /// Operations the search had to order.
    pub searched: usize,
    /// Search steps taken.
    pub steps: u64,
    /// (linearized set, state) pairs cached.
    pub cache_entries: usize,
    pub time_ms: f64,
    /// Peak estimate of the bytes the search held.
    pub memory_bytes: usize,
    /// Why the verdict is not "linearizable": the operation no order could
    /// place, or the budget that ran out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every key's verdict (keys checked one at a time) and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checked {
    /// `true`; `false`; or `null` when a search ran out of budget, which
    /// is a failure.
    pub linearizable: Option<bool>,
    pub registers: usize,
    pub not_linearizable: Vec<String>,
    pub unknown: Vec<String>,
    /// Wall-clock time of the whole check.
    pub time_s: f64,
    /// The largest per-key peak estimate: keys are checked one at a time.
    pub peak_memory_bytes: usize,
    pub budget_per_key: Budget,
    pub keys: BTreeMap<String, KeyCheck>,
}

/// Checks every key of `by_key`, each from `initial` within `budget`.
pub fn check_keys(initial: &str, by_key: &BTreeMap<String, Vec<Op>>, budget: &Budget) -> Checked {
    let started = Instant::now();
    let keys: BTreeMap<String, KeyCheck> = by_key
        .iter()
        .map(|(k, ops)| (k.clone(), check(initial, ops, budget)))
        .collect();
    let with = |v: Verdict| -> Vec<String> {
        keys.iter()
            .filter(|(_, c)| c.verdict == v)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let not_linearizable = with(Verdict::NotLinearizable);
    let unknown = with(Verdict::Unknown);
    Checked {
        linearizable: if !not_linearizable.is_empty() {
            Some(false)
        } else if !unknown.is_empty() {
            None
        } else {
            Some(true)
        },
        registers: keys.len(),
        not_linearizable,
        unknown,
        time_s: started.elapsed().as_secs_f64(),
        peak_memory_bytes: keys.values().map(|c| c.memory_bytes).max().unwrap_or(0),
        budget_per_key: *budget,
        keys,
    }
}

/// A register value interned as a small integer; 0 is the initial value.
type Value = u32;

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(Value),
    Read(Value),
}

/// An operation ready for the search: completion `u64::MAX` for a write
/// that may take effect at any time after its invocation.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    invoke: u64,
    complete: u64,
    step: Step,
    /// Index into the caller's ops, for explanations.
    source: usize,
}

fn seconds(t: u64) -> String {
    if t == u64::MAX {
        "∞".to_string()
    } else {
        format!("{:.3}s", t as f64 / 1e9)
    }
}

fn describe(op: &Op) -> String {
    let when = format!(
        "invoked {}, {}",
        seconds(op.invoke),
        op.complete
            .map_or("outcome unknown".to_string(), |c| format!(
                "completed {}",
                seconds(c)
            ))
    );
    match &op.kind {
        Kind::Write(v) => format!("write {v:?} ({when})"),
        Kind::Read(v) => format!("read returning {v:?} ({when})"),
    }
}

/// What [`prepare`] leaves for the search, or a violation found on the way.
enum Preparation {
    Search {
        ops: Vec<Prepared>,
        values: Vec<String>,
        pruned: usize,
    },
    Violation(String),
}

/// Turns `ops` into what the search orders.
///
/// Unknown writes are the expensive part of a search: each may take effect
/// anywhere after its invocation, or never. Two rules remove almost all of
/// them without changing the verdict:
///
/// 1. **An unknown write whose value no read returned is dropped.** Take any
///    legal order of the history with the write `w` in it. The operations
///    between `w` and the next write (or the end) would be reads returning
///    `w`'s value; there are none, so removing `w` leaves every read seeing
///    the same value as before, and the order stays legal and still respects
///    real time. Conversely an order without `w` is already a legal
///    linearization of the history with `w` (a pending operation may be left
///    out, equivalently placed at the very end, where a write harms no read).
///    So the history is linearizable with `w` exactly when it is without it.
/// 2. **An unknown write whose value some read returned, and which is the
///    only write of that value, must take effect before the earliest
///    completion among those reads** (those reads see the value, so follow
///    the write). It is then an ordinary operation completing at that time.
///    If that time is before the write was invoked, a read saw the value
///    before anyone wrote it: not linearizable.
///
/// Unknown writes of a value that several writes wrote stay as writes that
/// may take effect any time after invocation (completion at infinity); the
/// search then must place them, which it can always do at the end.
fn prepare<'a>(initial: &'a str, ops: &'a [Op]) -> Preparation {
    let mut ids: HashMap<&str, Value> = HashMap::from([(initial, 0)]);
    let mut values: Vec<String> = vec![initial.to_string()];
    let mut intern = |v: &'a str, values: &mut Vec<String>| -> Value {
        *ids.entry(v).or_insert_with(|| {
            // Fewer than 2^32 distinct values: there are fewer operations.
            let id = Value::try_from(values.len()).unwrap_or(Value::MAX);
            values.push(v.to_string());
            id
        })
    };
    // Writers of each value (any outcome), and the earliest completion of a
    // read returning it.
    let mut writers: HashMap<&str, usize> = HashMap::new();
    let mut first_read: HashMap<&str, u64> = HashMap::new();
    for op in ops {
        match (&op.kind, op.complete) {
            (Kind::Write(v), _) => *writers.entry(v.as_str()).or_default() += 1,
            (Kind::Read(v), Some(c)) => {
                let e = first_read.entry(v.as_str()).or_insert(c);
                *e = (*e).min(c);
            }
            (Kind::Read(_), None) => {}
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    let mut pruned = 0;
    for (i, op) in ops.iter().enumerate() {
        match (&op.kind, op.complete) {
            (Kind::Read(_), None) => {}
            (Kind::Read(v), Some(c)) => {
                if v != initial && !writers.contains_key(v.as_str()) {
                    return Preparation::Violation(format!(
                        "{}: no write wrote that value",
                        describe(op)
                    ));
                }
                out.push(Prepared {
                    invoke: op.invoke,
                    complete: c,
                    step: Step::Read(intern(v, &mut values)),
                    source: i,
                });
            }
            (Kind::Write(v), Some(c)) => out.push(Prepared {
                invoke: op.invoke,
                complete: c,
                step: Step::Write(intern(v, &mut values)),
                source: i,
            }),
            (Kind::Write(v), None) => {
                let Some(&seen) = first_read.get(v.as_str()) else {
                    // Rule 1: nobody saw it.
                    pruned += 1;
                    continue;
                };
                let unique = v != initial && writers.get(v.as_str()) == Some(&1);
                let complete = if unique {
                    // Rule 2: it precedes its first reader's completion.
                    if seen < op.invoke {
                        return Preparation::Violation(format!(
                            "a read returned {v:?} by {}, before its only write was invoked ({})",
                            seconds(seen),
                            describe(op)
                        ));
                    }
                    seen
                } else {
                    u64::MAX
                };
                out.push(Prepared {
                    invoke: op.invoke,
                    complete,
                    step: Step::Write(intern(v, &mut values)),
                    source: i,
                });
            }
        }
    }
    // Indexed by invocation, the linearized set is mostly a prefix, which
    // keeps its run-length form (the cache key) short.
    out.sort_by_key(|o| (o.invoke, o.source));
    Preparation::Search {
        ops: out,
        values,
        pruned,
    }
}

const NIL: usize = usize::MAX;

/// Call and return entries in time order, in a doubly linked list that the
/// search lifts operations out of and puts them back into.
struct Entries {
    /// Operation index of each entry.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call entry, its return entry.
    ret: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Index of the head sentinel (one past the entries).
    head: usize,
}

impl Entries {
    fn new(ops: &[Prepared]) -> Self {
        // (time, returns after calls at the same instant, op): operations
        // that touch at one instant count as concurrent.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            order.push((o.invoke, false, i));
            order.push((o.complete, true, i));
        }
        order.sort_unstable();
        let n = order.len();
        let head = n;
        let mut e = Entries {
            op: order.iter().map(|x| x.2).collect(),
            is_call: order.iter().map(|x| !x.1).collect(),
            ret: vec![NIL; n],
            next: vec![NIL; n + 1],
            prev: vec![NIL; n + 1],
            head,
        };
        let mut ret_of = vec![NIL; ops.len()];
        for (idx, &(_, is_ret, op)) in order.iter().enumerate() {
            if is_ret {
                ret_of[op] = idx;
            }
        }
        for idx in 0..n {
            if e.is_call[idx] {
                e.ret[idx] = ret_of[e.op[idx]];
            }
        }
        let mut last = head;
        for idx in 0..n {
            e.next[last] = idx;
            e.prev[idx] = last;
            last = idx;
        }
        e
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret[call]);
    }

    /// Undoes the [`Entries::lift`] of `call` (lifts are undone last first).
    fn unlift(&mut self, call: usize) {
        self.relink(self.ret[call]);
        self.relink(call);
    }
}

/// A fixed-size set of operation indices.
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64).max(1)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    /// The indices where membership flips, starting outside the set: the
    /// set in a canonical form whose size is the number of runs, not the
    /// number of operations. Operations are linearized roughly in order of
    /// invocation, so the set is a prefix plus a few stragglers and this
    /// stays as short as the history is concurrent.
    fn runs(&self) -> Box<[u32]> {
        let mut out = Vec::new();
        let mut inside = false;
        for (wi, &word) in self.0.iter().enumerate() {
            let uniform = if inside { u64::MAX } else { 0 };
            if word == uniform {
                continue;
            }
            for b in 0..64 {
                let bit = (word >> b) & 1 == 1;
                if bit != inside {
                    // Fewer than 2^32 operations per key.
                    out.push(u32::try_from(wi * 64 + b).unwrap_or(u32::MAX));
                    inside = bit;
                }
            }
        }
        out.into_boxed_slice()
    }
}

/// A cached search state: the linearized set (as runs) and the value.
type Cached = (Box<[u32]>, Value);

/// Checks one key's history, starting from `initial`, within `budget`.
pub fn check(initial: &str, ops: &[Op], budget: &Budget) -> KeyCheck {
    let started = Instant::now();
    let operations = ops
        .iter()
        .filter(|o| !(o.complete.is_none() && matches!(o.kind, Kind::Read(_))))
        .count();
    let unknown_writes = ops
        .iter()
        .filter(|o| o.complete.is_none() && matches!(o.kind, Kind::Write(_)))
        .count();
    let mut result = KeyCheck {
        verdict: Verdict::Linearizable,
        operations,
        unknown_writes,
        pruned_unknown_writes: 0,
        searched: 0,
        steps: 0,
        cache_entries: 0,
        time_ms: 0.0,
        memory_bytes: 0,
        reason: None,
    };
    match prepare(initial, ops) {
        Preparation::Violation(why) => {
            result.verdict = Verdict::NotLinearizable;
            result.reason = Some(why);
        }
        Preparation::Search {
            ops: prepared,
            values,
            pruned,
        } => {
            result.pruned_unknown_writes = pruned;
            result.searched = prepared.len();
            search(&prepared, &values, ops, budget, started, &mut result);
        }
    }
    result.time_ms = started.elapsed().as_secs_f64() * 1000.0;
    result
}

/// The search proper: linearize the earliest-returning pending operations
/// first, backtrack on reaching a return entry whose call could not be
/// placed, and never revisit a (linearized set, state) pair.
fn search(
    ops: &[Prepared],
    values: &[String],
    source: &[Op],
    budget: &Budget,
    started: Instant,
    result: &mut KeyCheck,
) {
    let mut entries = Entries::new(ops);
    // The table slot of a cache entry (and its control byte), and the
    // allocator's overhead for its runs.
    let slot_bytes = std::mem::size_of::<Cached>() + 1;
    let alloc_bytes = 16;
    let fixed = entries.op.len() * (3 * std::mem::size_of::<usize>() + 1)
        + 2 * (entries.op.len() + 1) * std::mem::size_of::<usize>()
        + std::mem::size_of_val(ops)
        + ops.len().div_ceil(64) * 8;
    let mut cache: HashSet<Cached> = HashSet::new();
    let mut run_bytes = 0usize;
    let mut calls: Vec<(usize, Value)> = Vec::new();
    let mut linearized = Bits::new(ops.len());
    let mut state: Value = 0;
    // The deepest point reached, to explain a failure.
    let mut deepest: Option<(usize, usize, Value)> = None;
    let mut entry = entries.next[entries.head];
    let memory = |cache: &HashSet<Cached>, run_bytes: usize, calls: &Vec<(usize, Value)>| {
        fixed
            + cache.capacity() * slot_bytes
            + run_bytes
            + calls.capacity() * std::mem::size_of::<(usize, Value)>()
    };
    while entries.next[entries.head] != NIL {
        result.steps += 1;
        if result.steps & 1023 == 0 && started.elapsed() > budget.time {
            result.verdict = Verdict::Unknown;
            result.reason = Some(format!(
                "time budget of {:?} spent after {} steps",
                budget.time, result.steps
            ));
            break;
        }
        if entry == NIL {
            // Unreachable: every call's return follows it in the list.
            result.verdict = Verdict::Unknown;
            result.reason = Some("internal: ran off the entry list".to_string());
            break;
        }
        if entries.is_call[entry] {
            let op = entries.op[entry];
            let next_state = match ops[op].step {
                Step::Write(v) => Some(v),
                Step::Read(v) => (v == state).then_some(state),
            };
            if let Some(next_state) = next_state {
                linearized.set(op);
                let runs = linearized.runs();
                let size = runs.len() * 4 + if runs.is_empty() { 0 } else { alloc_bytes };
                if cache.insert((runs, next_state)) {
                    run_bytes += size;
                    let bytes = memory(&cache, run_bytes, &calls);
                    result.memory_bytes = result.memory_bytes.max(bytes);
                    if bytes > budget.memory_bytes {
                        result.verdict = Verdict::Unknown;
                        result.reason = Some(format!(
                            "memory budget of {} MiB spent after {} steps",
                            budget.memory_bytes >> 20,
                            result.steps
                        ));
                        break;
                    }
                    calls.push((entry, state));
                    state = next_state;
                    entries.lift(entry);
                    entry = entries.next[entries.head];
                    continue;
                }
                linearized.clear(op);
            }
            entry = entries.next[entry];
        } else {
            // An operation's return with the operation not placed: undo the
            // last placement and try the next candidate after it.
            if deepest.is_none_or(|(d, _, _)| calls.len() > d) {
                deepest = Some((calls.len(), entries.op[entry], state));
            }
            let Some((call, before)) = calls.pop() else {
                result.verdict = Verdict::NotLinearizable;
                break;
            };
            state = before;
            linearized.clear(entries.op[call]);
            entries.unlift(call);
            entry = entries.next[call];
        }
    }
    result.cache_entries = cache.len();
    result.memory_bytes = result.memory_bytes.max(memory(&cache, run_bytes, &calls));
    if result.verdict == Verdict::NotLinearizable {
        result.reason = deepest.map(|(depth, op, st)| {
            format!(
                "no order places more than {depth} of {} operations; the furthest stops at the {} with the register holding {:?}",
                ops.len(),
                describe(&source[ops[op].source]),
                values.get(st as usize).map_or("?", String::as_str)
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(invoke: u64, complete: Option<u64>, v: &str) -> Op {
        Op {
            invoke,
            complete,
            kind: Kind::Write(v.into()),
        }
    }
    fn r(invoke: u64, complete: u64, v: &str) -> Op {
        Op {
            invoke,
            complete: Some(complete),
            kind: Kind::Read(v.into()),
        }
    }
    fn verdict(h: &[Op]) -> Verdict {
        check("init", h, &Budget::default()).verdict
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w(0, Some(1), "a"),
            r(2, 3, "a"),
            w(4, Some(5), "b"),
            r(6, 7, "b"),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        assert_eq!(verdict(&[]), Verdict::Linearizable);
        assert_eq!(verdict(&[r(0, 1, "init")]), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_overlap_may_order_either_way() {
        // The read overlaps the write: it may see the old or the new value.
        assert_eq!(
            verdict(&[w(0, Some(10), "a"), r(1, 2, "init")]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[w(0, Some(10), "a"), r(1, 2, "a")]),
            Verdict::Linearizable
        );
        // Touching at one instant counts as overlapping.
        assert_eq!(
            verdict(&[w(0, Some(5), "a"), r(5, 6, "init")]),
            Verdict::Linearizable
        );
    }

    #[test]
    fn stale_read_is_caught() {
        // The write completed before the read began, yet the read saw the old value.
        let h = [w(0, Some(1), "a"), r(2, 3, "init")];
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable);
        let why = c.reason.unwrap();
        assert!(
            why.contains("read returning \"init\"") && why.contains("holding \"a\""),
            "{why}"
        );
        let h = [w(0, Some(1), "a"), w(2, Some(3), "b"), r(4, 5, "a")];
        assert_eq!(verdict(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn stale_read_among_many_concurrent_operations_is_caught() {
        // Six clients writing and reading in overlapping rounds; one read in
        // the middle returns a value overwritten two rounds earlier.
        let mut h = Vec::new();
        for round in 0..200u64 {
            let t = round * 100;
            for c in 0..3u64 {
                h.push(w(t + c, Some(t + 40 + c), &format!("v{round}-{c}")));
            }
            for c in 0..3u64 {
                let seen = if round == 120 && c == 1 {
                    "v118-2".to_string()
                } else if round == 0 {
                    "init".to_string()
                } else {
                    format!("v{}-2", round - 1)
                };
                // Reads overlap the round's writes only at their start.
                h.push(r(t + c, t + 3, &seen));
            }
        }
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable, "{c:?}");
        assert!(
            c.reason.as_deref().unwrap_or("").contains("v118-2"),
            "{c:?}"
        );
        assert!(c.time_ms < 5_000.0, "{c:?}");
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        let h = [w(0, Some(10), "a"), r(1, 2, "a"), r(3, 4, "init")];
        assert_eq!(verdict(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let h = [w(0, None, "a"), r(5, 6, "a")];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let h = [w(0, None, "a"), r(5, 6, "init")];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // But not before it was invoked.
        let h = [r(0, 1, "a"), w(2, None, "a")];
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable);
        assert!(c.reason.unwrap().contains("before its only write"));
        // Once seen, it has taken effect: an older value cannot come back.
        let h = [
            w(0, Some(1), "a"),
            w(2, None, "b"),
            r(3, 4, "b"),
            r(5, 6, "a"),
        ];
        assert_eq!(verdict(&h), Verdict::NotLinearizable);
        // Seen late, it may have taken effect late, even after a later
        // acknowledged write...
        let h = [
            w(0, None, "b"),
            r(1, 2, "init"),
            w(3, Some(4), "a"),
            r(5, 6, "a"),
            r(7, 8, "b"),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // ...but not after the read that saw it.
        let h = [
            w(0, None, "b"),
            w(3, Some(4), "a"),
            r(5, 6, "b"),
            r(7, 8, "a"),
        ];
        assert_eq!(verdict(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn an_unknown_write_of_a_repeated_value_stays_open() {
        // Two writes of "a": the unknown one may be the one the late read saw.
        let h = [
            w(0, Some(1), "a"),
            w(2, Some(3), "b"),
            w(4, None, "a"),
            r(10, 11, "a"),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // The initial value written again by an unknown write.
        let h = [w(0, Some(1), "b"), w(2, None, "init"), r(5, 6, "init")];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_value_never_written_is_not_linearizable() {
        let c = check("init", &[r(0, 1, "ghost")], &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable);
        assert!(c.reason.unwrap().contains("no write wrote"));
        // A failed write is left out by the caller; its value read is a ghost.
        assert_eq!(verdict(&[r(2, 3, "f")]), Verdict::NotLinearizable);
    }

    /// 200 unknown writes from timed-out clients, 150 of them never seen,
    /// interleaved with reads and acknowledged writes: decided at once.
    fn many_unknown_writes(stale: bool) -> Vec<Op> {
        let mut h = Vec::new();
        let mut last = "init".to_string();
        for i in 0..200u64 {
            let t = i * 10;
            let v = format!("u{i}");
            h.push(w(t, None, &v));
            if i % 4 == 0 {
                // Seen: a read right after it.
                h.push(r(t + 1, t + 2, &v));
                last = v;
            } else if i % 4 == 1 {
                let a = format!("a{i}");
                h.push(w(t + 1, Some(t + 2), &a));
                h.push(r(t + 3, t + 4, &a));
                last = a;
            }
            h.push(r(t + 5, t + 6, &last));
        }
        if stale {
            h.push(r(3000, 3001, "u4"));
        }
        h
    }

    #[test]
    fn two_hundred_unknown_writes_are_decided_fast() {
        let h = many_unknown_writes(false);
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::Linearizable, "{c:?}");
        assert_eq!(c.unknown_writes, 200);
        assert_eq!(c.pruned_unknown_writes, 150);
        assert!(c.time_ms < 1_000.0, "{c:?}");
        let c = check("init", &many_unknown_writes(true), &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable, "{c:?}");
        assert!(c.time_ms < 1_000.0, "{c:?}");
    }

    #[test]
    fn concurrent_unseen_unknown_writes_do_not_blow_up() {
        // 200 unknown writes all overlapping one another and every read:
        // without pruning, every subset would be a candidate state.
        let mut h: Vec<Op> = (0..200).map(|i| w(i, None, &format!("u{i}"))).collect();
        for i in 0..100u64 {
            h.push(w(1000 + i * 10, Some(1001 + i * 10), &format!("a{i}")));
            h.push(r(1002 + i * 10, 1003 + i * 10, &format!("a{i}")));
        }
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::Linearizable, "{c:?}");
        assert_eq!(c.searched, 200);
    }

    #[test]
    fn long_linearizable_history_stays_small() {
        // 8 clients, 20,000 operations, heavy overlap: the cache stays a
        // few entries per operation.
        let mut h = Vec::new();
        let mut cur = "init".to_string();
        for i in 0..2_500u64 {
            let t = i * 100;
            let v = format!("v{i}");
            for c in 0..4u64 {
                h.push(r(t + c, t + 10 + c, &cur));
            }
            h.push(w(t + 20, Some(t + 60), &v));
            for c in 0..3u64 {
                // Overlapping the write: either value.
                let seen = if c == 0 { &cur } else { &v };
                h.push(r(t + 30 + c * 10, t + 55, seen));
            }
            cur = v;
        }
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::Linearizable, "{c:?}");
        assert_eq!(c.operations, 20_000);
        assert!(c.memory_bytes < 16 << 20, "{c:?}");
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_a_pass() {
        // Forty concurrent writes of a repeated value that stay open, and a
        // read no order can satisfy: the search must try every subset.
        let mut h = Vec::new();
        for i in 0..40 {
            h.push(w(0, Some(1000), &format!("v{i}")));
        }
        h.push(r(2000, 2001, "v0"));
        h.push(w(2002, Some(2003), "v0"));
        h.push(r(2004, 2005, "v1"));
        let tight = Budget {
            time: Duration::from_millis(200),
            memory_bytes: 1 << 20,
        };
        let c = check("init", &h, &tight);
        assert_eq!(c.verdict, Verdict::Unknown, "{c:?}");
        assert!(c.reason.unwrap().contains("budget"));
        assert!(c.memory_bytes > 0);
    }

    /// Every order of every subset that keeps all completed operations:
    /// the definition, for histories small enough to enumerate.
    fn brute_force(initial: &str, h: &[Op]) -> bool {
        let ops: Vec<&Op> = h
            .iter()
            .filter(|o| !(o.complete.is_none() && matches!(o.kind, Kind::Read(_))))
            .collect();
        fn go(ops: &[&Op], placed: &mut Vec<usize>, state: &str) -> bool {
            let required_left =
                (0..ops.len()).any(|i| !placed.contains(&i) && ops[i].complete.is_some());
            if !required_left {
                return true;
            }
            for i in 0..ops.len() {
                if placed.contains(&i) {
                    continue;
                }
                // Real time: nothing unplaced may have completed before i began.
                let blocked = (0..ops.len()).any(|j| {
                    j != i
                        && !placed.contains(&j)
                        && ops[j].complete.is_some_and(|c| c < ops[i].invoke)
                });
                if blocked {
                    continue;
                }
                let next = match &ops[i].kind {
                    Kind::Write(v) => v.as_str(),
                    Kind::Read(v) if v == state => state,
                    Kind::Read(_) => continue,
                };
                placed.push(i);
                let ok = go(ops, placed, next);
                placed.pop();
                if ok {
                    return true;
                }
            }
            false
        }
        go(&ops, &mut Vec::new(), initial)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(22);
        let (mut yes, mut no) = (0, 0);
        for case in 0..4000 {
            let n = rng.random_range(1..=7);
            // Few distinct values, so some writes repeat one.
            let distinct = rng.random_range(1..=4);
            let h: Vec<Op> = (0..n)
                .map(|_| {
                    let invoke = rng.random_range(0..20u64);
                    let complete = invoke + rng.random_range(0..8u64);
                    let v = match rng.random_range(0..=distinct) {
                        0 => "init".to_string(),
                        k => format!("v{k}"),
                    };
                    match rng.random_range(0..10) {
                        0..=2 => w(invoke, Some(complete), &v),
                        3..=4 => w(invoke, None, &v),
                        _ => r(invoke, complete, &v),
                    }
                })
                .collect();
            let expected = brute_force("init", &h);
            let got = check("init", &h, &Budget::default());
            assert_eq!(
                got.verdict == Verdict::Linearizable,
                expected,
                "case {case}: {h:?}\n{got:?}"
            );
            assert_ne!(got.verdict, Verdict::Unknown);
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both verdicts well represented.
        assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
    }

    #[test]
    fn one_bad_key_fails_the_run_and_unknown_is_not_a_pass() {
        let mut by_key = BTreeMap::new();
        by_key.insert("r0".to_string(), vec![w(0, Some(1), "a"), r(2, 3, "a")]);
        by_key.insert("r1".to_string(), vec![r(0, 1, "init")]);
        let c = check_keys("init", &by_key, &Budget::default());
        assert_eq!(c.linearizable, Some(true));
        assert_eq!(c.registers, 2);
        by_key.insert("r2".to_string(), vec![w(0, Some(1), "a"), r(2, 3, "init")]);
        let c = check_keys("init", &by_key, &Budget::default());
        assert_eq!(c.linearizable, Some(false));
        assert_eq!(c.not_linearizable, vec!["r2"]);
        let mut hard: Vec<Op> = (0..40)
            .map(|i| w(0, Some(1000), &format!("v{i}")))
            .collect();
        hard.extend([
            r(2000, 2001, "v0"),
            w(2002, Some(2003), "v0"),
            r(2004, 2005, "v1"),
        ]);
        by_key.remove("r2");
        by_key.insert("r3".to_string(), hard);
        let tight = Budget {
            time: Duration::from_millis(100),
            memory_bytes: 1 << 20,
        };
        let c = check_keys("init", &by_key, &tight);
        assert_eq!(c.linearizable, None);
        assert_eq!(c.unknown, vec!["r3"]);
    }

    /// A simulated linearizable register under `clients` clients doing
    /// `per_client` operations each: every operation takes effect at a
    /// random point inside its interval; 3% time out (unknown), half of
    /// those never taking effect. `stale`: one read in the middle returns
    /// the value from a hundred writes earlier.
    fn simulated(clients: u64, per_client: u64, seed: u64, stale: bool) -> Vec<Op> {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        // (effect time or None, op index)
        let mut effects: Vec<(u64, usize)> = Vec::new();
        let mut ops = Vec::new();
        for c in 0..clients {
            let mut t = rng.random_range(0..100);
            for i in 0..per_client {
                let invoke = t;
                let effect = invoke + rng.random_range(1..2_000);
                let complete = effect + rng.random_range(1..2_000);
                let timed_out = rng.random_bool(0.03);
                let write = rng.random_bool(0.5);
                let kind = if write {
                    Kind::Write(format!("c{c}-{i}"))
                } else {
                    Kind::Read(String::new())
                };
                if !(timed_out && (!write || rng.random_bool(0.5))) {
                    effects.push((effect, ops.len()));
                }
                ops.push(Op {
                    invoke,
                    complete: (!timed_out).then_some(complete),
                    kind,
                });
                t = if timed_out { invoke + 5_000 } else { complete } + rng.random_range(1..50);
            }
        }
        effects.sort_unstable();
        let mut value = "init".to_string();
        let mut written = vec![value.clone()];
        let mut reads = 0;
        for (_, i) in effects {
            match &mut ops[i].kind {
                Kind::Write(v) => {
                    value = v.clone();
                    written.push(value.clone());
                }
                Kind::Read(seen) => {
                    reads += 1;
                    *seen = if stale && reads == per_client * clients / 4 {
                        written[written.len().saturating_sub(101)].clone()
                    } else {
                        value.clone()
                    };
                }
            }
        }
        // Reads that timed out never got a value.
        ops.retain(|o| !(o.complete.is_none() && matches!(o.kind, Kind::Read(_))));
        ops
    }

    #[test]
    fn a_long_single_key_history_with_timeouts_is_decided() {
        // The shape that used to exhaust the budget: no rotation, 8 clients,
        // 12,000 operations on one key, hundreds of unknown writes.
        let h = simulated(8, 1_500, 5, false);
        let c = check("init", &h, &Budget::default());
        assert_eq!(c.verdict, Verdict::Linearizable, "{c:?}");
        assert!(c.unknown_writes > 100, "{c:?}");
        assert!(c.memory_bytes < 64 << 20, "{c:?}");
        let c = check("init", &simulated(8, 1_500, 5, true), &Budget::default());
        assert_eq!(c.verdict, Verdict::NotLinearizable, "{c:?}");
    }
}
