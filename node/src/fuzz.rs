//! Fuzzing the public inputs on stable Rust (property tests with random
//! and structured inputs): every API request a client can send, Host
//! headers and request headers at the mesh, JWTs, API keys, join tokens,
//! image manifests and configs, and the node's TOML config. The property
//! is always the same: no panic, and a bad input gets an error (naming a
//! field where the input has fields), never an unbounded allocation.
//!
//! CI runs each target for `ROUSE_FUZZ_CASES` cases (default 256, a few
//! seconds); the long run is documented in the README:
//!
//! ```text
//! ROUSE_FUZZ_CASES=200000 cargo test --release -p rouse-node fuzz -- --nocapture
//! ```

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::state::{Command, ContainerKey, Proposal, StateData};

fn cases() -> u32 {
    std::env::var("ROUSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings a hostile client sends: empty, long, unicode, control bytes,
/// separators, and plausible values.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,70}",
        "[a-z0-9.:/@_-]{0,120}",
        ".{0,80}",
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        Just("a".repeat(5000)),
        Just("../../etc/passwd".to_string()),
        Just("PORT".to_string()),
    ]
}

fn small_u32() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(prop_oneof![Just(0u32), Just(u32::MAX), 0u32..100_000])
}

/// A state with one namespace, a public and a private container, so that
/// lookups have something to find.
fn state() -> StateData {
    let mut s = StateData::default();
    let apply = |s: &mut StateData, c| s.apply(&Proposal::new(1, c));
    apply(
        &mut s,
        Command::CreateNamespace {
            name: "ns".into(),
            env: Default::default(),
        },
    );
    for (name, private) in [("web", false), ("priv", true)] {
        let mut spec = crate::state::ContainerSpec::with_image("img:1");
        if private {
            spec.privacy = crate::state::Privacy::Private;
        }
        apply(
            &mut s,
            Command::PutContainer {
                namespace: "ns".into(),
                name: name.into(),
                spec,
                expected_revision: None,
            },
        );
    }
    s
}

prop_compose! {
    /// The placement and readiness settings (apart: one strategy with every
    /// field nests deep enough to overflow a test thread's stack).
    fn deploy_extras()(
        region in proptest::option::of(nasty()), health in proptest::option::of(nasty()),
        ro in proptest::option::of(any::<bool>()), routing in proptest::option::of(nasty()),
    ) -> (Option<String>, Option<String>, Option<bool>, Option<String>) {
        (region, health, ro, routing)
    }
}

prop_compose! {
    fn deploy_request()(
        namespace in nasty(), name in nasty(), image in proptest::option::of(nasty()),
        port in small_u32(), env in proptest::collection::hash_map(nasty(), nasty(), 0..4),
        replace_env in any::<bool>(), cpu in small_u32(), memory in small_u32(),
        min in small_u32(), max in small_u32(), conc in small_u32(), timeout in small_u32(),
        privacy in -2i32..5, protocol in -2i32..5, idle in small_u32(),
        (region, health, ro, routing) in deploy_extras(),
    ) -> rouse_proto::v1::DeployContainerRequest {
        rouse_proto::v1::DeployContainerRequest {
            namespace, name, image, port: port.map(|p| p % 70_000), env, replace_env,
            secrets: Default::default(), cpu_mvcpu: cpu, memory_mb: memory, min_scale: min,
            max_scale: max, max_concurrency: conc, timeout_seconds: timeout, privacy, protocol,
            scale_to_zero_after_seconds: idle, region, health_path: health, read_only_rootfs: ro,
            routing,
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any deploy request gets a spec or an error naming its field.
    #[test]
    fn fuzz_deploy_requests(r in deploy_request(), existing in any::<bool>()) {
        let current = existing.then(|| crate::state::ContainerSpec::with_image("img:1"));
        match crate::api::containers::spec_for(current, &r, 50) {
            Ok(spec) => prop_assert!(crate::state::validate::container_spec(&spec, 50).is_ok()),
            Err(crate::api::ApiError::Invalid(i)) => prop_assert!(!i.field.is_empty()),
            Err(e) => prop_assert!(false, "not a field error: {e}"),
        }
    }

    /// Any bytes as any request message: decoding fails cleanly or gives a
    /// message that re-encodes.
    #[test]
    fn fuzz_request_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        use rouse_proto::v1 as pb;
        if let Ok(m) = pb::DeployContainerRequest::decode(bytes.as_slice()) {
            let _ = crate::api::containers::spec_for(None, &m, 50);
            prop_assert!(pb::DeployContainerRequest::decode(m.encode_to_vec().as_slice()).is_ok());
        }
        let _ = pb::CreateNamespaceRequest::decode(bytes.as_slice());
        let _ = pb::SetSecretsRequest::decode(bytes.as_slice());
        let _ = pb::CreateTokenRequest::decode(bytes.as_slice());
        let _ = pb::SetQuotaRequest::decode(bytes.as_slice());
        let _ = pb::LogsRequest::decode(bytes.as_slice());
        let _ = rouse_proto::peer::IssueCertificateRequest::decode(bytes.as_slice());
    }

    /// Host headers: a route, or a clear error.
    #[test]
    fn fuzz_mesh_hosts(host in nasty(), suffix in prop_oneof![Just(""), Just(".ns.rouse.localhost"), Just(".rouse.localhost")]) {
        let s = state();
        let host = format!("{host}{suffix}");
        match crate::mesh::route::resolve(&s, "rouse.localhost", &host) {
            Ok(r) => prop_assert_eq!(r.key.namespace(), "ns"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Request headers at the mesh: the token lookup, the check of a
    /// private container, and the rewrite before forwarding.
    #[test]
    fn fuzz_mesh_headers(pairs in proptest::collection::vec((prop_oneof![
            Just("authorization".to_string()), Just("x-auth-token".to_string()),
            Just("x-forwarded-for".to_string()), Just("connection".to_string()),
            Just("upgrade".to_string()), Just("te".to_string()), "[a-z-]{1,20}"
        ], proptest::collection::vec(any::<u8>(), 0..80)), 0..8),
        from_peer in any::<bool>(), to_hop in any::<bool>())
    {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_bytes(&v)) {
                h.append(k, v);
            }
        }
        let s = state();
        let key = ContainerKey::new("ns", "priv");
        let r = crate::mesh::authorize::authorize(crate::mesh::authorize::bearer(&h), &s, &key, 1_000);
        prop_assert!(r.is_err(), "no valid token exists");
        let via = crate::mesh::forward::Via { from_peer, to_hop };
        let remote: std::net::SocketAddr = "10.0.0.1:1".parse().unwrap();
        crate::mesh::forward::rewrite_headers(&mut h, remote, via, None);
    }

    /// JWTs: random strings and mangled real ones are refused.
    #[test]
    fn fuzz_jwts(t in nasty(), cut in 0usize..200, flip in 0usize..200) {
        let (private, public) = crate::tokens::generate().unwrap();
        let claims = crate::tokens::Claims {
            iss: "rouse".into(), jti: "j".into(), ns: "ns".into(), ct: None, iat: 0, exp: 2_000,
        };
        let real = crate::tokens::sign(&private, "k1", &claims).unwrap();
        let keys = vec![("k1".to_string(), public)];
        prop_assert!(crate::tokens::verify(&t, &keys, 1_000).is_err());
        let mut bytes = real.clone().into_bytes();
        let i = flip % bytes.len();
        bytes[i] = bytes[i].wrapping_add(1);
        if let Ok(mangled) = String::from_utf8(bytes) {
            if mangled != real {
                prop_assert!(crate::tokens::verify(&mangled, &keys, 1_000).is_err());
            }
        }
        let truncated: String = real.chars().take(cut).collect();
        if truncated != real {
            prop_assert!(crate::tokens::verify(&truncated, &keys, 1_000).is_err());
        }
        prop_assert!(crate::tokens::verify(&real, &keys, 1_000).is_ok());
    }

    /// API keys and join tokens as a client types them.
    #[test]
    fn fuzz_keys_and_join_tokens(t in nasty()) {
        let s = state();
        prop_assert!(crate::auth::authenticate(&s, Some(&t)).is_err());
        if let Ok(j) = crate::tls::JoinToken::parse(&t) {
            prop_assert_eq!(crate::tls::JoinToken::parse(&j.expose()).map(|k| k.id).ok(), Some(j.id));
        }
    }

    /// Image manifests, indexes and configs from a registry or a tarball.
    #[test]
    fn fuzz_image_documents(doc in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (nasty(), 0i64..10_000_000, proptest::collection::vec(nasty(), 0..4)).prop_map(|(media, size, layers)| {
            serde_json::json!({
                "schemaVersion": 2, "mediaType": media,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "a".repeat(64)), "size": size},
                "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l, "digest": l, "size": size})).collect::<Vec<_>>(),
                "manifests": [{"digest": "x", "platform": {"os": "linux", "architecture": media}}],
                "rootfs": {"type": "layers", "diff_ids": layers},
                "config_": {"Env": layers, "Cmd": layers, "User": media},
            }).to_string().into_bytes()
        })
    ]) {
        let _ = crate::runtime::image::parse_documents(&doc);
    }

    /// The node's config file: any TOML (or not) gives a config or an
    /// error naming the setting or the file.
    #[test]
    fn fuzz_config_files(entries in proptest::collection::vec((prop_oneof![
            Just("id"), Just("data_dir"), Just("listen"), Just("http"), Just("hop"), Just("metrics"),
            Just("advertise"), Just("advertise_http"), Just("zone"), Just("instance_subnet"),
            Just("instance_network"), Just("userns_base"), Just("max_connections"), Just("header_timeout"),
            Just("stop_grace"), Just("heartbeat_ms"), Just("nonsense")
        ], prop_oneof![
            nasty().prop_map(|s| format!("{s:?}")), any::<i64>().prop_map(|i| i.to_string()),
            any::<bool>().prop_map(|b| b.to_string()), Just("[1, 2]".to_string()), Just("{".to_string()),
        ]), 0..8)) {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        let text: String = entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let args = crate::config::Args::parse_from(["rouse-node", "--config", path.to_str().unwrap()]);
        if let Err(e) = crate::config::NodeConfig::resolve(args) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
