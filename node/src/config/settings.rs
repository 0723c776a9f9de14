//! The one raw layer of settings: a flag (and its `ROUSE_*` env var) and a
//! key of the `--config` TOML file for each, in one struct. Layers merge
//! through figment; `NodeConfig::resolve` validates the result.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Every setting of `rouse-node`, as a flag (which also reads
/// `ROUSE_<NAME>`) and as a key of the TOML file (the same name with `_`).
/// Unset settings are absent, so that layers merge: flag or env var over
/// file over default.
#[derive(Debug, Parser, Default, Serialize, Deserialize)]
#[command(name = "rouse-node", version, about = "A rouse cluster node")]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Node id, unique in the cluster, at least 1.
    #[arg(long, env = "ROUSE_ID")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Directory for the Raft log, state and snapshots.
    #[arg(long, env = "ROUSE_DATA_DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Address the gRPC API and the peer service bind (HOST:PORT).
    #[arg(long, env = "ROUSE_LISTEN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address the routing mesh binds (HOST:PORT).
    #[arg(long, env = "ROUSE_HTTP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Address other nodes use to reach --listen (default: --listen).
    #[arg(long, env = "ROUSE_ADVERTISE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Address other nodes use to reach --http (default: --advertise's host
    /// and --http's port); its host, with --hop's port, is where they hop.
    #[arg(long, env = "ROUSE_ADVERTISE_HTTP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_http: Option<String>,
    /// Start a new one-node cluster (first start only).
    #[arg(long, env = "ROUSE_BOOTSTRAP", conflicts_with = "join")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap: bool,
    /// Join the cluster through the node at HOST:PORT (first start only).
    #[arg(long, env = "ROUSE_JOIN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// One-time token for --join (from the bootstrap node's
    /// <data-dir>/join-token or `rouse cluster join-token`); gets this node
    /// its cluster certificate.
    #[arg(long, env = "ROUSE_JOIN_TOKEN", hide_env_values = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// Development only: plain, unencrypted peer traffic (no mTLS). Every
    /// node of a cluster must agree.
    #[arg(long, env = "ROUSE_INSECURE")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// containerd socket.
    #[arg(long, env = "ROUSE_CONTAINERD")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<PathBuf>,
    /// containerd namespace holding rouse's objects.
    #[arg(long, env = "ROUSE_CONTAINERD_NAMESPACE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd_namespace: Option<String>,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(
        long = "insecure-registry",
        env = "ROUSE_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registry: Vec<String>,
    #[arg(long, env = "ROUSE_ZONE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[arg(long, env = "ROUSE_REGION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// CPU this node offers to instances, in mVCPU (default: all cores).
    #[arg(long, env = "ROUSE_CPU_CAPACITY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_capacity: Option<u32>,
    /// Memory this node offers to instances, in MB (default: all memory).
    #[arg(long, env = "ROUSE_MEMORY_CAPACITY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_capacity: Option<u32>,
    /// Domain under which containers are served: NAME.NAMESPACE.DOMAIN.
    #[arg(long, env = "ROUSE_BASE_DOMAIN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_domain: Option<String>,
    /// TOML file with the same settings (keys as the flags, with '_').
    #[arg(long, env = "ROUSE_CONFIG")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// Check the settings (flags, environment and --config file) and exit:
    /// 0 with a summary when they would start a node, 2 with the field and
    /// the rule when not. Nothing is bound, created or contacted.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// Highest max-scale a container may ask for.
    #[arg(long, env = "ROUSE_SCALE_CAP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_cap: Option<u32>,
    /// Take a snapshot (and compact the log) after this many new entries.
    #[arg(long, env = "ROUSE_SNAPSHOT_LOGS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_logs: Option<u64>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "ROUSE_HEARTBEAT_MS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout in milliseconds (default 3 heartbeats or
    /// 500 ms, whichever is longer; at least 3 heartbeats): how long
    /// without a leader before a voter stands.
    #[arg(long, env = "ROUSE_ELECTION_TIMEOUT_MS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u64>,
    /// How often API key use is recorded in the cluster (default 60s).
    #[arg(long, env = "ROUSE_KEY_USE_REPORT", hide = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_use_report: Option<String>,
    /// Log filter, as RUST_LOG (default: info).
    #[arg(long, env = "ROUSE_LOG")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Meter instances' usage (`on`, the default) or not (`off`: no
    /// usage ledger entries from this node).
    #[arg(long, env = "ROUSE_METERING")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metering: Option<String>,
    /// Log lines as `text` (default) or `json` (one object per line).
    #[arg(long, env = "ROUSE_LOG_FORMAT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Export traces over OTLP/gRPC to this collector
    /// (http://HOST:4317; default: off).
    #[arg(long, env = "ROUSE_OTLP_ENDPOINT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How instances are networked: `isolated` (a network namespace each
    /// on a node-local bridge; the default) or `host` (the node's network,
    /// for development only).
    #[arg(long, env = "ROUSE_INSTANCE_NETWORK")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_network: Option<String>,
    /// IPv4 subnet of this node's instances (default 10.88.<node id>.0/24;
    /// nodes of one cluster need different ones).
    #[arg(long, env = "ROUSE_INSTANCE_SUBNET")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_subnet: Option<String>,
    /// Whether instances may reach the outside (`allow`, masqueraded behind
    /// the node; the default) or not (`deny`).
    #[arg(long, env = "ROUSE_INSTANCE_EGRESS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_egress: Option<String>,
    /// Directory of the CNI plugins (default /usr/lib/cni, else /opt/cni/bin).
    #[arg(long, env = "ROUSE_CNI_BIN_DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_bin_dir: Option<PathBuf>,
    /// First node uid (and gid) of the range an instance's user namespace
    /// maps its ids to (root inside is this uid outside); 0 runs instances
    /// without a user namespace (default 200000).
    #[arg(long, env = "ROUSE_USERNS_BASE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_base: Option<u32>,
    /// Host mode only: host ports given to instances, LO-HI (default 20000-29999).
    #[arg(long, env = "ROUSE_INSTANCE_PORTS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ports: Option<String>,
    /// Remove this node's instance network (firewall rules, bridge, address
    /// store) and exit: for a node that leaves for good, once its instances
    /// are gone.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_instance_network: bool,
    /// Address other nodes' meshes forward requests to, over mutual TLS
    /// (HOST:PORT; default: --http's host and the next port).
    #[arg(long, env = "ROUSE_HOP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    /// Address of the node's Prometheus metrics (HOST:PORT; default:
    /// 127.0.0.1 and --http's port + 2). They name every tenant's
    /// containers, so they are not on the public mesh.
    #[arg(long, env = "ROUSE_METRICS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Time an instance gets between SIGTERM and SIGKILL (default 10s).
    #[arg(long, env = "ROUSE_STOP_GRACE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<String>,
    /// Delete images no instance here has used for this long (default 10m).
    #[arg(long, env = "ROUSE_IMAGE_GC_AFTER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_gc_after: Option<String>,
    /// How long the log of an instance that is gone stays readable (default 1h).
    #[arg(long, env = "ROUSE_LOG_RETENTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention: Option<String>,
    /// Largest image manifest (or index) accepted, in bytes (default 4 MiB).
    #[arg(long, env = "ROUSE_MAX_MANIFEST_BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_manifest_bytes: Option<u64>,
    /// Largest image config accepted, in bytes (default 4 MiB).
    #[arg(long, env = "ROUSE_MAX_CONFIG_BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_config_bytes: Option<u64>,
    /// Largest image layer accepted, compressed, in bytes (default 4 GiB).
    #[arg(long, env = "ROUSE_MAX_LAYER_BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_layer_bytes: Option<u64>,
    /// Pause an instance idle this long (memory kept, wakes in ms); 0 disables (default 30s).
    #[arg(long, env = "ROUSE_SUSPEND_AFTER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after: Option<String>,
    /// A node silent this long is marked down and its instances replaced (default 3s).
    #[arg(long, env = "ROUSE_NODE_GRACE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_grace: Option<String>,
    /// Time a client gets to send its request head to the mesh, and its
    /// first bytes or TLS handshake to either listener (default 30s).
    #[arg(long, env = "ROUSE_HEADER_TIMEOUT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// Open client connections the mesh serves at once; more wait to be
    /// accepted (default 16384).
    #[arg(long, env = "ROUSE_MAX_CONNECTIONS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// API (gRPC) connections served at once (default 4096; more wait to
    /// be accepted).
    #[arg(long, env = "ROUSE_MAX_API_CONNECTIONS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_api_connections: Option<usize>,
    /// File with the master key that wraps the cluster data key (64 hex
    /// characters, mode 0600; created by --bootstrap if absent). Every node
    /// needs the same key to open secrets. Default: <data-dir>/master.key.
    #[arg(long, env = "ROUSE_MASTER_KEY_FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Chaos-suite sabotage: answer reads from local state without the
    /// leader check (breaks linearizability on purpose). Only in builds
    /// with the `sabotage` feature.
    #[cfg(feature = "sabotage")]
    #[arg(long, hide = true)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sabotage_stale_reads: bool,
    /// Placements per Raft proposal (0: the whole plan of a pass in one).
    #[arg(long, env = "ROUSE_PLACEMENT_BATCH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_batch: Option<usize>,
    /// Place up to capacity × this ratio of cpu and memory (default 1.0).
    #[arg(long, env = "ROUSE_OVERCOMMIT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit: Option<f64>,
    /// Autoscaler stable window (default 60s); the panic window is a tenth.
    #[arg(long, env = "ROUSE_AUTOSCALE_WINDOW")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale_window: Option<String>,
    /// TOML file of registry credentials: ["host:port"] username/password or token.
    #[arg(long, env = "ROUSE_REGISTRY_AUTH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<PathBuf>,
}
