//! `rouse events` and `rouse usage`: what happened and what it cost.

use rouse_client::Client;

use super::{emit, printable, rfc3339, scope_arg, table, Fail, Format};

/// An event as `rouse events -o json` prints it (one per line).
fn event_json(e: &rouse_client::pb::Event) -> serde_json::Value {
    let text = |s: &str| {
        if s.is_empty() {
            serde_json::Value::Null
        } else {
            s.into()
        }
    };
    serde_json::json!({
        "seq": e.seq,
        "time": rfc3339(e.at_ms),
        "kind": e.kind,
        "namespace": text(&e.namespace),
        "container": text(&e.container),
        "instance": text(&e.instance),
        "node": if e.node == 0 { serde_json::Value::Null } else { e.node.into() },
        "reason": text(&e.reason),
        "message": text(&e.message),
        "exit_code": e.exit_code,
    })
}

/// An event on one line of text.
fn event_line(e: &rouse_client::pb::Event) -> String {
    let mut line = format!(
        "{}  {:<20}",
        rfc3339(e.at_ms).as_str().unwrap_or("-"),
        e.kind
    );
    match (e.namespace.is_empty(), e.container.is_empty()) {
        (false, false) => line += &format!("  {}/{}", e.namespace, e.container),
        (false, true) => line += &format!("  {}", e.namespace),
        _ => {}
    }
    if !e.instance.is_empty() {
        line += &format!("  instance={}", e.instance);
    }
    if e.node != 0 {
        line += &format!("  node={}", e.node);
    }
    if !e.reason.is_empty() {
        line += &format!("  reason={}", e.reason);
    }
    if let Some(c) = e.exit_code {
        line += &format!("  exit={c}");
    }
    if !e.message.is_empty() {
        line += &format!("  {}", printable(&e.message).trim_end());
    }
    line
}

/// A point in time from a duration ago or an RFC 3339 time (Unix ms).
pub(super) fn time_arg(field: &str, v: &str) -> Result<u64, Fail> {
    let now = std::time::SystemTime::now();
    if let Ok(d) = humantime::parse_duration(v) {
        let t = now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64));
    }
    match humantime::parse_rfc3339_weak(v) {
        Ok(t) => Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)),
        Err(_) => Err(Fail(format!(
            "{field}: {v:?} is neither a duration (1h, 30m) nor an RFC 3339 time"
        ))),
    }
}

/// A listing's NS or NS/CONTAINER (empty: all the caller may see).
fn listing_scope(scope: Option<&str>) -> Result<(String, String), Fail> {
    match scope {
        Some(s) => scope_arg(s).map(|(ns, ct)| (ns, ct.unwrap_or_default())),
        None => Ok((String::new(), String::new())),
    }
}

/// A time flag's Unix ms, 0 when not given.
fn time_or_zero(field: &str, v: Option<&str>) -> Result<u64, Fail> {
    v.map(|v| time_arg(field, v))
        .transpose()
        .map(Option::unwrap_or_default)
}

fn usage_json(r: &rouse_client::pb::UsageRow) -> serde_json::Value {
    serde_json::json!({
        "namespace": r.namespace,
        "container": if r.container.is_empty() { serde_json::Value::Null } else { r.container.clone().into() },
        "period_start": rfc3339(r.period_start_ms.max(1)),
        "period_end": rfc3339(r.period_end_ms),
        "memory_gb_s_allocated": r.memory_gb_s_allocated,
        "vcpu_s_allocated": r.vcpu_s_allocated,
        "memory_gb_s_used": r.memory_gb_s_used,
        "cpu_s_used": r.cpu_s_used,
        "requests": r.requests,
        "request_s": r.request_seconds,
        "instance_s": r.instance_s,
        "suspended_s": r.suspended_s,
    })
}

/// `rouse events`: the kept events, then (following) each new one.
pub(super) async fn events(
    c: &mut Client,
    fmt: Format,
    scope: Option<String>,
    follow: bool,
    since: Option<String>,
) -> Result<(), Fail> {
    let (namespace, container) = listing_scope(scope.as_deref())?;
    let req = rouse_client::pb::EventsRequest {
        namespace,
        container,
        since_ms: time_or_zero("since", since.as_deref())?,
        follow,
        after_seq: 0,
    };
    let mut stream = c.events(req).await?;
    while let Some(e) = stream.message().await.map_err(rouse_client::Error::from)? {
        match fmt {
            Format::Table => println!("{}", event_line(&e)),
            _ => println!("{}", event_json(&e)),
        }
    }
    Ok(())
}

/// `rouse usage`: the ledger's rows for the scope and range.
pub(super) async fn usage(
    c: &mut Client,
    fmt: Format,
    scope: Option<String>,
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
) -> Result<(), Fail> {
    let (namespace, container) = listing_scope(scope.as_deref())?;
    let req = rouse_client::pb::UsageRequest {
        namespace,
        container,
        since_ms: time_or_zero("since", since.as_deref())?,
        until_ms: time_or_zero("until", until.as_deref())?,
        by: by.unwrap_or_default(),
    };
    let rows = c.usage(req).await?;
    let v: Vec<serde_json::Value> = rows.iter().map(usage_json).collect();
    emit(fmt, &v, || {
        table(
            &[
                "NAMESPACE",
                "CONTAINER",
                "FROM",
                "TO",
                "GB-S ALLOC",
                "VCPU-S ALLOC",
                "GB-S USED",
                "CPU-S USED",
                "REQUESTS",
                "REQUEST-S",
                "INSTANCE-S",
                "SUSPENDED-S",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.namespace.clone(),
                        if r.container.is_empty() {
                            "(total)".into()
                        } else {
                            r.container.clone()
                        },
                        rfc3339(r.period_start_ms.max(1))
                            .as_str()
                            .unwrap_or("-")
                            .to_string(),
                        rfc3339(r.period_end_ms).as_str().unwrap_or("-").to_string(),
                        format!("{:.3}", r.memory_gb_s_allocated),
                        format!("{:.3}", r.vcpu_s_allocated),
                        format!("{:.3}", r.memory_gb_s_used),
                        format!("{:.3}", r.cpu_s_used),
                        r.requests.to_string(),
                        format!("{:.1}", r.request_seconds),
                        format!("{:.1}", r.instance_s),
                        format!("{:.1}", r.suspended_s),
                    ]
                })
                .collect(),
        )
    })
}
