//! Calling CNI plugins (the standard `bridge` with `host-local` IPAM): the
//! calling side of the CNI protocol is an exec of the plugin with `CNI_*`
//! environment variables and the network configuration on stdin; the
//! result (or a CNI error) comes back as JSON on stdout. No maintained Rust
//! library does only this (the ones published enter namespaces in-process
//! and read /etc/cni), so it is done here, in a few lines.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::plan::Plan;
use crate::runtime::RuntimeError;

/// The interface an instance sees.
pub const IFNAME: &str = "eth0";

/// What ADD answers (the parts rouse uses).
#[derive(Debug, Clone, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Interface {
    pub name: String,
    /// Set for the interface inside the namespace.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpConfig {
    /// `10.88.1.2/24`.
    pub address: String,
}

#[derive(Debug, Deserialize)]
struct CniError {
    code: u32,
    msg: String,
    #[serde(default)]
    details: String,
}

impl AddResult {
    /// The instance's address.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ips
            .iter()
            .find_map(|c| c.address.split('/').next()?.parse().ok())
    }

    /// The host end of the instance's veth pair.
    pub fn host_veth(&self, bridge: &str) -> Option<String> {
        self.interfaces
            .iter()
            .find(|i| i.sandbox.is_none() && i.name != bridge)
            .map(|i| i.name.clone())
    }
}

/// One node's CNI network.
#[derive(Debug, Clone)]
pub struct Cni {
    pub bin_dir: PathBuf,
    /// Where host-local keeps its allocations.
    pub ipam_dir: PathBuf,
    pub plan: Plan,
}

impl Cni {
    /// The network configuration every call gets. Masquerading is the
    /// node's (one rule for the subnet), not per instance.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.plan.network_name(),
            "type": "bridge",
            "bridge": self.plan.bridge(),
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": self.plan.subnet.to_string(),
                    "gateway": self.plan.gateway().to_string(),
                }]],
                // The default route through the node (the firewall decides
                // whether anything beyond it is reachable).
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir.display().to_string(),
            }
        })
    }

    async fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
    ) -> Result<Vec<u8>, RuntimeError> {
        let plugin = self.bin_dir.join("bridge");
        let mut child = tokio::process::Command::new(&plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                RuntimeError::Network(format!("cni: running {}: {e}", plugin.display()))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(self.config().to_string().as_bytes())
                .await?;
        }
        let out = child.wait_with_output().await?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let why = match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(e) if e.details.is_empty() => format!("{} (code {})", e.msg, e.code),
            Ok(e) => format!("{}: {} (code {})", e.msg, e.details, e.code),
            Err(_) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        Err(RuntimeError::Network(format!("cni {command}: {why}")))
    }

    /// Connects the namespace at `netns` (for `container_id`) to the bridge.
    pub async fn add(&self, container_id: &str, netns: &Path) -> Result<AddResult, RuntimeError> {
        let out = self
            .call("ADD", container_id, &netns.display().to_string())
            .await?;
        serde_json::from_slice(&out)
            .map_err(|e| RuntimeError::Network(format!("cni ADD: unreadable result: {e}")))
    }

    /// Releases what ADD gave `container_id` (its address); its namespace
    /// may be gone already (the veth went with it).
    pub async fn del(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.call("DEL", container_id, "").await.map(|_| ())
    }

    /// Container ids holding an address, read from host-local's store
    /// (a file per address, holding the id).
    pub fn allocations(&self) -> Vec<(String, Ipv4Addr)> {
        self.records()
            .into_iter()
            .map(|(id, ip, _)| (id, ip))
            .collect()
    }

    /// The store's record of `container_id`'s address, if it has one.
    pub fn allocation_file(&self, container_id: &str) -> Option<PathBuf> {
        self.records()
            .into_iter()
            .find(|(id, _, _)| id == container_id)
            .map(|(_, _, path)| path)
    }

    fn records(&self) -> Vec<(String, Ipv4Addr, PathBuf)> {
        let dir = self.ipam_dir.join(self.plan.network_name());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                let id = text.lines().next()?.trim().to_string();
                Some((id, ip, e.path()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::network::plan::default_subnet;

    #[test]
    fn the_result_gives_the_address_and_the_host_veth() {
        let r: AddResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"rz0a580100","mac":"x"},
            {"name":"veth1234","mac":"y"},{"name":"eth0","mac":"z","sandbox":"/proc/9/ns/net"}],
            "ips":[{"interface":2,"address":"10.88.1.5/24","gateway":"10.88.1.1"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.ip(), Some(Ipv4Addr::new(10, 88, 1, 5)));
        assert_eq!(r.host_veth("rz0a580100").as_deref(), Some("veth1234"));
    }

    #[test]
    fn the_config_names_the_subnet_bridge_and_store() {
        let cni = Cni {
            bin_dir: "/usr/lib/cni".into(),
            ipam_dir: "/d/cni".into(),
            plan: Plan {
                subnet: default_subnet(1),
                egress: true,
                mesh_port: 80,
            },
        };
        let c = cni.config();
        assert_eq!(c["bridge"], "rz0a580100");
        assert_eq!(c["ipMasq"], false);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.88.1.0/24");
        assert_eq!(c["ipam"]["dataDir"], "/d/cni");
        assert_eq!(c["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
    }
}
