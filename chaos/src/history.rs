//! The register history as JSON lines, in the shape Jepsen-style checkers
//! read (a contract: other tools parse it), and back into per-key
//! operations for [`crate::check::linearizable`].
//!
//! ```text
//!  {"process":3,"type":"invoke","f":"write","key":"r0","value":"c3-17","time":1200345}
//!  {"process":3,"type":"info","f":"write","key":"r0","value":"c3-17","time":3200999}
//!  {"process":9,"type":"invoke","f":"read","key":"r0","value":null,"time":3201100}
//!  {"process":9,"type":"ok","f":"read","key":"r0","value":"c3-17","time":3202001}
//! ```
//!
//! One event per line, in time order (nanoseconds since the run began; at
//! one instant invocations come before completions, so operations touching
//! at an instant count as concurrent, as the checker treats them). Every
//! invocation is followed by its process's completion: `ok`, `fail`
//! (definitely not applied) or `info` (unknown outcome; the process never
//! invokes again, its client continues as a new process). A read's
//! invocation carries `null`, its `ok` the value read; a write carries its
//! value on both. Registers start at the report's `initial_value`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::check::linearizable::{Kind, Op};
use crate::workload::{Event, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Read,
    Write,
}

/// One line of the history file. Field order is the file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Type,
    pub f: F,
    pub key: String,
    /// Always present; `null` for a read's invocation and a read that
    /// returned nothing.
    pub value: Option<String>,
    pub time: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line}: not an event ({source})")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "history line {line}: process {process} invokes while its previous operation is pending"
    )]
    AlreadyPending { line: usize, process: u64 },
    #[error("history line {line}: process {process} completes an operation it never invoked")]
    NotInvoked { line: usize, process: u64 },
    #[error("history line {line}: the completion's f or key differs from its invocation's")]
    Mismatch { line: usize },
    #[error("history line {line}: a {what} must carry a value")]
    MissingValue { line: usize, what: &'static str },
}

/// The register operations of `events` as history lines, in file order.
pub fn from_events(events: &[Event]) -> Vec<Line> {
    let mut lines = Vec::with_capacity(events.len() * 2);
    for e in events {
        let f = match e.op {
            "read" => F::Read,
            "write" => F::Write,
            _ => continue,
        };
        let written = (f == F::Write).then(|| e.value.clone());
        lines.push(Line {
            process: e.process,
            kind: Type::Invoke,
            f,
            key: e.key.clone(),
            value: written.clone(),
            time: e.invoke_ns,
        });
        let (kind, value) = match (&e.outcome, f) {
            (Outcome::Ok, F::Read) => (Type::Ok, Some(e.value.clone())),
            (Outcome::Ok, F::Write) => (Type::Ok, written),
            (Outcome::Fail, _) => (Type::Fail, written),
            (Outcome::Unknown, _) => (Type::Info, written),
        };
        lines.push(Line {
            process: e.process,
            kind,
            f,
            key: e.key.clone(),
            value,
            time: e.complete_ns,
        });
    }
    // Stable: an operation's invocation stays before its completion.
    lines.sort_by_key(|l| (l.time, l.kind != Type::Invoke));
    lines
}

pub fn write(mut out: impl Write, lines: &[Line]) -> Result<(), HistoryError> {
    for l in lines {
        serde_json::to_writer(&mut out, l).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a history file; blank lines are skipped, extra fields ignored.
pub fn read(input: impl BufRead) -> Result<Vec<Line>, HistoryError> {
    let mut lines = Vec::new();
    for (i, text) in input.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let line = serde_json::from_str(&text).map_err(|source| HistoryError::Json {
            line: i + 1,
            source,
        })?;
        lines.push(line);
    }
    Ok(lines)
}

/// Pairs invocations with completions into per-key operations: `ok`
/// operations complete, `info` writes (and writes never completed) have an
/// unknown outcome, `fail`ed operations and unanswered reads are left out.
pub fn ops_by_key(lines: &[Line]) -> Result<BTreeMap<String, Vec<Op>>, HistoryError> {
    let mut pending: HashMap<u64, (usize, &Line)> = HashMap::new();
    let mut keys: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    let write_value = |n: usize, l: &Line| {
        l.value.clone().ok_or(HistoryError::MissingValue {
            line: n,
            what: "write",
        })
    };
    for (i, l) in lines.iter().enumerate() {
        let n = i + 1;
        if l.kind == Type::Invoke {
            if pending.insert(l.process, (n, l)).is_some() {
                return Err(HistoryError::AlreadyPending {
                    line: n,
                    process: l.process,
                });
            }
            keys.entry(l.key.clone()).or_default();
            continue;
        }
        let Some((invoked_at, inv)) = pending.remove(&l.process) else {
            return Err(HistoryError::NotInvoked {
                line: n,
                process: l.process,
            });
        };
        if inv.f != l.f || inv.key != l.key {
            return Err(HistoryError::Mismatch { line: n });
        }
        let kind = match (l.f, l.kind) {
            (_, Type::Fail) | (F::Read, Type::Info) | (_, Type::Invoke) => continue,
            (F::Read, Type::Ok) => {
                Kind::Read(l.value.clone().ok_or(HistoryError::MissingValue {
                    line: n,
                    what: "read's ok",
                })?)
            }
            (F::Write, _) => Kind::Write(write_value(invoked_at, inv)?),
        };
        let complete = (l.kind == Type::Ok).then_some(l.time);
        keys.entry(l.key.clone()).or_default().push(Op {
            invoke: inv.time,
            complete,
            kind,
        });
    }
    // Never completed: a write may yet take effect; a read tells nothing.
    let mut open: Vec<(usize, &Line)> = pending.into_values().collect();
    open.sort_by_key(|(n, _)| *n);
    for (n, inv) in open {
        if inv.f == F::Write {
            keys.entry(inv.key.clone()).or_default().push(Op {
                invoke: inv.time,
                complete: None,
                kind: Kind::Write(write_value(n, inv)?),
            });
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::linearizable::{check, Budget, Verdict};

    fn ev(
        process: u64,
        key: &str,
        op: &'static str,
        value: &str,
        t: (u64, u64),
        outcome: Outcome,
    ) -> Event {
        Event {
            client: (process % 3) as usize,
            process,
            node: 1,
            key: key.into(),
            op,
            value: value.into(),
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome,
        }
    }

    fn verdicts(by_key: &BTreeMap<String, Vec<Op>>) -> BTreeMap<String, Verdict> {
        by_key
            .iter()
            .map(|(k, ops)| (k.clone(), check("init", ops, &Budget::default()).verdict))
            .collect()
    }

    #[test]
    fn lines_have_the_contract_shape() {
        let events = vec![
            ev(3, "r0", "write", "c3-17", (10, 20), Outcome::Unknown),
            ev(1, "r0", "read", "c3-17", (15, 30), Outcome::Ok),
            ev(1, "set", "create", "s-1-2", (31, 40), Outcome::Ok),
            ev(2, "r0", "read", "", (16, 50), Outcome::Fail),
        ];
        let mut out = Vec::new();
        write(&mut out, &from_events(&events)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = [
            r#"{"process":3,"type":"invoke","f":"write","key":"r0","value":"c3-17","time":10}"#,
            r#"{"process":1,"type":"invoke","f":"read","key":"r0","value":null,"time":15}"#,
            r#"{"process":2,"type":"invoke","f":"read","key":"r0","value":null,"time":16}"#,
            r#"{"process":3,"type":"info","f":"write","key":"r0","value":"c3-17","time":20}"#,
            r#"{"process":1,"type":"ok","f":"read","key":"r0","value":"c3-17","time":30}"#,
            r#"{"process":2,"type":"fail","f":"read","key":"r0","value":null,"time":50}"#,
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn invocations_sort_before_completions_at_one_instant() {
        let events = vec![
            ev(0, "r0", "write", "a", (0, 5), Outcome::Ok),
            ev(1, "r0", "read", "init", (5, 6), Outcome::Ok),
        ];
        let lines = from_events(&events);
        assert_eq!(lines[1].kind, Type::Invoke);
        assert_eq!(lines[1].process, 1);
        let by_key = ops_by_key(&lines).unwrap();
        assert_eq!(verdicts(&by_key)["r0"], Verdict::Linearizable);
    }

    /// A run-like history over two keys: 6 processes, writes and reads,
    /// some unknown (with the process replaced), some failed.
    fn sample(stale: bool) -> Vec<Event> {
        let mut events = Vec::new();
        let mut value: HashMap<&str, String> = HashMap::new();
        let mut process: Vec<u64> = (0..6).collect();
        for round in 0..300u64 {
            let key = if round % 2 == 0 { "r0" } else { "r1" };
            let t = round * 1000;
            let c = (round % 6) as usize;
            let cur = value.get(key).cloned().unwrap_or_else(|| "init".into());
            match round % 5 {
                0 | 1 => {
                    let v = format!("c{c}-{round}");
                    events.push(ev(process[c], key, "write", &v, (t, t + 400), Outcome::Ok));
                    value.insert(key, v);
                }
                2 => {
                    // Unknown; every other one did take effect.
                    let v = format!("c{c}-{round}");
                    events.push(ev(
                        process[c],
                        key,
                        "write",
                        &v,
                        (t, t + 900),
                        Outcome::Unknown,
                    ));
                    process[c] += 6;
                    if round % 4 == 2 {
                        value.insert(key, v);
                    }
                }
                3 => events.push(ev(
                    process[c],
                    key,
                    "write",
                    "never",
                    (t, t + 100),
                    Outcome::Fail,
                )),
                _ => {
                    let seen = if stale && round == 154 {
                        "c0-0".to_string()
                    } else {
                        cur
                    };
                    events.push(ev(
                        process[c],
                        key,
                        "read",
                        &seen,
                        (t, t + 300),
                        Outcome::Ok,
                    ));
                }
            }
        }
        events
    }

    #[test]
    fn a_history_file_round_trips_to_the_same_verdict() {
        for stale in [false, true] {
            let events = sample(stale);
            let lines = from_events(&events);
            let direct = verdicts(&ops_by_key(&lines).unwrap());
            let path = tempfile::NamedTempFile::new().unwrap();
            write(std::fs::File::create(path.path()).unwrap(), &lines).unwrap();
            let back = read(std::io::BufReader::new(
                std::fs::File::open(path.path()).unwrap(),
            ))
            .unwrap();
            assert_eq!(back, lines);
            let reread = verdicts(&ops_by_key(&back).unwrap());
            assert_eq!(reread, direct);
            let expected = if stale {
                Verdict::NotLinearizable
            } else {
                Verdict::Linearizable
            };
            assert_eq!(reread["r0"], expected, "stale: {stale}");
            assert_eq!(reread["r1"], Verdict::Linearizable);
        }
    }

    #[test]
    fn pairing_rules() {
        let l = |process, kind, f, value: Option<&str>, time| Line {
            process,
            kind,
            f,
            key: "r0".into(),
            value: value.map(str::to_string),
            time,
        };
        // A write never completed is unknown; a read never completed is dropped.
        let lines = [
            l(0, Type::Invoke, F::Write, Some("a"), 0),
            l(1, Type::Invoke, F::Read, None, 1),
        ];
        let ops = &ops_by_key(&lines).unwrap()["r0"];
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].complete, None);
        let bad = [
            l(0, Type::Invoke, F::Write, Some("a"), 0),
            l(0, Type::Invoke, F::Write, Some("b"), 1),
        ];
        assert!(matches!(
            ops_by_key(&bad),
            Err(HistoryError::AlreadyPending {
                line: 2,
                process: 0
            })
        ));
        let bad = [l(4, Type::Ok, F::Read, Some("a"), 0)];
        assert!(matches!(
            ops_by_key(&bad),
            Err(HistoryError::NotInvoked { line: 1, .. })
        ));
        let bad = [
            l(0, Type::Invoke, F::Read, None, 0),
            l(0, Type::Ok, F::Write, Some("a"), 1),
        ];
        assert!(matches!(
            ops_by_key(&bad),
            Err(HistoryError::Mismatch { line: 2 })
        ));
        let bad = [
            l(0, Type::Invoke, F::Read, None, 0),
            l(0, Type::Ok, F::Read, None, 1),
        ];
        assert!(matches!(
            ops_by_key(&bad),
            Err(HistoryError::MissingValue { line: 2, .. })
        ));
        let err = read("{\"process\":1}\n".as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("history line 1:"), "{err}");
    }
}
