//! End-to-end: private containers behind EdDSA JWTs through the mesh of
//! every node — valid tokens in either header pass; missing, tampered,
//! `alg: none`, expired and revoked tokens get 401 (revocation honoured by
//! every node within a second); tokens of another scope get 403.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rouse_client::pb;
use rouse_e2e::{eventually, push_test_image, TestCluster};

fn get(mesh: &str, host: &str, header: Option<String>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "30",
        "-H",
        &format!("Host: {host}"),
    ]);
    if let Some(h) = header {
        cmd.args(["-H", &h]);
    }
    let out = cmd.arg(format!("http://{mesh}/")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_containers_need_a_valid_token_of_their_scope() {
    let image = push_test_image("rouse-test/private", "1");
    let cluster = TestCluster::start_with_runtime(2, &[]).await;
    let mut c = cluster.client(1).await;
    for ns in ["p", "other"] {
        c.create_namespace(ns, HashMap::new()).await.unwrap();
    }
    for (ns, name, privacy) in [
        ("p", "priv", pb::Privacy::Private),
        ("p", "priv2", pb::Privacy::Private),
        ("p", "pub", pb::Privacy::Public),
    ] {
        c.deploy_container(pb::DeployContainerRequest {
            namespace: ns.into(),
            name: name.into(),
            image: Some(image.clone()),
            min_scale: Some(1),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            privacy: privacy.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let token = |ns: &'static str, ct: Option<&'static str>, secs: u64| {
        let c = c.clone();
        async move {
            eventually("token", || {
                let mut c = c.clone();
                async move { c.create_token(ns, ct, secs).await }
            })
            .await
        }
    };
    let t_ns = token("p", None, 3600).await;
    let t_ct = token("p", Some("priv"), 3600).await;
    let t_ct2 = token("p", Some("priv2"), 3600).await;
    let t_other = token("other", None, 3600).await;
    let t_short = token("p", None, 1).await;
    let t_rev = token("p", None, 3600).await;
    // The CLI prints the token on its last line, and {"id","token","expires_at"} with -o json.
    let (code, out, err) = cluster.cli(
        2,
        &[
            "token",
            "create",
            "--namespace",
            "p",
            "--container",
            "priv",
            "--expires-in",
            "1h",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cli_token = v["token"].as_str().unwrap().to_string();
    assert!(v["id"].is_string() && v["expires_at"].is_u64(), "{v}");
    let (_, out, _) = cluster.cli(1, &["token", "create", "--namespace", "p"]);
    let last_line = out.trim_end().lines().last().unwrap().to_string();
    assert_eq!(last_line.split('.').count(), 3, "{out}");

    let host = "priv.p.rouse.localhost";
    let meshes: Vec<String> = cluster.nodes.values().map(|n| n.http.clone()).collect();
    let bearer = |t: &str| Some(format!("Authorization: Bearer {t}"));
    let xauth = |t: &str| Some(format!("X-Auth-Token: {t}"));
    // Wait until the instance serves.
    eventually("private container up", || async {
        match get(&meshes[0], host, xauth(&t_ns.token)) {
            200 => Ok(()),
            c => Err(c),
        }
    })
    .await;
    let tampered = {
        let mut t = t_ns.token.clone();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    };
    let payload = t_ns.token.split('.').nth(1).unwrap().to_string();
    // {"alg":"none","typ":"JWT"} — an unsigned token with a valid payload.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    tokio::time::sleep(Duration::from_millis(1500)).await; // t_short expires
    for mesh in &meshes {
        assert_eq!(
            get(mesh, host, xauth(&t_ns.token)),
            200,
            "namespace token in X-Auth-Token via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ns.token)),
            200,
            "namespace token as Bearer via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ct.token)),
            200,
            "container token via {mesh}"
        );
        assert_eq!(
            get(mesh, host, xauth(&cli_token)),
            200,
            "CLI token via {mesh}"
        );
        assert_eq!(get(mesh, host, None), 401, "no token via {mesh}");
        assert_eq!(
            get(mesh, host, bearer("not-a-jwt")),
            401,
            "malformed via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&tampered)),
            401,
            "tampered signature via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&alg_none)),
            401,
            "alg none via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_short.token)),
            401,
            "expired via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_other.token)),
            403,
            "another namespace via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ct2.token)),
            403,
            "another container via {mesh}"
        );
        assert_eq!(
            get(mesh, "pub.p.rouse.localhost", None),
            200,
            "public needs no token via {mesh}"
        );
    }
    // Revocation is honoured by every node within a second.
    for mesh in &meshes {
        assert_eq!(get(mesh, host, bearer(&t_rev.token)), 200);
    }
    let (code, _, err) = cluster.cli(2, &["token", "revoke", &t_rev.id]);
    assert_eq!(code, 0, "{err}");
    let t = Instant::now();
    for mesh in &meshes {
        loop {
            if get(mesh, host, bearer(&t_rev.token)) == 401 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "revocation not honoured by {mesh} within 1s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "revocation honoured by every node {:?} after the revoke returned",
        t.elapsed()
    );
    // Listing shows ids and scope, never tokens.
    let (code, out, _) = cluster.cli(1, &["token", "list", "--namespace", "p", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&t_ns.token) && out.contains(&t_ns.id),
        "{out}"
    );
    assert!(out.contains("\"revoked\": true"), "{out}");
    // Rotation: new tokens use the new key, old ones keep working.
    let (code, _, err) = cluster.cli(1, &["token", "rotate-key"]);
    assert_eq!(code, 0, "{err}");
    let fresh = token("p", None, 3600).await;
    assert_ne!(
        fresh.token.split('.').next(),
        t_ns.token.split('.').next(),
        "new key id in the header"
    );
    for mesh in &meshes {
        assert_eq!(get(mesh, host, bearer(&fresh.token)), 200);
        assert_eq!(get(mesh, host, bearer(&t_ns.token)), 200);
    }
    cluster.assert_no_panics();
}
