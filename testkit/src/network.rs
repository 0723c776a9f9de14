//! Instance subnets for test clusters: every node of every cluster a test
//! process starts gets a /24 of its own, claimed by creating its bridge
//! (the kernel refuses a second bridge of the same name, so two processes
//! never share one), and removed with the node's instance network at the
//! end.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// rouse-node's bridge name for a subnet: `rz` and the network address in
/// hex (see the node's `runtime::network::plan`).
pub fn bridge_of(network: Ipv4Addr) -> String {
    format!("rz{:08x}", u32::from(network))
}

/// Claims a free /24 under 10.100.0.0/14…10.219.0.0 and returns it
/// (`10.x.y.0/24`).
pub fn claim_subnet() -> String {
    let seed = std::process::id();
    for _ in 0..4096 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = 100 + ((seed / 7 + n / 256) % 120) as u8;
        let y = ((seed + n) % 256) as u8;
        let net = Ipv4Addr::new(10, x, y, 0);
        let claimed = Command::new("ip")
            .args(["link", "add", &bridge_of(net), "type", "bridge"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if claimed {
            return format!("{net}/24");
        }
    }
    panic!("no free instance subnet for a test node");
}
