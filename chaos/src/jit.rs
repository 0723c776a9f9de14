//! A second, independent linearizability checker for register histories:
//! Lowe's just-in-time linearization ("Testing for linearizability",
//! Concurrency and Computation 2017). It shares no code with
//! [`crate::check`] (its own reading of the history file, its own search),
//! so that a bug in one does not hide in both; `rouse-chaos check --checker
//! jit` runs it.
//!
//! ```text
//!  events of one key, in time order (invocations before returns at an instant)
//!  config = (next event, register value, ops linearized but not yet returned)
//!    invoke o          → next event
//!    return o, o done  → next event, o leaves the set
//!    return o, o not   → linearize o now (if legal)             → next event
//!                      → or first some other pending op p        → same event
//!  linearizable ⇔ some config reaches the end; configs seen are not searched again
//! ```
//!
//! An operation is linearized only when a return forces it (just in time);
//! a write whose outcome is unknown (`info`) never returns, so it may be
//! linearized before any later return, or never. Failed writes and reads
//! without an answer carry no information and are left out.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One key's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Linearizable,
    NotLinearizable,
    /// More configurations than the budget allows: not a pass.
    Unknown,
}

#[derive(Debug, Clone)]
struct Operation {
    write: bool,
    value: u32,
    invoked: usize,
    /// Index of its return event; `None` for an unknown-outcome write.
    returned: Option<usize>,
}

/// One operation as the history file records it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub invoke: u64,
    pub write: bool,
    /// The value written, or the value the read returned.
    pub value: Option<String>,
    /// `None`: a write whose outcome is unknown.
    pub ret: Option<u64>,
}

/// Reads a history file (JSON lines) into operations per key. Errors name
/// the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, Vec<Recorded>>, String> {
    let mut open: HashMap<u64, (String, bool, Option<String>, u64)> = HashMap::new();
    let mut keys: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    let rec = |invoke, write, value, ret| Recorded {
        invoke,
        write,
        value,
        ret,
    };
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
        let field = |k: &str| v.get(k).ok_or_else(|| format!("line {n}: no {k:?}"));
        let process = field("process")?
            .as_u64()
            .ok_or_else(|| format!("line {n}: process is not a number"))?;
        let ty = field("type")?.as_str().unwrap_or_default().to_string();
        let write = match field("f")?.as_str() {
            Some("write") => true,
            Some("read") => false,
            other => return Err(format!("line {n}: f {other:?} is neither read nor write")),
        };
        let key = field("key")?
            .as_str()
            .ok_or_else(|| format!("line {n}: key is not a string"))?
            .to_string();
        let value = field("value")?.as_str().map(str::to_string);
        let time = field("time")?
            .as_u64()
            .ok_or_else(|| format!("line {n}: time is not a number"))?;
        match ty.as_str() {
            "invoke" => {
                if open.insert(process, (key, write, value, time)).is_some() {
                    return Err(format!("line {n}: process {process} invokes twice"));
                }
            }
            "ok" | "fail" | "info" => {
                let (k, w, inv_value, at) = open
                    .remove(&process)
                    .ok_or_else(|| format!("line {n}: process {process} never invoked"))?;
                if k != key || w != write {
                    return Err(format!("line {n}: completion differs from its invocation"));
                }
                let ops = keys.entry(key).or_default();
                match (ty.as_str(), write) {
                    ("ok", true) => ops.push(rec(at, true, inv_value, Some(time))),
                    ("info", true) => ops.push(rec(at, true, inv_value, None)),
                    ("ok", false) => {
                        let Some(read) = value else {
                            return Err(format!("line {n}: a read's ok carries no value"));
                        };
                        ops.push(rec(at, false, Some(read), Some(time)))
                    }
                    // A failed write did not apply; a read without an answer says nothing.
                    _ => {}
                }
            }
            other => return Err(format!("line {n}: type {other:?}")),
        }
    }
    // Still pending at the end: writes of unknown outcome, reads dropped.
    for (_, (key, write, value, at)) in open {
        if write {
            keys.entry(key)
                .or_default()
                .push(rec(at, true, value, None));
        }
    }
    Ok(keys)
}

/// Checks one key's operations from `initial`, visiting at most `budget`
/// configurations.
pub fn check(initial: &str, ops: &[Recorded], budget: usize) -> Answer {
    // A write of unknown outcome whose value no read returned can only
    // make reads fail if it takes effect: leave it out (it never did).
    let read: HashSet<&str> = ops
        .iter()
        .filter(|r| !r.write)
        .filter_map(|r| r.value.as_deref())
        .collect();
    let ops: Vec<&Recorded> = ops
        .iter()
        .filter(|r| {
            !(r.write && r.ret.is_none() && !r.value.as_deref().is_some_and(|v| read.contains(v)))
        })
        .collect();
    // Values as small numbers (0: the initial value).
    let mut ids: HashMap<&str, u32> = HashMap::from([(initial, 0)]);
    // Events: (time, 0 = invoke / 1 = return, op).
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    let mut table: Vec<Operation> = Vec::new();
    for (i, r) in ops.iter().enumerate() {
        let next = ids.len() as u32;
        let value = *ids
            .entry(r.value.as_deref().unwrap_or("\u{0}null"))
            .or_insert(next);
        table.push(Operation {
            write: r.write,
            value,
            invoked: 0,
            returned: None,
        });
        events.push((r.invoke, 0, i));
        if let Some(t) = r.ret {
            events.push((t, 1, i));
        }
    }
    events.sort();
    for (pos, (_, kind, op)) in events.iter().enumerate() {
        if *kind == 0 {
            table[*op].invoked = pos;
        } else {
            table[*op].returned = Some(pos);
        }
    }
    let words = table.len().div_ceil(64).max(1);
    let mut seen: HashSet<(usize, u32, Vec<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, u32, Vec<u64>)> = vec![(0, 0, vec![0; words])];
    let has = |set: &[u64], o: usize| set[o / 64] & (1 << (o % 64)) != 0;
    while let Some((at, value, set)) = stack.pop() {
        if at == events.len() {
            return Answer::Linearizable;
        }
        if !seen.insert((at, value, set.clone())) {
            continue;
        }
        if seen.len() > budget {
            return Answer::Unknown;
        }
        let (_, kind, o) = events[at];
        if kind == 0 {
            stack.push((at + 1, value, set));
            continue;
        }
        if has(&set, o) {
            let mut s = set;
            s[o / 64] &= !(1 << (o % 64));
            stack.push((at + 1, value, s));
            continue;
        }
        let legal = |op: &Operation, v: u32| op.write || op.value == v;
        let after = |op: &Operation, v: u32| if op.write { op.value } else { v };
        // Others pending now: invoked before this event, not returned
        // before it, not yet linearized.
        for (p, op) in table.iter().enumerate() {
            if p == o || op.invoked >= at || has(&set, p) {
                continue;
            }
            if op.returned.is_some_and(|r| r < at) {
                continue;
            }
            if legal(op, value) {
                let mut s = set.clone();
                s[p / 64] |= 1 << (p % 64);
                stack.push((at, after(op, value), s));
            }
        }
        // Linearize o itself last on the stack, so it is tried first.
        if legal(&table[o], value) {
            stack.push((at + 1, after(&table[o], value), set));
        }
    }
    Answer::NotLinearizable
}

/// Checks every key of a history file's text.
pub fn check_text(
    text: &str,
    initial: &str,
    budget: usize,
) -> Result<BTreeMap<String, Answer>, String> {
    Ok(parse(text)?
        .iter()
        .map(|(k, ops)| (k.clone(), check(initial, ops, budget)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: u64, ty: &str, f: &str, v: Option<&str>, t: u64) -> String {
        serde_json::json!({"process": p, "type": ty, "f": f, "key": "r0", "value": v, "time": t})
            .to_string()
    }

    fn verdict(lines: &[String]) -> Answer {
        check_text(&lines.join("\n"), "init", 100_000).unwrap()["r0"].clone()
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // write a, then read a: fine; read init after the write returned: not.
        let ok = [
            line(1, "invoke", "write", Some("a"), 1),
            line(1, "ok", "write", Some("a"), 2),
            line(2, "invoke", "read", None, 3),
            line(2, "ok", "read", Some("a"), 4),
        ];
        assert_eq!(verdict(&ok), Answer::Linearizable);
        let stale = [
            line(1, "invoke", "write", Some("a"), 1),
            line(1, "ok", "write", Some("a"), 2),
            line(2, "invoke", "read", None, 3),
            line(2, "ok", "read", Some("init"), 4),
        ];
        assert_eq!(verdict(&stale), Answer::NotLinearizable);
        // The same read overlapping the write may see either value.
        let overlap = [
            line(1, "invoke", "write", Some("a"), 1),
            line(2, "invoke", "read", None, 2),
            line(2, "ok", "read", Some("init"), 3),
            line(1, "ok", "write", Some("a"), 4),
        ];
        assert_eq!(verdict(&overlap), Answer::Linearizable);
        // Two reads, a then init, both after a write of a overlapping...
        // only if a second write of init could sit between: there is none.
        let flip = [
            line(1, "invoke", "write", Some("a"), 1),
            line(2, "invoke", "read", None, 2),
            line(2, "ok", "read", Some("a"), 3),
            line(3, "invoke", "read", None, 4),
            line(3, "ok", "read", Some("init"), 5),
            line(1, "ok", "write", Some("a"), 6),
        ];
        assert_eq!(verdict(&flip), Answer::NotLinearizable);
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never_and_failed_ones_never() {
        let late = [
            line(1, "invoke", "write", Some("a"), 1),
            line(1, "info", "write", Some("a"), 2),
            line(2, "invoke", "read", None, 3),
            line(2, "ok", "read", Some("init"), 4),
            line(3, "invoke", "read", None, 5),
            line(3, "ok", "read", Some("a"), 6),
        ];
        assert_eq!(verdict(&late), Answer::Linearizable);
        let failed = [
            line(1, "invoke", "write", Some("a"), 1),
            line(1, "fail", "write", Some("a"), 2),
            line(2, "invoke", "read", None, 3),
            line(2, "ok", "read", Some("a"), 4),
        ];
        assert_eq!(verdict(&failed), Answer::NotLinearizable);
        // Read before the unknown write was invoked cannot see it.
        let early = [
            line(2, "invoke", "read", None, 1),
            line(2, "ok", "read", Some("a"), 2),
            line(1, "invoke", "write", Some("a"), 3),
            line(1, "info", "write", Some("a"), 4),
        ];
        assert_eq!(verdict(&early), Answer::NotLinearizable);
    }

    /// A random history of one register: `procs` clients, each running
    /// operations one after another; every operation takes effect at a
    /// random instant inside its interval (so the truth is linearizable),
    /// then some reads are made to lie (so some are not). Some writes end
    /// unknown (and may or may not have applied) or failed (not applied).
    fn random_history(rng: &mut impl rand::Rng, procs: u64, ops: usize) -> Vec<String> {
        // (time, line) pairs; the effect instants decide what reads see.
        let mut planned: Vec<(u64, u64, u64, bool, String, &str)> = Vec::new();
        let mut clock = vec![0u64; procs as usize];
        for i in 0..ops {
            let p = rng.random_range(0..procs);
            let start = clock[p as usize] + rng.random_range(1..20);
            let end = start + rng.random_range(1..40);
            clock[p as usize] = end + 1;
            let write = rng.random_bool(0.4);
            let outcome = if write {
                match rng.random_range(0..10) {
                    0 => "info",
                    1 => "fail",
                    _ => "ok",
                }
            } else {
                "ok"
            };
            planned.push((start, end, p, write, format!("v{i}"), outcome));
        }
        // Effects at random instants, in order of effect.
        let mut effects: Vec<(u64, usize)> = planned
            .iter()
            .enumerate()
            .filter(|(_, o)| o.5 != "fail")
            .map(|(i, o)| (rng.random_range(o.0..=o.1), i))
            .collect();
        effects.sort();
        let mut value = "init".to_string();
        let mut read_value: HashMap<usize, String> = HashMap::new();
        for (_, i) in effects {
            let o = &planned[i];
            if o.3 {
                // An unknown write applies or not.
                if o.5 != "info" || rng.random_bool(0.5) {
                    value = o.4.clone();
                }
            } else {
                let lie = rng.random_bool(0.08);
                read_value.insert(
                    i,
                    if lie {
                        format!("v{}", rng.random_range(0..ops))
                    } else {
                        value.clone()
                    },
                );
            }
        }
        let mut events: Vec<(u64, u8, String)> = Vec::new();
        for (i, o) in planned.iter().enumerate() {
            let (f, inv) = if o.3 {
                ("write", Some(o.4.as_str()))
            } else {
                ("read", None)
            };
            events.push((o.0, 0, line(o.2, "invoke", f, inv, o.0)));
            let done = if o.3 {
                Some(o.4.clone())
            } else {
                read_value.get(&i).cloned()
            };
            events.push((o.1, 1, line(o.2, o.5, f, done.as_deref(), o.1)));
        }
        events.sort();
        events.into_iter().map(|e| e.2).collect()
    }

    /// The two checkers, sharing no code, agree on thousands of random
    /// histories, linearizable and not.
    #[test]
    fn agrees_with_the_first_checker_on_random_histories() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut yes, mut no) = (0, 0);
        for case in 0..3000 {
            let procs = rng.random_range(1..5);
            let n = rng.random_range(1..16);
            let text = random_history(&mut rng, procs, n).join("\n");
            let mine = check_text(&text, "init", 1_000_000).unwrap();
            let lines = crate::history::read(std::io::BufReader::new(text.as_bytes())).unwrap();
            let by_key = crate::history::ops_by_key(&lines).unwrap();
            let theirs = crate::check::linearizable::check_keys(
                "init",
                &by_key,
                &crate::check::linearizable::Budget::default(),
            );
            let mine_ok = mine.values().all(|a| *a == Answer::Linearizable);
            assert!(mine.values().all(|a| *a != Answer::Unknown));
            assert_eq!(
                Some(mine_ok),
                theirs.linearizable,
                "case {case} disagrees:\n{text}"
            );
            if mine_ok {
                yes += 1
            } else {
                no += 1
            }
        }
        // Both kinds were exercised.
        assert!(yes > 300 && no > 300, "{yes} linearizable, {no} not");
    }

    #[test]
    fn bad_lines_are_named() {
        let e = check_text("{\"process\":1}", "init", 10).unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
        let e = check_text(&line(1, "ok", "read", Some("a"), 1), "init", 10).unwrap_err();
        assert!(e.contains("never invoked"), "{e}");
    }
}
