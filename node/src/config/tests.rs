//! Settings are resolved and refused as an operator would expect.

use super::*;
use clap::Parser;

fn args(extra: &[&str]) -> Args {
    let mut v = vec!["rouse-node", "--id", "1", "--data-dir", "/tmp/x"];
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

#[test]
fn defaults() {
    let c = NodeConfig::resolve(args(&[])).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(c.advertise, "127.0.0.1:7070");
    assert_eq!(c.advertise_http, "127.0.0.1:8080");
    assert_eq!(c.advertise_hop, "127.0.0.1:8081");
    let c = NodeConfig::resolve(args(&[
        "--listen",
        "0.0.0.0:7070",
        "--http",
        "0.0.0.0:8080",
        "--advertise",
        "10.0.0.5:7070",
    ]))
    .unwrap();
    assert_eq!(
        (c.advertise_http.as_str(), c.advertise_hop.as_str()),
        ("10.0.0.5:8080", "10.0.0.5:8081")
    );
    assert_eq!(c.containerd_namespace, "rouse");
    assert_eq!(c.base_domain, "rouse.localhost");
    assert_eq!(c.scale_cap, 50);
    assert_eq!((c.heartbeat_ms, c.election_timeout_ms), (150, 500));
    let c = NodeConfig::resolve(args(&["--heartbeat-ms", "300"])).unwrap();
    assert_eq!(
        c.election_timeout_ms, 900,
        "3 heartbeats, at least 500 ms, unless set"
    );
}

#[test]
fn errors_name_the_setting() {
    for (flags, field) in [
        (vec!["--listen", "nope"], "listen"),
        (vec!["--join", "host"], "join"),
        (vec!["--zone", "Bad_Zone"], "zone"),
        (vec!["--cpu-capacity", "5"], "cpu_capacity"),
        (vec!["--listen", "0.0.0.0:1"], "advertise"),
        (vec!["--base-domain", "a..b"], "base_domain"),
        (vec!["--instance-ports", "20000-20100"], "instance_ports"),
        (
            vec![
                "--instance-network",
                "host",
                "--instance-subnet",
                "10.1.2.0/24",
            ],
            "instance_subnet",
        ),
        (vec!["--instance-network", "bridge"], "instance_network"),
        (vec!["--instance-subnet", "10.1.2.0/30"], "instance_subnet"),
        (vec!["--instance-egress", "maybe"], "instance_egress"),
        (vec!["--userns-base", "1000"], "userns_base"),
        (vec!["--hop", "127.0.0.1:7070"], "hop"),
        (vec!["--advertise", "0.0.0.0:7070"], "advertise"),
        (vec!["--advertise-http", "[::]:8080"], "advertise_http"),
        (vec!["--advertise-http", "nohost"], "advertise_http"),
        (vec!["--metrics", "127.0.0.1:8080"], "metrics"),
        (vec!["--metrics", "localhost"], "metrics"),
        (vec!["--log-format", "yaml"], "log_format"),
        (vec!["--metering", "no"], "metering"),
        (vec!["--otlp-endpoint", "127.0.0.1:4317"], "otlp_endpoint"),
        (vec!["--heartbeat-ms", "10"], "heartbeat_ms"),
        (vec!["--election-timeout-ms", "200"], "election_timeout_ms"),
        (
            vec!["--election-timeout-ms", "90000"],
            "election_timeout_ms",
        ),
    ] {
        let e = NodeConfig::resolve(args(&flags)).unwrap_err().to_string();
        assert!(e.starts_with(field), "{e}");
    }
    let e = NodeConfig::resolve(Args::parse_from(["rouse-node", "--data-dir", "/x"])).unwrap_err();
    assert!(e.to_string().starts_with("id:"));
}

#[test]
fn file_fills_what_flags_leave() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.toml");
    std::fs::write(
        &p,
        "id = 4\ndata_dir = \"/d\"\nzone = \"z9\"\nlisten = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let a = Args::parse_from([
        "rouse-node",
        "--config",
        p.to_str().unwrap(),
        "--zone",
        "z1",
    ]);
    let c = NodeConfig::resolve(a).unwrap();
    assert_eq!((c.id, c.zone.as_str(), c.listen.port()), (4, "z1", 9000));
    std::fs::write(&p, "id = 4\nunknown = 1\n").unwrap();
    let a = Args::parse_from(["rouse-node", "--config", p.to_str().unwrap()]);
    assert!(NodeConfig::resolve(a)
        .unwrap_err()
        .to_string()
        .contains("unknown"));
}
