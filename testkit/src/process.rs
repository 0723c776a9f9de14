//! One `rouse-node` process and its incarnations: started on listeners the
//! harness holds, killed, paused, restarted on the same ports.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};

use crate::listener::HeldListener;

/// What a node is started with, every time.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    /// The `rouse-node` binary.
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// Its stderr, appended across incarnations.
    pub log: PathBuf,
    /// The address peers use (default: the API listener's).
    pub advertise: Option<String>,
    /// Flags for every start, after the addresses.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub struct NodeProcess {
    pub spec: NodeSpec,
    /// The gRPC API and peer listener.
    pub api: HeldListener,
    /// The routing mesh listener.
    pub http: HeldListener,
    /// Other nodes' hops.
    pub hop: HeldListener,
    /// Prometheus metrics (always on loopback).
    pub metrics: HeldListener,
    child: Option<Child>,
    paused: bool,
}

/// File descriptors the node finds its listeners on (systemd's protocol).
const FIRST_FD: i32 = 3;

impl NodeProcess {
    /// Binds the node's listeners on `ip`; starts nothing yet.
    pub fn new(spec: NodeSpec, ip: IpAddr) -> io::Result<Self> {
        Ok(NodeProcess {
            api: HeldListener::bind(ip)?,
            http: HeldListener::bind(ip)?,
            hop: HeldListener::bind(ip)?,
            metrics: HeldListener::bind(IpAddr::from([127, 0, 0, 1]))?,
            spec,
            child: None,
            paused: false,
        })
    }

    /// The flags every incarnation gets.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--id".to_string(),
            self.spec.id.to_string(),
            "--data-dir".into(),
            self.spec.data_dir.display().to_string(),
            "--listen".into(),
            self.api.addr().to_string(),
            "--http".into(),
            self.http.addr().to_string(),
            "--hop".into(),
            self.hop.addr().to_string(),
            "--metrics".into(),
            self.metrics.addr().to_string(),
        ];
        if let Some(adv) = &self.spec.advertise {
            a.push("--advertise".into());
            a.push(adv.clone());
        }
        a.extend(self.spec.args.iter().cloned());
        a
    }

    /// Starts an incarnation with `first` added (e.g. `--bootstrap`).
    pub fn start(&mut self, first: &[String]) -> io::Result<()> {
        self.api.open()?;
        self.http.open()?;
        self.hop.open()?;
        self.metrics.open()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)?;
        let mut cmd = Command::new(&self.spec.bin);
        cmd.args(self.args())
            .args(first)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .env("LISTEN_FDS", "4")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: self.api.share()?,
                child_fd: FIRST_FD,
            },
            FdMapping {
                parent_fd: self.http.share()?,
                child_fd: FIRST_FD + 1,
            },
            FdMapping {
                parent_fd: self.hop.share()?,
                child_fd: FIRST_FD + 2,
            },
            FdMapping {
                parent_fd: self.metrics.share()?,
                child_fd: FIRST_FD + 3,
            },
        ])
        .map_err(|e| io::Error::other(format!("fd mapping: {e:?}")))?;
        self.child = Some(cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("spawn {}: {e}", self.spec.bin.display()))
        })?);
        self.paused = false;
        Ok(())
    }

    /// SIGKILLs the node; its ports stay bound by the harness and refuse.
    pub fn kill(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.close_listeners();
    }

    /// SIGTERMs the node and waits for it to stop.
    pub fn terminate(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
        self.signal("-TERM");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.close_listeners();
    }

    /// Kills the node and starts it again from its data dir, same ports.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.start(&[])
    }

    /// SIGSTOPs the node (its sockets stay open, nothing answers).
    pub fn pause(&mut self) {
        if self.child.is_some() && !self.paused {
            self.signal("-STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits up to `patience` for the process to exit on its own: its exit
    /// code, or `None` (it is then killed) if it was still running.
    pub async fn wait_exit(&mut self, patience: std::time::Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        loop {
            let done = match self.child.as_mut() {
                None => return None,
                Some(c) => c.try_wait().ok().flatten(),
            };
            if let Some(status) = done {
                self.child = None;
                self.close_listeners();
                return status.code();
            }
            if start.elapsed() > patience {
                self.kill();
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://` address of the API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.api.addr())
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// Lines of the log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_string)
            .collect()
    }

    fn close_listeners(&mut self) {
        for l in [
            &mut self.api,
            &mut self.http,
            &mut self.hop,
            &mut self.metrics,
        ] {
            if let Err(e) = l.close() {
                eprintln!(
                    "node {}: cannot hold {} while down: {e}",
                    self.spec.id,
                    l.addr()
                );
            }
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
