//! Node configuration: command-line flags, `ROUSE_*` environment variables
//! and a TOML file (`--config`) all fill the same [`Args`] (one struct, see
//! [`settings`]); [`NodeConfig::resolve`] merges the layers (flag or env var,
//! then file, then default) and validates. Each service gets its own part
//! (`mesh()`, `agent()`, `api()`, …).

pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

pub use settings::Args;

use crate::state::validate::DEFAULT_SCALE_CAP;

/// A configuration error, naming the setting and the rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("--config {path}: {message}")]
    File { path: String, message: String },
}

fn invalid(field: &'static str, rule: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// Default base of instances' user namespaces.
pub const DEFAULT_USERNS_BASE: u32 = 200_000;
/// Ids an instance's user namespace maps.
pub const USERNS_SIZE: u32 = 65_536;

/// How this node networks its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceNetwork {
    /// A network namespace each on a node-local bridge.
    Isolated {
        subnet: ipnet::Ipv4Net,
        egress: bool,
        cni_bin_dir: Option<PathBuf>,
    },
    /// Development only: the node's network, host ports from this range.
    Host { ports: (u16, u16) },
}

/// Resolved, validated node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub advertise: String,
    /// Where other nodes reach this node's mesh, and its hop listener.
    pub advertise_http: String,
    pub advertise_hop: String,
    pub bootstrap: bool,
    pub join: Option<String>,
    pub join_token: Option<crate::tls::JoinToken>,
    pub insecure: bool,
    pub containerd: PathBuf,
    pub containerd_namespace: String,
    pub insecure_registries: Vec<String>,
    pub zone: String,
    pub region: String,
    pub cpu_capacity_mvcpu: u32,
    pub memory_capacity_mb: u32,
    pub base_domain: String,
    pub scale_cap: u32,
    pub snapshot_logs: u64,
    pub heartbeat_ms: u64,
    /// How long voters wait without a leader before one stands (and for
    /// how long after a leader's heartbeat they refuse other candidates).
    pub election_timeout_ms: u64,
    /// How often API key use is written to the state.
    pub key_use_report: std::time::Duration,
    pub log: String,
    pub log_format: crate::trace::LogFormat,
    /// Whether this node meters its instances' usage.
    pub metering: bool,
    /// OTLP/gRPC collector for traces; `None`: off.
    pub otlp_endpoint: Option<String>,
    /// Where other nodes' hops arrive (mutual TLS).
    pub hop: SocketAddr,
    /// Where the Prometheus metrics are served.
    pub metrics: SocketAddr,
    /// Remove the instance network and exit.
    pub remove_instance_network: bool,
    pub instance_network: InstanceNetwork,
    /// Base of instances' user namespaces; `None`: no user namespace.
    pub userns_base: Option<u32>,
    pub stop_grace: std::time::Duration,
    pub image_gc_after: std::time::Duration,
    pub log_retention: std::time::Duration,
    pub image_limits: crate::runtime::image::Limits,
    pub registry_auth: Option<PathBuf>,
    pub autoscale_window: std::time::Duration,
    /// Zero: never suspend.
    pub suspend_after: std::time::Duration,
    pub node_grace: std::time::Duration,
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_api_connections: usize,
    pub overcommit: f64,
    /// Zero: one proposal per scheduling pass.
    pub placement_batch: usize,
    #[cfg(feature = "sabotage")]
    pub sabotage_stale_reads: bool,
    pub master_key_file: PathBuf,
}

impl NodeConfig {
    /// Merges flags/env over the file over defaults, then validates.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let args = merge(args)?;
        let id = args
            .id
            .ok_or_else(|| invalid("id", "is required (--id N, N >= 1)"))?;
        if id == 0 {
            return Err(invalid("id", "must be at least 1"));
        }
        let data_dir = args
            .data_dir
            .ok_or_else(|| invalid("data_dir", "is required (--data-dir DIR)"))?;
        let listen_s = args.listen.unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_s:?} is not an IP:PORT address to bind"),
            )
        })?;
        let http_s = args.http.unwrap_or_else(|| "127.0.0.1:8080".into());
        let http: SocketAddr = http_s.parse().map_err(|_| {
            invalid(
                "http",
                format!("{http_s:?} is not an IP:PORT address to bind"),
            )
        })?;
        let advertise = match args.advertise {
            Some(a) => {
                dialable("advertise", &a)?;
                a
            }
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    "is required when --listen binds all addresses",
                ))
            }
            None => listen.to_string(),
        };
        let bootstrap = args.bootstrap;
        let join = args.join;
        if let Some(j) = &join {
            host_port("join", j)?;
            if bootstrap {
                return Err(invalid("join", "cannot be combined with --bootstrap"));
            }
        }
        let join_token = match args.join_token {
            Some(t) => Some(crate::tls::JoinToken::parse(&t).map_err(|e| {
                invalid(
                    "join_token",
                    e.to_string().trim_start_matches("join_token: ").to_string(),
                )
            })?),
            None => None,
        };
        let insecure = args.insecure;
        let containerd_namespace = args.containerd_namespace.unwrap_or_else(|| "rouse".into());
        if containerd_namespace.is_empty()
            || !containerd_namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "containerd_namespace",
                format!("{containerd_namespace:?} must be letters, digits, '-', '_' or '.'"),
            ));
        }
        let insecure_registries = args.insecure_registry;
        for r in &insecure_registries {
            host_port("insecure_registry", r)?;
        }
        let zone = args.zone.unwrap_or_else(|| "default".into());
        let region = args.region.unwrap_or_else(|| "default".into());
        label("zone", &zone)?;
        label("region", &region)?;
        let cpu_capacity_mvcpu = args.cpu_capacity.unwrap_or_else(default_cpu);
        if cpu_capacity_mvcpu < 100 {
            return Err(invalid(
                "cpu_capacity",
                format!("{cpu_capacity_mvcpu} mVCPU is below the minimum 100 mVCPU"),
            ));
        }
        let memory_capacity_mb = args.memory_capacity.unwrap_or_else(default_memory);
        if memory_capacity_mb < 64 {
            return Err(invalid(
                "memory_capacity",
                format!("{memory_capacity_mb} MB is below the minimum 64 MB"),
            ));
        }
        let base_domain = args.base_domain.unwrap_or_else(|| "rouse.localhost".into());
        for part in base_domain.split('.') {
            crate::state::validate::dns_label("base_domain", part).map_err(|e| {
                invalid(
                    "base_domain",
                    format!("{base_domain:?}: each part {}", e.rule),
                )
            })?;
        }
        let log_format = match &args.log_format {
            Some(v) => crate::trace::LogFormat::parse(v).map_err(|e| invalid("log_format", e))?,
            None => Default::default(),
        };
        let metering = match args.metering.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(invalid("metering", format!("{other:?} is not on or off"))),
        };
        let otlp_endpoint = args.otlp_endpoint.clone();
        if let Some(v) = &otlp_endpoint {
            crate::trace::check_endpoint(v).map_err(|e| invalid("otlp_endpoint", e))?;
        }
        let scale_cap = args.scale_cap.unwrap_or(DEFAULT_SCALE_CAP);
        if !(1..=1000).contains(&scale_cap) {
            return Err(invalid(
                "scale_cap",
                format!("{scale_cap} is outside 1..=1000"),
            ));
        }
        let snapshot_logs = args.snapshot_logs.unwrap_or(5000);
        if snapshot_logs < 10 {
            return Err(invalid(
                "snapshot_logs",
                format!("{snapshot_logs} is below the minimum 10"),
            ));
        }
        let key_use_report = duration("key_use_report", args.key_use_report.clone(), "60s")?;
        // openraft gives an AppendEntries one heartbeat to finish: shorter
        // heartbeats starve a follower catching up on a loaded machine.
        let heartbeat_ms = args.heartbeat_ms.unwrap_or(150);
        if !(20..=5000).contains(&heartbeat_ms) {
            return Err(invalid(
                "heartbeat_ms",
                format!("{heartbeat_ms} is outside 20..=5000"),
            ));
        }
        let election_timeout_ms = args
            .election_timeout_ms
            .unwrap_or((heartbeat_ms * 3).max(500));
        if election_timeout_ms < heartbeat_ms * 3 || election_timeout_ms > 60_000 {
            return Err(invalid(
                "election_timeout_ms",
                format!(
                    "{election_timeout_ms} must be at least 3 heartbeats ({}) and at most 60000",
                    heartbeat_ms * 3
                ),
            ));
        }
        let hop = match &args.hop {
            Some(h) => h
                .parse()
                .map_err(|_| invalid("hop", format!("{h:?} is not an IP:PORT address to bind")))?,
            None => SocketAddr::new(
                http.ip(),
                http.port()
                    .checked_add(1)
                    .ok_or_else(|| invalid("hop", "is required when --http's port is 65535"))?,
            ),
        };
        if hop == http || hop == listen {
            return Err(invalid(
                "hop",
                format!("{hop} is already --http's or --listen's address"),
            ));
        }
        let metrics = match &args.metrics {
            Some(m) => m.parse().map_err(|_| {
                invalid(
                    "metrics",
                    format!("{m:?} is not an IP:PORT address to bind"),
                )
            })?,
            None => SocketAddr::new(
                std::net::IpAddr::from([127, 0, 0, 1]),
                http.port().checked_add(2).ok_or_else(|| {
                    invalid("metrics", "is required when --http's port is above 65533")
                })?,
            ),
        };
        if [http, listen, hop].contains(&metrics) {
            return Err(invalid(
                "metrics",
                format!("{metrics} is already --http's, --listen's or --hop's address"),
            ));
        }
        let advertise_http = match &args.advertise_http {
            Some(a) => {
                dialable("advertise_http", a)?;
                a.clone()
            }
            None => {
                let host = advertise.rsplit_once(':').map_or("", |(h, _)| h);
                let a = format!("{host}:{}", http.port());
                dialable("advertise_http", &a)?;
                a
            }
        };
        let advertise_hop = {
            let host = advertise_http.rsplit_once(':').map_or("", |(h, _)| h);
            format!("{host}:{}", hop.port())
        };
        let ports_s = args
            .instance_ports
            .clone()
            .unwrap_or_else(|| "20000-29999".into());
        let instance_ports = ports_s
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| *a >= 1024 && a <= b)
            .ok_or_else(|| {
                invalid(
                    "instance_ports",
                    format!("{ports_s:?} is not LO-HI with 1024 <= LO <= HI <= 65535"),
                )
            })?;
        let mode = args.instance_network.as_deref().unwrap_or("isolated");
        if mode != "host" && args.instance_ports.is_some() {
            return Err(invalid(
                "instance_ports",
                "applies only with --instance-network host (isolated instances listen on their own address)",
            ));
        }
        if mode == "host" {
            for (field, set) in [
                ("instance_subnet", args.instance_subnet.is_some()),
                ("instance_egress", args.instance_egress.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        "applies only with --instance-network isolated",
                    ));
                }
            }
        }
        let instance_network = match mode {
            "host" => InstanceNetwork::Host {
                ports: instance_ports,
            },
            "isolated" => {
                let subnet = match &args.instance_subnet {
                    Some(s) => crate::runtime::network::plan::check_subnet(s)
                        .map_err(|e| invalid("instance_subnet", e))?,
                    None => crate::runtime::network::plan::default_subnet(id),
                };
                let egress = match args.instance_egress.as_deref().unwrap_or("allow") {
                    "allow" => true,
                    "deny" => false,
                    other => {
                        return Err(invalid(
                            "instance_egress",
                            format!("{other:?} is neither allow nor deny"),
                        ))
                    }
                };
                InstanceNetwork::Isolated {
                    subnet,
                    egress,
                    cni_bin_dir: args.cni_bin_dir.clone(),
                }
            }
            other => {
                return Err(invalid(
                    "instance_network",
                    format!("{other:?} is neither isolated nor host"),
                ))
            }
        };
        let userns_base = match args.userns_base.unwrap_or(DEFAULT_USERNS_BASE) {
            0 => None,
            b if b < 65_536 => {
                return Err(invalid(
                    "userns_base",
                    format!("{b} would map instances onto the node's own users; use 65536 or more (or 0 for none)"),
                ))
            }
            b if b.checked_add(USERNS_SIZE).is_none() => {
                return Err(invalid("userns_base", format!("{b} leaves no room for 65536 ids")))
            }
            b => Some(b),
        };
        let stop_grace = duration("stop_grace", args.stop_grace, "10s")?;
        let image_gc_after = duration("image_gc_after", args.image_gc_after, "10m")?;
        let log_retention = duration("log_retention", args.log_retention.clone(), "1h")?;
        let image_limits = crate::runtime::image::Limits {
            manifest_bytes: args.max_manifest_bytes.unwrap_or(4 << 20),
            config_bytes: args.max_config_bytes.unwrap_or(4 << 20),
            layer_bytes: args.max_layer_bytes.unwrap_or(4 << 30),
        };
        for (field, v) in [
            ("max_manifest_bytes", image_limits.manifest_bytes),
            ("max_config_bytes", image_limits.config_bytes),
            ("max_layer_bytes", image_limits.layer_bytes),
        ] {
            if v < 1024 {
                return Err(invalid(field, format!("{v} is below the minimum 1024")));
            }
        }
        let autoscale_window = duration("autoscale_window", args.autoscale_window, "60s")?;
        if autoscale_window < std::time::Duration::from_secs(2) {
            return Err(invalid("autoscale_window", "must be at least 2s"));
        }
        let suspend_after = duration("suspend_after", args.suspend_after, "30s")?;
        let node_grace = duration("node_grace", args.node_grace, "3s")?;
        if node_grace < std::time::Duration::from_secs(1) {
            return Err(invalid("node_grace", "must be at least 1s"));
        }
        let header_timeout = duration("header_timeout", args.header_timeout, "30s")?;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600))
            .contains(&header_timeout)
        {
            return Err(invalid("header_timeout", "must be between 1s and 10m"));
        }
        let max_api_connections = args.max_api_connections.unwrap_or(4096);
        if max_api_connections == 0 {
            return Err(invalid("max_api_connections", "must be at least 1"));
        }
        let max_connections = args.max_connections.unwrap_or(16_384);
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let overcommit = args.overcommit.unwrap_or(1.0);
        if !(1.0..=10.0).contains(&overcommit) {
            return Err(invalid(
                "overcommit",
                format!("{overcommit} is outside 1.0..=10.0"),
            ));
        }
        let master_key_file = args
            .master_key_file
            .unwrap_or_else(|| data_dir.join("master.key"));
        Ok(NodeConfig {
            master_key_file,
            #[cfg(feature = "sabotage")]
            sabotage_stale_reads: args.sabotage_stale_reads,
            placement_batch: args.placement_batch.unwrap_or(0),
            node_grace,
            header_timeout,
            max_connections,
            max_api_connections,
            overcommit,
            suspend_after,
            autoscale_window,
            hop,
            metrics,
            remove_instance_network: args.remove_instance_network,
            instance_network,
            userns_base,
            stop_grace,
            image_gc_after,
            log_retention,
            image_limits,
            registry_auth: args.registry_auth,
            id,
            data_dir,
            listen,
            http,
            advertise,
            advertise_http,
            advertise_hop,
            bootstrap,
            join,
            join_token,
            insecure,
            containerd: args
                .containerd
                .unwrap_or_else(|| "/run/containerd/containerd.sock".into()),
            containerd_namespace,
            insecure_registries,
            zone,
            region,
            cpu_capacity_mvcpu,
            memory_capacity_mb,
            base_domain,
            scale_cap,
            snapshot_logs,
            heartbeat_ms,
            election_timeout_ms,
            key_use_report,
            log: args.log.unwrap_or_else(|| "info,openraft=warn".into()),
            log_format,
            metering,
            otlp_endpoint,
        })
    }
}

/// Flags and env vars over the `--config` file: one figment, extracted
/// into the same struct (unknown file keys are refused).
fn merge(args: Args) -> Result<Args, ConfigError> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(ConfigError::File {
            path: shown,
            message: "No such file or directory (os error 2)".into(),
        });
    }
    Figment::from(Toml::file_exact(&path))
        .merge(Serialized::defaults(args))
        .extract()
        .map_err(|e| ConfigError::File {
            path: shown,
            message: e.to_string(),
        })
}

fn duration(
    field: &'static str,
    v: Option<String>,
    default: &str,
) -> Result<std::time::Duration, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&s).map_err(|e| {
        invalid(
            field,
            format!("{s:?} is not a duration such as 10s or 5m ({e})"),
        )
    })
}

fn host_port(field: &'static str, v: &str) -> Result<(), ConfigError> {
    let rule = || invalid(field, format!("{v:?} is not HOST:PORT"));
    let (host, port) = v.rsplit_once(':').ok_or_else(rule)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(rule());
    }
    Ok(())
}

/// HOST:PORT that another machine can dial: not an unspecified address.
fn dialable(field: &'static str, v: &str) -> Result<(), ConfigError> {
    host_port(field, v)?;
    let host = v.rsplit_once(':').map_or(v, |(h, _)| h);
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(invalid(
            field,
            format!("{v:?} names no particular address; other nodes cannot dial it"),
        ));
    }
    Ok(())
}

fn label(field: &'static str, v: &str) -> Result<(), ConfigError> {
    crate::state::validate::dns_label(field, v).map_err(|e| invalid(field, e.rule))
}

fn default_cpu() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 1000).unwrap_or(u32::MAX)
}

fn default_memory() -> u32 {
    let kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .unwrap_or(1024 * 1024);
    u32::try_from(kb / 1024).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
