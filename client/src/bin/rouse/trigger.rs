//! `rouse trigger`: cron schedules and NATS subjects delivered to a
//! container.

use clap::Subcommand;
use rouse_client::Client;

use super::{duration_secs, emit, rfc3339, scope_arg, table, Fail, Format};

#[derive(Subcommand)]
pub(super) enum TriggerCmd {
    /// Create a trigger of NS/CONTAINER: --cron EXPR (5 fields, or 6 with
    /// leading seconds) or --nats-subject S --nats-url URL.
    Create {
        /// NAMESPACE/CONTAINER
        container: String,
        /// The trigger's name (a DNS label), unique in its container.
        #[arg(long)]
        name: String,
        /// A cron schedule: 5 fields, or 6 with leading seconds.
        #[arg(
            long,
            conflicts_with = "nats_subject",
            required_unless_present = "nats_subject"
        )]
        cron: Option<String>,
        /// IANA time zone of the schedule (default UTC).
        #[arg(long, requires = "cron")]
        timezone: Option<String>,
        /// A tick missed with no leader fires late within this window (default 60s).
        #[arg(long, requires = "cron")]
        catch_up: Option<String>,
        /// A NATS JetStream subject whose messages are delivered.
        #[arg(long)]
        nats_subject: Option<String>,
        /// The NATS server (nats://HOST:4222).
        #[arg(long, requires = "nats_subject")]
        nats_url: Option<String>,
        /// The JetStream stream holding the subject (default: found by subject).
        #[arg(long, requires = "nats_subject")]
        nats_stream: Option<String>,
        /// Subject a message goes to after its last failed retry.
        #[arg(long, requires = "nats_subject")]
        dead_letter: Option<String>,
        /// A secret of the container (or namespace) holding user:password or a token.
        #[arg(long, requires = "nats_subject")]
        nats_credentials: Option<String>,
        /// HTTP method (default POST).
        #[arg(long)]
        method: Option<String>,
        /// Path (default /).
        #[arg(long)]
        path: Option<String>,
        /// A header, K=V (repeatable).
        #[arg(long = "header", value_name = "K=V")]
        headers: Vec<String>,
        /// The body; {{event_id}}, {{scheduled_at}} and {{trigger}} are replaced.
        #[arg(long)]
        body: Option<String>,
        /// Retries after a connection failure, a 5xx or a timeout (default 3).
        #[arg(long)]
        max_retries: Option<u32>,
    },
    /// Triggers of every namespace you may see, of NS, or of NS/CONTAINER.
    List {
        /// NAMESPACE or NAMESPACE/CONTAINER (default: all you may see).
        scope: Option<String>,
    },
    /// A trigger, with its last firings: NS/CONTAINER/NAME.
    Get {
        /// NAMESPACE/CONTAINER/NAME
        trigger: String,
    },
    /// Delete a trigger.
    Delete {
        /// NAMESPACE/CONTAINER/NAME
        trigger: String,
    },
    /// Start firing again.
    Enable {
        /// NAMESPACE/CONTAINER/NAME
        trigger: String,
    },
    /// Stop firing (ticks and messages meanwhile are not delivered).
    Disable {
        /// NAMESPACE/CONTAINER/NAME
        trigger: String,
    },
}

/// NS/CONTAINER/NAME.
fn trigger_arg(s: &str) -> Result<(String, String, String), Fail> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [ns, ct, name] if !ns.is_empty() && !ct.is_empty() && !name.is_empty() => {
            Ok((ns.to_string(), ct.to_string(), name.to_string()))
        }
        _ => Err(Fail(format!(
            "trigger: {s:?} is not NAMESPACE/CONTAINER/NAME"
        ))),
    }
}

/// A trigger as `-o json` shows it: the contract scripts rely on.
fn trigger_json(t: &rouse_client::pb::Trigger, history: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": t.name,
        "namespace": t.namespace,
        "container": t.container,
        "kind": t.kind,
        "enabled": t.enabled,
        "fired": t.fired,
        "failed": t.failed,
        "missed": t.missed,
        "pending": t.pending,
        "last_fired_at": rfc3339(t.last_fired_at_ms),
        "next_fire_at": rfc3339(t.next_fire_at_ms),
        "last_status": if t.last_status.is_empty() { serde_json::Value::Null } else { t.last_status.clone().into() },
        "method": t.method,
        "path": t.path,
        "max_retries": t.max_retries,
    });
    if t.kind == "cron" {
        v["schedule"] = t.schedule.clone().into();
        v["timezone"] = t.timezone.clone().into();
        v["catch_up_seconds"] = t.catch_up_seconds.into();
    } else {
        v["subject"] = t.subject.clone().into();
        v["nats_url"] = t.nats_url.clone().into();
        v["nats_stream"] = t.nats_stream.clone().into();
        v["dead_letter"] = t.dead_letter.clone().into();
        v["nats_credentials"] = t.nats_credentials.clone().into();
    }
    if history {
        v["history"] = t
            .history
            .iter()
            .map(|f| {
                serde_json::json!({
                    "scheduled_at": rfc3339(f.scheduled_ms),
                    "sent_at": rfc3339(f.sent_ms),
                    "event_id": f.event_id,
                    "status": f.status,
                    "ok": f.ok,
                    "latency_ms": f.latency_ms,
                    "attempts": f.attempts,
                    "node": f.node,
                })
            })
            .collect();
    }
    v
}

fn trigger_rows(v: &[serde_json::Value]) -> String {
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    table(
        &[
            "NAMESPACE",
            "CONTAINER",
            "NAME",
            "KIND",
            "SOURCE",
            "ENABLED",
            "FIRED",
            "FAILED",
            "MISSED",
            "LAST",
            "NEXT",
        ],
        v.iter()
            .map(|t| {
                let source = if t["kind"] == "cron" {
                    s(&t["schedule"])
                } else {
                    s(&t["subject"])
                };
                vec![
                    s(&t["namespace"]),
                    s(&t["container"]),
                    s(&t["name"]),
                    s(&t["kind"]),
                    source,
                    s(&t["enabled"]),
                    s(&t["fired"]),
                    s(&t["failed"]),
                    s(&t["missed"]),
                    format!("{} {}", s(&t["last_fired_at"]), s(&t["last_status"])),
                    s(&t["next_fire_at"]),
                ]
            })
            .collect(),
    )
}

pub(super) async fn trigger_cmd(c: &mut Client, fmt: Format, cmd: TriggerCmd) -> Result<(), Fail> {
    match cmd {
        TriggerCmd::Create {
            container,
            name,
            cron,
            timezone,
            catch_up,
            nats_subject,
            nats_url,
            nats_stream,
            dead_letter,
            nats_credentials,
            method,
            path,
            headers,
            body,
            max_retries,
        } => {
            let (ns, ct) = match scope_arg(&container)? {
                (ns, Some(ct)) => (ns, ct),
                _ => {
                    return Err(Fail(format!(
                        "container: {container:?} is not NAMESPACE/CONTAINER"
                    )))
                }
            };
            let catch_up_seconds = match catch_up {
                Some(c) => Some(
                    u32::try_from(duration_secs("catch_up", Some(&c), "60s")?)
                        .map_err(|_| Fail("catch_up: too long".into()))?,
                ),
                None => None,
            };
            let mut hs = std::collections::HashMap::new();
            for h in &headers {
                let (k, v) = h
                    .split_once('=')
                    .ok_or_else(|| Fail(format!("header: {h:?} is not K=V")))?;
                hs.insert(k.to_string(), v.to_string());
            }
            let t = c
                .create_trigger(rouse_client::pb::CreateTriggerRequest {
                    namespace: ns,
                    container: ct,
                    name,
                    cron: cron.unwrap_or_default(),
                    timezone: timezone.unwrap_or_default(),
                    catch_up_seconds,
                    nats_subject: nats_subject.unwrap_or_default(),
                    nats_url: nats_url.unwrap_or_default(),
                    nats_stream: nats_stream.unwrap_or_default(),
                    dead_letter: dead_letter.unwrap_or_default(),
                    nats_credentials: nats_credentials.unwrap_or_default(),
                    method: method.unwrap_or_default(),
                    path: path.unwrap_or_default(),
                    headers: hs,
                    body: body.unwrap_or_default(),
                    max_retries,
                })
                .await?;
            let v = trigger_json(&t, false);
            emit(fmt, &v, || trigger_rows(std::slice::from_ref(&v)))
        }
        TriggerCmd::List { scope } => {
            let (ns, ct) = match &scope {
                Some(s) => scope_arg(s)?,
                None => (String::new(), None),
            };
            let v: Vec<serde_json::Value> = c
                .list_triggers(&ns, ct.as_deref().unwrap_or_default())
                .await?
                .iter()
                .map(|t| trigger_json(t, false))
                .collect();
            emit(fmt, &v, || trigger_rows(&v))
        }
        TriggerCmd::Get { trigger } => {
            let (ns, ct, name) = trigger_arg(&trigger)?;
            let t = c.get_trigger(&ns, &ct, &name).await?;
            let v = trigger_json(&t, true);
            emit(fmt, &v, || {
                let mut out = trigger_rows(std::slice::from_ref(&v));
                out.push_str("\n\nlast firings:\n");
                out.push_str(&table(
                    &[
                        "SCHEDULED",
                        "EVENT",
                        "STATUS",
                        "LATENCY",
                        "ATTEMPTS",
                        "NODE",
                    ],
                    t.history
                        .iter()
                        .rev()
                        .map(|f| {
                            vec![
                                rfc3339(f.scheduled_ms).as_str().unwrap_or("-").to_string(),
                                f.event_id.clone(),
                                f.status.clone(),
                                format!("{}ms", f.latency_ms),
                                f.attempts.to_string(),
                                f.node.to_string(),
                            ]
                        })
                        .collect(),
                ));
                out
            })
        }
        TriggerCmd::Delete { trigger } => {
            let (ns, ct, name) = trigger_arg(&trigger)?;
            c.delete_trigger(&ns, &ct, &name).await?;
            emit(fmt, &serde_json::json!({ "deleted": trigger }), || {
                format!("trigger {trigger} deleted")
            })
        }
        TriggerCmd::Enable { trigger } => set_trigger_enabled(c, fmt, &trigger, true).await,
        TriggerCmd::Disable { trigger } => set_trigger_enabled(c, fmt, &trigger, false).await,
    }
}

async fn set_trigger_enabled(
    c: &mut Client,
    fmt: Format,
    trigger: &str,
    enabled: bool,
) -> Result<(), Fail> {
    let (ns, ct, name) = trigger_arg(trigger)?;
    let t = c.set_trigger_enabled(&ns, &ct, &name, enabled).await?;
    let v = trigger_json(&t, false);
    emit(fmt, &v, || trigger_rows(std::slice::from_ref(&v)))
}
