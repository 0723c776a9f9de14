//! `rouse-node --check-config`: settings are checked without starting a
//! node (nothing bound, nothing created), with the field and the rule on
//! a refusal.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(rouse_e2e::bin_dir().join("rouse-node"))
        .arg("--check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    // A host's settings: listens everywhere, advertises its own address.
    let (rc, out, err) = check(&[
        "--id",
        "2",
        "--data-dir",
        d,
        "--listen",
        "0.0.0.0:7070",
        "--http",
        "0.0.0.0:8080",
        "--advertise",
        "10.0.0.2:7070",
        "--join",
        "10.0.0.1:7070",
        "--zone",
        "eu-1a",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("config ok: node 2"), "{out}");
    assert!(
        out.contains("advertised as 10.0.0.2:7070") && out.contains("joins through 10.0.0.1:7070"),
        "{out}"
    );
    assert!(!data.exists(), "checking created the data dir");
    // The same from a file, with a mistake: the field and the rule.
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!("id = 3\ndata_dir = {d:?}\nheartbeat_ms = 100\nelection_timeout_ms = 200\n"),
    )
    .unwrap();
    let (rc, out, err) = check(&["--config", file.to_str().unwrap()]);
    assert_eq!(rc, 2, "{out}");
    assert!(
        err.contains("election_timeout_ms") && err.contains("at least 3 heartbeats"),
        "{err}"
    );
    let (rc, _, err) = check(&["--id", "1", "--data-dir", d, "--listen", "0.0.0.0:7070"]);
    assert_eq!(rc, 2);
    assert!(err.contains("advertise"), "{err}");
    assert!(!data.exists());
}

/// The example configurations under deploy/ stay valid.
#[test]
fn the_deploy_examples_pass_the_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = vec![root.join("rouse-node.example.toml")];
    for dir in ["three-hosts", "two-regions"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let (rc, out, err) = check(&["--config", f.to_str().unwrap()]);
        assert_eq!(rc, 0, "{}: {err}", f.display());
        assert!(out.starts_with("config ok"), "{out}");
    }
}
