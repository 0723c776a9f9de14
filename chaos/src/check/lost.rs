//! No acknowledged write lost: every create the cluster acknowledged is
//! present after heal, on every node.

use std::collections::BTreeSet;

use crate::workload::{Event, Outcome};

/// Acknowledged creates missing from `present`.
pub fn missing(history: &[Event], present: &BTreeSet<String>) -> Vec<String> {
    history
        .iter()
        .filter(|e| e.op == "create" && e.outcome == Outcome::Ok)
        .filter(|e| !present.contains(&e.value))
        .map(|e| e.value.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(v: &str, outcome: Outcome) -> Event {
        Event {
            client: 0,
            process: 0,
            node: 1,
            key: "set".into(),
            op: "create",
            value: v.into(),
            invoke_ns: 0,
            complete_ns: 1,
            outcome,
        }
    }

    #[test]
    fn only_acknowledged_creates_must_survive() {
        let h = vec![
            create("a", Outcome::Ok),
            create("b", Outcome::Unknown),
            create("c", Outcome::Ok),
        ];
        let present: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(missing(&h, &present), vec!["c".to_string()]);
    }
}
