//! `rouse`: the command-line tool for operators.
//!
//! Errors print one line on stderr naming the field, and exit non-zero.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use rouse_client::{pb, Client};
use serde::Serialize;

mod apply;
mod build;
mod observe;
mod trigger;

use trigger::{trigger_cmd, TriggerCmd};

#[derive(Parser)]
#[command(name = "rouse", version, about = "Operate a rouse cluster")]
struct Cli {
    /// Any node's API address.
    #[arg(
        long,
        global = true,
        env = "ROUSE_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// API token (prefer --token-file or ROUSE_TOKEN: a flag shows in `ps`).
    #[arg(long, global = true, env = "ROUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the API token from this file (e.g. a node's <data-dir>/admin-token).
    #[arg(
        long,
        global = true,
        env = "ROUSE_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Talk TLS to the API, trusting this cluster CA (a node's
    /// <data-dir>/tls/ca.crt); the endpoint may then be https://HOST:PORT.
    #[arg(long, global = true, env = "ROUSE_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make the cluster hold what a rouse.yaml describes (building images
    /// it names with `build:`), printing the changes.
    Apply(apply::ApplyArgs),
    /// Print what `apply` would change, and change nothing.
    Diff(apply::DiffArgs),
    /// Write a namespace as a rouse.yaml that `apply` round-trips.
    Export {
        /// The namespace.
        namespace: String,
    },
    /// Print the JSON Schema of rouse.yaml.
    Schema,
    /// This rouse's version and the node's at --endpoint; fails when they
    /// speak different API levels.
    Version,
    /// Print a shell completion script (e.g. `rouse completion bash >
    /// /etc/bash_completion.d/rouse`).
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Namespaces group containers and share env vars.
    #[command(subcommand, alias = "ns")]
    Namespace(NamespaceCmd),
    /// Containers: an image plus its serving configuration.
    #[command(subcommand, alias = "ct")]
    Container(ContainerCmd),
    /// Images on the cluster's nodes.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Nodes: capacity, state, cordon and drain.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Secrets: write-only values injected as env (container wins over namespace).
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Access tokens for private containers.
    #[command(subcommand)]
    Token(TokenCmd),
    /// API keys (admin): admin keys and keys scoped to one namespace.
    #[command(subcommand)]
    Apikey(ApiKeyCmd),
    /// Triggers: cron schedules and NATS subjects delivered to a container.
    #[command(subcommand)]
    Trigger(Box<TriggerCmd>),
    /// Metered usage (GB-s, vCPU-s allocated and used, requests) of every
    /// namespace you may see, of NS, or of NS/CONTAINER.
    Usage {
        /// NAMESPACE or NAMESPACE/CONTAINER (default: all you may see).
        scope: Option<String>,
        /// From: a duration ago (1h, 30m, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Until: a duration ago or an RFC 3339 time (default now).
        #[arg(long)]
        until: Option<String>,
        /// Rows per minute, hour or day (default: one row for the range).
        #[arg(long)]
        by: Option<String>,
    },
    /// What happened (containers, instances, nodes, triggers, keys) in
    /// every namespace you may see, in NS, or in NS/CONTAINER, oldest
    /// first. `-o json`: one JSON object per line.
    Events {
        /// NAMESPACE or NAMESPACE/CONTAINER (default: all you may see).
        scope: Option<String>,
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// From: a duration ago (1h, 30m) or an RFC 3339 time (default:
        /// every event the cluster keeps, the last 5,000).
        #[arg(long)]
        since: Option<String>,
    },
}

fn rfc3339(ms: u64) -> serde_json::Value {
    if ms == 0 {
        return serde_json::Value::Null;
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string().into()
}

#[derive(Subcommand)]
enum ApiKeyCmd {
    /// Mint a key that may manage only --namespace, or (--admin) another
    /// admin key; printed once (last line).
    Create {
        /// The namespace the key may manage.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        namespace: Option<String>,
        /// An admin key (everything).
        #[arg(long)]
        admin: bool,
    },
    /// Ids, scopes and last use (never the keys).
    List,
    /// Revoke a key: it stops working on every node at once.
    Revoke {
        /// The key's id (from `apikey list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a token; it is printed once (last line), never stored.
    Create {
        /// The namespace whose private containers the token opens.
        #[arg(long)]
        namespace: String,
        /// Only this container of the namespace.
        #[arg(long)]
        container: Option<String>,
        /// Lifetime, e.g. 24h or 30d (default one year).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Ids, scope and expiry (never the token).
    List {
        /// The namespace.
        #[arg(long)]
        namespace: String,
    },
    /// Revoke a token: the mesh refuses it on every node.
    Revoke {
        /// The token's id (from `token list`).
        id: String,
    },
    /// New signing key for new tokens; existing tokens stay valid.
    RotateKey,
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Set secrets: NS or NS/NAME, then KEY=VALUE... (KEY=- reads VALUE from standard input)
    Set {
        /// NAMESPACE or NAMESPACE/CONTAINER
        scope: String,
        /// KEY=VALUE (KEY=- reads the value from standard input).
        #[arg(required = true, value_name = "K=V")]
        values: Vec<String>,
    },
    /// Names, versions and fingerprints (never values).
    List {
        /// NAMESPACE or NAMESPACE/CONTAINER
        scope: String,
    },
    /// Delete a secret (the containers it fed get a new revision).
    Delete {
        /// NAMESPACE or NAMESPACE/CONTAINER
        scope: String,
        /// The secret's name.
        key: String,
    },
}

#[derive(Serialize)]
struct SecretOut {
    key: String,
    version: u64,
    fingerprint: String,
}

fn scope_arg(s: &str) -> Result<(String, Option<String>), Fail> {
    match s.split_once('/') {
        None if !s.is_empty() => Ok((s.to_string(), None)),
        Some((ns, c)) if !ns.is_empty() && !c.is_empty() && !c.contains('/') => {
            Ok((ns.to_string(), Some(c.to_string())))
        }
        _ => Err(Fail(format!(
            "scope: {s:?} is not NAMESPACE or NAMESPACE/NAME"
        ))),
    }
}

fn secret_rows(v: &[SecretOut]) -> String {
    table(
        &["KEY", "VERSION", "FINGERPRINT"],
        v.iter()
            .map(|s| vec![s.key.clone(), s.version.to_string(), s.fingerprint.clone()])
            .collect(),
    )
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Capacity, allocation, zone, region, state and instances per node.
    List {
        #[command(flatten)]
        read: ReadFlags,
    },
    /// No new instances on the node.
    Cordon {
        /// The node's id.
        id: u64,
    },
    /// Schedulable again (also ends a drain).
    Uncordon {
        /// The node's id.
        id: u64,
    },
    /// Cordon and move the node's instances elsewhere, replacements first.
    Drain {
        /// The node's id.
        id: u64,
    },
}

#[derive(Serialize)]
struct NodeOut {
    id: u64,
    address: String,
    http_address: String,
    zone: String,
    region: String,
    state: String,
    cpu_capacity_mvcpu: u32,
    memory_capacity_mb: u32,
    cpu_allocated_mvcpu: u32,
    memory_allocated_mb: u32,
    instances: u32,
}

impl From<pb::Node> for NodeOut {
    fn from(n: pb::Node) -> Self {
        NodeOut {
            id: n.id,
            address: n.address,
            http_address: n.http_address,
            zone: n.zone,
            region: n.region,
            state: n.state,
            cpu_capacity_mvcpu: n.cpu_capacity_mvcpu,
            memory_capacity_mb: n.memory_capacity_mb,
            cpu_allocated_mvcpu: n.cpu_allocated_mvcpu,
            memory_allocated_mb: n.memory_allocated_mb,
            instances: n.instances,
        }
    }
}

fn node_rows(ns: &[NodeOut]) -> String {
    table(
        &[
            "ID",
            "ADDRESS",
            "ZONE",
            "REGION",
            "STATE",
            "CPU",
            "MEMORY",
            "INSTANCES",
        ],
        ns.iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.address.clone(),
                    n.zone.clone(),
                    n.region.clone(),
                    n.state.clone(),
                    format!("{}/{}m", n.cpu_allocated_mvcpu, n.cpu_capacity_mvcpu),
                    format!("{}/{}MB", n.memory_allocated_mb, n.memory_capacity_mb),
                    n.instances.to_string(),
                ]
            })
            .collect(),
    )
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Load an OCI-layout tarball on every node (no registry needed).
    Import {
        /// The OCI-layout tarball (skopeo copy … oci-archive:FILE:NAME).
        file: std::path::PathBuf,
        /// Name for an image whose tarball carries none.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Leader, term and members.
    Status,
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Raft progress of the node at --endpoint.
    NodeInfo,
    /// Mint a one-time join token: `rouse-node --join HOST:PORT --join-token T`
    /// gets a new node its cluster certificate with it. The token is shown
    /// only now (last line; `-o json`: {"id","token","expires_at"}).
    JoinToken {
        /// How long the token stays valid (default 1h, at most 7 days).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Rotate the master key and the data key: secrets, token-signing keys
    /// and the CA key are re-sealed, and every node fetches the new master
    /// key from a peer over mutual TLS (its --master-key-file is rewritten).
    RotateKeys,
}

#[derive(Args)]
struct ReadFlags {
    /// Answer from the contacted node's state without checking with the leader.
    #[arg(long)]
    stale: bool,
}

#[derive(Subcommand)]
enum NamespaceCmd {
    /// Set what a namespace may hold (admin); a bound not given is lifted.
    Quota {
        /// The namespace.
        name: String,
        /// Containers.
        #[arg(long)]
        containers: Option<u32>,
        /// The sum of its containers' max-scale.
        #[arg(long)]
        max_scale: Option<u64>,
        /// Secrets, in the namespace and its containers.
        #[arg(long)]
        secrets: Option<u32>,
        /// Live (not revoked, not expired) tokens.
        #[arg(long)]
        tokens: Option<u32>,
        /// Memory at full scale: the sum of max-scale x memory, in MB.
        #[arg(long)]
        memory_mb: Option<u64>,
    },
    /// Create a namespace.
    Create {
        /// The namespace's name (a DNS label).
        name: String,
        /// Env var every container of the namespace gets (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Secret every container of the namespace gets (repeatable; prefer
        /// `rouse secret set`: a flag shows in `ps`).
        #[arg(long = "secret", value_name = "K=V")]
        secret: Vec<String>,
    },
    /// Set env vars (merged into the current ones unless --replace-env).
    Update {
        /// The namespace.
        name: String,
        /// Env var (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Replace all env vars with the given ones.
        #[arg(long)]
        replace_env: bool,
        /// Secret (repeatable; prefer `rouse secret set`).
        #[arg(long = "secret", value_name = "K=V")]
        secret: Vec<String>,
    },
    /// A namespace: env, secret names, quota.
    Get {
        /// The namespace.
        name: String,
        #[command(flatten)]
        read: ReadFlags,
    },
    /// Delete an empty namespace (its secrets, keys and tokens go with it).
    Delete {
        /// The namespace.
        name: String,
    },
    /// Every namespace you may see.
    List {
        #[command(flatten)]
        read: ReadFlags,
    },
}

#[derive(Subcommand)]
enum ContainerCmd {
    /// Create a container, or update the settings given.
    Deploy(Box<Deploy>),
    /// A container: settings, instances, cold starts, scaling.
    Get {
        /// NAMESPACE/NAME
        target: String,
        #[command(flatten)]
        read: ReadFlags,
    },
    /// Delete a container; its instances stop.
    Delete {
        /// NAMESPACE/NAME
        target: String,
    },
    /// Containers of every namespace you may see, or of one.
    List {
        /// Only this namespace.
        namespace: Option<String>,
        #[command(flatten)]
        read: ReadFlags,
    },
    /// stdout and stderr of the container's instances.
    Logs {
        /// NAMESPACE/NAME
        target: String,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Keep streaming.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start this many bytes before the end.
        #[arg(long, default_value_t = 0)]
        tail: u64,
        /// Print the instance's bytes as they are (terminal escapes and
        /// other control characters are shown escaped otherwise).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Args)]
struct Deploy {
    /// NAMESPACE/NAME
    target: String,
    /// Image reference (registry/repo:tag or @digest), or the name of an
    /// imported image; required when creating.
    #[arg(long)]
    image: Option<String>,
    /// Port the container listens on, given to it as PORT (default 8080).
    #[arg(long)]
    port: Option<u32>,
    /// Instances kept running even with no requests (default 0: scale to zero).
    #[arg(long)]
    min_scale: Option<u32>,
    /// Most instances the autoscaler starts.
    #[arg(long)]
    max_scale: Option<u32>,
    /// Requests one instance serves at once; more queue or go to another
    /// instance.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Request timeout, e.g. 30s or 5m (10s-900s).
    #[arg(long)]
    timeout: Option<String>,
    /// CPU in mVCPU (1000 = 1 vCPU).
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory in MB.
    #[arg(long)]
    memory: Option<u32>,
    /// public: anyone through the mesh; private: callers need a token
    /// (`rouse token create`).
    #[arg(long, value_enum)]
    privacy: Option<PrivacyArg>,
    /// What the container speaks: http1, or h2c (HTTP/2 without TLS, gRPC).
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Env var (repeatable); merged into the current ones unless --replace-env.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Replace all env vars with the given ones.
    #[arg(long)]
    replace_env: bool,
    /// Secret of the container (repeatable), write-only, given to it as an
    /// env var; prefer `rouse secret set` or rouse.yaml (a flag shows in `ps`).
    #[arg(long = "secret", value_name = "K=V")]
    secret: Vec<String>,
    /// Idle time before scaling to zero, e.g. 5m.
    #[arg(long)]
    scale_to_zero_after: Option<String>,
    /// Place instances only on nodes of this region ("" clears it).
    #[arg(long)]
    region: Option<String>,
    /// Ready when this path answers 2xx ("" clears it; default: port open).
    #[arg(long)]
    health_path: Option<String>,
    /// Mount the root filesystem read-only; /tmp stays writable
    /// (--read-only-rootfs=false turns it off again).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    read_only_rootfs: Option<bool>,
    /// Which instances a node's mesh sends requests to: local-first (its
    /// own, its zone's, its region's, then anywhere; the default) or any.
    #[arg(long, value_parser = ["local-first", "any"])]
    routing: Option<String>,
    /// Wait until min-scale instances (at least one) of the new revision
    /// are ready, showing each instance's progress; fail with an
    /// instance's reason.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    wait_timeout: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrivacyArg {
    Public,
    Private,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Http1,
    H2c,
}

/// A CLI failure: one line, naming the field where there is one.
struct Fail(String);

impl From<rouse_client::Error> for Fail {
    fn from(e: rouse_client::Error) -> Self {
        Fail(e.to_string())
    }
}

/// A log line as a terminal can show it safely: control characters (escape
/// sequences, carriage returns, bells) escaped, the line end kept.
fn printable(line: &str) -> String {
    let (body, end) = match line.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (line, ""),
    };
    let mut out = String::with_capacity(body.len());
    for ch in body.chars() {
        if ch.is_control() && ch != '\t' {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out.push_str(end);
    out
}

/// Secret values: `K=V`, or `K=-` to read V from standard input (so the
/// value appears in no command line); one `-` at most.
fn secret_pairs(items: &[String]) -> Result<HashMap<String, String>, Fail> {
    let mut m = pairs("values", items)?;
    let from_stdin: Vec<String> = m
        .iter()
        .filter(|(_, v)| v.as_str() == "-")
        .map(|(k, _)| k.clone())
        .collect();
    match from_stdin.as_slice() {
        [] => {}
        [k] => {
            let mut v = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                .map_err(|e| Fail(format!("values: reading {k} from standard input: {e}")))?;
            let v = v.strip_suffix('\n').unwrap_or(&v).to_string();
            m.insert(k.clone(), v);
        }
        _ => {
            return Err(Fail(format!(
                "values: only one value can come from standard input (K=-), not {}",
                from_stdin.join(", ")
            )))
        }
    }
    Ok(m)
}

fn pairs(field: &str, items: &[String]) -> Result<HashMap<String, String>, Fail> {
    let mut m = HashMap::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| Fail(format!("{field}: {it:?} is not K=V")))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

fn target(s: &str) -> Result<(String, String), Fail> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(Fail(format!("target: {s:?} is not NAMESPACE/NAME"))),
    }
}

fn seconds(field: &str, s: &str) -> Result<u32, Fail> {
    let d = if let Ok(n) = s.parse::<u64>() {
        std::time::Duration::from_secs(n)
    } else {
        humantime::parse_duration(s).map_err(|e| {
            Fail(format!(
                "{field}: {s:?} is not a duration such as 30s or 5m ({e})"
            ))
        })?
    };
    if d.subsec_nanos() != 0 {
        return Err(Fail(format!(
            "{field}: {s:?} must be a whole number of seconds"
        )));
    }
    u32::try_from(d.as_secs()).map_err(|_| Fail(format!("{field}: {s:?} is too long")))
}

// ------------------------------------------------------------- output

#[derive(Serialize)]
struct StatusOut {
    leader_id: u64,
    term: u64,
    peer_tls: bool,
    /// Empty until the first rotation.
    master_key_id: String,
    members: Vec<MemberOut>,
}

#[derive(Serialize)]
struct MemberOut {
    id: u64,
    address: String,
    role: String,
    zone: String,
    region: String,
    healthy: bool,
}

#[derive(Serialize)]
struct NamespaceOut {
    name: String,
    env: std::collections::BTreeMap<String, String>,
    secret_names: Vec<String>,
    revision: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// Unset bounds are left out (unbounded).
    quota: QuotaOut,
}

#[derive(Serialize, Default)]
struct QuotaOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    containers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_scale: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
}

impl From<pb::Namespace> for NamespaceOut {
    fn from(n: pb::Namespace) -> Self {
        NamespaceOut {
            name: n.name,
            env: n.env.into_iter().collect(),
            secret_names: n.secret_names,
            revision: n.revision,
            created_at_ms: n.created_at_ms,
            updated_at_ms: n.updated_at_ms,
            quota: n
                .quota
                .map(|q| QuotaOut {
                    containers: q.containers,
                    max_scale: q.max_scale,
                    secrets: q.secrets,
                    tokens: q.tokens,
                    memory_mb: q.memory_mb,
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Serialize)]
struct ContainerOut {
    namespace: String,
    name: String,
    image: String,
    port: u32,
    env: std::collections::BTreeMap<String, String>,
    secret_names: Vec<String>,
    cpu_mvcpu: u32,
    memory_mb: u32,
    min_scale: u32,
    max_scale: u32,
    max_concurrency: u32,
    timeout_seconds: u32,
    privacy: &'static str,
    protocol: &'static str,
    scale_to_zero_after_seconds: u32,
    revision: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    generation: u64,
    resolved_image: String,
    instances: Vec<InstanceOut>,
    cold_start: Option<ColdStartOut>,
    region: String,
    pending_reason: String,
    health_path: String,
    read_only_rootfs: bool,
    routing: String,
    desired_scale: u32,
    scale_reason: String,
    scaled_at_ms: u64,
    scale_ups: u64,
    scale_downs: u64,
}

#[derive(Serialize)]
struct ColdStartOut {
    samples: u32,
    median_total_ms: u64,
    last_total_ms: u64,
    last_placement_ms: u64,
    last_pull_ms: u64,
    last_create_ms: u64,
    last_start_ms: u64,
    last_network_ms: u64,
    last_ready_ms: u64,
}

#[derive(Serialize)]
struct InstanceOut {
    id: String,
    node: u64,
    generation: u64,
    state: String,
    message: String,
    exit_code: Option<i32>,
    oom_killed: bool,
    restarts: u32,
    /// Its address on the node's instance bridge ("" on the host network).
    ip: String,
    /// The port it listens on (at `ip`, or on the node on the host network).
    port: u32,
}

impl From<pb::Instance> for InstanceOut {
    fn from(i: pb::Instance) -> Self {
        InstanceOut {
            id: i.id,
            node: i.node,
            generation: i.generation,
            state: i.state,
            message: i.message,
            exit_code: i.exit_code,
            oom_killed: i.oom_killed,
            restarts: i.restarts,
            ip: i.ip,
            port: i.port,
        }
    }
}

impl From<pb::Container> for ContainerOut {
    fn from(c: pb::Container) -> Self {
        let privacy = match c.privacy() {
            pb::Privacy::Private => "private",
            _ => "public",
        };
        let protocol = match c.protocol() {
            pb::Protocol::H2c => "h2c",
            _ => "http1",
        };
        ContainerOut {
            namespace: c.namespace,
            name: c.name,
            image: c.image,
            port: c.port,
            env: c.env.into_iter().collect(),
            secret_names: c.secret_names,
            cpu_mvcpu: c.cpu_mvcpu,
            memory_mb: c.memory_mb,
            min_scale: c.min_scale,
            max_scale: c.max_scale,
            max_concurrency: c.max_concurrency,
            timeout_seconds: c.timeout_seconds,
            privacy,
            protocol,
            scale_to_zero_after_seconds: c.scale_to_zero_after_seconds,
            revision: c.revision,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            generation: c.generation,
            resolved_image: c.resolved_image,
            instances: c.instances.into_iter().map(Into::into).collect(),
            region: c.region,
            pending_reason: c.pending_reason,
            health_path: c.health_path,
            read_only_rootfs: c.read_only_rootfs,
            routing: c.routing,
            desired_scale: c.desired_scale,
            scale_reason: c.scale_reason,
            scaled_at_ms: c.scaled_at_ms,
            scale_ups: c.scale_ups,
            scale_downs: c.scale_downs,
            cold_start: c.cold_start.map(|s| ColdStartOut {
                samples: s.samples,
                median_total_ms: s.median_total_ms,
                last_total_ms: s.last_total_ms,
                last_placement_ms: s.last_placement_ms,
                last_pull_ms: s.last_pull_ms,
                last_create_ms: s.last_create_ms,
                last_start_ms: s.last_start_ms,
                last_network_ms: s.last_network_ms,
                last_ready_ms: s.last_ready_ms,
            }),
        }
    }
}

fn instance_rows(is: &[InstanceOut]) -> String {
    table(
        &[
            "INSTANCE", "NODE", "STATE", "ADDRESS", "RESTARTS", "MESSAGE",
        ],
        is.iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.node.to_string(),
                    i.state.clone(),
                    if i.ip.is_empty() {
                        format!(":{}", i.port)
                    } else {
                        format!("{}:{}", i.ip, i.port)
                    },
                    i.restarts.to_string(),
                    i.message.clone(),
                ]
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct NodeInfoOut {
    id: u64,
    state: String,
    term: u64,
    leader_id: u64,
    last_log_index: u64,
    last_applied_index: u64,
    snapshot_index: u64,
    purged_index: u64,
    snapshots_installed: u64,
    state_digest: String,
    /// "ok" or "degraded: no quorum since …".
    health: String,
}

/// Seconds in a duration flag such as `24h` (0 when absent: the server's default).
fn duration_secs(field: &str, value: Option<&str>, example: &str) -> Result<u64, Fail> {
    match value {
        None => Ok(0),
        Some(d) => Ok(humantime::parse_duration(d)
            .map_err(|e| {
                Fail(format!(
                    "{field}: {d:?} is not a duration such as {example} ({e})"
                ))
            })?
            .as_secs()
            .max(1)),
    }
}

/// Prints a credential shown only once: JSON `{"id","token","expires_at"}`,
/// or the token on the last line.
fn emit_issued(fmt: Format, id: &str, token: &str, expires_at_ms: u64) -> Result<(), Fail> {
    let out = serde_json::json!({ "id": id, "token": token, "expires_at": expires_at_ms / 1000 });
    emit(fmt, &out, || {
        format!(
            "id: {id}\nexpires at: {} (unix seconds)\n{token}",
            expires_at_ms / 1000
        )
    })
}

/// How long ago a time (ms since the epoch) was, for tables.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn emit<T: Serialize>(fmt: Format, value: &T, human: impl FnOnce() -> String) -> Result<(), Fail> {
    let s = match fmt {
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| Fail(format!("output: {e}")))?
        }
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| Fail(format!("output: {e}")))?,
        Format::Table => human(),
    };
    println!("{}", s.trim_end());
    Ok(())
}

fn env_text(env: &std::collections::BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn container_rows(cs: &[ContainerOut]) -> String {
    table(
        &[
            "NAMESPACE",
            "NAME",
            "IMAGE",
            "PORT",
            "CPU",
            "MEMORY",
            "SCALE",
            "CONCURRENCY",
            "TIMEOUT",
            "PRIVACY",
            "PROTOCOL",
            "REVISION",
        ],
        cs.iter()
            .map(|c| {
                vec![
                    c.namespace.clone(),
                    c.name.clone(),
                    c.image.clone(),
                    c.port.to_string(),
                    format!("{}m", c.cpu_mvcpu),
                    format!("{}MB", c.memory_mb),
                    format!("{}-{}", c.min_scale, c.max_scale),
                    c.max_concurrency.to_string(),
                    format!("{}s", c.timeout_seconds),
                    c.privacy.to_string(),
                    c.protocol.to_string(),
                    c.revision.to_string(),
                ]
            })
            .collect(),
    )
}

fn namespace_rows(ns: &[NamespaceOut]) -> String {
    table(
        &["NAME", "ENV", "REVISION"],
        ns.iter()
            .map(|n| vec![n.name.clone(), env_text(&n.env), n.revision.to_string()])
            .collect(),
    )
}

async fn run(mut cli: Cli) -> Result<(), Fail> {
    let fmt = cli.output;
    // Need no cluster.
    match cli.cmd {
        Cmd::Schema => return apply::schema(),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Written whole: a closed pipe (`| head`) is not an error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rouse", &mut script);
            let _ = std::io::stdout().write_all(&script);
            return Ok(());
        }
        _ => {}
    }
    if let Some(path) = &cli.token_file {
        let t = std::fs::read_to_string(path)
            .map_err(|e| Fail(format!("token_file: cannot read {}: {e}", path.display())))?;
        cli.token = Some(t.trim().to_string());
    }
    let mut c = match &cli.ca_file {
        Some(path) => {
            let ca = std::fs::read_to_string(path)
                .map_err(|e| Fail(format!("ca_file: cannot read {}: {e}", path.display())))?;
            Client::connect_tls(&cli.endpoint, cli.token.as_deref(), &ca).await?
        }
        None if cli.endpoint.starts_with("https://") => {
            return Err(Fail(
                "ca_file: an https:// endpoint needs --ca-file (the cluster CA, a node's <data-dir>/tls/ca.crt)".into(),
            ))
        }
        None => Client::connect(&cli.endpoint, cli.token.as_deref()).await?,
    };
    match cli.cmd {
        Cmd::Apply(a) => apply::run(&mut c, fmt, a).await,
        Cmd::Diff(a) => apply::diff(&mut c, fmt, a).await,
        Cmd::Export { namespace } => apply::export(&mut c, &namespace).await,
        Cmd::Schema => apply::schema(),
        Cmd::Completion { .. } => Ok(()),
        Cmd::Version => {
            let info = c.node_info().await?;
            let client = env!("CARGO_PKG_VERSION");
            let level = rouse_proto::API_LEVEL;
            let v = serde_json::json!({
                "client": {"version": client, "api_level": level},
                "server": {"version": info.version, "api_level": info.api_level, "node": info.id},
            });
            emit(fmt, &v, || {
                format!(
                    "client: rouse {client} (API level {level})\nserver: rouse-node {} (API level {}) at node {}",
                    if info.version.is_empty() { "(older than 0.1.0)" } else { &info.version },
                    info.api_level,
                    info.id
                )
            })?;
            if info.api_level != level {
                return Err(Fail(format!(
                    "version: the node speaks API level {}, this rouse speaks {level}: use a rouse of the node's release ({})",
                    info.api_level,
                    if info.version.is_empty() { "older" } else { &info.version }
                )));
            }
            Ok(())
        }
        Cmd::Trigger(cmd) => trigger_cmd(&mut c, fmt, *cmd).await,
        Cmd::Events {
            scope,
            follow,
            since,
        } => observe::events(&mut c, fmt, scope, follow, since).await,
        Cmd::Usage {
            scope,
            since,
            until,
            by,
        } => observe::usage(&mut c, fmt, scope, since, until, by).await,
        Cmd::Cluster(ClusterCmd::Status) => {
            let s = c.cluster_status().await?;
            let out = StatusOut {
                leader_id: s.leader_id,
                term: s.term,
                peer_tls: s.peer_tls,
                master_key_id: s.master_key_id,
                members: s
                    .members
                    .into_iter()
                    .map(|m| MemberOut {
                        id: m.id,
                        address: m.address,
                        role: m.role,
                        zone: m.zone,
                        region: m.region,
                        healthy: m.healthy,
                    })
                    .collect(),
            };
            emit(fmt, &out, || {
                let rows = out
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.address.clone(),
                            if m.id == out.leader_id {
                                format!("{} (leader)", m.role)
                            } else {
                                m.role.clone()
                            },
                            m.zone.clone(),
                            m.region.clone(),
                            if m.healthy { "yes".into() } else { "NO".into() },
                        ]
                    })
                    .collect();
                format!(
                    "leader: {}  term: {}  peer traffic: {}\n{}",
                    out.leader_id,
                    out.term,
                    if out.peer_tls {
                        "mutual TLS"
                    } else {
                        "PLAIN (--insecure)"
                    },
                    table(
                        &["ID", "ADDRESS", "ROLE", "ZONE", "REGION", "HEALTHY"],
                        rows
                    )
                )
            })
        }
        Cmd::Cluster(ClusterCmd::JoinToken { ttl }) => {
            let secs = duration_secs("ttl", ttl.as_deref(), "1h")?;
            let t = c.create_join_token(secs).await?;
            emit_issued(fmt, &t.id, &t.token, t.expires_at_ms)
        }
        Cmd::Cluster(ClusterCmd::RotateKeys) => {
            let r = c.rotate_keys().await?;
            let out = serde_json::json!({
                "master_key_id": r.master_key_id,
                "secrets_resealed": r.secrets_resealed,
                "signing_keys_resealed": r.signing_keys_resealed,
            });
            emit(fmt, &out, || {
                format!(
                    "rotated: master key {}; {} secrets and {} signing keys re-sealed under a new data key",
                    r.master_key_id, r.secrets_resealed, r.signing_keys_resealed
                )
            })
        }
        Cmd::Cluster(ClusterCmd::Remove { id }) => {
            let master_key_id = c.remove_node(id).await?;
            emit(
                fmt,
                &serde_json::json!({ "removed": id, "master_key_id": master_key_id }),
                || {
                    if master_key_id.is_empty() {
                        format!("node {id} removed")
                    } else {
                        format!(
                            "node {id} removed; master and data keys rotated to {master_key_id}"
                        )
                    }
                },
            )
        }
        Cmd::Cluster(ClusterCmd::NodeInfo) => {
            let i = c.node_info().await?;
            let out = NodeInfoOut {
                id: i.id,
                state: i.state,
                term: i.term,
                leader_id: i.leader_id,
                last_log_index: i.last_log_index,
                last_applied_index: i.last_applied_index,
                snapshot_index: i.snapshot_index,
                purged_index: i.purged_index,
                snapshots_installed: i.snapshots_installed,
                state_digest: i.state_digest,
                health: i.health,
            };
            emit(fmt, &out, || {
                format!(
                    "node {} ({}), term {}, leader {}, health {}\nlog {} applied {} snapshot {} purged {} (installed {} snapshots)\ndigest {}",
                    out.id, out.state, out.term, out.leader_id, out.health, out.last_log_index, out.last_applied_index,
                    out.snapshot_index, out.purged_index, out.snapshots_installed, out.state_digest
                )
            })
        }
        Cmd::Namespace(cmd) => namespace(&mut c, fmt, cmd).await,
        Cmd::Container(cmd) => container(&mut c, fmt, cmd).await,
        Cmd::Apikey(cmd) => match cmd {
            ApiKeyCmd::Create { namespace, admin } => {
                let (k, scope) = match namespace {
                    Some(ns) => (c.create_api_key(&ns).await?, format!("namespace:{ns}")),
                    None => {
                        debug_assert!(admin);
                        (c.create_admin_key().await?, "admin".to_string())
                    }
                };
                let ns = scope
                    .strip_prefix("namespace:")
                    .unwrap_or_default()
                    .to_string();
                let out = serde_json::json!({ "id": k.id, "key": k.key, "namespace": ns, "scope": scope });
                emit(fmt, &out, || {
                    format!("id: {}\nscope: {scope}\n{}", k.id, k.key)
                })
            }
            ApiKeyCmd::List => {
                let v: Vec<serde_json::Value> = c
                    .list_api_keys()
                    .await?
                    .into_iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id,
                            "namespace": k.namespace,
                            "scope": k.scope,
                            "revoked": k.revoked,
                            "created_at_ms": k.created_at_ms,
                            "last_used_at_ms": k.last_used_at_ms,
                        })
                    })
                    .collect();
                emit(fmt, &v, || {
                    table(
                        &["ID", "SCOPE", "CREATED", "LAST USED", "REVOKED"],
                        v.iter()
                            .map(|k| {
                                let at = |f: &str| match k[f].as_u64() {
                                    Some(0) | None => "never".to_string(),
                                    Some(ms) => ago(ms),
                                };
                                vec![
                                    k["id"].as_str().unwrap_or_default().to_string(),
                                    k["scope"].as_str().unwrap_or_default().to_string(),
                                    at("created_at_ms"),
                                    at("last_used_at_ms"),
                                    k["revoked"].to_string(),
                                ]
                            })
                            .collect(),
                    )
                })
            }
            ApiKeyCmd::Revoke { id } => {
                c.revoke_api_key(&id).await?;
                emit(fmt, &serde_json::json!({ "revoked": id }), || {
                    format!("api key {id} revoked")
                })
            }
        },
        Cmd::Token(cmd) => match cmd {
            TokenCmd::Create {
                namespace,
                container,
                expires_in,
            } => {
                let secs = duration_secs("expires_in", expires_in.as_deref(), "24h")?;
                let t = c
                    .create_token(&namespace, container.as_deref(), secs)
                    .await?;
                emit_issued(fmt, &t.id, &t.token, t.expires_at_ms)
            }
            TokenCmd::List { namespace } => {
                let v: Vec<serde_json::Value> = c
                    .list_tokens(&namespace)
                    .await?
                    .into_iter()
                    .map(|t| serde_json::json!({"id": t.id, "namespace": t.namespace, "container": t.container, "expires_at": t.expires_at_ms / 1000, "revoked": t.revoked}))
                    .collect();
                emit(fmt, &v, || {
                    table(
                        &["ID", "NAMESPACE", "CONTAINER", "EXPIRES_AT", "REVOKED"],
                        v.iter()
                            .map(|t| {
                                ["id", "namespace", "container", "expires_at", "revoked"]
                                    .iter()
                                    .map(|k| t[*k].to_string().trim_matches('"').to_string())
                                    .collect()
                            })
                            .collect(),
                    )
                })
            }
            TokenCmd::Revoke { id } => {
                c.revoke_token(&id).await?;
                emit(fmt, &serde_json::json!({ "revoked": id }), || {
                    format!("token {id} revoked")
                })
            }
            TokenCmd::RotateKey => {
                let kid = c.rotate_signing_key().await?;
                emit(fmt, &serde_json::json!({ "kid": kid }), || {
                    format!("new signing key {kid}")
                })
            }
        },
        Cmd::Secret(cmd) => {
            let infos = match cmd {
                SecretCmd::Set { scope, values } => {
                    let (ns, ct) = scope_arg(&scope)?;
                    c_secrets_set(&mut c, &ns, ct.as_deref(), secret_pairs(&values)?).await?
                }
                SecretCmd::List { scope } => {
                    let (ns, ct) = scope_arg(&scope)?;
                    c.list_secrets(&ns, ct.as_deref()).await?
                }
                SecretCmd::Delete { scope, key } => {
                    let (ns, ct) = scope_arg(&scope)?;
                    c.delete_secret(&ns, ct.as_deref(), &key).await?;
                    c.list_secrets(&ns, ct.as_deref()).await?
                }
            };
            let out: Vec<SecretOut> = infos
                .into_iter()
                .map(|i| SecretOut {
                    key: i.key,
                    version: i.version,
                    fingerprint: i.value_sha256,
                })
                .collect();
            emit(fmt, &out, || secret_rows(&out))
        }
        Cmd::Node(cmd) => {
            let out: Vec<NodeOut> = match cmd {
                NodeCmd::List { read } => c
                    .list_nodes(read.stale)
                    .await?
                    .into_iter()
                    .map(Into::into)
                    .collect(),
                NodeCmd::Cordon { id } => vec![c.cordon(id).await?.into()],
                NodeCmd::Uncordon { id } => vec![c.uncordon(id).await?.into()],
                NodeCmd::Drain { id } => vec![c.drain(id).await?.into()],
            };
            emit(fmt, &out, || node_rows(&out))
        }
        Cmd::Image(ImageCmd::Import { file, name }) => {
            let r = c.import_image(&file, name.as_deref()).await?;
            let failed: Vec<String> = r
                .nodes
                .iter()
                .filter(|n| !n.ok)
                .map(|n| format!("node {}: {}", n.node, n.error))
                .collect();
            let out = serde_json::json!({
                "images": r.images,
                "nodes": r.nodes.iter().map(|n| serde_json::json!({"node": n.node, "ok": n.ok, "error": n.error})).collect::<Vec<_>>(),
            });
            emit(fmt, &out, || {
                let mut t = format!(
                    "imported {} on {} node(s)",
                    r.images.join(", "),
                    r.nodes.iter().filter(|n| n.ok).count()
                );
                for f in &failed {
                    t.push_str(&format!("\nnot imported on {f}"));
                }
                t
            })?;
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Fail(format!(
                    "data: import failed on {}",
                    failed.join("; ")
                )))
            }
        }
    }
}

async fn c_secrets_set(
    c: &mut Client,
    ns: &str,
    container: Option<&str>,
    values: HashMap<String, String>,
) -> Result<Vec<pb::SecretInfo>, Fail> {
    Ok(c.set_secrets(ns, container, values).await?)
}

async fn namespace(c: &mut Client, fmt: Format, cmd: NamespaceCmd) -> Result<(), Fail> {
    let show = |n: pb::Namespace| {
        let out = NamespaceOut::from(n);
        emit(fmt, &out, || namespace_rows(std::slice::from_ref(&out)))
    };
    match cmd {
        NamespaceCmd::Quota {
            name,
            containers,
            max_scale,
            secrets,
            tokens,
            memory_mb,
        } => {
            let q = pb::Quota {
                containers,
                max_scale,
                secrets,
                tokens,
                memory_mb,
            };
            show(c.set_quota(&name, q).await?)
        }
        NamespaceCmd::Create { name, env, secret } => {
            let req = pb::CreateNamespaceRequest {
                name,
                env: pairs("env", &env)?,
                secrets: pairs("secret", &secret)?,
            };
            show(c.create_namespace_with(req).await?)
        }
        NamespaceCmd::Update {
            name,
            env,
            replace_env,
            secret,
        } => {
            let req = pb::UpdateNamespaceRequest {
                name,
                env: pairs("env", &env)?,
                replace_env,
                secrets: pairs("secret", &secret)?,
            };
            show(c.update_namespace(req).await?)
        }
        NamespaceCmd::Get { name, read } => show(c.get_namespace(&name, read.stale).await?),
        NamespaceCmd::Delete { name } => {
            c.delete_namespace(&name).await?;
            emit(fmt, &serde_json::json!({ "deleted": name }), || {
                format!("namespace {name} deleted")
            })
        }
        NamespaceCmd::List { read } => {
            let out: Vec<NamespaceOut> = c
                .list_namespaces(read.stale)
                .await?
                .into_iter()
                .map(Into::into)
                .collect();
            emit(fmt, &out, || namespace_rows(&out))
        }
    }
}

async fn container(c: &mut Client, fmt: Format, cmd: ContainerCmd) -> Result<(), Fail> {
    let show = |ct: pb::Container| {
        let out = ContainerOut::from(ct);
        emit(fmt, &out, || {
            let mut text = format!(
                "{}\nenv: {}",
                container_rows(std::slice::from_ref(&out)),
                env_text(&out.env)
            );
            if !out.resolved_image.is_empty() {
                text.push_str(&format!("\nimage: {}", out.resolved_image));
            }
            if !out.pending_reason.is_empty() {
                text.push_str(&format!("\npending: {}", out.pending_reason));
            }
            if out.scaled_at_ms > 0 {
                text.push_str(&format!(
                    "\nscale: {} wanted ({}, {}); {} up, {} down so far",
                    out.desired_scale,
                    out.scale_reason,
                    ago(out.scaled_at_ms),
                    out.scale_ups,
                    out.scale_downs
                ));
            }
            if let Some(cs) = &out.cold_start {
                text.push_str(&format!(
                    "\ncold start: last {} ms (placement {} + pull {} + create {} + start {} [network {}] + ready {}), median {} ms over {}",
                    cs.last_total_ms, cs.last_placement_ms, cs.last_pull_ms, cs.last_create_ms, cs.last_start_ms,
                    cs.last_network_ms, cs.last_ready_ms, cs.median_total_ms, cs.samples
                ));
            }
            if !out.instances.is_empty() {
                text.push_str(&format!("\n\n{}", instance_rows(&out.instances)));
            }
            text
        })
    };
    match cmd {
        ContainerCmd::Deploy(d) => {
            let (namespace, name) = target(&d.target)?;
            let req = pb::DeployContainerRequest {
                namespace,
                name,
                image: d.image,
                port: d.port,
                env: pairs("env", &d.env)?,
                replace_env: d.replace_env,
                secrets: pairs("secret", &d.secret)?,
                cpu_mvcpu: d.cpu,
                memory_mb: d.memory,
                min_scale: d.min_scale,
                max_scale: d.max_scale,
                max_concurrency: d.max_concurrency,
                timeout_seconds: d
                    .timeout
                    .as_deref()
                    .map(|t| seconds("timeout", t))
                    .transpose()?,
                privacy: match d.privacy {
                    None => pb::Privacy::Unspecified,
                    Some(PrivacyArg::Public) => pb::Privacy::Public,
                    Some(PrivacyArg::Private) => pb::Privacy::Private,
                }
                .into(),
                protocol: match d.protocol {
                    None => pb::Protocol::Unspecified,
                    Some(ProtocolArg::Http1) => pb::Protocol::Http1,
                    Some(ProtocolArg::H2c) => pb::Protocol::H2c,
                }
                .into(),
                region: d.region,
                health_path: d.health_path,
                read_only_rootfs: d.read_only_rootfs,
                routing: d.routing,
                scale_to_zero_after_seconds: d
                    .scale_to_zero_after
                    .as_deref()
                    .map(|t| seconds("scale_to_zero_after", t))
                    .transpose()?,
            };
            let out = c.deploy_container(req).await?;
            if d.wait {
                let timeout = humantime::parse_duration(&d.wait_timeout).map_err(|_| {
                    Fail(format!(
                        "wait_timeout: {:?} is not a duration (5m, 90s)",
                        d.wait_timeout
                    ))
                })?;
                let want = vec![(
                    out.namespace.clone(),
                    out.name.clone(),
                    out.min_scale.max(1),
                )];
                apply::wait(c, &want, timeout, fmt != Format::Table).await?;
                return show(c.get_container(&out.namespace, &out.name, false).await?);
            }
            show(out)
        }
        ContainerCmd::Get { target: t, read } => {
            let (ns, name) = target(&t)?;
            show(c.get_container(&ns, &name, read.stale).await?)
        }
        ContainerCmd::Delete { target: t } => {
            let (ns, name) = target(&t)?;
            c.delete_container(&ns, &name).await?;
            emit(fmt, &serde_json::json!({ "deleted": t }), || {
                format!("container {t} deleted")
            })
        }
        ContainerCmd::Logs {
            target: t,
            instance,
            follow,
            tail,
            raw,
        } => {
            use std::io::Write;
            let (ns, name) = target(&t)?;
            let prefix = instance.is_none();
            let req = pb::LogsRequest {
                namespace: ns,
                name,
                instance: instance.unwrap_or_default(),
                follow,
                tail_bytes: tail,
                local_only: false,
            };
            let mut stream = c.logs(req).await?;
            let mut stdout = std::io::stdout();
            while let Some(chunk) = stream.message().await.map_err(rouse_client::Error::from)? {
                if raw && !prefix {
                    let _ = stdout.write_all(&chunk.data);
                } else {
                    let text = String::from_utf8_lossy(&chunk.data);
                    for line in text.split_inclusive('\n') {
                        let line = if raw {
                            line.to_string()
                        } else {
                            printable(line)
                        };
                        if prefix {
                            let _ = write!(stdout, "[{}] {line}", chunk.instance);
                        } else {
                            let _ = write!(stdout, "{line}");
                        }
                    }
                }
                let _ = stdout.flush();
            }
            Ok(())
        }
        ContainerCmd::List { namespace, read } => {
            let out: Vec<ContainerOut> = c
                .list_containers(namespace.as_deref().unwrap_or(""), read.stale)
                .await?
                .into_iter()
                .map(Into::into)
                .collect();
            emit(fmt, &out, || container_rows(&out))
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("rouse: {first}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rouse: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("rouse: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "rouse", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
