//! `rouse apply -f` end to end: the shop example (a web container built
//! with buildah from its Dockerfile, a worker from the registry, a
//! namespace env, a secret from an env var, a cron trigger) goes up with
//! one apply, a second changes nothing, one env var changes one container,
//! --prune deletes what the file dropped, --dry-run changes nothing, and
//! `rouse export` round-trips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rouse_e2e::{push_test_image, TestCluster};

/// Runs the CLI against node 1 with the shop's secret in its env.
fn rouse(cluster: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(cluster.bin("rouse"))
        .env("ROUSE_TOKEN", cluster.admin_token())
        .env("DB_PASSWORD", "s3cret-from-env")
        .args(["--endpoint", &cluster.endpoint(1)])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of examples/shop to edit, its registry (run-local's) replaced by
/// the tests' `registry`.
fn shop_copy(dir: &Path, registry: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let dst = dir.join("shop");
    std::fs::create_dir_all(dst.join("web")).unwrap();
    for f in ["rouse.yaml", "web/Dockerfile", "web/index.html"] {
        let text = std::fs::read_to_string(src.join(f)).unwrap();
        std::fs::write(dst.join(f), text.replace("127.0.0.1:5056", registry)).unwrap();
    }
    dst.join("rouse.yaml")
}

async fn revisions(c: &rouse_client::Client) -> Vec<(String, u64)> {
    let mut c = c.clone();
    c.list_containers("shop", false)
        .await
        .unwrap()
        .into_iter()
        .map(|ct| (ct.name, ct.revision))
        .collect()
}

fn get(mesh: &str, host: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "30", "-H", &format!("Host: {host}")])
        .arg(format!("http://{mesh}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_goes_up_with_one_apply_and_a_second_changes_nothing() {
    // The example's base and worker image.
    let base = push_test_image("rouse/hello", "latest");
    let registry = base.split('/').next().unwrap().to_string();
    let cluster =
        TestCluster::start_with_runtime(2, &["--metering", "off", "--key-use-report", "1h"]).await;
    let c = cluster.client(1).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = shop_copy(tmp.path(), &registry);
    let f = file.to_str().unwrap();

    let t = Instant::now();
    let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--wait", "--timeout", "3m"]);
    assert_eq!(code, 0, "{out}\n{err}");
    println!("first apply: {:?}\n{out}", t.elapsed());
    assert!(out.contains("container shop/web: created"), "{out}");
    assert!(
        out.contains("trigger shop/worker/nightly: created"),
        "{out}"
    );
    assert!(
        out.contains("secrets.DB_PASSWORD: (none) → sha256:"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "a secret value in the diff: {out}");
    assert_eq!(
        get(&cluster.http(2), "web.shop.rouse.localhost").trim(),
        "welcome to the shop"
    );
    let env = {
        let mut c = c.clone();
        c.get_container("shop", "web", false).await.unwrap()
    };
    assert_eq!(env.env.get("MODE").map(String::as_str), Some("prod"));
    assert!(env.image.contains(":build-"), "{}", env.image);
    let before = revisions(&c).await;

    // The same file again: nothing to do, nothing built, no new revision.
    for round in 1..=2 {
        let t = Instant::now();
        let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--wait"]);
        let took = t.elapsed();
        println!(
            "apply #{} of the same file: {took:?}: {}",
            round + 1,
            out.trim()
        );
        assert_eq!((code, out.trim()), (0, "no changes"), "{err}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(revisions(&c).await, before);
    }

    // One env var: exactly that container changes.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("env: {MODE: prod}", "env: {MODE: canary}"),
    )
    .unwrap();
    let (code, out, err) = rouse(&cluster, &["diff", "-f", f]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("container shop/web: changed\n  env.MODE: prod → canary"),
        "{out}"
    );
    assert!(out.contains("container shop/worker: unchanged"), "{out}");

    // --dry-run changes nothing: the state digest stays.
    let digest = |c: &rouse_client::Client| {
        let mut c = c.clone();
        async move { c.node_info().await.unwrap().state_digest }
    };
    // Once the cluster is quiet (instances report, the autoscaler settles):
    // the same digest a second apart.
    let mut d1 = digest(&c).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = digest(&c).await;
        if now == d1 {
            break;
        }
        d1 = now;
    }
    let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("env.MODE: prod → canary"), "{out}");
    assert_eq!(digest(&c).await, d1, "--dry-run changed the state");

    let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = revisions(&c).await;
    let changed: Vec<&String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, _)| &b.0)
        .collect();
    assert_eq!(changed, vec!["web"], "{before:?} → {after:?}");

    // Export round-trips: applying it changes nothing.
    let (code, exported, err) = rouse(&cluster, &["export", "shop"]);
    assert_eq!(code, 0, "{err}");
    let out_file = tmp.path().join("exported.yaml");
    std::fs::write(&out_file, &exported).unwrap();
    let (code, out, err) = rouse(&cluster, &["diff", "-f", out_file.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "no changes"), "{err}\n{exported}");

    // Tokens to keep: with --prune the namespace's other live tokens are
    // revoked; without a `tokens:` key they are left alone.
    let mint = || {
        let (code, out, err) = rouse(
            &cluster,
            &["token", "create", "--namespace", "shop", "-o", "json"],
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let (keep, drop) = (mint(), mint());
    let (code, out, _) = rouse(&cluster, &["apply", "-f", f, "--prune"]);
    assert_eq!(
        (code, out.trim()),
        (0, "no changes"),
        "no tokens: key, no token touched"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(
            "  - name: shop\n",
            &format!("  - name: shop\n    tokens: [{keep}]\n"),
            1,
        ),
    )
    .unwrap();
    let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--prune"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("token shop/{drop}: to delete")),
        "{out}"
    );
    assert!(!out.contains(&keep), "{out}");
    let live: Vec<String> = {
        let mut c = c.clone();
        c.list_tokens("shop")
            .await
            .unwrap()
            .into_iter()
            .filter(|t| !t.revoked)
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(live, vec![keep.clone()]);

    // --prune after the worker left the file: it goes, nothing else.
    let text = std::fs::read_to_string(&file).unwrap();
    let cut = text.find("      - name: worker").unwrap();
    std::fs::write(&file, &text[..cut]).unwrap();
    let (code, out, _) = rouse(&cluster, &["apply", "-f", f]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "no changes",
        "without --prune nothing is deleted"
    );
    let (code, out, err) = rouse(&cluster, &["apply", "-f", f, "--prune"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("container shop/worker: to delete"), "{out}");
    let left = revisions(&c).await;
    assert_eq!(left, vec![("web".to_string(), after[0].1)], "{left:?}");

    // A build with an image: pushed to that repository, then deployed
    // from it.
    let pushed = tmp.path().join("shop/pushed.yaml");
    std::fs::write(
        &pushed,
        format!("apiVersion: rouse/v1\nnamespaces:\n  - name: pushed\n    containers:\n      - name: api\n        image: {registry}/shop/api:1\n        build: {{context: ./web, args: {{BASE: \"{registry}/rouse/hello:latest\"}}}}\n        minScale: 1\n"),
    )
    .unwrap();
    let (code, out, err) = rouse(
        &cluster,
        &["apply", "-f", pushed.to_str().unwrap(), "--wait"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let api = {
        let mut c = c.clone();
        c.get_container("pushed", "api", false).await.unwrap()
    };
    assert!(
        api.image
            .starts_with(&format!("{registry}/shop/api:build-")),
        "{}",
        api.image
    );
    let tags = std::process::Command::new("curl")
        .args(["-s", &format!("http://{registry}/v2/shop/api/tags/list")])
        .output()
        .unwrap();
    let tag = api.image.rsplit(':').next().unwrap();
    assert!(
        String::from_utf8_lossy(&tags.stdout).contains(tag),
        "{tags:?}"
    );
    assert_eq!(
        get(&cluster.http(1), "api.pushed.rouse.localhost").trim(),
        "welcome to the shop"
    );

    // A bad file: one line naming line, column and rule; nothing applied.
    std::fs::write(&file, text.replace("maxScale: 5", "maxScales: 5")).unwrap();
    let (code, _, err) = rouse(&cluster, &["apply", "-f", f]);
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown field `maxScales`") && err.contains("line"),
        "{err}"
    );
    assert_eq!(revisions(&c).await, left);
    cluster.assert_no_panics();
}

/// The JSON Schema in the repo is the one the CLI prints, and the example
/// validates against it.
#[test]
fn the_schema_in_the_repo_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(rouse_e2e::bin_dir().join("rouse"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schema/rouse.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        printed, kept,
        "schema/rouse.schema.json is stale: rouse schema > schema/rouse.schema.json"
    );
}

/// `container deploy --wait` shows each instance's progress and returns
/// once ready; with an image that cannot be pulled it fails with the
/// instance's reason instead of waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_shows_progress_and_fails_with_the_reason() {
    let image = push_test_image("rouse-test/wait", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let (code, _, err) = cluster.cli(1, &["namespace", "create", "w"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cluster.cli(
        1,
        &[
            "container",
            "deploy",
            "w/ok",
            "--image",
            &image,
            "--min-scale",
            "1",
            "--wait",
        ],
    );
    println!("{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("w/ok: instance ") && err.contains(": ready"),
        "{err}"
    );
    assert!(out.contains("ready"), "{out}");
    // On a terminal (script(1) gives it one): a line per instance that
    // updates in place, then the result.
    let cmd = format!(
        "{} --endpoint {} container deploy w/tty --image {image} --min-scale 1 --wait",
        cluster.bin("rouse").display(),
        cluster.endpoint(1)
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("ROUSE_TOKEN", cluster.admin_token())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("w/tty: ready (1 of min-scale 1)"), "{shown}");
    // Room for the next one on this one node.
    for ct in ["ok", "tty"] {
        let (code, _, err) = cluster.cli(1, &["container", "delete", &format!("w/{ct}")]);
        assert_eq!(code, 0, "{err}");
    }
    let t = Instant::now();
    let missing = format!("{}-missing", image);
    let (code, _, err) = cluster.cli(
        1,
        &[
            "container",
            "deploy",
            "w/bad",
            "--image",
            &missing,
            "--min-scale",
            "1",
            "--wait",
            "--wait-timeout",
            "2m",
        ],
    );
    println!("{err} after {:?}", t.elapsed());
    assert_ne!(code, 0);
    assert!(err.contains("w/bad") && err.contains("failed"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(100), "{:?}", t.elapsed());
    cluster.assert_no_panics();
}
