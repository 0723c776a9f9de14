//! The world around the nodes: where the binaries are, the private
//! containerd and registry `deploy/test-env.sh` starts, the test images.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the workspace's binaries: next to the running
/// executable, or its parent (a test binary lives in `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let here = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if here.join("rouse-node").exists() {
        return here;
    }
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// A binary of the workspace, or a clear panic saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --bins)",
        p.display()
    );
    p
}

/// The private containerd socket and registry of `deploy/test-env.sh`, if
/// it runs (its variables are set).
pub fn runtime_env_opt() -> Option<(String, String)> {
    let sock = std::env::var("ROUSE_TEST_CONTAINERD").unwrap_or_default();
    let reg = std::env::var("ROUSE_TEST_REGISTRY").unwrap_or_default();
    (!sock.is_empty() && !reg.is_empty()).then_some((sock, reg))
}

/// Like [`runtime_env_opt`], for tests that need it.
pub fn runtime_env() -> (String, String) {
    runtime_env_opt().unwrap_or_else(|| {
        panic!(
            "ROUSE_TEST_CONTAINERD and ROUSE_TEST_REGISTRY are unset: run the tests with \
             deploy/test.sh, which starts a private containerd and registry"
        )
    })
}

/// Where `deploy/test-env.sh` keeps its state.
pub fn test_env_base() -> PathBuf {
    std::env::var("ROUSE_TEST_BASE")
        .unwrap_or_else(|_| "/tmp/rouse-test-env".into())
        .into()
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/images/build-hello.sh")
}

/// Builds the busybox test image (or, with `app`, an image running that
/// binary) and pushes it as `repo:tag` to the test registry; returns the
/// reference.
pub fn push_image(repo: &str, tag: &str, app: Option<&Path>) -> String {
    let (_, reg) = runtime_env();
    let mut cmd = Command::new("bash");
    cmd.arg(build_script())
        .args(["push", &reg, &format!("{repo}:{tag}")]);
    if let Some(bin) = app {
        cmd.env("APP_BINARY", bin);
    }
    let st = cmd.status().unwrap_or_else(|e| panic!("build image: {e}"));
    assert!(st.success(), "building the test image {repo}:{tag} failed");
    format!("{reg}/{repo}:{tag}")
}

/// Writes the busybox test image as an OCI-layout tarball named `name`.
pub fn tar_test_image(path: &Path, name: &str) {
    let st = Command::new("bash")
        .arg(build_script())
        .args(["tar", &path.display().to_string(), name])
        .status()
        .unwrap_or_else(|e| panic!("build image: {e}"));
    assert!(st.success(), "building the test image tarball failed");
}

/// Runs `ctr` against the test containerd in `namespace`; returns stdout.
pub fn ctr(socket: &str, namespace: &str, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .args(["--address", socket, "-n", namespace])
        .args(args)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!("run ctr: {e}"),
    }
}

/// Task ids in a containerd namespace, with pid and status.
pub fn tasks(socket: &str, namespace: &str) -> Vec<(String, u32, String)> {
    ctr(socket, namespace, &["tasks", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
            ))
        })
        .collect()
}

/// Removes every task and container a run left in `namespace`.
pub fn ctr_cleanup(socket: &str, namespace: &str) {
    for (id, _, _) in tasks(socket, namespace) {
        ctr(socket, namespace, &["tasks", "kill", "-s", "SIGKILL", &id]);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (id, _, _) in tasks(socket, namespace) {
        ctr(socket, namespace, &["tasks", "rm", "-f", &id]);
    }
    for line in ctr(socket, namespace, &["containers", "ls", "-q"]).lines() {
        ctr(socket, namespace, &["containers", "rm", line.trim()]);
    }
}

/// The registry's access-log lines that GET something mentioning `needle`.
pub fn registry_log_count(needle: &str) -> usize {
    let log = std::fs::read_to_string(test_env_base().join("registry/log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("\"GET ") && l.contains(needle))
        .count()
}
