//! The usage ledger: nodes' metered batches, applied once each; minutes
//! fold into hours after a day, hours into days after 30 days (entries of
//! command version 4 on).

use super::super::data::{Key, StateData};
use super::super::key::ContainerKey;
use super::super::ledger::{
    UsageEntry, USAGE_DAY_MS, USAGE_HOURS_KEPT_MS, USAGE_HOUR_MS, USAGE_MINUTES_KEPT_MS,
    USAGE_MINUTE_MS,
};
use super::super::types::NodeId;
use super::tx::{Applied, Tx};

impl StateData {
    pub(super) fn record_usage(
        &mut self,
        tx: &mut Tx<'_>,
        node: NodeId,
        seq: u64,
        entries: &[UsageEntry],
    ) -> Applied {
        if self.usage_seq.get(&node).is_some_and(|last| seq <= *last) {
            // Sent again after its answer was lost: applied already.
            return Ok(());
        }
        self.bump();
        self.usage_seq.insert(node, seq);
        tx.touched.push(Key::UsageSeq);
        let old = tx.at_ms.saturating_sub(USAGE_MINUTES_KEPT_MS);
        let mut touched: Vec<ContainerKey> = Vec::new();
        for e in entries {
            if e.usage.is_empty() {
                continue;
            }
            let key = ContainerKey::new(&e.namespace, &e.container);
            let period = e.period_ms - e.period_ms % USAGE_MINUTE_MS;
            let ledger = self.usage.entry(key.clone()).or_default();
            ledger.entry(period).or_default().add(&e.usage);
            // Minutes older than a day fold into their hour.
            let stale: Vec<u64> = ledger
                .range(..old)
                .map(|(p, _)| *p)
                .filter(|p| p % USAGE_HOUR_MS != 0)
                .collect();
            for p in stale {
                if let Some(u) = ledger.remove(&p) {
                    ledger.entry(p - p % USAGE_HOUR_MS).or_default().add(&u);
                }
            }
            if tx.v >= 4 {
                let older = tx.at_ms.saturating_sub(USAGE_HOURS_KEPT_MS);
                let hours: Vec<u64> = ledger
                    .range(..older)
                    .map(|(p, _)| *p)
                    .filter(|p| p % USAGE_DAY_MS != 0)
                    .collect();
                for p in hours {
                    if let Some(u) = ledger.remove(&p) {
                        ledger.entry(p - p % USAGE_DAY_MS).or_default().add(&u);
                    }
                }
            }
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        tx.touched.extend(touched.into_iter().map(Key::Usage));
        Ok(())
    }
}
