//! What the cluster records about itself as it runs: the usage ledger's
//! units and the event stream's events.

use serde::{Deserialize, Serialize};

use super::types::{is_zero, NodeId};

/// What one container used over one period, in integer units so that every
/// node sums the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Allocated: memory limit (MB) × running time (ms).
    pub memory_mb_ms: u64,
    /// Allocated: mVCPU × running time (ms).
    pub mvcpu_ms: u64,
    /// Used: memory in use (KiB) integrated over running time (ms).
    pub memory_used_kib_ms: u64,
    /// Used: CPU time (µs).
    pub cpu_used_us: u64,
    pub requests: u64,
    /// Time with at least one request in flight (ms).
    pub request_ms: u64,
    /// Instance running time (ms), suspended time not included.
    pub instance_ms: u64,
    /// Instance time suspended (ms): memory kept, no CPU.
    pub suspended_ms: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.memory_mb_ms = self.memory_mb_ms.saturating_add(o.memory_mb_ms);
        self.mvcpu_ms = self.mvcpu_ms.saturating_add(o.mvcpu_ms);
        self.memory_used_kib_ms = self.memory_used_kib_ms.saturating_add(o.memory_used_kib_ms);
        self.cpu_used_us = self.cpu_used_us.saturating_add(o.cpu_used_us);
        self.requests = self.requests.saturating_add(o.requests);
        self.request_ms = self.request_ms.saturating_add(o.request_ms);
        self.instance_ms = self.instance_ms.saturating_add(o.instance_ms);
        self.suspended_ms = self.suspended_ms.saturating_add(o.suspended_ms);
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// One node's usage of one container in the period starting at
/// `period_ms` (a minute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub namespace: String,
    pub container: String,
    pub period_ms: u64,
    pub usage: Usage,
}

/// Usage periods: a minute, folded into hours after [`USAGE_MINUTES_KEPT_MS`].
pub const USAGE_MINUTE_MS: u64 = 60_000;
pub const USAGE_HOUR_MS: u64 = 3_600_000;
pub const USAGE_MINUTES_KEPT_MS: u64 = 24 * USAGE_HOUR_MS;
pub const USAGE_DAY_MS: u64 = 24 * USAGE_HOUR_MS;
/// Hours older than this fold into their day (UTC).
pub const USAGE_HOURS_KEPT_MS: u64 = 30 * USAGE_DAY_MS;

/// Events the cluster keeps (the oldest leave first).
pub const EVENTS_KEPT: usize = 5_000;

/// Something that happened, derived from the log as it is applied: every
/// node holds the same events with the same sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Event {
    /// 1, 2, 3… in the order they happened.
    pub seq: u64,
    /// The time of the command that made it.
    pub at_ms: u64,
    /// `container.created`, `instance.crashed`, `node.down`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node: NodeId,
    /// A short machine-readable cause (`oom`, `exit`, `cold start`…).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}
