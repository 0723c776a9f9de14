//! `rouse apply`: what a [`Manifest`] asks of the cluster, as a [`Plan`] of
//! field-level changes (pure: [`plan`]), then carried out ([`execute`]).
//!
//! A key the file leaves out keeps the container's current value (a new
//! container gets the platform's default); env maps are whole (a variable
//! missing from the file is removed); secrets are compared by the SHA-256
//! of their value and never shown. An unchanged container is not deployed,
//! so applying the same file twice makes no new revision and restarts
//! nothing. `prune` deletes the containers, triggers and secrets of the
//! file's namespaces the file no longer names; other namespaces are never
//! touched.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::manifest::{self, Manifest, SecretSource};
use crate::{pb, Client, Error};

/// What the cluster holds for one of the file's namespaces.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub exists: bool,
    pub env: BTreeMap<String, String>,
    /// Secret name → SHA-256 of its value.
    pub secrets: BTreeMap<String, String>,
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Live (not revoked, not expired) tokens: id → container ("" for the
    /// whole namespace).
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct ObservedContainer {
    pub spec: pb::Container,
    pub secrets: BTreeMap<String, String>,
    pub triggers: BTreeMap<String, pb::Trigger>,
}

/// Reads what the cluster holds for `namespaces`.
pub async fn observe(
    c: &mut Client,
    namespaces: &[&str],
) -> Result<BTreeMap<String, Observed>, Error> {
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let mut o = Observed::default();
        match c.get_namespace(ns, false).await {
            Ok(n) => {
                o.exists = true;
                o.env = n.env.into_iter().collect();
            }
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                out.insert(ns.to_string(), o);
                continue;
            }
            Err(e) => return Err(e),
        }
        o.secrets = fingerprints(c.list_secrets(ns, None).await?);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        o.tokens = c
            .list_tokens(ns)
            .await?
            .into_iter()
            .filter(|t| !t.revoked && (t.expires_at_ms == 0 || t.expires_at_ms > now_ms))
            .map(|t| (t.id, t.container))
            .collect();
        for ct in c.list_containers(ns, false).await? {
            let secrets = fingerprints(c.list_secrets(ns, Some(&ct.name)).await?);
            let triggers = c
                .list_triggers(ns, &ct.name)
                .await?
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect();
            o.containers.insert(
                ct.name.clone(),
                ObservedContainer {
                    spec: ct,
                    secrets,
                    triggers,
                },
            );
        }
        out.insert(ns.to_string(), o);
    }
    Ok(out)
}

fn fingerprints(v: Vec<pb::SecretInfo>) -> BTreeMap<String, String> {
    v.into_iter().map(|s| (s.key, s.value_sha256)).collect()
}

/// A secret's value, read on this machine, and its fingerprint.
#[derive(Clone)]
pub struct SecretValue {
    pub value: String,
    pub sha256: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(sha256:{})", short(&self.sha256))
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// Reads every secret the file names (env vars of this process, files
/// relative to `base`). The error names the secret and what is missing.
pub fn resolve_secrets(m: &Manifest, base: &Path) -> Result<BTreeMap<String, SecretValue>, String> {
    let mut out = BTreeMap::new();
    let read = |field: String, s: &SecretSource| -> Result<(String, SecretValue), String> {
        let value = match s {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| format!("{field}: env var {var} is not set"))?
            }
            SecretSource::File(p) => {
                let path = base.join(p);
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("{field}: {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
        };
        let sha256 = hex(&Sha256::digest(value.as_bytes()));
        Ok((field, SecretValue { value, sha256 }))
    };
    for ns in &m.namespaces {
        for (k, s) in &ns.secrets {
            let (f, v) = read(format!("namespaces.{}.secrets.{k}", ns.name), s)?;
            out.insert(f, v);
        }
        for c in &ns.containers {
            for (k, s) in &c.secrets {
                let (f, v) = read(
                    format!("namespaces.{}.containers.{}.secrets.{k}", ns.name, c.name),
                    s,
                )?;
                out.insert(f, v);
            }
        }
    }
    Ok(out)
}

/// Replaces each secret's local fingerprint with the cluster's (a keyed
/// hash only the cluster can compute), so that they compare with what
/// `list_secrets` shows.
pub async fn cluster_fingerprints(
    c: &mut Client,
    m: &Manifest,
    secrets: &mut BTreeMap<String, SecretValue>,
) -> Result<(), Error> {
    for ns in &m.namespaces {
        let mut scopes: Vec<(Option<&str>, String)> =
            vec![(None, format!("namespaces.{}.secrets.", ns.name))];
        scopes.extend(ns.containers.iter().map(|c| {
            (
                Some(c.name.0.as_str()),
                format!("namespaces.{}.containers.{}.secrets.", ns.name, c.name),
            )
        }));
        for (ct, prefix) in scopes {
            let values: HashMap<String, String> = secrets
                .iter()
                .filter_map(|(f, v)| Some((f.strip_prefix(&prefix)?.to_string(), v.value.clone())))
                .filter(|(k, _)| !k.contains('.'))
                .collect();
            if values.is_empty() {
                continue;
            }
            for info in c.fingerprint_secrets(&ns.name.0, ct, values).await? {
                if let Some(v) = secrets.get_mut(&format!("{prefix}{}", info.key)) {
                    v.sha256 = info.value_sha256;
                }
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Change,
    Unchanged,
    Delete,
}

/// One field's change: before → after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One object's change, and what carries it out.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `namespace`, `container` or `trigger`.
    pub kind: &'static str,
    /// `ns`, `ns/container` or `ns/container/trigger`.
    pub name: String,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    #[serde(skip)]
    op: Op,
}

#[derive(Debug, Clone, Default)]
enum Op {
    #[default]
    None,
    CreateNamespace(pb::CreateNamespaceRequest),
    UpdateNamespace(pb::UpdateNamespaceRequest),
    DeleteSecret(String, Option<String>, String),
    Deploy(Box<pb::DeployContainerRequest>),
    DeleteContainer(String, String),
    CreateTrigger(Box<pb::CreateTriggerRequest>, bool),
    DeleteTrigger(String, String, String),
    RevokeToken(String),
}

/// The changes, in the order they are carried out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub items: Vec<Item>,
}

impl Plan {
    /// Whether anything would change.
    pub fn changes(&self) -> bool {
        self.items.iter().any(|i| i.action != Action::Unchanged)
    }

    /// Containers the plan creates or changes (`ns`, `name`, min-scale).
    pub fn deployed(&self) -> Vec<(String, String, u32)> {
        self.items
            .iter()
            .filter_map(|i| match &i.op {
                Op::Deploy(d) => Some((
                    d.namespace.clone(),
                    d.name.clone(),
                    d.min_scale.unwrap_or(0),
                )),
                _ => None,
            })
            .collect()
    }

    /// The plan as text: one line per object, one indented line per field.
    pub fn text(&self) -> String {
        if !self.changes() {
            return "no changes\n".into();
        }
        let mut out = String::new();
        for i in &self.items {
            let what = match i.action {
                Action::Create => "created",
                Action::Change => "changed",
                Action::Unchanged => "unchanged",
                Action::Delete => "to delete",
            };
            out += &format!("{} {}: {what}\n", i.kind, i.name);
            for f in &i.fields {
                out += &format!(
                    "  {}: {} → {}\n",
                    f.field,
                    f.before.as_deref().unwrap_or("(none)"),
                    f.after.as_deref().unwrap_or("(none)")
                );
            }
        }
        out
    }
}

fn field(
    changes: &mut Vec<FieldChange>,
    name: &str,
    before: Option<String>,
    after: Option<String>,
) {
    if before != after {
        changes.push(FieldChange {
            field: name.to_string(),
            before,
            after,
        });
    }
}

/// Diffs of a whole env map, per variable.
fn env_changes(
    changes: &mut Vec<FieldChange>,
    prefix: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        field(
            changes,
            &format!("{prefix}.{k}"),
            before.get(k).cloned(),
            after.get(k).cloned(),
        );
    }
}

/// Secrets by fingerprint; `prune`: the ones the file no longer names go.
fn secret_changes(
    changes: &mut Vec<FieldChange>,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, &SecretValue>,
    prune: bool,
) -> (HashMap<String, String>, Vec<String>) {
    let fp = |h: &str| format!("sha256:{}", short(h));
    let mut set = HashMap::new();
    for (k, v) in after {
        let was = before.get(k);
        if was != Some(&v.sha256) {
            field(
                changes,
                &format!("secrets.{k}"),
                was.map(|h| fp(h)),
                Some(fp(&v.sha256)),
            );
            set.insert(k.clone(), v.value.clone());
        }
    }
    let mut gone = Vec::new();
    if prune {
        for (k, h) in before {
            if !after.contains_key(k) {
                field(changes, &format!("secrets.{k}"), Some(fp(h)), None);
                gone.push(k.clone());
            }
        }
    }
    (set, gone)
}

/// The plan that makes the cluster (`observed`) hold what `m` says;
/// `images`: the image each container runs (built ones resolved), by
/// `ns/name`. Pure.
pub fn plan(
    m: &Manifest,
    observed: &BTreeMap<String, Observed>,
    secrets: &BTreeMap<String, SecretValue>,
    images: &BTreeMap<String, String>,
    prune: bool,
) -> Plan {
    let mut items = Vec::new();
    let empty = Observed::default();
    for ns in &m.namespaces {
        let name = ns.name.0.clone();
        let o = observed.get(&name).unwrap_or(&empty);
        let mut fields = Vec::new();
        env_changes(&mut fields, "env", &o.env, &ns.env);
        let wanted: BTreeMap<String, &SecretValue> = ns
            .secrets
            .keys()
            .filter_map(|k| {
                Some((
                    k.clone(),
                    secrets.get(&format!("namespaces.{name}.secrets.{k}"))?,
                ))
            })
            .collect();
        let (set, gone) = secret_changes(&mut fields, &o.secrets, &wanted, prune);
        let (action, op) = if !o.exists {
            (
                Action::Create,
                Op::CreateNamespace(pb::CreateNamespaceRequest {
                    name: name.clone(),
                    env: ns.env.clone().into_iter().collect(),
                    secrets: set,
                }),
            )
        } else if fields.is_empty() {
            (Action::Unchanged, Op::None)
        } else {
            (
                Action::Change,
                Op::UpdateNamespace(pb::UpdateNamespaceRequest {
                    name: name.clone(),
                    env: ns.env.clone().into_iter().collect(),
                    replace_env: true,
                    secrets: set,
                }),
            )
        };
        items.push(Item {
            kind: "namespace",
            name: name.clone(),
            action,
            fields,
            op,
        });
        for k in gone {
            items.push(Item {
                kind: "secret",
                name: format!("{name}/{k}"),
                action: Action::Delete,
                fields: vec![],
                op: Op::DeleteSecret(name.clone(), None, k),
            });
        }
        for c in &ns.containers {
            container_items(
                &mut items,
                &name,
                c,
                o.containers.get(&c.name.0),
                secrets,
                images,
                prune,
            );
        }
        if let (true, Some(keep)) = (prune, &ns.tokens) {
            for (id, ct) in o.tokens.iter().filter(|(id, _)| !keep.contains(id)) {
                items.push(Item {
                    kind: "token",
                    name: format!("{name}/{id}"),
                    action: Action::Delete,
                    fields: vec![FieldChange {
                        field: "scope".into(),
                        before: Some(if ct.is_empty() {
                            name.clone()
                        } else {
                            format!("{name}/{ct}")
                        }),
                        after: None,
                    }],
                    op: Op::RevokeToken(id.clone()),
                });
            }
        }
        if prune {
            for (ct, oc) in &o.containers {
                if ns.containers.iter().any(|c| c.name.0 == *ct) {
                    continue;
                }
                items.push(Item {
                    kind: "container",
                    name: format!("{name}/{ct}"),
                    action: Action::Delete,
                    fields: vec![FieldChange {
                        field: "image".into(),
                        before: Some(oc.spec.image.clone()),
                        after: None,
                    }],
                    op: Op::DeleteContainer(name.clone(), ct.clone()),
                });
            }
        }
    }
    Plan { items }
}

fn container_items(
    items: &mut Vec<Item>,
    ns: &str,
    c: &manifest::Container,
    o: Option<&ObservedContainer>,
    secrets: &BTreeMap<String, SecretValue>,
    images: &BTreeMap<String, String>,
    prune: bool,
) {
    let name = c.name.0.clone();
    let full = format!("{ns}/{name}");
    let cur = o.map(|o| &o.spec);
    let mut fields = Vec::new();
    let mut req = pb::DeployContainerRequest {
        namespace: ns.into(),
        name: name.clone(),
        ..Default::default()
    };
    macro_rules! num {
        ($label:literal, $doc:expr, $cur:ident, $req:ident) => {
            if let Some(v) = $doc {
                field(
                    &mut fields,
                    $label,
                    cur.map(|c| c.$cur.to_string()),
                    Some(v.to_string()),
                );
                req.$req = Some(v);
            }
        };
    }
    let image = images.get(&full).cloned().or_else(|| c.image.clone());
    if let Some(i) = &image {
        field(
            &mut fields,
            "image",
            cur.map(|c| c.image.clone()),
            Some(i.clone()),
        );
        req.image = Some(i.clone());
    }
    num!("port", c.port, port, port);
    num!("minScale", c.min_scale, min_scale, min_scale);
    num!("maxScale", c.max_scale, max_scale, max_scale);
    num!(
        "maxConcurrency",
        c.max_concurrency,
        max_concurrency,
        max_concurrency
    );
    num!("cpu", c.cpu, cpu_mvcpu, cpu_mvcpu);
    num!("memory", c.memory, memory_mb, memory_mb);
    num!(
        "timeout",
        c.timeout.map(|t| t.0.as_secs() as u32),
        timeout_seconds,
        timeout_seconds
    );
    num!(
        "scaleToZeroAfter",
        c.scale_to_zero_after.map(|t| t.0.as_secs() as u32),
        scale_to_zero_after_seconds,
        scale_to_zero_after_seconds
    );
    if let Some(v) = c.read_only_rootfs {
        field(
            &mut fields,
            "readOnlyRootfs",
            cur.map(|c| c.read_only_rootfs.to_string()),
            Some(v.to_string()),
        );
        req.read_only_rootfs = Some(v);
    }
    if let Some(v) = c.routing {
        field(
            &mut fields,
            "routing",
            cur.map(|c| c.routing.clone()),
            Some(v.as_str().to_string()),
        );
        req.routing = Some(v.as_str().to_string());
    }
    if let Some(v) = &c.health_path {
        field(
            &mut fields,
            "healthPath",
            cur.map(|c| c.health_path.clone()),
            Some(v.clone()),
        );
        req.health_path = Some(v.clone());
    }
    if let Some(v) = &c.region {
        field(
            &mut fields,
            "region",
            cur.map(|c| c.region.clone()),
            Some(v.clone()),
        );
        req.region = Some(v.clone());
    }
    if let Some(p) = c.privacy {
        let (text, n) = match p {
            manifest::Privacy::Public => ("public", pb::Privacy::Public),
            manifest::Privacy::Private => ("private", pb::Privacy::Private),
        };
        let before = cur.map(|c| match pb::Privacy::try_from(c.privacy) {
            Ok(pb::Privacy::Private) => "private".to_string(),
            _ => "public".to_string(),
        });
        field(&mut fields, "privacy", before, Some(text.into()));
        req.privacy = n as i32;
    }
    if let Some(p) = c.protocol {
        let (text, n) = match p {
            manifest::Protocol::Http1 => ("http1", pb::Protocol::Http1),
            manifest::Protocol::H2c => ("h2c", pb::Protocol::H2c),
        };
        let before = cur.map(|c| match pb::Protocol::try_from(c.protocol) {
            Ok(pb::Protocol::H2c) => "h2c".to_string(),
            _ => "http1".to_string(),
        });
        field(&mut fields, "protocol", before, Some(text.into()));
        req.protocol = n as i32;
    }
    let cur_env: BTreeMap<String, String> = cur
        .map(|c| c.env.clone().into_iter().collect())
        .unwrap_or_default();
    let env_before = fields.len();
    env_changes(&mut fields, "env", &cur_env, &c.env);
    if fields.len() != env_before || cur.is_none() {
        req.env = c.env.clone().into_iter().collect();
        req.replace_env = true;
    }
    let wanted: BTreeMap<String, &SecretValue> = c
        .secrets
        .keys()
        .filter_map(|k| {
            Some((
                k.clone(),
                secrets.get(&format!("namespaces.{ns}.containers.{name}.secrets.{k}"))?,
            ))
        })
        .collect();
    let no_secrets = BTreeMap::new();
    let (set, gone) = secret_changes(
        &mut fields,
        o.map_or(&no_secrets, |o| &o.secrets),
        &wanted,
        prune && o.is_some(),
    );
    req.secrets = set;
    let action = match (o, fields.is_empty()) {
        (None, _) => Action::Create,
        (Some(_), true) => Action::Unchanged,
        (Some(_), false) => Action::Change,
    };
    items.push(Item {
        kind: "container",
        name: full.clone(),
        action,
        fields,
        op: if action == Action::Unchanged {
            Op::None
        } else {
            Op::Deploy(Box::new(req))
        },
    });
    for k in gone {
        items.push(Item {
            kind: "secret",
            name: format!("{full}/{k}"),
            action: Action::Delete,
            fields: vec![],
            op: Op::DeleteSecret(ns.into(), Some(name.clone()), k),
        });
    }
    let no_triggers = BTreeMap::new();
    let cur_triggers = o.map_or(&no_triggers, |o| &o.triggers);
    for t in &c.triggers {
        trigger_item(items, ns, &name, t, cur_triggers.get(&t.name.0));
    }
    if prune {
        for (tn, _) in cur_triggers
            .iter()
            .filter(|(tn, _)| !c.triggers.iter().any(|t| t.name.0 == **tn))
        {
            items.push(Item {
                kind: "trigger",
                name: format!("{full}/{tn}"),
                action: Action::Delete,
                fields: vec![],
                op: Op::DeleteTrigger(ns.into(), name.clone(), tn.clone()),
            });
        }
    }
}

fn trigger_item(
    items: &mut Vec<Item>,
    ns: &str,
    ct: &str,
    t: &manifest::Trigger,
    cur: Option<&pb::Trigger>,
) {
    let mut fields = Vec::new();
    let mut req = pb::CreateTriggerRequest {
        namespace: ns.into(),
        container: ct.into(),
        name: t.name.0.clone(),
        ..Default::default()
    };
    macro_rules! text {
        ($label:literal, $doc:expr, $cur:ident, $req:ident) => {
            if let Some(v) = &$doc {
                field(
                    &mut fields,
                    $label,
                    cur.map(|c| c.$cur.clone()),
                    Some(v.clone()),
                );
                req.$req = v.clone();
            }
        };
    }
    text!("cron", t.cron, schedule, cron);
    text!("timezone", t.timezone, timezone, timezone);
    text!("natsSubject", t.nats_subject, subject, nats_subject);
    text!("natsUrl", t.nats_url, nats_url, nats_url);
    text!("natsStream", t.nats_stream, nats_stream, nats_stream);
    text!("deadLetter", t.dead_letter, dead_letter, dead_letter);
    text!(
        "natsCredentials",
        t.nats_credentials,
        nats_credentials,
        nats_credentials
    );
    text!("method", t.method, method, method);
    text!("path", t.path, path, path);
    text!("body", t.body, body, body);
    if let Some(v) = t.catch_up_seconds {
        field(
            &mut fields,
            "catchUpSeconds",
            cur.map(|c| c.catch_up_seconds.to_string()),
            Some(v.to_string()),
        );
        req.catch_up_seconds = Some(v);
    }
    if let Some(v) = t.max_retries {
        field(
            &mut fields,
            "maxRetries",
            cur.map(|c| c.max_retries.to_string()),
            Some(v.to_string()),
        );
        req.max_retries = Some(v);
    }
    let cur_headers: BTreeMap<String, String> = cur
        .map(|c| c.headers.clone().into_iter().collect())
        .unwrap_or_default();
    env_changes(&mut fields, "headers", &cur_headers, &t.headers);
    req.headers = t.headers.clone().into_iter().collect();
    let action = match (cur, fields.is_empty()) {
        (None, _) => Action::Create,
        (Some(_), true) => Action::Unchanged,
        (Some(_), false) => Action::Change,
    };
    items.push(Item {
        kind: "trigger",
        name: format!("{ns}/{ct}/{}", t.name),
        action,
        fields,
        op: match action {
            Action::Unchanged => Op::None,
            // A trigger is replaced whole (delete, then create).
            _ => Op::CreateTrigger(Box::new(req), cur.is_some()),
        },
    });
}

/// Waits until each container (`ns`, `name`, min-scale) has that many
/// ready instances of its current generation; `progress` hears each
/// instance's state as it changes (placed, pulling, starting, ready…). An
/// instance that failed, or crashed twice, fails the wait with its reason.
pub async fn wait_ready(
    c: &mut Client,
    containers: &[(String, String, u32)],
    timeout: std::time::Duration,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<(), WaitError> {
    let t = std::time::Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut done: std::collections::BTreeSet<String> = Default::default();
    loop {
        for (ns, name, min) in containers {
            let key = format!("{ns}/{name}");
            if done.contains(&key) {
                continue;
            }
            let ct = c.get_container(ns, name, false).await?;
            let current: Vec<&pb::Instance> = ct
                .instances
                .iter()
                .filter(|i| i.generation == ct.generation)
                .collect();
            if !ct.pending_reason.is_empty() && seen.get(&key) != Some(&ct.pending_reason) {
                progress(Progress::Pending {
                    container: &key,
                    reason: &ct.pending_reason,
                });
                seen.insert(key.clone(), ct.pending_reason.clone());
            }
            for i in &current {
                let state = if i.message.is_empty() || i.state == "ready" {
                    i.state.clone()
                } else {
                    format!("{} ({})", i.state, i.message)
                };
                if seen.get(&i.id) != Some(&state) {
                    progress(Progress::Instance {
                        container: &key,
                        id: &i.id,
                        node: i.node,
                        state: &state,
                    });
                    seen.insert(i.id.clone(), state);
                }
            }
            if let Some(bad) = current
                .iter()
                .find(|i| i.state == "failed" || (i.state == "crashed" && i.restarts >= 2))
            {
                return Err(WaitError::Failed(format!(
                    "container {key}: instance {} {}: {}",
                    bad.id, bad.state, bad.message
                )));
            }
            let ready = current.iter().filter(|i| i.state == "ready").count() as u32;
            if ready >= *min {
                progress(Progress::Ready {
                    container: &key,
                    ready,
                    min: *min,
                });
                done.insert(key);
            }
        }
        if done.len() == containers.len() {
            return Ok(());
        }
        if t.elapsed() > timeout {
            let waiting: Vec<String> = containers
                .iter()
                .map(|(ns, n, _)| format!("{ns}/{n}"))
                .filter(|k| !done.contains(k))
                .collect();
            return Err(WaitError::Failed(format!(
                "timeout: {} not ready after {}",
                waiting.join(", "),
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// What [`wait_ready`] tells as it waits; its `Display` is one plain line.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// An instance's state changed (`state` with its message, e.g.
    /// `pulling (… 1 of 3 layers, 4.2 of 12.0 MB)`).
    Instance {
        container: &'a str,
        id: &'a str,
        node: u64,
        state: &'a str,
    },
    /// Wanted instances are not placed, and why.
    Pending { container: &'a str, reason: &'a str },
    /// The container has its min-scale instances ready.
    Ready {
        container: &'a str,
        ready: u32,
        min: u32,
    },
}

impl std::fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Instance {
                container,
                id,
                node,
                state,
            } => write!(f, "{container}: instance {id} on node {node}: {state}"),
            Progress::Pending { container, reason } => {
                write!(f, "{container}: not placed: {reason}")
            }
            Progress::Ready {
                container,
                ready,
                min,
            } => write!(f, "{container}: ready ({ready} of min-scale {min})"),
        }
    }
}

/// Why a wait ended badly.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Api(#[from] Error),
    #[error("{0}")]
    Failed(String),
}

/// Carries `plan` out, in order; `progress` hears of each step.
pub async fn execute(
    c: &mut Client,
    plan: &Plan,
    mut progress: impl FnMut(&Item),
) -> Result<(), Error> {
    for i in &plan.items {
        match &i.op {
            Op::None => continue,
            Op::CreateNamespace(r) => {
                c.create_namespace_with(r.clone()).await?;
            }
            Op::UpdateNamespace(r) => {
                c.update_namespace(r.clone()).await?;
            }
            Op::DeleteSecret(ns, ct, k) => c.delete_secret(ns, ct.as_deref(), k).await?,
            Op::Deploy(r) => {
                c.deploy_container((**r).clone()).await?;
            }
            Op::DeleteContainer(ns, ct) => c.delete_container(ns, ct).await?,
            Op::CreateTrigger(r, replace) => {
                if *replace {
                    c.delete_trigger(&r.namespace, &r.container, &r.name)
                        .await?;
                }
                c.create_trigger((**r).clone()).await?;
            }
            Op::DeleteTrigger(ns, ct, t) => c.delete_trigger(ns, ct, t).await?,
            Op::RevokeToken(id) => c.revoke_token(id).await?,
        }
        progress(i);
    }
    Ok(())
}

/// The file that describes namespace `ns` as the cluster holds it: every
/// setting written out, secrets as `{env: NAME}` (their values never leave
/// the cluster: set those env vars to apply it elsewhere).
pub fn export(ns: &str, o: &Observed) -> Manifest {
    let secret_refs = |m: &BTreeMap<String, String>| {
        m.keys()
            .map(|k| (k.clone(), SecretSource::Env(k.clone())))
            .collect::<BTreeMap<_, _>>()
    };
    let containers = o
        .containers
        .values()
        .map(|oc| {
            let s = &oc.spec;
            manifest::Container {
                name: manifest::Name(s.name.clone()),
                image: Some(s.image.clone()),
                build: None,
                port: Some(s.port),
                min_scale: Some(s.min_scale),
                max_scale: Some(s.max_scale),
                max_concurrency: Some(s.max_concurrency),
                timeout: Some(manifest::Timeout(std::time::Duration::from_secs(
                    u64::from(s.timeout_seconds),
                ))),
                cpu: Some(s.cpu_mvcpu),
                memory: Some(s.memory_mb),
                privacy: Some(match pb::Privacy::try_from(s.privacy) {
                    Ok(pb::Privacy::Private) => manifest::Privacy::Private,
                    _ => manifest::Privacy::Public,
                }),
                protocol: Some(match pb::Protocol::try_from(s.protocol) {
                    Ok(pb::Protocol::H2c) => manifest::Protocol::H2c,
                    _ => manifest::Protocol::Http1,
                }),
                scale_to_zero_after: Some(manifest::Span(std::time::Duration::from_secs(
                    u64::from(s.scale_to_zero_after_seconds),
                ))),
                health_path: (!s.health_path.is_empty()).then(|| s.health_path.clone()),
                region: (!s.region.is_empty()).then(|| s.region.clone()),
                routing: Some(if s.routing == "any" {
                    manifest::Routing::Any
                } else {
                    manifest::Routing::LocalFirst
                }),
                read_only_rootfs: Some(s.read_only_rootfs),
                env: s.env.clone().into_iter().collect(),
                secrets: secret_refs(&oc.secrets),
                triggers: oc
                    .triggers
                    .values()
                    .map(|t| {
                        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
                        let cron = t.kind == "cron";
                        manifest::Trigger {
                            name: manifest::Name(t.name.clone()),
                            cron: cron.then(|| t.schedule.clone()),
                            timezone: opt(&t.timezone).filter(|_| cron),
                            catch_up_seconds: cron.then_some(t.catch_up_seconds),
                            nats_subject: opt(&t.subject).filter(|_| !cron),
                            nats_url: opt(&t.nats_url),
                            nats_stream: opt(&t.nats_stream),
                            dead_letter: opt(&t.dead_letter),
                            nats_credentials: opt(&t.nats_credentials),
                            method: opt(&t.method),
                            path: opt(&t.path),
                            headers: t.headers.clone().into_iter().collect(),
                            body: opt(&t.body),
                            max_retries: Some(t.max_retries),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Manifest {
        api_version: manifest::ApiVersion,
        namespaces: vec![manifest::Namespace {
            name: manifest::Name(ns.to_string()),
            env: o.env.clone(),
            secrets: secret_refs(&o.secrets),
            containers,
            tokens: Some(o.tokens.keys().cloned().collect()),
        }],
    }
}
