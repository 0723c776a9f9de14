//! Clients doing reads and writes on registers built from rouse objects (a
//! namespace's env value `V`), plus create-only writes (one namespace per
//! write) whose acknowledgement must survive. Every operation's invocation
//! and completion time (nanoseconds since the run began) and outcome is
//! recorded; a write that timed out or failed in an unknown way is
//! "unknown", never assumed absent.
//!
//! Which register an operation goes to is decided by [`Registers`]; the
//! [`keeper`] creates fresh registers ahead of need and deletes retired
//! ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rouse_client::{pb, Client};
use serde::Serialize;

use crate::registers::Registers;

/// Every register's value before its first write.
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
    /// The process in the exported history: the client's id at first, and a
    /// new one (`+ clients`) after every operation whose outcome is unknown,
    /// since that operation may still be pending (a process has at most one
    /// operation pending).
    pub process: u64,
    pub node: u64,
    /// `r0`… for registers, `set` for create-only writes.
    pub key: String,
    /// "read", "write" or "create".
    pub op: &'static str,
    /// Written value, created name, or the value a read returned.
    pub value: String,
    pub invoke_ns: u64,
    pub complete_ns: u64,
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

/// Creates `names` as registers holding [`INITIAL`]; one that already
/// exists (an earlier attempt that timed out did land) counts as created.
pub async fn create_registers(c: &mut Client, names: &[String]) -> Result<(), rouse_client::Error> {
    for name in names {
        let env = HashMap::from([("V".to_string(), INITIAL.to_string())]);
        match c.create_namespace(name, env).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the first registers, before any client starts.
pub async fn setup(endpoint: &str, registers: &Mutex<Registers>) -> anyhow::Result<()> {
    let names = lock(registers).initial();
    let mut c = crate::connect(endpoint).await?;
    create_registers(&mut c, &names).await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Until `until`: keeps spare registers created and deletes retired ones,
/// through any reachable node, retrying through faults.
pub async fn keeper(
    seed: u64,
    registers: Arc<Mutex<Registers>>,
    endpoints: Arc<Mutex<Vec<(u64, String)>>>,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4B45_4550);
    let mut conn: Option<Client> = None;
    let timeout = Duration::from_secs(2);
    while Instant::now() < until {
        let (create, delete) = {
            let r = lock(&registers);
            (r.to_create(), r.to_delete())
        };
        if create.is_none() && delete.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let eps = lock(&endpoints).clone();
                if eps.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let (_, url) = &eps[rng.random_range(0..eps.len())];
                match tokio::time::timeout(Duration::from_millis(500), crate::connect(url)).await {
                    Ok(Ok(c)) => c,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let done = if let Some(name) = create {
            let names = [name.clone()];
            let ok = matches!(
                tokio::time::timeout(timeout, create_registers(&mut c, &names)).await,
                Ok(Ok(()))
            );
            if ok {
                lock(&registers).created(&name);
            }
            ok
        } else if let Some(name) = delete {
            let ok = match tokio::time::timeout(timeout, c.delete_namespace(&name)).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => e.code() == Some(tonic::Code::NotFound),
                Err(_) => false,
            };
            if ok {
                lock(&registers).deleted(&name);
            }
            ok
        } else {
            true
        };
        if done {
            conn = Some(c);
        } else {
            // Try another node next time.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What every client shares.
#[derive(Clone)]
pub struct Shared {
    /// (node id, url) of every member.
    pub endpoints: Arc<Mutex<Vec<(u64, String)>>>,
    pub registers: Arc<Mutex<Registers>>,
    pub history: History,
    pub start: Instant,
    pub until: Instant,
    /// How many clients run (process ids step by this).
    pub clients: usize,
}

/// Nanoseconds from `start` to now, strictly after `after`: a client's next
/// invocation must sort after its previous completion in the exported
/// history. Waits out the (theoretical) tie instead of bending a time.
fn now_after(start: Instant, after: Option<u64>) -> u64 {
    loop {
        let t = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if after.is_none_or(|a| t > a) {
            return t;
        }
        std::thread::yield_now();
    }
}

/// Runs one client until `shared.until`.
pub async fn client(id: usize, seed: u64, shared: Shared) {
    let Shared {
        endpoints,
        registers,
        history,
        start,
        until,
        clients,
    } = shared;
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut conns: HashMap<u64, Client> = HashMap::new();
    let mut seq = 0u64;
    let mut process = id as u64;
    let mut last_complete: Option<u64> = None;
    while Instant::now() < until {
        let eps = lock(&endpoints).clone();
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
        let roll: f64 = rng.random();
        // Register operations go to a random slot's current register, or
        // another slot's while that one waits for a fresh register.
        let register = if roll < 0.9 {
            let picked = {
                let mut regs = lock(&registers);
                let first = rng.random_range(0..regs.slots());
                (0..regs.slots()).find_map(|i| regs.begin(first + i))
            };
            match picked {
                Some(r) => Some(r),
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        } else {
            None
        };
        seq += 1;
        let invoke_ns = now_after(start, last_complete);
        let timeout = Duration::from_secs(2);
        let (op, key_name, value, outcome) = match register {
            Some(reg) if roll < 0.45 => {
                let v = format!("c{id}-{seq}");
                let req = pb::UpdateNamespaceRequest {
                    name: reg.clone(),
                    env: HashMap::from([("V".to_string(), v.clone())]),
                    replace_env: true,
                    secrets: HashMap::new(),
                };
                let outcome = match tokio::time::timeout(timeout, c.update_namespace(req)).await {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(e)) => classify(e.code()),
                    Err(_) => Outcome::Unknown,
                };
                ("write", reg, v, outcome)
            }
            Some(reg) => match tokio::time::timeout(timeout, c.get_namespace(&reg, false)).await {
                Ok(Ok(ns)) => (
                    "read",
                    reg,
                    ns.env.get("V").cloned().unwrap_or_default(),
                    Outcome::Ok,
                ),
                Ok(Err(e)) => ("read", reg, String::new(), classify(e.code())),
                Err(_) => ("read", reg, String::new(), Outcome::Unknown),
            },
            None => {
                let name = format!("s-{id}-{seq}");
                let outcome =
                    match tokio::time::timeout(timeout, c.create_namespace(&name, HashMap::new()))
                        .await
                    {
                        Ok(Ok(_)) => Outcome::Ok,
                        Ok(Err(e)) => classify(e.code()),
                        Err(_) => Outcome::Unknown,
                    };
                ("create", "set".to_string(), name, outcome)
            }
        };
        let complete_ns = now_after(start, Some(invoke_ns.saturating_sub(1)));
        last_complete = Some(complete_ns);
        if op != "create" {
            lock(&registers).end(&key_name, op == "write" && outcome == Outcome::Unknown);
        }
        let this_process = process;
        if outcome == Outcome::Unknown {
            // Drop the connection: it may be to a paused or dead node.
            conns.remove(&node);
            process += clients.max(1) as u64;
        }
        lock(&history).push(Event {
            client: id,
            process: this_process,
            node,
            key: key_name,
            op,
            value,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }
}
