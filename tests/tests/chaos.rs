//! The chaos suite, short and seeded: a 3-node run with faults passes, and
//! the same run with stale reads sabotaged is caught by the checker. Each
//! run's exported history, checked again by `rouse-chaos check` (and by
//! `--checker jit`, which shares no code with it), gets the
//! same verdict.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

/// Exit code, report, output, and the exit code of `rouse-chaos check` on
/// the run's history.
fn run(extra: &[&str]) -> (i32, serde_json::Value, String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let history = dir.path().join("history.jsonl");
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
        .arg("--history")
        .arg(&history)
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
    assert!(!v.is_null(), "no report at {}:\n{text}", report.display());
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap_or_default();
    assert!(
        svg.starts_with("<svg"),
        "the timeline is missing or not SVG"
    );
    // The history's contract shape, and its verdict read back.
    let lines = std::fs::read_to_string(&history).unwrap_or_default();
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().unwrap_or("null")).unwrap();
    for field in ["process", "type", "f", "key", "value", "time"] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    let check = Command::new(rouse_e2e::bin_dir().join("rouse-chaos"))
        .arg("check")
        .arg(&history)
        .output()
        .expect("run rouse-chaos check");
    println!("{}", String::from_utf8_lossy(&check.stdout));
    // The independent checker (no code shared with the first) agrees.
    let jit = Command::new(rouse_e2e::bin_dir().join("rouse-chaos"))
        .args(["check", "--checker", "jit"])
        .arg(&history)
        .output()
        .expect("run rouse-chaos check --checker jit");
    println!("{}", String::from_utf8_lossy(&jit.stdout));
    assert_eq!(
        jit.status.code(),
        check.status.code(),
        "the two checkers disagree on {}",
        history.display()
    );
    (
        out.status.code().unwrap_or(-1),
        v,
        text,
        check.status.code().unwrap_or(-1),
    )
}

#[test]
fn seeded_run_passes_and_sabotage_is_caught() {
    let (code, v, text, rechecked) = run(&[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["linearizable"], true);
    assert_eq!(v["initial_value"], "init");
    assert_eq!(rechecked, 0, "the exported history did not pass again");
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

    let (code, v, text, rechecked) = run(&["--sabotage", "stale-reads"]);
    assert_ne!(code, 0, "sabotaged run passed:\n{text}");
    assert_eq!(v["linearizable"], false, "{text}");
    assert_eq!(rechecked, 1, "the sabotaged history passed when read back");
}
