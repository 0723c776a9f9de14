//! Clients doing reads and writes on per-key registers built from rouse
//! objects (a namespace's env value), plus create-only writes (one
//! namespace per write) whose acknowledgement must survive. Every
//! operation's invocation and completion time and outcome is recorded; a
//! write that timed out or failed in an unknown way is "unknown", never
//! assumed absent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rouse_client::{pb, Client};
use serde::Serialize;

pub const KEYS: usize = 3;
pub const INITIAL: &str = "init";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Definitely not applied.
    Fail,
    /// May or may not have been applied.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub client: usize,
    pub node: u64,
    /// `r0`… for registers, `set` for create-only writes.
    pub key: String,
    /// "read", "write" or "create".
    pub op: &'static str,
    /// Written value, created name, or the value a read returned.
    pub value: String,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
}

pub type History = Arc<Mutex<Vec<Event>>>;

fn classify(code: Option<tonic::Code>) -> Outcome {
    use tonic::Code::*;
    match code {
        Some(
            InvalidArgument | NotFound | AlreadyExists | FailedPrecondition | Aborted
            | Unimplemented,
        ) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

pub fn register_name(k: usize) -> String {
    format!("r{k}")
}

/// Creates the register namespaces with their initial value.
pub async fn setup(endpoint: &str) -> anyhow::Result<()> {
    let mut c = crate::connect(endpoint).await?;
    for k in 0..KEYS {
        let env = HashMap::from([("V".to_string(), INITIAL.to_string())]);
        match c.create_namespace(&register_name(k), env).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs one client until `until`, against `endpoints` (node id, url).
pub async fn client(
    id: usize,
    seed: u64,
    endpoints: Arc<Mutex<Vec<(u64, String)>>>,
    start: Instant,
    until: Instant,
    history: History,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut conns: HashMap<u64, Client> = HashMap::new();
    let mut seq = 0u64;
    let ms = |t: Instant| u64::try_from(t.duration_since(start).as_millis()).unwrap_or(u64::MAX);
    while Instant::now() < until {
        let eps = endpoints.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if eps.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let (node, url) = eps[rng.random_range(0..eps.len())].clone();
        let client = match conns.get(&node) {
            Some(c) => c.clone(),
            None => {
                match tokio::time::timeout(Duration::from_millis(500), crate::connect(&url)).await {
                    Ok(Ok(c)) => {
                        conns.insert(node, c.clone());
                        c
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
        };
        let mut c = client;
        seq += 1;
        let roll: f64 = rng.random();
        let key = rng.random_range(0..KEYS);
        let invoke = Instant::now();
        let timeout = Duration::from_secs(2);
        let (op, key_name, value, outcome) = if roll < 0.45 {
            let v = format!("c{id}-{seq}");
            let req = pb::UpdateNamespaceRequest {
                name: register_name(key),
                env: HashMap::from([("V".to_string(), v.clone())]),
                replace_env: true,
                secrets: HashMap::new(),
            };
            let outcome = match tokio::time::timeout(timeout, c.update_namespace(req)).await {
                Ok(Ok(_)) => Outcome::Ok,
                Ok(Err(e)) => classify(e.code()),
                Err(_) => Outcome::Unknown,
            };
            ("write", register_name(key), v, outcome)
        } else if roll < 0.9 {
            match tokio::time::timeout(timeout, c.get_namespace(&register_name(key), false)).await {
                Ok(Ok(ns)) => (
                    "read",
                    register_name(key),
                    ns.env.get("V").cloned().unwrap_or_default(),
                    Outcome::Ok,
                ),
                Ok(Err(e)) => (
                    "read",
                    register_name(key),
                    String::new(),
                    classify(e.code()),
                ),
                Err(_) => ("read", register_name(key), String::new(), Outcome::Unknown),
            }
        } else {
            let name = format!("s-{id}-{seq}");
            let outcome = match tokio::time::timeout(
                timeout,
                c.create_namespace(&name, HashMap::new()),
            )
            .await
            {
                Ok(Ok(_)) => Outcome::Ok,
                Ok(Err(e)) => classify(e.code()),
                Err(_) => Outcome::Unknown,
            };
            ("create", "set".to_string(), name, outcome)
        };
        let complete = Instant::now();
        if outcome == Outcome::Unknown {
            // Drop the connection: it may be to a paused or dead node.
            conns.remove(&node);
        }
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Event {
                client: id,
                node,
                key: key_name,
                op,
                value,
                invoke_ms: ms(invoke),
                complete_ms: ms(complete),
                outcome,
            });
    }
}
