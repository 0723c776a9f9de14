//! Which ready local instances to suspend: those idle (no request in
//! flight, none for `after`) and not suspended already. Pure; the agent
//! pauses them and reports them suspended.

use std::time::Duration;

/// What the agent knows of one ready local instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub suspended: bool,
    pub in_flight: usize,
    pub idle_for: Duration,
}

/// The instances to suspend now. `after` zero: never.
pub fn to_suspend(candidates: &[Candidate], after: Duration) -> Vec<String> {
    if after.is_zero() {
        return Vec::new();
    }
    candidates
        .iter()
        .filter(|c| !c.suspended && c.in_flight == 0 && c.idle_for >= after)
        .map(|c| c.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_running_instances_are_suspended() {
        let c = |id: &str, suspended, in_flight, idle| Candidate {
            id: id.into(),
            suspended,
            in_flight,
            idle_for: Duration::from_secs(idle),
        };
        let all = [
            c("idle", false, 0, 31),
            c("busy", false, 1, 31),
            c("recent", false, 0, 5),
            c("already", true, 0, 99),
        ];
        assert_eq!(to_suspend(&all, Duration::from_secs(30)), vec!["idle"]);
        assert!(to_suspend(&all, Duration::ZERO).is_empty(), "0 disables");
    }
}
