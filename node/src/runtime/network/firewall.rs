//! The node's firewall for its instances, as iptables rules in chains of
//! their own. [`rules`] is pure; [`apply`] makes the kernel hold them
//! (idempotent: a restart flushes and refills the chains).
//!
//! ```text
//!  INPUT   -i <bridge> → RZ-IN:  established ✓ · tcp to <gateway>:<mesh port> ✓ · anything else ✗
//!  FORWARD -i/-o <bridge> → RZ-FWD: replies to instances ✓ · anything else to instances ✗
//!                                 instances → other instance bridges (rz*) ✗ · → outside ✓ (or ✗ without egress)
//!  nat POSTROUTING -s <subnet> ! -o <bridge> → MASQUERADE (with egress)
//! ```
//!
//! So an instance reaches the node only at its public mesh, no other
//! instance directly (same bridge: isolated ports; other bridges: dropped),
//! and the outside only through the node's address. Interfaces named
//! `rz…` are taken to be instance bridges.

use std::process::Stdio;

use super::plan::Plan;
use crate::runtime::RuntimeError;

/// One iptables invocation's arguments (after `iptables -w`).
pub type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The rules to add, in order, once the chains exist and are empty.
pub fn rules(plan: &Plan) -> Vec<Rule> {
    let (inp, fwd) = plan.chains();
    let br = plan.bridge();
    let gw = plan.gateway().to_string();
    let mesh = plan.mesh_port.to_string();
    let mut out = vec![
        rule(&[
            "-A",
            &inp,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]),
        rule(&[
            "-A", &inp, "-p", "tcp", "-d", &gw, "--dport", &mesh, "-j", "ACCEPT",
        ]),
        rule(&["-A", &inp, "-j", "DROP"]),
        rule(&[
            "-A",
            &fwd,
            "-o",
            &br,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]),
        rule(&["-A", &fwd, "-o", &br, "-j", "DROP"]),
        // To another node's instance bridge on this machine (several nodes
        // on one host: development, tests): `rz` names are rouse's.
        rule(&["-A", &fwd, "-i", &br, "-o", "rz+", "-j", "DROP"]),
    ];
    out.push(rule(&[
        "-A",
        &fwd,
        "-i",
        &br,
        "-j",
        if plan.egress { "ACCEPT" } else { "DROP" },
    ]));
    out
}

/// The jumps into the chains (checked with `-C`, inserted first with `-I`).
pub fn jumps(plan: &Plan) -> Vec<Rule> {
    let (inp, fwd) = plan.chains();
    let br = plan.bridge();
    vec![
        rule(&["INPUT", "-i", &br, "-j", &inp]),
        rule(&["FORWARD", "-i", &br, "-j", &fwd]),
        rule(&["FORWARD", "-o", &br, "-j", &fwd]),
    ]
}

/// The masquerade rule egress needs (nat table).
pub fn masquerade(plan: &Plan) -> Rule {
    let br = plan.bridge();
    rule(&[
        "POSTROUTING",
        "-s",
        &plan.subnet.to_string(),
        "!",
        "-o",
        &br,
        "-j",
        "MASQUERADE",
    ])
}

async fn iptables(args: &[String]) -> Result<bool, RuntimeError> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RuntimeError::Network(format!("iptables: {e}")))?;
    Ok(out.status.success())
}

async fn must(args: Vec<String>) -> Result<(), RuntimeError> {
    if iptables(&args).await? {
        Ok(())
    } else {
        Err(RuntimeError::Network(format!(
            "iptables {} failed",
            args.join(" ")
        )))
    }
}

/// Makes the kernel hold the node's rules for `plan`.
pub async fn apply(plan: &Plan) -> Result<(), RuntimeError> {
    let (inp, fwd) = plan.chains();
    for chain in [&inp, &fwd] {
        // Exists already after a restart: then only flushed.
        let _ = iptables(&["-N".into(), chain.clone()]).await?;
        must(vec!["-F".into(), chain.clone()]).await?;
    }
    for r in rules(plan) {
        must(r).await?;
    }
    for j in jumps(plan) {
        let mut check = vec!["-C".to_string()];
        check.extend(j.iter().cloned());
        if !iptables(&check).await? {
            let mut insert = vec!["-I".to_string(), j[0].clone(), "1".into()];
            insert.extend(j[1..].iter().cloned());
            must(insert).await?;
        }
    }
    let m = masquerade(plan);
    let mut check = vec!["-t".to_string(), "nat".into(), "-C".into()];
    check.extend(m.iter().cloned());
    let present = iptables(&check).await?;
    match (plan.egress, present) {
        (true, false) => {
            let mut add = vec!["-t".to_string(), "nat".into(), "-A".into()];
            add.extend(m);
            must(add).await?;
        }
        (false, true) => {
            let mut del = vec!["-t".to_string(), "nat".into(), "-D".into()];
            del.extend(m);
            must(del).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Removes everything [`apply`] added (tests, and a node leaving for good).
pub async fn remove(plan: &Plan) -> Result<(), RuntimeError> {
    for j in jumps(plan) {
        let mut del = vec!["-D".to_string()];
        del.extend(j);
        while iptables(&del).await? {}
    }
    let (inp, fwd) = plan.chains();
    for chain in [inp, fwd] {
        let _ = iptables(&["-F".into(), chain.clone()]).await?;
        let _ = iptables(&["-X".into(), chain]).await?;
    }
    let mut del = vec!["-t".to_string(), "nat".into(), "-D".into()];
    del.extend(masquerade(plan));
    while iptables(&del).await? {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::network::plan::default_subnet;

    fn plan(egress: bool) -> Plan {
        Plan {
            subnet: default_subnet(2),
            egress,
            mesh_port: 8081,
        }
    }

    #[test]
    fn instances_reach_only_the_mesh_on_the_node() {
        let r: Vec<String> = rules(&plan(true)).iter().map(|r| r.join(" ")).collect();
        let (inp, fwd) = plan(true).chains();
        assert_eq!(
            r[1],
            format!("-A {inp} -p tcp -d 10.88.2.1 --dport 8081 -j ACCEPT")
        );
        assert_eq!(
            r[2],
            format!("-A {inp} -j DROP"),
            "everything else to the node"
        );
        assert!(
            r.contains(&format!("-A {fwd} -o rz0a580200 -j DROP")),
            "nothing new to instances"
        );
        assert!(
            r.contains(&format!("-A {fwd} -i rz0a580200 -o rz+ -j DROP")),
            "nor between bridges"
        );
        assert_eq!(
            r.last().unwrap(),
            &format!("-A {fwd} -i rz0a580200 -j ACCEPT")
        );
    }

    #[test]
    fn without_egress_instances_reach_nothing_outside() {
        let r = rules(&plan(false));
        assert_eq!(r.last().unwrap().last().unwrap(), "DROP");
        assert_eq!(
            masquerade(&plan(false)).join(" "),
            "POSTROUTING -s 10.88.2.0/24 ! -o rz0a580200 -j MASQUERADE"
        );
    }
}
