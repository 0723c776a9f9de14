//! What an isolated instance network looks like on a node: its subnet,
//! bridge, gateway and firewall chains, all derived from the settings.
//! Pure.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::state::NodeId;

/// One node's instance network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub subnet: Ipv4Net,
    /// Egress to the outside is allowed (masqueraded behind the node).
    pub egress: bool,
    /// Port of the node's public mesh, which instances may reach on the
    /// gateway address.
    pub mesh_port: u16,
}

/// The default subnet of node `id`: `10.88.<id>.0/24` for ids below 256,
/// then `10.89.…`, and so on, so nodes of one cluster never clash.
pub fn default_subnet(id: NodeId) -> Ipv4Net {
    let hi = 88u64.saturating_add(id / 256).min(255) as u8;
    let lo = (id % 256) as u8;
    // A /24 on a valid network address cannot fail.
    Ipv4Net::new(Ipv4Addr::new(10, hi, lo, 0), 24).unwrap_or_default()
}

impl Plan {
    /// A tag unique to the subnet, for names (8 hex characters).
    pub fn tag(&self) -> String {
        format!("{:08x}", u32::from(self.subnet.network()))
    }

    /// The bridge (at most 15 characters, as Linux wants).
    pub fn bridge(&self) -> String {
        format!("rz{}", self.tag())
    }

    /// The bridge's hardware address, fixed and unique to the subnet
    /// (locally administered). Left to the kernel, a bridge takes the
    /// lowest address of its ports and changes it when an instance's port
    /// comes or goes: the other instances' cached gateway address goes
    /// stale and their replies to the node are lost until it expires.
    pub fn bridge_mac(&self) -> String {
        let [a, b, c, d] = self.subnet.network().octets();
        format!("02:72:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    /// The node's address on the bridge: the subnet's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().unwrap_or(self.subnet.network())
    }

    /// The CNI network's name (IP allocations are kept under it).
    pub fn network_name(&self) -> String {
        format!("rouse-{}", self.tag())
    }

    /// The firewall chains: instances → the node, and traffic forwarded
    /// from and to instances.
    pub fn chains(&self) -> (String, String) {
        (
            format!("RZ-IN-{}", self.tag()),
            format!("RZ-FWD-{}", self.tag()),
        )
    }
}

/// Validates a subnet for instances: IPv4, a /16 to a /28.
pub fn check_subnet(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 network such as 10.88.1.0/24"))?;
    if !(16..=28).contains(&net.prefix_len()) {
        return Err(format!("{s:?}: the prefix must be between /16 and /28"));
    }
    if net.network() != net.addr() {
        return Err(format!(
            "{s:?} is not a network address (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_differ_per_node_and_names_fit_linux() {
        assert_eq!(default_subnet(1).to_string(), "10.88.1.0/24");
        assert_eq!(default_subnet(300).to_string(), "10.89.44.0/24");
        assert_ne!(default_subnet(1), default_subnet(257));
        let p = Plan {
            subnet: default_subnet(3),
            egress: true,
            mesh_port: 8080,
        };
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 88, 3, 1));
        assert!(p.bridge().len() <= 15, "{}", p.bridge());
        assert_eq!(p.bridge(), "rz0a580300");
        assert!(p.chains().0.len() <= 28 && p.chains().1.len() <= 28);
    }

    #[test]
    fn bridge_addresses_are_fixed_unicast_and_per_subnet() {
        let plan = |s: &str| Plan {
            subnet: check_subnet(s).unwrap(),
            egress: false,
            mesh_port: 1,
        };
        assert_eq!(plan("10.88.1.0/24").bridge_mac(), "02:72:0a:58:01:00");
        assert_ne!(
            plan("10.88.1.0/24").bridge_mac(),
            plan("10.88.2.0/24").bridge_mac()
        );
        // Locally administered, unicast.
        assert_eq!(
            u8::from_str_radix(&plan("10.88.1.0/24").bridge_mac()[..2], 16).unwrap() & 0b11,
            0b10
        );
    }

    #[test]
    fn subnets_are_checked() {
        assert!(check_subnet("10.1.2.0/24").is_ok());
        assert!(check_subnet("10.1.2.5/24")
            .unwrap_err()
            .contains("10.1.2.0/24"));
        assert!(check_subnet("10.0.0.0/8")
            .unwrap_err()
            .contains("/16 and /28"));
        assert!(check_subnet("nope").is_err());
    }
}
