//! `apply`: one function per [`Command`], each checking the precondition
//! its variant documents before it changes anything, so a rejected command
//! leaves the state (and its digest) as it was.
//!
//! No I/O and no clock: the time is the proposal's `at_ms`, so every node
//! computes the same state from the same log.
//!
//! - `tx`: the command's context and shared helpers.
//! - `objects`: namespaces and containers.
//! - `nodes`: nodes, placement, instance status.
//! - `credentials`: secrets, keys, tokens, the CA, rotation.
//! - `triggers`: triggers, their claimed ticks and firings.
//! - `usage`: the usage ledger.
//! - `events`: what the commands did, as a bounded event stream.

mod credentials;
mod events;
mod nodes;
mod objects;
mod quota;
mod triggers;
mod tx;
mod usage;

use super::command::{Command, Proposal, Response};
use super::data::{Key, StateData};
use super::key::ContainerKey;
use tx::{Applied, Tx};

impl StateData {
    /// Applies one proposal. Pure: same state and proposal, same result.
    pub fn apply(&mut self, p: &Proposal) -> Response {
        self.apply_tracked(p, &mut Vec::new())
    }

    /// Like [`Self::apply`], and records the keys it changed in `touched`.
    pub fn apply_tracked(&mut self, p: &Proposal, touched: &mut Vec<Key>) -> Response {
        let mut tx = Tx {
            at_ms: p.at_ms,
            v: p.v,
            touched,
        };
        let rejection = self.apply_command(&mut tx, &p.command).err();
        Response {
            revision: self.revision,
            rejection,
        }
    }

    fn apply_command(&mut self, tx: &mut Tx<'_>, cmd: &Command) -> Applied {
        match cmd {
            Command::CreateNamespace { name, env } => self.create_namespace(tx, name, env),
            Command::UpdateNamespace {
                name,
                env,
                expected_revision,
            } => self.update_namespace(tx, name, env, *expected_revision),
            Command::DeleteNamespace { name } => self.delete_namespace(tx, name),
            Command::PutContainer {
                namespace,
                name,
                spec,
                expected_revision,
            } => self.put_container(
                tx,
                &ContainerKey::new(namespace, name),
                spec,
                *expected_revision,
            ),
            Command::DeleteContainer { namespace, name } => {
                self.delete_container(tx, &ContainerKey::new(namespace, name))
            }
            Command::RegisterNode { node } => self.register_node(tx, node),
            Command::RemoveNode { id } => self.remove_node(tx, *id),
            Command::PlaceInstances { add, remove } => self.place_instances(tx, add, remove),
            Command::ReportInstanceStatus { id, node, status } => {
                self.report_instance_status(tx, id, *node, status)
            }
            Command::PinImage {
                namespace,
                name,
                generation,
                image,
            } => self.pin_image(tx, &ContainerKey::new(namespace, name), *generation, image),
            Command::Scale {
                namespace,
                name,
                replicas,
                reason,
            } => self.scale(tx, &ContainerKey::new(namespace, name), *replicas, reason),
            Command::SetNodeState {
                id,
                down,
                cordoned,
                draining,
            } => self.set_node_state(tx, *id, *down, *cordoned, *draining),
            Command::SetPending {
                namespace,
                name,
                reason,
            } => self.set_pending(tx, &ContainerKey::new(namespace, name), reason),
            Command::InitDataKey { wrapped } => self.init_data_key(tx, wrapped),
            Command::SetSecrets { scope, entries } => self.set_secrets(tx, scope, entries),
            Command::DeleteSecret { scope, key } => self.delete_secret(tx, scope, key),
            Command::AddSigningKey { key } => self.add_signing_key(tx, key),
            Command::CreateToken { record } => self.create_token(tx, record),
            Command::RevokeToken { id } => self.revoke_token(tx, id),
            Command::CreateApiKey { key } => self.create_api_key(tx, key),
            Command::TouchApiKeys { used } => self.touch_api_keys(tx, used),
            Command::SetQuota { namespace, quota } => self.set_quota(tx, namespace, quota),
            Command::RevokeApiKey { id } => self.revoke_api_key(tx, id),
            Command::InitClusterCa { ca } => self.init_cluster_ca(tx, ca),
            Command::CreateJoinToken { token } => self.create_join_token(tx, token),
            Command::UseJoinToken {
                id,
                hash,
                node,
                issued,
            } => self.use_join_token(tx, id, hash, *node, issued.as_ref()),
            Command::RotateKeys {
                from,
                kek_id,
                data_key,
                ca_key,
                secrets,
                signing_keys,
            } => self.rotate_keys(tx, from, kek_id, data_key, ca_key, secrets, signing_keys),
            Command::CreateTrigger {
                namespace,
                container,
                name,
                spec,
            } => self.create_trigger(tx, namespace, container, name, spec),
            Command::DeleteTrigger {
                namespace,
                container,
                name,
            } => self.delete_trigger(tx, &format!("{namespace}/{container}/{name}")),
            Command::SetTriggerEnabled {
                namespace,
                container,
                name,
                enabled,
            } => self.set_trigger_enabled(tx, &format!("{namespace}/{container}/{name}"), *enabled),
            Command::ClaimTick {
                namespace,
                container,
                name,
                tick_ms,
                missed,
                deliver,
                node,
            } => self.claim_tick(
                tx,
                &format!("{namespace}/{container}/{name}"),
                (*tick_ms, *missed, *deliver),
                *node,
            ),
            Command::RecordFiring {
                namespace,
                container,
                name,
                firing,
            } => self.record_firing(tx, &format!("{namespace}/{container}/{name}"), firing),
            Command::RecordUsage { node, seq, entries } => {
                self.record_usage(tx, *node, *seq, entries)
            }
            Command::Batch { commands } => self.batch(tx, commands),
        }
    }

    fn batch(&mut self, tx: &mut Tx<'_>, commands: &[Command]) -> Applied {
        if commands.iter().any(|c| matches!(c, Command::Batch { .. })) {
            return Err(super::command::Rejection::FailedPrecondition(
                "a batch may not hold a batch".into(),
            ));
        }
        let mut applied = 0;
        for c in commands {
            // A refused command left the state as it was.
            if self.apply_command(tx, c).is_ok() {
                applied += 1;
            }
        }
        if applied == 0 {
            return Err(super::command::Rejection::FailedPrecondition(format!(
                "none of the batch's {} commands applies",
                commands.len()
            )));
        }
        Ok(())
    }
}
