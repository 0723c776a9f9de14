//! End-to-end: credentials die with what they name (a namespace's API key
//! and a container's token stop working once the namespace or container is
//! deleted, even if it is created again under the same name), and admin
//! keys are many and revocable while one remains.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;

use rouse_client::{pb, Client};
use rouse_e2e::{deploy, eventually, push_test_image, ready, TestCluster};

fn mesh_status(mesh: &str, host: &str, token: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30"])
        .args(["-H", &format!("Host: {host}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{mesh}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

async fn private_web(c: &mut Client, image: &str) {
    c.create_namespace("acme", HashMap::new()).await.unwrap();
    let mut req = deploy("acme", "web", image, 1);
    req.memory_mb = Some(64);
    req.privacy = pb::Privacy::Private.into();
    c.deploy_container(req).await.unwrap();
    ready(c, "acme", "web", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_die_with_what_they_name() {
    let image = push_test_image("rouse-test/creds", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    private_web(&mut c, &image).await;
    let key = c.create_api_key("acme").await.unwrap().key;
    let token = eventually("a token", || {
        let mut c = c.clone();
        async move { c.create_token("acme", Some("web"), 3600).await }
    })
    .await
    .token;
    let mesh = cluster.http(1);
    let host = "web.acme.rouse.localhost";
    assert_eq!(mesh_status(&mesh, host, &token), 200);
    let mut as_key = Client::connect(&cluster.endpoint(1), Some(&key))
        .await
        .unwrap();
    as_key.list_containers("acme", false).await.unwrap();

    // Deleted and created again under the same names.
    c.delete_container("acme", "web").await.unwrap();
    c.delete_namespace("acme").await.unwrap();
    private_web(&mut c, &image).await;

    let e = as_key.list_containers("acme", false).await.unwrap_err();
    assert!(e.to_string().contains("not valid"), "{e}");
    assert_eq!(
        mesh_status(&mesh, host, &token),
        401,
        "the old container's token"
    );
    // New credentials work.
    let fresh = c
        .create_token("acme", Some("web"), 3600)
        .await
        .unwrap()
        .token;
    assert_eq!(mesh_status(&mesh, host, &fresh), 200);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_are_many_and_revocable_while_one_remains() {
    let mut cluster = TestCluster::start(1, &["--key-use-report", "1s"]).await;
    let first = cluster.admin_token();
    let (code, out, err) = cluster.cli(1, &["apikey", "create", "--admin", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["scope"], "admin");
    let second = v["key"].as_str().unwrap().to_string();
    let second_id = v["id"].as_str().unwrap().to_string();
    let (code, _, err) = cluster.cli_as(1, &second, &["namespace", "list"]);
    assert_eq!(code, 0, "{err}");

    // The list: ids, scopes, when created and last used, never a key.
    let listed = eventually("the second key's use recorded", || {
        let (code, out, err) = cluster.cli_as(1, &second, &["apikey", "list", "-o", "json"]);
        let id = second_id.clone();
        async move {
            if code != 0 {
                return Err(err);
            }
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            let used = v
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == id.as_str() && k["last_used_at_ms"].as_u64() > Some(0));
            if used {
                Ok(out)
            } else {
                Err(out)
            }
        }
    })
    .await;
    assert!(
        !listed.contains(&second) && !listed.contains(&first),
        "a key in the list"
    );
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    for k in v.as_array().unwrap() {
        assert_eq!(k["scope"], "admin", "{k}");
        assert!(k["created_at_ms"].as_u64().unwrap() > 0, "{k}");
    }

    // The bootstrap key is an ordinary admin key: revoked from the other.
    let (code, _, err) = cluster.cli_as(1, &second, &["apikey", "revoke", "admin"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cluster.cli_as(1, &first, &["namespace", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("not valid"), "{err}");
    // A restart does not bring it back.
    cluster.kill(1);
    cluster.restart(1);
    eventually("node 1 serves again", || {
        let (code, _, err) = cluster.cli_as(1, &second, &["namespace", "list"]);
        async move {
            if code == 0 {
                Ok(())
            } else {
                Err(err)
            }
        }
    })
    .await;
    let (code, _, _) = cluster.cli_as(1, &first, &["namespace", "list"]);
    assert_ne!(
        code, 0,
        "the revoked bootstrap key came back after a restart"
    );
    // The last admin key stays.
    let (code, _, err) = cluster.cli_as(1, &second, &["apikey", "revoke", &second_id]);
    assert_ne!(code, 0);
    assert!(err.contains("last admin key"), "{err}");
    cluster.assert_no_panics();
}
