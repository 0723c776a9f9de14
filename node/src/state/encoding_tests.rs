//! The log's encoding is a contract: entries written by an older node must
//! decode, and mean the same, on a newer one. One sample of every
//! [`Command`] variant is encoded and compared with
//! `testdata/commands.jsonl`, written once and never edited by hand.
//! A new variant needs a sample here (the exhaustive match below does not
//! compile without one) and a new line in the file
//! (`ROUSE_BLESS=1 cargo test -p rouse-node encoding` appends it).

use std::collections::BTreeMap;

use super::*;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/state/testdata/commands.jsonl"
);

/// Position of a variant in [`Command`]: adding a variant breaks this match.
fn variant(c: &Command) -> usize {
    match c {
        Command::CreateNamespace { .. } => 0,
        Command::UpdateNamespace { .. } => 1,
        Command::DeleteNamespace { .. } => 2,
        Command::PutContainer { .. } => 3,
        Command::DeleteContainer { .. } => 4,
        Command::RegisterNode { .. } => 5,
        Command::RemoveNode { .. } => 6,
        Command::PlaceInstances { .. } => 7,
        Command::ReportInstanceStatus { .. } => 8,
        Command::PinImage { .. } => 9,
        Command::Scale { .. } => 10,
        Command::SetNodeState { .. } => 11,
        Command::SetPending { .. } => 12,
        Command::InitDataKey { .. } => 13,
        Command::SetSecrets { .. } => 14,
        Command::DeleteSecret { .. } => 15,
        Command::AddSigningKey { .. } => 16,
        Command::CreateToken { .. } => 17,
        Command::RevokeToken { .. } => 18,
        Command::CreateApiKey { .. } => 19,
        Command::RevokeApiKey { .. } => 20,
        Command::InitClusterCa { .. } => 21,
        Command::CreateJoinToken { .. } => 22,
        Command::UseJoinToken { .. } => 23,
        Command::RotateKeys { .. } => 24,
        Command::TouchApiKeys { .. } => 25,
        Command::SetQuota { .. } => 26,
        Command::CreateTrigger { .. } => 27,
        Command::DeleteTrigger { .. } => 28,
        Command::SetTriggerEnabled { .. } => 29,
        Command::ClaimTick { .. } => 30,
        Command::RecordFiring { .. } => 31,
        Command::RecordUsage { .. } => 32,
        Command::Batch { .. } => 33,
    }
}
const VARIANTS: usize = 34;

fn envelope() -> crate::secrets::Envelope {
    crate::secrets::Envelope {
        nonce: vec![1; 12],
        ciphertext: vec![2; 4],
    }
}

fn samples() -> Vec<Command> {
    let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
    let spec = ContainerSpec {
        region: Some("eu".into()),
        health_path: Some("/h".into()),
        ..ContainerSpec::with_image("reg/img:1")
    };
    let instance = Instance {
        id: "web-1-a".into(),
        namespace: "shop".into(),
        container: "web".into(),
        generation: 3,
        node: 2,
        created_at_ms: 10,
    };
    let status = InstanceStatus {
        state: InstanceState::Ready,
        message: "m".into(),
        exit_code: Some(137),
        oom_killed: true,
        restarts: 2,
        port: 20001,
        ip: String::new(),
        updated_at_ms: 11,
        cold_start: Some(ColdStart {
            placement_ms: 1,
            pull_ms: 2,
            create_ms: 3,
            start_ms: 4,
            ready_ms: 5,
            network_ms: 0,
            total_ms: 15,
            at_ms: 12,
        }),
    };
    let node = NodeRecord {
        id: 2,
        api_addr: "10.0.0.2:7070".into(),
        http_addr: "10.0.0.2:8080".into(),
        hop_addr: String::new(),
        zone: "z1".into(),
        region: "r1".into(),
        cpu_capacity_mvcpu: 2000,
        memory_capacity_mb: 4096,
        cert_sha256: "ab".into(),
    };
    let sealed = SealedSecret {
        sealed: envelope(),
        fingerprint: "fp".into(),
    };
    let stored = StoredSecret {
        sealed: envelope(),
        fingerprint: "fp".into(),
        version: 2,
        updated_at_ms: 13,
    };
    let signing = SigningKey {
        kid: "k1".into(),
        public_hex: "00ff".into(),
        sealed_private: envelope(),
        created_at_ms: 14,
    };
    vec![
        Command::CreateNamespace {
            name: "shop".into(),
            env: env.clone(),
        },
        Command::UpdateNamespace {
            name: "shop".into(),
            env,
            expected_revision: Some(4),
        },
        Command::DeleteNamespace {
            name: "shop".into(),
        },
        Command::PutContainer {
            namespace: "shop".into(),
            name: "web".into(),
            spec,
            expected_revision: None,
        },
        Command::DeleteContainer {
            namespace: "shop".into(),
            name: "web".into(),
        },
        Command::RegisterNode { node },
        Command::RemoveNode { id: 3 },
        Command::PlaceInstances {
            add: vec![instance],
            remove: vec!["web-0-b".into()],
        },
        Command::ReportInstanceStatus {
            id: "web-1-a".into(),
            node: 2,
            status,
        },
        Command::PinImage {
            namespace: "shop".into(),
            name: "web".into(),
            generation: 3,
            image: "reg/img@sha256:00".into(),
        },
        Command::Scale {
            namespace: "shop".into(),
            name: "web".into(),
            replicas: 2,
            reason: None,
        },
        Command::SetNodeState {
            id: 2,
            down: Some(true),
            cordoned: None,
            draining: Some(false),
        },
        Command::SetPending {
            namespace: "shop".into(),
            name: "web".into(),
            reason: Some("no capacity".into()),
        },
        Command::InitDataKey {
            wrapped: envelope(),
        },
        Command::SetSecrets {
            scope: Scope::of("shop", Some("web")),
            entries: BTreeMap::from([("K".to_string(), sealed)]),
        },
        Command::DeleteSecret {
            scope: Scope::namespace("shop"),
            key: "K".into(),
        },
        Command::AddSigningKey {
            key: signing.clone(),
        },
        Command::CreateToken {
            record: TokenRecord {
                id: "t1".into(),
                namespace: "shop".into(),
                container: Some("web".into()),
                expires_at_ms: 1000,
                created_at_ms: 15,
                revoked: false,
            },
        },
        Command::RevokeToken { id: "t1".into() },
        Command::CreateApiKey {
            key: ApiKey {
                id: "a1".into(),
                secret_sha256: "cd".into(),
                namespace: Some("shop".into()),
                created_at_ms: 16,
                revoked: false,
                last_used_at_ms: 0,
            },
        },
        Command::RevokeApiKey { id: "a1".into() },
        Command::InitClusterCa {
            ca: ClusterCa {
                cert_pem: "PEM".into(),
                key: envelope(),
            },
        },
        Command::CreateJoinToken {
            token: JoinTokenRecord {
                id: "j1".into(),
                hash: "hh".into(),
                created_ms: 17,
                expires_ms: 18,
                used_by: Some(2),
                issued: None,
            },
        },
        Command::UseJoinToken {
            id: "j1".into(),
            hash: "hh".into(),
            node: 2,
            issued: None,
        },
        Command::RotateKeys {
            from: envelope(),
            kek_id: "kek2".into(),
            data_key: envelope(),
            ca_key: Some(envelope()),
            secrets: BTreeMap::from([(
                Scope::namespace("shop"),
                BTreeMap::from([("K".to_string(), stored)]),
            )]),
            signing_keys: vec![signing],
        },
        // Fields added later, set (appended to the file when they came).
        Command::ReportInstanceStatus {
            id: "web-1-a".into(),
            node: 2,
            status: InstanceStatus {
                state: InstanceState::Ready,
                port: 8080,
                ip: "10.88.2.7".into(),
                cold_start: Some(ColdStart {
                    network_ms: 9,
                    ..Default::default()
                }),
                ..Default::default()
            },
        },
        Command::RegisterNode {
            node: NodeRecord {
                id: 3,
                hop_addr: "10.0.0.3:8081".into(),
                ..Default::default()
            },
        },
        Command::PutContainer {
            namespace: "shop".into(),
            name: "ro".into(),
            spec: ContainerSpec {
                read_only_rootfs: true,
                ..ContainerSpec::with_image("reg/img:1")
            },
            expected_revision: Some(0),
        },
        Command::UseJoinToken {
            id: "j2".into(),
            hash: "hh".into(),
            node: 3,
            issued: Some(IssuedCert {
                cert_sha256: "c3".into(),
                cert_pem: "PEM".into(),
                key_sha256: "k3".into(),
            }),
        },
        Command::TouchApiKeys {
            used: BTreeMap::from([("a1".to_string(), 60_000)]),
        },
        Command::SetQuota {
            namespace: "shop".into(),
            quota: Quota {
                containers: Some(3),
                memory_mb: Some(1024),
                ..Default::default()
            },
        },
        Command::Scale {
            namespace: "shop".into(),
            name: "web".into(),
            replicas: 4,
            reason: Some("burst: 6 in flight or queued, 1 ready".into()),
        },
        Command::CreateTrigger {
            namespace: "shop".into(),
            container: "web".into(),
            name: "tick".into(),
            spec: TriggerSpec {
                source: TriggerSource::Cron {
                    schedule: "*/2 * * * * *".into(),
                    timezone: "Europe/Paris".into(),
                    catch_up_s: 60,
                },
                method: "POST".into(),
                path: "/tick".into(),
                headers: BTreeMap::from([("x-a".to_string(), "1".to_string())]),
                body: "{{event_id}}".into(),
                max_retries: 3,
            },
        },
        Command::CreateTrigger {
            namespace: "shop".into(),
            container: "web".into(),
            name: "orders".into(),
            spec: TriggerSpec {
                source: TriggerSource::Nats {
                    url: "nats://127.0.0.1:4222".into(),
                    stream: "ORDERS".into(),
                    subject: "orders.new".into(),
                    dead_letter: Some("orders.dead".into()),
                    credentials: None,
                },
                method: "POST".into(),
                path: "/".into(),
                headers: BTreeMap::new(),
                body: String::new(),
                max_retries: 5,
            },
        },
        Command::DeleteTrigger {
            namespace: "shop".into(),
            container: "web".into(),
            name: "tick".into(),
        },
        Command::SetTriggerEnabled {
            namespace: "shop".into(),
            container: "web".into(),
            name: "tick".into(),
            enabled: false,
        },
        Command::ClaimTick {
            namespace: "shop".into(),
            container: "web".into(),
            name: "tick".into(),
            tick_ms: 1_000_000,
            missed: 2,
            deliver: true,
            node: 3,
        },
        Command::RecordFiring {
            namespace: "shop".into(),
            container: "web".into(),
            name: "tick".into(),
            firing: Firing {
                event_id: "tick-1000000".into(),
                scheduled_ms: 1_000_000,
                sent_ms: 1_000_012,
                status: "200".into(),
                ok: true,
                latency_ms: 30,
                attempts: 1,
                node: 3,
            },
        },
        Command::RecordUsage {
            node: 2,
            seq: 1_700_000_000_000,
            entries: vec![UsageEntry {
                namespace: "shop".into(),
                container: "web".into(),
                period_ms: 1_699_999_980_000,
                usage: Usage {
                    memory_mb_ms: 256_000,
                    mvcpu_ms: 500_000,
                    memory_used_kib_ms: 1_024_000,
                    cpu_used_us: 12_345,
                    requests: 3,
                    request_ms: 40,
                    instance_ms: 1000,
                    suspended_ms: 0,
                },
            }],
        },
        Command::Batch {
            commands: vec![
                Command::Scale {
                    namespace: "shop".into(),
                    name: "web".into(),
                    replicas: 2,
                    reason: Some("min-scale".into()),
                },
                Command::SetPending {
                    namespace: "shop".into(),
                    name: "web".into(),
                    reason: None,
                },
            ],
        },
    ]
}

#[test]
fn every_command_variant_keeps_its_encoding() {
    let samples = samples();
    let mut covered: Vec<usize> = samples.iter().map(variant).collect();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(
        covered,
        (0..VARIANTS).collect::<Vec<_>>(),
        "a sample per variant"
    );
    let encoded: Vec<String> = samples
        .iter()
        .map(|c| {
            // The samples were written by version-1 nodes; the version only
            // changes what apply checks, not how a command is encoded.
            let p = Proposal {
                v: 1,
                at_ms: 7,
                command: c.clone(),
            };
            serde_json::to_string(&p).unwrap()
        })
        .collect();
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    let lines: Vec<&str> = golden.lines().collect();
    if std::env::var_os("ROUSE_BLESS").is_some() && lines.len() < encoded.len() {
        // Only appends: a line once written is the contract.
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        out.extend(encoded[lines.len()..].iter().cloned());
        std::fs::write(GOLDEN, out.join("\n") + "\n").unwrap();
        return;
    }
    assert_eq!(
        lines.len(),
        encoded.len(),
        "{GOLDEN} needs a line per sample"
    );
    for (i, (want, got)) in lines.iter().zip(&encoded).enumerate() {
        assert_eq!(got, want, "sample {i} encodes differently");
        // And the old bytes decode to the same command.
        let back: Proposal = serde_json::from_str(want).unwrap();
        assert_eq!(back.command, samples[i]);
    }
}

#[test]
fn a_proposal_from_a_newer_node_is_recognised() {
    let p = Proposal::new(1, Command::RemoveNode { id: 1 });
    assert!(p.readable());
    let newer = Proposal {
        v: COMMAND_VERSION + 1,
        ..p
    };
    assert!(!newer.readable());
}
