//! A userspace fault proxy in front of each node's peer port (`tc netem`
//! is not available here). Nodes connect to each other from their own
//! loopback address, so the proxy knows which node a connection comes
//! from and can cut, delay or drop the link between any two nodes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The network's fault state, shared by every proxy.
#[derive(Default)]
pub struct Net {
    /// Directed links (from node, to node) that drop everything.
    cut: Mutex<HashSet<(u64, u64)>>,
    /// Added one-way latency per destination node.
    delay: Mutex<HashMap<u64, Duration>>,
    /// Bumped on every change so open connections re-check their link.
    epoch: Mutex<Option<watch::Sender<u64>>>,
    ip_to_node: Mutex<HashMap<IpAddr, u64>>,
}

impl Net {
    pub fn new() -> Arc<Self> {
        let (tx, _) = watch::channel(0);
        let n = Net::default();
        *n.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Arc::new(n)
    }

    pub fn register(&self, ip: IpAddr, node: u64) {
        self.ip_to_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, node);
    }

    fn bump(&self) {
        if let Some(tx) = self
            .epoch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            tx.send_modify(|e| *e += 1);
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        match self
            .epoch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(tx) => tx.subscribe(),
            None => watch::channel(0).1,
        }
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        for x in a {
            for y in b {
                cut.insert((*x, *y));
                cut.insert((*y, *x));
            }
        }
        drop(cut);
        self.bump();
    }

    pub fn set_delay(&self, node: u64, d: Duration) {
        self.delay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, d);
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.delay.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.bump();
    }

    fn is_cut(&self, from: Option<u64>, to: u64) -> bool {
        from.is_some_and(|f| {
            self.cut
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&(f, to))
        })
    }

    fn delay_of(&self, to: u64) -> Duration {
        self.delay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .copied()
            .unwrap_or_default()
    }
}

/// Accepts on `listener` and forwards to `target` (node `to`) while the
/// link from the connecting node is not cut.
pub async fn run(net: Arc<Net>, listener: TcpListener, target: SocketAddr, to: u64) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            continue;
        };
        let from = net
            .ip_to_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer.ip())
            .copied();
        if net.is_cut(from, to) {
            continue; // dropped: the connection closes at once
        }
        let net = net.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let mut epoch = net.subscribe();
            let a = pump(ri, wo, net.clone(), to);
            let b = pump(ro, wi, net.clone(), to);
            let watch_cut = async {
                loop {
                    if epoch.changed().await.is_err() {
                        return;
                    }
                    if net.is_cut(from, to) {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = a => {}
                _ = b => {}
                _ = watch_cut => {}
            }
        });
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    net: Arc<Net>,
    to: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = net.delay_of(to);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
