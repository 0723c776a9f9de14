//! End-to-end instance isolation on a real containerd with the standard CNI
//! plugins: every instance in a network namespace of its own, reachable
//! only through the mesh; instances reach neither each other nor the
//! node's API, peer and hop ports, only its public mesh (and the outside,
//! masqueraded, unless egress is denied); a hardened sandbox; and nothing
//! left behind by delete, crashes or a SIGKILLed node.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use rouse_client::{pb, Client};
use rouse_e2e::netcheck::{self, InstanceNet};
use rouse_e2e::{deploy, eventually, push_test_image, ready, TestCluster};

/// The status of GET http://{mesh}/ for `host`, with optional headers.
fn mesh_get(mesh: &str, host: &str, headers: &[String]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30"])
        .args(["-H", &format!("Host: {host}")])
        .args(headers.iter().flat_map(|h| ["-H", h.as_str()]))
        .arg(format!("http://{mesh}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

async fn small(c: &mut Client, ns: &str, name: &str, image: &str, privacy: pb::Privacy) {
    let mut req = deploy(ns, name, image, 1);
    req.cpu_mvcpu = Some(100);
    req.memory_mb = Some(64);
    req.privacy = privacy.into();
    c.deploy_container(req).await.unwrap();
}

/// Whether a TCP connection from inside `instance` to `addr:port` is
/// accepted, for each target, probed in parallel (2 s connect timeout).
fn probe_from(cluster: &TestCluster, instance: &str, targets: &[(IpAddr, u16)]) -> Vec<bool> {
    let mut script = String::from("cd /tmp; rm -f ok.*; ");
    for (n, (ip, port)) in targets.iter().enumerate() {
        script.push_str(&format!(
            "nc -w 2 {ip} {port} -e /bin/touch ok.{n} 2>/dev/null & "
        ));
    }
    script.push_str("wait; ls");
    let (_, out) = cluster.exec_in(instance, &script);
    (0..targets.len())
        .map(|n| out.lines().any(|l| l.trim() == format!("ok.{n}")))
        .collect()
}

/// A private container has no listener on the node: every TCP listener on
/// the node belongs to rouse-node, containerd, the test's own processes or
/// the machine's services that listened before the test (none to the
/// instance), and the mesh alone lets callers in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_container_listens_only_in_its_own_namespace() {
    // What the machine listens on before the test (its own services).
    let before: std::collections::HashSet<u64> =
        netcheck::listeners().into_iter().map(|l| l.inode).collect();
    let image = push_test_image("rouse-test/isolation", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("a", HashMap::new()).await.unwrap();
    small(&mut c, "a", "secret", &image, pb::Privacy::Private).await;
    let inst = ready(&c, "a", "secret", 1).await.remove(0);

    // It has an address of its own on the node's instance subnet, and
    // listens there on its container's port.
    let net = cluster.instance_net(1);
    let ip: Ipv4Addr = inst.ip.parse().unwrap();
    assert_eq!(
        u32::from(ip) & 0xffff_ff00,
        u32::from(net.gateway) & 0xffff_ff00,
        "{inst:?} on {}",
        net.subnet
    );
    assert_eq!(inst.port, 8080, "the container's port");

    let pids = netcheck::instance_pids(&inst.id);
    assert!(!pids.is_empty(), "the instance's processes");
    let me = i32::try_from(std::process::id()).unwrap();
    for l in netcheck::listeners() {
        assert!(
            !l.owners.iter().any(|(p, _)| pids.contains(p)),
            "the instance listens on the node: {l:?}"
        );
        // A socket no process of this machine holds belongs to no
        // instance (their processes are all visible here); the machine's
        // own services were there before.
        let ours = l.owners.is_empty()
            || before.contains(&l.inode)
            || l.owners.iter().any(|(p, comm)| {
                *p == me || ["rouse-node", "containerd", "docker-registry"].contains(&comm.as_str())
            });
        assert!(ours, "a listener of neither rouse nor the test: {l:?}");
    }
    // The instance's port on the node's addresses: nothing.
    for (_, a) in netcheck::node_ipv4_addresses() {
        assert!(
            std::net::TcpStream::connect((a, 8080)).is_err() || a.is_loopback(),
            "something answers on {a}:8080"
        );
    }

    // Through the mesh: 401 without a token, 200 with one.
    let mesh = cluster.http(1);
    let host = "secret.a.rouse.localhost";
    assert_eq!(mesh_get(&mesh, host, &[]), 401);
    let t = eventually("a token", || {
        let mut c = c.clone();
        async move { c.create_token("a", Some("secret"), 600).await }
    })
    .await;
    assert_eq!(
        mesh_get(&mesh, host, &[format!("Authorization: Bearer {}", t.token)]),
        200
    );
    cluster.assert_no_panics();
}

/// From inside an instance: other instances (of its namespace or another)
/// and the node's API, peer and hop ports on every node address are out of
/// reach; the public mesh on the bridge gateway answers. The node listens
/// on every address here, so only the firewall stands in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_only_the_public_mesh() {
    let image = push_test_image("rouse-test/isolation", "1");
    let cluster =
        TestCluster::start_with_runtime_on(Some(IpAddr::from([0, 0, 0, 0])), 1, &[]).await;
    let mut c = cluster.client(1).await;
    for ns in ["a", "b"] {
        c.create_namespace(ns, HashMap::new()).await.unwrap();
    }
    small(&mut c, "a", "one", &image, pb::Privacy::Public).await;
    small(&mut c, "a", "two", &image, pb::Privacy::Public).await;
    small(&mut c, "b", "other", &image, pb::Privacy::Private).await;
    let one = ready(&c, "a", "one", 1).await.remove(0);
    let two = ready(&c, "a", "two", 1).await.remove(0);
    let other = ready(&c, "b", "other", 1).await.remove(0);
    let net = cluster.instance_net(1);
    let node = cluster.node(1);
    let (api, http, hop) = (
        node.api.addr().port(),
        node.http.addr().port(),
        node.hop.addr().port(),
    );
    let at = |i: &pb::Instance| {
        (
            i.ip.parse::<IpAddr>().unwrap(),
            u16::try_from(i.port).unwrap(),
        )
    };

    // The node reaches every instance (so the refusals below are the
    // firewall's, not dead instances).
    for i in [&one, &two, &other] {
        let (ip, port) = at(i);
        assert!(std::net::TcpStream::connect((ip, port)).is_ok(), "{i:?}");
    }
    // And the node's ports answer on its addresses.
    let gw = IpAddr::V4(net.gateway);
    for port in [api, http, hop] {
        assert!(
            std::net::TcpStream::connect((gw, port)).is_ok(),
            "node port {port}"
        );
    }

    let mut targets = vec![at(&other), at(&two)];
    // The machine's addresses, but those of other test clusters' instance
    // bridges, which come and go with those tests (an address gone by the
    // time it is probed is routed out, where this machine's network may
    // answer anything).
    let mut addresses: Vec<IpAddr> = netcheck::node_ipv4_addresses()
        .into_iter()
        .filter(|(ifname, _)| !ifname.starts_with("rz") || *ifname == net.bridge)
        .map(|(_, a)| IpAddr::V4(a))
        .collect();
    addresses.push(gw);
    addresses.sort();
    addresses.dedup();
    for a in &addresses {
        for port in [api, hop] {
            targets.push((*a, port));
        }
    }
    // The second and third time too (nothing learned or cached opens them).
    for round in 0..3 {
        let reached = probe_from(&cluster, &one.id, &targets);
        let open: Vec<_> = targets
            .iter()
            .zip(&reached)
            .filter(|(_, r)| **r)
            .map(|(t, _)| t)
            .collect();
        if !open.is_empty() {
            let fw = Command::new("sh")
                .args([
                    "-c",
                    "iptables -w -L INPUT -v -n; iptables -w -S; ip -br addr",
                ])
                .output()
                .unwrap();
            panic!(
                "round {round}: reached from inside: {open:?}\n{}",
                String::from_utf8_lossy(&fw.stdout)
            );
        }
        // The public mesh answers on the gateway: public and private
        // containers alike, private ones asking for a token.
        for (host, want) in [
            ("two.a.rouse.localhost", "200 OK"),
            ("other.b.rouse.localhost", "401"),
        ] {
            let (_, out) = cluster.exec_in(
                &one.id,
                &format!("wget -S -q -O - --header 'Host: {host}' http://{gw}:{http}/ 2>&1"),
            );
            assert!(
                out.contains(want),
                "round {round}: {host} via the mesh: {out}"
            );
        }
    }
    // Bridge ports are isolated from each other (besides the firewall).
    assert_eq!(net.veths().len(), 3);
    assert_eq!(net.unisolated_ports(), Vec::<String>::new());
    // No IPv6 on the bridge (the firewall is IPv4).
    assert_eq!(net.bridge_ipv6(), "", "IPv6 on {}", net.bridge);
    cluster.assert_no_panics();
}

/// A network namespace standing for the outside world, joined to the node
/// by a veth pair: an HTTP server at `addr` that answers with the caller's
/// address. Removed on drop.
struct Outside {
    netns: String,
    host_if: String,
    addr: Ipv4Addr,
    _www: tempfile::TempDir,
}

impl Outside {
    fn new() -> Self {
        let n = std::process::id() % 250;
        let netns = format!("outside-{}", std::process::id());
        let host_if = format!("xo{}", std::process::id());
        let peer = format!("xp{}", std::process::id());
        let (host_ip, addr) = (
            Ipv4Addr::new(198, 18, n as u8, 1),
            Ipv4Addr::new(198, 18, n as u8, 2),
        );
        let www = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(www.path().join("cgi-bin")).unwrap();
        let cgi = www.path().join("cgi-bin/addr");
        std::fs::write(
            &cgi,
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"from $REMOTE_ADDR\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sh = |cmd: String| {
            let st = Command::new("sh").args(["-c", &cmd]).status().unwrap();
            assert!(st.success(), "{cmd}");
        };
        sh(format!("ip netns add {netns}"));
        sh(format!("ip link add {host_if} type veth peer name {peer}"));
        sh(format!("ip link set {peer} netns {netns}"));
        sh(format!(
            "ip addr add {host_ip}/30 dev {host_if} && ip link set {host_if} up"
        ));
        sh(format!(
            "ip -n {netns} addr add {addr}/30 dev {peer} && ip -n {netns} link set {peer} up && ip -n {netns} link set lo up"
        ));
        sh(format!(
            "ip netns exec {netns} busybox httpd -p {addr}:8000 -h {}",
            www.path().display()
        ));
        Outside {
            netns,
            host_if,
            addr,
            _www: www,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns pids {0} | xargs -r kill -9; ip link del {1}; ip netns del {0}",
                    self.netns, self.host_if
                ),
            ])
            .status();
    }
}

/// Egress: by default an instance reaches the outside, masqueraded behind
/// the node's address; with `--instance-egress deny` it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_masqueraded_and_can_be_denied() {
    let image = push_test_image("rouse-test/isolation", "1");
    let outside = Outside::new();
    let url = format!("http://{}:8000/cgi-bin/addr", outside.addr);
    for (flags, allowed) in [(vec![], true), (vec!["--instance-egress", "deny"], false)] {
        let cluster = TestCluster::start_with_runtime(1, &flags).await;
        let mut c = cluster.client(1).await;
        c.create_namespace("a", HashMap::new()).await.unwrap();
        small(&mut c, "a", "out", &image, pb::Privacy::Public).await;
        let inst = ready(&c, "a", "out", 1).await.remove(0);
        for _ in 0..2 {
            let (code, out) = cluster.exec_in(&inst.id, &format!("timeout 5 wget -q -O - {url}"));
            if allowed {
                assert_eq!(code, 0, "{out}");
                // The outside sees the node, not the instance.
                let host_side = Ipv4Addr::from(u32::from(outside.addr) - 1);
                assert_eq!(out.trim(), format!("from {host_side}"), "masqueraded");
            } else {
                assert_ne!(code, 0, "egress denied yet reached: {out}");
            }
        }
    }
}

/// Inside an instance: seccomp filtering, no CAP_NET_RAW, uid 0 mapped to
/// an unprivileged node uid; new user namespaces, mounts and raw sockets
/// fail; /tmp is a bounded tmpfs; `--read-only-rootfs` keeps only /tmp
/// writable. `container get` shows the address, port and network phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_in_a_hardened_sandbox() {
    let image = push_test_image("rouse-test/isolation", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("a", HashMap::new()).await.unwrap();
    small(&mut c, "a", "hard", &image, pb::Privacy::Public).await;
    let (code, _, err) = cluster.cli(
        1,
        &[
            "container",
            "deploy",
            "a/ro",
            "--image",
            &image,
            "--min-scale",
            "1",
            "--memory",
            "64",
            "--cpu",
            "100",
            "--read-only-rootfs",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let inst = ready(&c, "a", "hard", 1).await.remove(0);
    let ro = ready(&c, "a", "ro", 1).await.remove(0);
    let gw = cluster.instance_net(1).gateway;

    for i in [&inst, &ro] {
        let (_, status) = cluster.exec_in(&i.id, "grep -E '^(Seccomp|CapEff):' /proc/self/status");
        assert!(status.contains("Seccomp:\t2"), "{status}");
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap();
        const CAP_NET_RAW: u64 = 1 << 13;
        const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
        assert_eq!(cap_eff & CAP_NET_RAW, 0, "CAP_NET_RAW in {cap_eff:x}");
        assert_ne!(
            cap_eff & CAP_NET_BIND_SERVICE,
            0,
            "the default set in {cap_eff:x}"
        );

        let (_, map) = cluster.exec_in(&i.id, "cat /proc/self/uid_map");
        let f: Vec<u64> = map.split_whitespace().map(|v| v.parse().unwrap()).collect();
        assert_eq!((f[0], f.len()), (0, 3), "{map}");
        assert_ne!(f[1], 0, "uid 0 inside is uid {} on the node", f[1]);
        // Seen from the node, the server runs as that uid.
        let pid = netcheck::instance_pids(&i.id)[0];
        let uid = procfs::process::Process::new(pid).unwrap().uid().unwrap();
        assert_eq!(u64::from(uid), f[1], "process {pid}");

        for (what, script) in [
            ("a new user namespace", "unshare -U true"),
            ("a mount", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m"),
            (
                "a raw socket",
                &format!("arping -c 1 -w 1 -I eth0 {gw}") as &str,
            ),
        ] {
            let (code, out) = cluster.exec_in(&i.id, script);
            assert_ne!(code, 0, "{what} succeeded inside: {out}");
        }
        // /tmp: 16 MiB for a 64 MB instance; writing past it fails.
        let (code, out) = cluster.exec_in(
            &i.id,
            "dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>&1; r=$?; rm -f /tmp/fill; exit $r",
        );
        assert_ne!(code, 0, "20 MiB fit in /tmp: {out}");
        assert!(out.contains("No space left"), "{out}");
        let (code, out) = cluster.exec_in(&i.id, "dd if=/dev/zero of=/tmp/fit bs=1M count=8 2>&1");
        assert_eq!(code, 0, "8 MiB in /tmp: {out}");
    }
    // Read-only root: only /tmp takes writes.
    let (code, _) = cluster.exec_in(&ro.id, "touch /www/new");
    assert_ne!(code, 0, "wrote to a read-only root");
    let (code, out) = cluster.exec_in(&inst.id, "touch /www/new");
    assert_eq!(code, 0, "a writable root by default: {out}");

    // `container get -o json`: each instance's ip and port, the flag, and
    // the network phase of the cold start.
    let (code, out, err) = cluster.cli(1, &["container", "get", "a/ro", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["read_only_rootfs"], true, "{v}");
    assert_eq!(v["instances"][0]["ip"], ro.ip.as_str(), "{v}");
    assert_eq!(v["instances"][0]["port"], 8080, "{v}");
    assert!(
        v["cold_start"]["last_network_ms"].as_u64().unwrap() > 0,
        "{v}"
    );
    let (code, out, _) = cluster.cli(1, &["container", "get", "a/ro"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{}:8080", ro.ip)), "{out}");
    assert!(out.contains("[network "), "{out}");
    cluster.assert_no_panics();
}

/// What an instance network holds: host ends of veths, address holders,
/// processes of instances.
fn census(net: &InstanceNet) -> (usize, Vec<String>) {
    let holders = net.allocations().into_iter().map(|(_, id)| id).collect();
    (net.veths().len(), holders)
}

async fn instance_of(c: &Client, ns: &str, name: &str) -> pb::Instance {
    ready(c, ns, name, 1).await.remove(0)
}

/// Nothing is left behind: not after an instance crashes (three times),
/// not after rouse-node is SIGKILLed and restarted (the instance is adopted
/// with its address; an address a crash orphaned is released), not after
/// delete, and the node's whole network goes with `--remove-instance-network`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_behind() {
    let image = push_test_image("rouse-test/isolation", "1");
    let mut cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("a", HashMap::new()).await.unwrap();
    let net = cluster.instance_net(1);
    let rules = net.rules();
    assert!(rules.iter().any(|r| r.contains("RZ-IN-")), "{rules:#?}");
    assert!(rules.iter().any(|r| r.contains("MASQUERADE")), "{rules:#?}");

    small(&mut c, "a", "web", &image, pb::Privacy::Public).await;
    let mut inst = instance_of(&c, "a", "web").await;
    assert_eq!(census(&net), (1, vec![inst.id.clone()]));

    // Crashes: the instance restarts with one veth and one address.
    for round in 1..=3 {
        let pid = netcheck::instance_pids(&inst.id)[0];
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        inst = eventually(&format!("restart {round}"), || {
            let mut c = c.clone();
            async move {
                let ct = c
                    .get_container("a", "web", true)
                    .await
                    .map_err(|e| e.to_string())?;
                let i = ct.instances.first().cloned().ok_or("no instance")?;
                if i.restarts >= round && i.state == "ready" {
                    Ok(i)
                } else {
                    Err(format!("{i:?}"))
                }
            }
        })
        .await;
        assert_eq!(
            census(&net),
            (1, vec![inst.id.clone()]),
            "after crash {round}"
        );
        assert_eq!(net.rules(), rules, "after crash {round}");
    }

    // SIGKILL the node; while it is down, an address is left as a crash
    // mid-start would leave it (in host-local's own format), and one whose
    // record is damaged.
    cluster.kill(1);
    let ghost = net
        .ipam_dir
        .join(Ipv4Addr::from(u32::from(net.gateway) + 200).to_string());
    std::fs::write(&ghost, "ghost-instance\r\neth0").unwrap();
    let damaged = net
        .ipam_dir
        .join(Ipv4Addr::from(u32::from(net.gateway) + 201).to_string());
    std::fs::write(&damaged, "ghost-damaged\n").unwrap();
    cluster.restart(1);
    let c = cluster.client(1).await;
    let adopted = instance_of(&c, "a", "web").await;
    assert_eq!(
        (&adopted.id, &adopted.ip),
        (&inst.id, &inst.ip),
        "adopted with its address"
    );
    eventually("the orphan address released", || {
        let n = census(&net);
        let want = (1, vec![adopted.id.clone()]);
        async move {
            if n == want {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        }
    })
    .await;
    assert!(!ghost.exists() && !damaged.exists());

    // Delete: no veth, address, process or rule of it remains.
    let mut c = c;
    c.delete_container("a", "web").await.unwrap();
    eventually("the instance's network gone", || {
        let n = census(&net);
        let pids = netcheck::instance_pids(&inst.id);
        async move {
            if n == (0, vec![]) && pids.is_empty() {
                Ok(())
            } else {
                Err(format!("{n:?} {pids:?}"))
            }
        }
    })
    .await;
    assert_eq!(net.rules(), rules);

    // The node's network itself, on request.
    cluster.inner.stop_all();
    cluster.inner.remove_instance_networks();
    assert!(!net.bridge_exists(), "bridge {} left", net.bridge);
    assert_eq!(net.rules(), Vec::<String>::new());
    assert!(!net.ipam_dir.exists());
}
