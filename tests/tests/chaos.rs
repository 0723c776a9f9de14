//! The chaos suite, short and seeded: a 3-node run with faults passes, and
//! the same run with stale reads sabotaged is caught by the checker.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

fn run(extra: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(rouse_e2e::bin_dir().join("rouse-chaos"))
        .args([
            "run",
            "--nodes",
            "3",
            "--duration",
            "25s",
            "--seed",
            "7",
            "--report",
        ])
        .arg(&report)
        .args(extra)
        .output()
        .expect("run rouse-chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap_or_default()).unwrap_or_default();
    assert!(
        dir.path().join("report.svg").exists() || v.is_null(),
        "timeline missing"
    );
    (out.status.code().unwrap_or(-1), v, text)
}

#[test]
fn seeded_run_passes_and_sabotage_is_caught() {
    let (code, v, text) = run(&[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["linearizable"], true);
    assert_eq!(v["lost_acknowledged_writes"], 0);
    assert_eq!(v["converged"], true);
    assert_eq!(v["seed"], 7);
    assert!(
        v["operations"].as_u64().unwrap() >= 500,
        "{}",
        v["operations"]
    );
    assert!(v["faults"].as_array().unwrap().len() >= 4);
    // With the test containerd and registry (deploy/test.sh), the run also
    // drives requests through every node's mesh.
    if std::env::var("ROUSE_TEST_CONTAINERD").is_ok() {
        assert_eq!(v["mesh"]["ok_after_heal"], true, "{}", v["mesh"]);
        assert!(
            v["mesh"]["requests"].as_u64().unwrap() > 100,
            "{}",
            v["mesh"]
        );
    }

    let (code, v, text) = run(&["--sabotage", "stale-reads"]);
    assert_ne!(code, 0, "sabotaged run passed:\n{text}");
    assert_eq!(v["linearizable"], false, "{text}");
}
