//! `UsageService`: the usage ledger, per container and namespace, per
//! period.

use std::collections::BTreeMap;

use rouse_proto::v1 as pb;
use rouse_proto::v1::usage_service_server::UsageService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::service::Api;
use crate::state::{
    ContainerKey, Usage, USAGE_DAY_MS, USAGE_HOURS_KEPT_MS, USAGE_HOUR_MS, USAGE_MINUTES_KEPT_MS,
    USAGE_MINUTE_MS,
};

const DAY_MS: u64 = USAGE_DAY_MS;

/// A ledger bucket's width: a minute, an hour once folded (older than a
/// day at `now_ms`), a day once folded again (older than 30 days).
fn width(start: u64, now_ms: u64) -> u64 {
    if start < now_ms.saturating_sub(USAGE_HOURS_KEPT_MS) && start.is_multiple_of(USAGE_DAY_MS) {
        USAGE_DAY_MS
    } else if start < now_ms.saturating_sub(USAGE_MINUTES_KEPT_MS)
        && start.is_multiple_of(USAGE_HOUR_MS)
    {
        USAGE_HOUR_MS
    } else {
        USAGE_MINUTE_MS
    }
}

/// The row of `u` over [start, end).
pub fn row(ns: &str, ct: &str, start: u64, end: u64, u: &Usage) -> pb::UsageRow {
    pb::UsageRow {
        namespace: ns.into(),
        container: ct.into(),
        period_start_ms: start,
        period_end_ms: end,
        memory_gb_s_allocated: u.memory_mb_ms as f64 / 1024.0 / 1000.0,
        vcpu_s_allocated: u.mvcpu_ms as f64 / 1_000_000.0,
        memory_gb_s_used: u.memory_used_kib_ms as f64 / 1024.0 / 1024.0 / 1000.0,
        cpu_s_used: u.cpu_used_us as f64 / 1_000_000.0,
        requests: u.requests,
        request_seconds: u.request_ms as f64 / 1000.0,
        instance_s: u.instance_ms as f64 / 1000.0,
        suspended_s: u.suspended_ms as f64 / 1000.0,
    }
}

/// Rows of the ledger for containers `pick` accepts, buckets starting in
/// [since, until), grouped `by` ("minute", "hour", "day" or "" for the
/// range), then one total per namespace. Pure.
pub fn rows(
    ledger: &BTreeMap<ContainerKey, BTreeMap<u64, Usage>>,
    pick: impl Fn(&ContainerKey) -> bool,
    since: u64,
    until: u64,
    by: &str,
    now_ms: u64,
) -> Result<Vec<pb::UsageRow>, ApiError> {
    let step = match by {
        "" => None,
        "minute" => Some(USAGE_MINUTE_MS),
        "hour" => Some(USAGE_HOUR_MS),
        "day" => Some(DAY_MS),
        other => {
            return Err(ApiError::invalid(
                "by",
                format!("{other:?} is not minute, hour or day"),
            ))
        }
    };
    let mut per: BTreeMap<(String, String, u64), (u64, Usage)> = BTreeMap::new();
    let mut totals: BTreeMap<String, Usage> = BTreeMap::new();
    for (key, buckets) in ledger.iter().filter(|(k, _)| pick(k)) {
        for (start, u) in buckets.range(since..until) {
            let w = width(*start, now_ms);
            let (gs, ge) = match step {
                // A folded hour (or day) stays one when minutes are asked for.
                Some(s) => {
                    let s = s.max(w);
                    let g = start - start % s;
                    (g, g + s)
                }
                None => (since, until),
            };
            let e = per
                .entry((key.namespace().to_string(), key.name().to_string(), gs))
                .or_insert((ge, Usage::default()));
            e.1.add(u);
            totals
                .entry(key.namespace().to_string())
                .or_default()
                .add(u);
        }
    }
    let mut out: Vec<pb::UsageRow> = per
        .iter()
        .map(|((ns, ct, s), (e, u))| row(ns, ct, *s, *e, u))
        .collect();
    out.extend(totals.iter().map(|(ns, u)| row(ns, "", since, until, u)));
    Ok(out)
}

#[tonic::async_trait]
impl UsageService for Api {
    async fn get(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let who = self.list_scope(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            super::input::list_filter(&r.namespace, &r.container)?;
            let now = crate::cluster::now_ms();
            let until = if r.until_ms == 0 { now + 1 } else { r.until_ms };
            let earliest = {
                let sm = self.cluster.sm.read();
                sm.data
                    .usage
                    .values()
                    .filter_map(|b| b.keys().next().copied())
                    .min()
                    .unwrap_or(0)
            };
            // From the start: the ledger's first period.
            let since = if r.since_ms == 0 {
                earliest
            } else {
                r.since_ms
            };
            if since >= until {
                return Err(ApiError::invalid("since", "must be before until"));
            }
            self.cluster.read_barrier(false).await?;
            let sm = self.cluster.sm.read();
            let rows = rows(
                &sm.data.usage,
                |k| {
                    who.may(k.namespace())
                        && (r.namespace.is_empty() || k.namespace() == r.namespace)
                        && (r.container.is_empty() || k.name() == r.container)
                },
                since,
                until,
                &r.by,
                now,
            )?;
            Ok(pb::UsageResponse { rows })
        };
        Ok(Response::new(run.await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_group_by_period_and_total_per_namespace() {
        let mut ledger: BTreeMap<ContainerKey, BTreeMap<u64, Usage>> = BTreeMap::new();
        let u = |ms: u64| Usage {
            instance_ms: ms,
            memory_mb_ms: 256 * ms,
            mvcpu_ms: 500 * ms,
            ..Default::default()
        };
        ledger
            .entry(ContainerKey::new("n", "a"))
            .or_default()
            .insert(0, u(20_000));
        ledger
            .entry(ContainerKey::new("n", "a"))
            .or_default()
            .insert(60_000, u(10_000));
        ledger
            .entry(ContainerKey::new("n", "b"))
            .or_default()
            .insert(60_000, u(5_000));
        ledger
            .entry(ContainerKey::new("m", "c"))
            .or_default()
            .insert(0, u(1_000));
        let all = rows(&ledger, |_| true, 0, 120_000, "", 120_000).unwrap();
        let a = all.iter().find(|r| r.container == "a").unwrap();
        assert_eq!(a.instance_s, 30.0);
        assert!((a.memory_gb_s_allocated - 0.25 * 30.0).abs() < 1e-9);
        assert!((a.vcpu_s_allocated - 0.5 * 30.0).abs() < 1e-9);
        let n = all
            .iter()
            .find(|r| r.namespace == "n" && r.container.is_empty())
            .unwrap();
        assert_eq!(n.instance_s, 35.0);
        let by_minute = rows(
            &ledger,
            |k| k.namespace() == "n",
            0,
            120_000,
            "minute",
            120_000,
        )
        .unwrap();
        assert_eq!(by_minute.iter().filter(|r| r.container == "a").count(), 2);
        assert!(rows(&ledger, |_| true, 0, 1, "week", 0).is_err());
        // Since the second minute only.
        let late = rows(&ledger, |k| k.name() == "a", 60_000, 120_000, "", 120_000).unwrap();
        assert_eq!(late[0].instance_s, 10.0);
    }
}
