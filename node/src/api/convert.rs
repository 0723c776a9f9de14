//! Protobuf ↔ domain conversions for the public API, in one file.

use rouse_proto::v1 as pb;

use crate::cluster::MemberView;
use crate::state::{Container, Namespace, Privacy, Protocol, Quota, StateData};

impl From<&Namespace> for pb::Namespace {
    fn from(n: &Namespace) -> Self {
        pb::Namespace {
            name: n.name.clone(),
            env: n.env.clone().into_iter().collect(),
            secret_names: vec![],
            revision: n.revision,
            created_at_ms: n.created_at_ms,
            updated_at_ms: n.updated_at_ms,
            quota: Some(pb::Quota::from(&n.quota)),
        }
    }
}

impl From<&Quota> for pb::Quota {
    fn from(q: &Quota) -> Self {
        pb::Quota {
            containers: q.containers,
            max_scale: q.max_scale,
            secrets: q.secrets,
            tokens: q.tokens,
            memory_mb: q.memory_mb,
        }
    }
}

impl From<pb::Quota> for Quota {
    fn from(q: pb::Quota) -> Self {
        Quota {
            containers: q.containers,
            max_scale: q.max_scale,
            secrets: q.secrets,
            tokens: q.tokens,
            memory_mb: q.memory_mb,
        }
    }
}

pub fn privacy_to_pb(p: Privacy) -> pb::Privacy {
    match p {
        Privacy::Public => pb::Privacy::Public,
        Privacy::Private => pb::Privacy::Private,
    }
}

pub fn protocol_to_pb(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http1 => pb::Protocol::Http1,
        Protocol::H2c => pb::Protocol::H2c,
    }
}

/// `None` for UNSPECIFIED (keep the current value).
pub fn privacy_from_pb(v: i32) -> Result<Option<Privacy>, String> {
    match pb::Privacy::try_from(v) {
        Ok(pb::Privacy::Unspecified) => Ok(None),
        Ok(pb::Privacy::Public) => Ok(Some(Privacy::Public)),
        Ok(pb::Privacy::Private) => Ok(Some(Privacy::Private)),
        Err(_) => Err(format!("{v} is not a privacy (public or private)")),
    }
}

pub fn protocol_from_pb(v: i32) -> Result<Option<Protocol>, String> {
    match pb::Protocol::try_from(v) {
        Ok(pb::Protocol::Unspecified) => Ok(None),
        Ok(pb::Protocol::Http1) => Ok(Some(Protocol::Http1)),
        Ok(pb::Protocol::H2c) => Ok(Some(Protocol::H2c)),
        Err(_) => Err(format!("{v} is not a protocol (http1 or h2c)")),
    }
}

/// A container with its instances as the state holds them.
pub fn container_with_instances(c: &Container, state: &StateData) -> pb::Container {
    let mut out = pb::Container::from(c);
    out.secret_names = state.secret_names(&crate::state::Scope::of(&c.namespace, Some(&c.name)));
    out.instances = state
        .instances_of(&c.namespace, &c.name)
        .map(|i| {
            let st = state.statuses.get(&i.id).cloned().unwrap_or_default();
            pb::Instance {
                id: i.id.clone(),
                node: i.node,
                generation: i.generation,
                state: st.state.as_str().into(),
                message: st.message,
                exit_code: st.exit_code,
                oom_killed: st.oom_killed,
                restarts: st.restarts,
                port: st.port,
                updated_at_ms: st.updated_at_ms,
                ip: st.ip,
            }
        })
        .collect();
    out
}

impl From<&Container> for pb::Container {
    fn from(c: &Container) -> Self {
        let s = &c.spec;
        pb::Container {
            generation: c.generation,
            resolved_image: c.resolved_image.clone().unwrap_or_default(),
            instances: vec![],
            region: c.spec.region.clone().unwrap_or_default(),
            health_path: c.spec.health_path.clone().unwrap_or_default(),
            read_only_rootfs: s.read_only_rootfs,
            routing: s.routing.as_str().into(),
            desired_scale: c.desired_scale,
            scale_reason: c.scale_reason.clone().unwrap_or_default(),
            scaled_at_ms: c.scaled_at_ms,
            scale_ups: c.scale_ups,
            scale_downs: c.scale_downs,
            pending_reason: c.pending_reason.clone().unwrap_or_default(),
            cold_start: c
                .cold_start_summary()
                .map(|(last, median)| pb::ColdStartSummary {
                    samples: u32::try_from(c.cold_starts.len()).unwrap_or(u32::MAX),
                    median_total_ms: median,
                    last_total_ms: last.total_ms,
                    last_placement_ms: last.placement_ms,
                    last_pull_ms: last.pull_ms,
                    last_create_ms: last.create_ms,
                    last_start_ms: last.start_ms,
                    last_ready_ms: last.ready_ms,
                    last_at_ms: last.at_ms,
                    last_network_ms: last.network_ms,
                }),
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            image: s.image.clone(),
            port: s.port,
            env: s.env.clone().into_iter().collect(),
            secret_names: vec![],
            cpu_mvcpu: s.cpu_mvcpu,
            memory_mb: s.memory_mb,
            min_scale: s.min_scale,
            max_scale: s.max_scale,
            max_concurrency: s.max_concurrency,
            timeout_seconds: s.timeout_secs,
            privacy: privacy_to_pb(s.privacy).into(),
            protocol: protocol_to_pb(s.protocol).into(),
            scale_to_zero_after_seconds: s.scale_to_zero_after_secs,
            revision: c.revision,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
        }
    }
}

impl From<MemberView> for pb::Member {
    fn from(m: MemberView) -> Self {
        let r = m.record.unwrap_or_default();
        pb::Member {
            id: m.id,
            address: m.address,
            role: if m.voter { "voter" } else { "learner" }.into(),
            zone: r.zone,
            region: r.region,
            healthy: m.healthy,
            cpu_capacity_mvcpu: r.cpu_capacity_mvcpu,
            memory_capacity_mb: r.memory_capacity_mb,
            http_address: r.http_addr,
        }
    }
}

/// A node as `rouse node list` shows it.
pub fn node_view(n: &crate::state::NodeRecord, state: &StateData) -> pb::Node {
    let st = state.node_state(n.id);
    let label = if st.down {
        "down"
    } else if st.draining {
        "draining"
    } else if st.cordoned {
        "cordoned"
    } else {
        "up"
    };
    let (mut cpu, mut mem, mut count) = (0u32, 0u32, 0u32);
    for i in state.instances.values().filter(|i| i.node == n.id) {
        if let Some(c) = state.container(&i.namespace, &i.container) {
            cpu = cpu.saturating_add(c.spec.cpu_mvcpu);
            mem = mem.saturating_add(c.spec.memory_mb);
        }
        count += 1;
    }
    pb::Node {
        id: n.id,
        address: n.api_addr.clone(),
        http_address: n.http_addr.clone(),
        zone: n.zone.clone(),
        region: n.region.clone(),
        state: label.into(),
        cpu_capacity_mvcpu: n.cpu_capacity_mvcpu,
        memory_capacity_mb: n.memory_capacity_mb,
        cpu_allocated_mvcpu: cpu,
        memory_allocated_mb: mem,
        instances: count,
    }
}
