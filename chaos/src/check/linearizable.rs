//! Per-key linearizability of a register history (Wing & Gong's search
//! with Lowe's memoisation of (linearized set, state)).
//!
//! Completed operations must take effect between their invocation and
//! completion; a write whose outcome is unknown may take effect at any time
//! after its invocation, or never. Reads that failed are left out. A search
//! that runs out of budget answers "unknown", never "linearizable".

use std::collections::HashSet;

/// One operation on a register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub invoke: u64,
    /// `None`: outcome unknown (a timed-out or failed write).
    pub complete: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(String),
    /// The value the read returned.
    Read(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search exceeded its budget.
    Unknown,
}

/// Checks one key's history, starting from `initial`.
pub fn check(initial: &str, ops: &[Op], budget: usize) -> Verdict {
    // Reads with unknown outcome carry no information.
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|o| !(o.complete.is_none() && matches!(o.kind, Kind::Read(_))))
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let required: Vec<bool> = ops.iter().map(|o| o.complete.is_some()).collect();
    let total_required = required.iter().filter(|r| **r).count();
    let mut seen: HashSet<(Vec<u64>, String)> = HashSet::new();
    // Depth-first over (done set, state, required done count).
    let mut stack: Vec<(Vec<u64>, String, usize)> = vec![(vec![0; words], initial.to_string(), 0)];
    let mut steps = 0usize;
    while let Some((done, state, req_done)) = stack.pop() {
        if req_done == total_required {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // The earliest completion among pending required ops bounds which
        // ops may go next: none invoked after it.
        let horizon = (0..n)
            .filter(|&i| !is_done(i) && required[i])
            .filter_map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if is_done(i) || ops[i].invoke > horizon {
                continue;
            }
            let next_state = match &ops[i].kind {
                Kind::Write(v) => v.clone(),
                Kind::Read(v) => {
                    if v != &state {
                        continue;
                    }
                    state.clone()
                }
            };
            let mut nd = done.clone();
            nd[i / 64] |= 1 << (i % 64);
            if seen.insert((nd.clone(), next_state.clone())) {
                stack.push((nd, next_state, req_done + usize::from(required[i])));
            }
        }
    }
    Verdict::NotLinearizable
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

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w(0, Some(1), "a"),
            r(2, 3, "a"),
            w(4, Some(5), "b"),
            r(6, 7, "b"),
        ];
        assert_eq!(check("init", &h, 100_000), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_overlap_may_order_either_way() {
        // The read overlaps the write: it may see the old or the new value.
        assert_eq!(
            check("init", &[w(0, Some(10), "a"), r(1, 2, "init")], 1000),
            Verdict::Linearizable
        );
        assert_eq!(
            check("init", &[w(0, Some(10), "a"), r(1, 2, "a")], 1000),
            Verdict::Linearizable
        );
    }

    #[test]
    fn stale_read_is_caught() {
        // The write completed before the read began, yet the read saw the old value.
        let h = [w(0, Some(1), "a"), r(2, 3, "init")];
        assert_eq!(check("init", &h, 1000), Verdict::NotLinearizable);
        let h = [w(0, Some(1), "a"), w(2, Some(3), "b"), r(4, 5, "a")];
        assert_eq!(check("init", &h, 1000), Verdict::NotLinearizable);
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        let h = [w(0, Some(10), "a"), r(1, 2, "a"), r(3, 4, "init")];
        assert_eq!(check("init", &h, 1000), Verdict::NotLinearizable);
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let h = [w(0, None, "a"), r(5, 6, "a")];
        assert_eq!(check("init", &h, 1000), Verdict::Linearizable);
        let h = [w(0, None, "a"), r(5, 6, "init")];
        assert_eq!(check("init", &h, 1000), Verdict::Linearizable);
        // But not before it was invoked.
        let h = [r(0, 1, "a"), w(2, None, "a")];
        assert_eq!(check("init", &h, 1000), Verdict::NotLinearizable);
    }

    #[test]
    fn a_value_never_written_is_not_linearizable() {
        assert_eq!(
            check("init", &[r(0, 1, "ghost")], 1000),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_a_pass() {
        let mut h = Vec::new();
        for i in 0..40 {
            h.push(w(0, Some(1000), &format!("v{i}")));
        }
        h.push(r(2000, 2001, "never"));
        assert_eq!(check("init", &h, 50), Verdict::Unknown);
    }
}
