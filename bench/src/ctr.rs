//! The baseline: containers started by containerd's own `ctr` on the same
//! containerd, either on the host network or in a network namespace of
//! their own connected by the same CNI plugins and configuration rouse
//! uses (`bridge` + `host-local`), and timed to their first HTTP 200.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `ctr` in one containerd namespace.
pub struct Ctr {
    sock: String,
    ns: String,
}

/// How a baseline container is networked.
pub enum Net<'a> {
    /// `ctr run --net-host`, listening on a free host port.
    Host,
    /// `ctr run --cni` with this configuration installed.
    Cni(&'a CniConf),
}

impl Net<'_> {
    pub fn label(&self) -> &'static str {
        match self {
            Net::Host => "ctr run --net-host",
            Net::Cni(_) => "ctr run --cni",
        }
    }
}

impl Ctr {
    pub fn new(sock: &str, ns: &str) -> Self {
        Ctr {
            sock: sock.to_string(),
            ns: ns.to_string(),
        }
    }

    /// Runs `ctr ARGS`; fails with its stderr unless it succeeds.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new("ctr")
            .args(["--address", &self.sock, "-n", &self.ns])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    pub fn pull(&self, image: &str) -> anyhow::Result<()> {
        self.run(&["images", "pull", "--plain-http", image])
            .map(|_| ())
    }

    /// Starts `image` as container `name` and waits for its first 200;
    /// returns the time from `ctr run` to that answer, in ms.
    pub async fn start_to_200(
        &self,
        image: &str,
        name: &str,
        net: &Net<'_>,
    ) -> anyhow::Result<f64> {
        let t = Instant::now();
        let addr = match net {
            Net::Host => {
                let port = crate::free_port();
                self.run(&[
                    "run",
                    "-d",
                    "--net-host",
                    "--env",
                    &format!("PORT={port}"),
                    image,
                    name,
                ])?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            Net::Cni(conf) => {
                self.run(&["run", "-d", "--cni", "--env", "PORT=8080", image, name])?;
                // ctr names the CNI attachment `<namespace>-<container>`.
                let ip = conf
                    .address_of(&format!("{}-{name}", self.ns))
                    .ok_or_else(|| anyhow::anyhow!("ctr run --cni gave {name} no address"))?;
                SocketAddr::from((ip, 8080))
            }
        };
        first_200(addr, Duration::from_secs(60)).await?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }

    /// Kills and removes container `name` (its CNI network goes with it).
    pub async fn remove(&self, name: &str) {
        let _ = self.run(&["tasks", "kill", "-s", "SIGKILL", name]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.run(&["tasks", "rm", "-f", name]);
        let _ = self.run(&["containers", "rm", name]);
    }
}

/// Polls http://addr/ until it answers 200.
pub async fn first_200(addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            if s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .is_ok()
            {
                let mut buf = [0u8; 16];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"HTTP/1.0 200")
                        || buf[..n].starts_with(b"HTTP/1.1 200")
                    {
                        return Ok(());
                    }
                }
            }
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "no 200 from {addr} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ctr run --cni` reads its network from /etc/cni/net.d and its plugins
/// from /opt/cni/bin: this installs a configuration there (the bridge and
/// host-local plugins as rouse configures them, on a bridge and subnet of
/// the benchmark's own) and removes it, and whatever it had to create, on
/// drop.
pub struct CniConf {
    conf_file: PathBuf,
    made: Vec<PathBuf>,
    ipam: tempfile::TempDir,
    bridge: String,
}

const NETWORK: &str = "rouse-bench-ctr";

impl CniConf {
    pub fn install(plugins: &Path) -> anyhow::Result<Self> {
        let mut made = Vec::new();
        let conf_dir = Path::new("/etc/cni/net.d");
        let bin = Path::new("/opt/cni/bin");
        for dir in ["/etc/cni", "/etc/cni/net.d", "/opt/cni"] {
            let dir = Path::new(dir);
            if !dir.exists() {
                std::fs::create_dir(dir)?;
                made.push(dir.to_path_buf());
            }
        }
        if !bin.join("bridge").exists() {
            anyhow::ensure!(
                !bin.exists(),
                "{} exists without the bridge plugin",
                bin.display()
            );
            std::os::unix::fs::symlink(plugins, bin)?;
            made.push(bin.to_path_buf());
        }
        let ipam = tempfile::tempdir()?;
        let bridge = "ctrbench0".to_string();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.87.0.0/24", "gateway": "10.87.0.1" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam.path().display().to_string(),
                }
            }]
        });
        // Sorted first, so ctr picks it over any other network there.
        let conf_file = conf_dir.join("00-rouse-bench.conflist");
        std::fs::write(&conf_file, serde_json::to_vec_pretty(&conf)?)?;
        Ok(CniConf {
            conf_file,
            made,
            ipam,
            bridge,
        })
    }

    /// The address host-local gave container `id`.
    fn address_of(&self, id: &str) -> Option<Ipv4Addr> {
        let dir = self.ipam.path().join(NETWORK);
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
            let holder = std::fs::read_to_string(e.path()).ok()?;
            (holder.lines().next()?.trim() == id).then_some(ip)
        })
    }
}

impl Drop for CniConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf_file);
        for p in self.made.iter().rev() {
            let _ = if p.is_symlink() {
                std::fs::remove_file(p)
            } else {
                std::fs::remove_dir(p)
            };
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
