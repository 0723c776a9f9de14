//! What the isolation tests read of the node's network: every TCP listener
//! in the node's network namespace and who holds it, the node's addresses,
//! and one node's instance network (bridge ports, address allocations,
//! firewall rules, the processes of an instance).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A TCP listener and the processes holding its socket.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
    /// (pid, command name) of every process with the socket open.
    pub owners: Vec<(i32, String)>,
}

/// Every TCP listener (IPv4 and IPv6) in this process's network namespace
/// (the node's), read from /proc/net/tcp{,6}, with its owners.
pub fn listeners() -> Vec<Listener> {
    use procfs::net::TcpState;
    let mut entries = procfs::net::tcp().unwrap_or_default();
    entries.extend(procfs::net::tcp6().unwrap_or_default());
    let mut owners: std::collections::HashMap<u64, Vec<(i32, String)>> = Default::default();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            let comm = p.stat().map(|s| s.comm).unwrap_or_default();
            let Ok(fds) = p.fd() else { continue };
            for fd in fds.flatten() {
                if let procfs::process::FDTarget::Socket(inode) = fd.target {
                    owners.entry(inode).or_default().push((p.pid, comm.clone()));
                }
            }
        }
    }
    entries
        .into_iter()
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| Listener {
            addr: e.local_address,
            inode: e.inode,
            owners: owners.remove(&e.inode).unwrap_or_default(),
        })
        .collect()
}

/// The node's IPv4 addresses (every interface of this namespace) with
/// their interfaces.
pub fn node_ipv4_addresses() -> Vec<(String, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ifname = f.nth(1)?.to_string();
            f.position(|w| w == "inet")?;
            Some((ifname, f.next()?.split('/').next()?.parse().ok()?))
        })
        .collect()
}

/// Pids of the processes in instance `id`'s cgroup.
pub fn instance_pids(id: &str) -> Vec<i32> {
    let needle = format!("/rouse/{id}");
    procfs::process::all_processes()
        .map(|all| {
            all.flatten()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
                        .is_ok_and(|c| c.lines().any(|l| l.ends_with(&needle)))
                })
                .map(|p| p.pid)
                .collect()
        })
        .unwrap_or_default()
}

/// One node's isolated instance network, by the names rouse-node gives it.
#[derive(Debug, Clone)]
pub struct InstanceNet {
    /// `10.x.y.0/24`.
    pub subnet: String,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    /// The 8-hex-digit tag in the bridge's, chains' and network's names.
    pub tag: String,
    /// Where its address allocations are kept.
    pub ipam_dir: PathBuf,
}

impl InstanceNet {
    pub fn new(subnet: &str, data_dir: &Path) -> Self {
        let network: Ipv4Addr = subnet
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an IPv4 subnet");
        let tag = format!("{:08x}", u32::from(network));
        InstanceNet {
            subnet: subnet.to_string(),
            bridge: rouse_testkit::network::bridge_of(network),
            gateway: Ipv4Addr::from(u32::from(network) + 1),
            ipam_dir: data_dir.join("cni").join(format!("rouse-{tag}")),
            tag,
        }
    }

    pub fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// The bridge's IPv6 addresses (`ip -6 addr`), which must be none.
    pub fn bridge_ipv6(&self) -> String {
        let out = Command::new("ip")
            .args(["-6", "-o", "addr", "show", "dev", &self.bridge])
            .output()
            .expect("ip -6 addr");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Interfaces attached to the bridge: the host ends of instances' veths.
    pub fn veths(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let name = l.split(':').nth(1)?.trim();
                Some(name.split('@').next()?.to_string())
            })
            .collect()
    }

    /// Host ends of veths whose bridge port is not isolated (may talk to
    /// the bridge's other ports directly).
    pub fn unisolated_ports(&self) -> Vec<String> {
        self.veths()
            .into_iter()
            .filter(|v| {
                let out = Command::new("bridge")
                    .args(["-d", "link", "show", "dev", v])
                    .output()
                    .expect("bridge link");
                !String::from_utf8_lossy(&out.stdout).contains("isolated on")
            })
            .collect()
    }

    /// Allocated addresses and the instance holding each (host-local keeps
    /// a file per address).
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = std::fs::read_dir(&self.ipam_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let holder = std::fs::read_to_string(e.path()).ok()?;
                Some((ip, holder.lines().next()?.trim().to_string()))
            })
            .collect()
    }

    /// Every iptables rule (filter and nat tables) that names this network:
    /// its chains, bridge or subnet.
    pub fn rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        for table in ["filter", "nat"] {
            let o = Command::new("iptables")
                .args(["-w", "-t", table, "-S"])
                .output()
                .expect("iptables -S");
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if l.contains(&self.tag) || l.contains(&self.bridge) || l.contains(&self.subnet) {
                    out.push(format!("{table}: {l}"));
                }
            }
        }
        out.sort();
        out
    }
}
