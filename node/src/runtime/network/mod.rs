//! Instance networks: a network namespace per instance, connected to a
//! node-local bridge by the standard CNI `bridge` plugin with `host-local`
//! addresses, the bridge's ports isolated from each other, and a firewall
//! that lets instances reach the node only at its public mesh.
//!
//! ```text
//!  node start: bridge rz<tag> (gateway = subnet's .1) ─▶ firewall chains (firewall.rs)
//!  instance:   task created (runc makes its netns, owned by the instance's
//!              user namespace) ─▶ CNI ADD on /proc/<pid>/ns/net ─▶ isolate its
//!              bridge port ─▶ task started, listening on <ip>:<port>
//!  gone:       task removed (its netns and veth go with it) ─▶ CNI DEL (address freed)
//!  every pass: addresses held by no known instance ─▶ CNI DEL
//! ```
//!
//! - [`plan`]: subnet, bridge, gateway, names (pure).
//! - [`cni`]: calling the plugins.
//! - [`firewall`]: the iptables rules (pure) and applying them.

pub mod cni;
pub mod firewall;
pub mod plan;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use self::cni::Cni;
use self::plan::Plan;
use super::RuntimeError;

/// An instance's place on the node's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub ip: Ipv4Addr,
}

/// A node's isolated instance network.
pub struct Networks {
    cni: Cni,
}

async fn run(cmd: &str, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
    tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RuntimeError::Network(format!("{cmd}: {e}")))
}

async fn must(cmd: &str, args: &[&str]) -> Result<(), RuntimeError> {
    let out = run(cmd, args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Network(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Isolates a bridge port: it may talk to the bridge (the node) but not to
/// the bridge's other ports (other instances). The kernel's sysfs knob,
/// with `bridge link` as the fallback where sysfs is read-only.
async fn isolate_port(veth: &str) -> Result<(), RuntimeError> {
    let knob = format!("/sys/class/net/{veth}/brport/isolated");
    if tokio::fs::write(&knob, b"1").await.is_ok() {
        return Ok(());
    }
    must("bridge", &["link", "set", "dev", veth, "isolated", "on"]).await
}

/// Where the standard CNI plugins are: `dir` if given, else Debian's
/// `/usr/lib/cni`, else `/opt/cni/bin`.
pub fn find_plugins(dir: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let candidates: Vec<PathBuf> = match dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
    };
    candidates
        .into_iter()
        .find(|d| d.join("bridge").exists() && d.join("host-local").exists())
        .ok_or_else(|| {
            RuntimeError::Network(
                "cni_bin_dir: no CNI bridge and host-local plugins found (install \
                 containernetworking-plugins, or give --cni-bin-dir)"
                    .into(),
            )
        })
}

impl Networks {
    pub fn new(plan: Plan, bin_dir: PathBuf, ipam_dir: PathBuf) -> Self {
        Networks {
            cni: Cni {
                bin_dir,
                ipam_dir,
                plan,
            },
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.cni.plan
    }

    /// Sets the node up: the bridge with the gateway address, forwarding,
    /// the firewall. Idempotent.
    pub async fn prepare_node(&self) -> Result<(), RuntimeError> {
        let plan = self.plan();
        let br = plan.bridge();
        let exists = run("ip", &["link", "show", &br]).await?.status.success();
        if !exists {
            must("ip", &["link", "add", &br, "type", "bridge"]).await?;
        }
        // No IPv6 on the bridge: the firewall is IPv4, so instances must not
        // reach the node over a link-local IPv6 address either.
        let v6 = format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6");
        if std::path::Path::new(&v6).exists() {
            tokio::fs::write(&v6, b"1")
                .await
                .map_err(|e| RuntimeError::Network(format!("disabling IPv6 on {br}: {e}")))?;
        }
        // A fixed address: see `Plan::bridge_mac`.
        must(
            "ip",
            &["link", "set", "dev", &br, "address", &plan.bridge_mac()],
        )
        .await?;
        let addr = format!("{}/{}", plan.gateway(), plan.subnet.prefix_len());
        must("ip", &["addr", "replace", &addr, "dev", &br]).await?;
        must("ip", &["link", "set", &br, "up"]).await?;
        tokio::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
            .await
            .map_err(|e| RuntimeError::Network(format!("enabling IPv4 forwarding: {e}")))?;
        firewall::apply(plan).await
    }

    /// Undoes [`Self::prepare_node`] for a node that leaves for good: the
    /// firewall, the bridge and the address store (its instances must be
    /// gone).
    pub async fn remove_node(&self) -> Result<(), RuntimeError> {
        firewall::remove(self.plan()).await?;
        let br = self.plan().bridge();
        if run("ip", &["link", "show", &br]).await?.status.success() {
            must("ip", &["link", "del", &br]).await?;
        }
        let _ = tokio::fs::remove_dir_all(&self.cni.ipam_dir).await;
        Ok(())
    }

    /// Connects the network namespace of the process `pid` (the instance's
    /// task, created but not started) and isolates its bridge port.
    pub async fn attach(&self, id: &str, pid: u32) -> Result<Attached, RuntimeError> {
        // A previous incarnation's address is released first.
        if self.address_of(id).is_some() {
            self.cni.del(id).await?;
        }
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let r = self.cni.add(id, &netns).await?;
        let ip = r
            .ip()
            .ok_or_else(|| RuntimeError::Network("cni ADD gave no address".into()))?;
        let veth = r.host_veth(&self.plan().bridge()).ok_or_else(|| {
            RuntimeError::Network("cni ADD named no host interface to isolate".into())
        })?;
        isolate_port(&veth).await?;
        Ok(Attached { ip })
    }

    /// Releases an instance's address (its namespace went with its task).
    pub async fn detach(&self, id: &str) -> Result<(), RuntimeError> {
        self.cni.del(id).await
    }

    /// The address an instance holds, if any (e.g. one adopted after a
    /// restart of this node).
    pub fn address_of(&self, id: &str) -> Option<Ipv4Addr> {
        self.cni
            .allocations()
            .into_iter()
            .find(|(c, _)| c == id)
            .map(|(_, ip)| ip)
    }

    /// Releases addresses held by no instance in `known` (left by a crash
    /// of this node mid-start or mid-stop).
    pub async fn release_orphans(&self, known: &BTreeSet<String>) -> Vec<String> {
        let mut freed = Vec::new();
        for (id, _) in self.cni.allocations() {
            if known.contains(&id) {
                continue;
            }
            if let Err(e) = self.cni.del(&id).await {
                tracing::warn!(instance = %id, error = %e, "releasing an orphan address");
                continue;
            }
            // DEL matches the holder's exact record; one it does not
            // recognise (damaged, or written by another tool) would stay
            // reserved for ever, so its file goes.
            if let Some(path) = self.cni.allocation_file(&id) {
                tracing::warn!(instance = %id, file = %path.display(), "the address store kept an orphan record after DEL; removing it");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(instance = %id, error = %e, "removing an orphan address record");
                    continue;
                }
            }
            freed.push(id);
        }
        freed
    }
}
