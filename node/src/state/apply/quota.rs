//! Namespace quotas: what a namespace may hold. Checked when it would
//! grow (a container created or scaled up, a secret or token added), from
//! command version 2; what it already holds beyond a lowered bound stays.

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::{ContainerKey, Scope};
use super::super::types::{ContainerSpec, Quota};
use super::tx::{not_found, Applied, Tx};

fn over(ns: &str, what: &str, limit: u64, field: &str) -> Rejection {
    Rejection::FailedPrecondition(format!(
        "quota: namespace {ns:?} may hold at most {limit} {what} (quota {field}); \
         an admin raises it with `rouse namespace quota {ns} --{field} N`"
    ))
}

impl StateData {
    pub(super) fn set_quota(&mut self, tx: &mut Tx<'_>, namespace: &str, quota: &Quota) -> Applied {
        let ns = self
            .namespaces
            .get_mut(namespace)
            .ok_or_else(|| not_found(format_args!("namespace {namespace:?}")))?;
        ns.quota = quota.clone();
        ns.revision = self.revision + 1;
        ns.updated_at_ms = tx.at_ms;
        self.bump();
        tx.touched.push(Key::Namespace(namespace.to_string()));
        Ok(())
    }

    fn quota_of(&self, ns: &str) -> Option<&Quota> {
        self.namespaces
            .get(ns)
            .map(|n| &n.quota)
            .filter(|q| !q.is_unbounded())
    }

    /// Whether `key` may take `spec` (a new container, or a change to one).
    pub(super) fn check_container_quota(
        &self,
        tx: &Tx<'_>,
        key: &ContainerKey,
        spec: &ContainerSpec,
    ) -> Applied {
        let ns = key.namespace();
        let Some(q) = self.quota_of(ns).filter(|_| tx.v >= 2) else {
            return Ok(());
        };
        let others = self.containers_in(ns).filter(|c| c.name != key.name());
        let (mut count, mut scale, mut memory) = (1u64, u64::from(spec.max_scale), 0u64);
        memory += u64::from(spec.max_scale) * u64::from(spec.memory_mb);
        for c in others {
            count += 1;
            scale += u64::from(c.spec.max_scale);
            memory += u64::from(c.spec.max_scale) * u64::from(c.spec.memory_mb);
        }
        let existing = self.containers.get(key);
        let grows = |now: u64, before: u64| now > before;
        let (before_scale, before_memory) = existing.map_or((0, 0), |c| {
            (
                u64::from(c.spec.max_scale),
                u64::from(c.spec.max_scale) * u64::from(c.spec.memory_mb),
            )
        });
        if let Some(limit) = q.containers {
            if existing.is_none() && count > u64::from(limit) {
                return Err(over(ns, "containers", u64::from(limit), "containers"));
            }
        }
        if let Some(limit) = q.max_scale {
            if scale > limit && grows(u64::from(spec.max_scale), before_scale) {
                return Err(over(
                    ns,
                    "instances in total (the sum of max-scale)",
                    limit,
                    "max-scale",
                ));
            }
        }
        if let Some(limit) = q.memory_mb {
            let mine = u64::from(spec.max_scale) * u64::from(spec.memory_mb);
            if memory > limit && grows(mine, before_memory) {
                return Err(over(ns, "MB of memory at full scale", limit, "memory-mb"));
            }
        }
        Ok(())
    }

    /// Whether `scope` may take `adding` more secrets.
    pub(super) fn check_secret_quota(&self, tx: &Tx<'_>, scope: &Scope, adding: usize) -> Applied {
        let ns = scope.namespace_name();
        let Some(limit) = self
            .quota_of(ns)
            .filter(|_| tx.v >= 2)
            .and_then(|q| q.secrets)
        else {
            return Ok(());
        };
        if adding == 0 {
            return Ok(());
        }
        let held: usize = self
            .secrets
            .iter()
            .filter(|(s, _)| s.namespace_name() == ns)
            .map(|(_, m)| m.len())
            .sum();
        if held + adding > limit as usize {
            return Err(over(ns, "secrets", u64::from(limit), "secrets"));
        }
        Ok(())
    }

    /// Whether `ns` may take one more token.
    pub(super) fn check_token_quota(&self, tx: &Tx<'_>, ns: &str) -> Applied {
        let Some(limit) = self
            .quota_of(ns)
            .filter(|_| tx.v >= 2)
            .and_then(|q| q.tokens)
        else {
            return Ok(());
        };
        let live = self
            .tokens
            .values()
            .filter(|t| t.namespace == ns && !t.revoked && t.expires_at_ms > tx.at_ms)
            .count();
        if live >= limit as usize {
            return Err(over(ns, "live tokens", u64::from(limit), "tokens"));
        }
        Ok(())
    }
}
