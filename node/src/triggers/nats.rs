//! NATS JetStream triggers: while this node leads, one durable pull
//! consumer per enabled NATS trigger delivers each message as an HTTP
//! request to the container through the mesh.
//!
//! ```text
//!  message ─▶ POST path (body = payload, X-Nats-* = its headers,
//!             X-Rouse-Event-Id = stream sequence)
//!     2xx ─▶ ack
//!     else ─▶ nak with backoff; delivered more than max-retries times:
//!             publish to the dead-letter subject (if set), then term
//! ```
//!
//! The consumer is durable and named after the trigger, so a new leader
//! picks up where the last one stopped: unacknowledged messages come again
//! after the ack wait (at least once; duplicates keep their event id).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;

use super::deliver::{backoff, Answer, Delivery, PLATFORM_BUDGET};
use crate::cluster::{now_ms, Cluster};
use crate::state::{Command, Firing, Trigger, TriggerSource};

/// The durable consumer of a trigger (NATS names take no '/' or '.').
pub fn consumer_name(t: &Trigger) -> String {
    format!("rouse-{}-{}-{}", t.namespace, t.container, t.name)
}

/// Runs the consumers of this node while it leads.
pub async fn run(cluster: Arc<Cluster>, delivery: Arc<Delivery>) {
    // Trigger id → (its spec when started, the task).
    let mut running: HashMap<String, (crate::state::TriggerSpec, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wanted: HashMap<String, Trigger> = if cluster.is_leader() {
            let sm = cluster.sm.read();
            sm.data
                .triggers
                .iter()
                .filter(|(_, t)| t.enabled && matches!(t.spec.source, TriggerSource::Nats { .. }))
                .map(|(id, t)| (id.clone(), t.clone()))
                .collect()
        } else {
            HashMap::new()
        };
        running.retain(|id, (spec, task)| {
            let keep = wanted.get(id).is_some_and(|t| t.spec == *spec) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, t) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            tracing::info!(trigger = %id, "consuming from NATS");
            let task = tokio::spawn(consume(cluster.clone(), delivery.clone(), t.clone()));
            running.insert(id, (t.spec.clone(), task));
        }
    }
}

/// Consumes until aborted, reconnecting after errors.
async fn consume(cluster: Arc<Cluster>, delivery: Arc<Delivery>, t: Trigger) {
    loop {
        if let Err(e) = consume_once(&cluster, &delivery, &t).await {
            tracing::warn!(trigger = %t.id(), error = %e, "NATS consumer; retrying in 2s");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn consume_once(
    cluster: &Arc<Cluster>,
    delivery: &Arc<Delivery>,
    t: &Trigger,
) -> Result<(), String> {
    let TriggerSource::Nats {
        url,
        stream,
        subject,
        dead_letter,
        credentials,
    } = &t.spec.source
    else {
        return Ok(());
    };
    let (timeout, slots) = {
        let sm = cluster.sm.read();
        let c = sm
            .data
            .container(&t.namespace, &t.container)
            .ok_or("the container is gone")?;
        (
            c.spec.timeout_secs,
            (c.spec.max_scale * c.spec.max_concurrency).max(1),
        )
    };
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    if let Some(key) = credentials {
        let value = open_secret(cluster, delivery, &t.namespace, &t.container, key)?;
        options = match value.split_once(':') {
            Some((user, pass)) => options.user_and_password(user.into(), pass.into()),
            None => options.token(value),
        };
    }
    let client = options
        .connect(url.as_str())
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let js = jetstream::new(client);
    let stream_name = if stream.is_empty() {
        js.stream_by_subject(subject.as_str())
            .await
            .map_err(|e| format!("no stream holds {subject}: {e}"))?
    } else {
        stream.clone()
    };
    let s = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| format!("stream {stream_name}: {e}"))?;
    let name = consumer_name(t);
    let consumer: jetstream::consumer::PullConsumer = s
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                // The request's whole budget, and some.
                ack_wait: Duration::from_secs(u64::from(timeout) + 10),
                max_ack_pending: i64::from(slots),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {name} on {stream_name}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("consumer {name}: {e}"))?;
    // At most as many in flight as the container has slots.
    let limit = Arc::new(tokio::sync::Semaphore::new(slots as usize));
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| format!("receiving: {e}"))?;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let (cluster, delivery, t, js, dead_letter) = (
            cluster.clone(),
            delivery.clone(),
            t.clone(),
            js.clone(),
            dead_letter.clone(),
        );
        tokio::spawn(async move {
            handle(&cluster, &delivery, &t, &js, dead_letter.as_deref(), msg).await;
            drop(permit);
        });
    }
    Err("the message stream ended".into())
}

/// A secret of the container (or else its namespace), opened.
fn open_secret(
    cluster: &Cluster,
    delivery: &Delivery,
    ns: &str,
    ct: &str,
    key: &str,
) -> Result<String, String> {
    use crate::state::Scope;
    let sm = cluster.sm.read();
    let (scope, sealed) = [Scope::of(ns, Some(ct)), Scope::namespace(ns)]
        .into_iter()
        .find_map(|scope| {
            let s = sm.data.secrets.get(&scope)?.get(key)?.clone();
            Some((scope, s))
        })
        .ok_or_else(|| format!("credentials: no secret {key:?} in {ns}/{ct} or {ns}"))?;
    let dk = delivery
        .keys
        .data_key(&sm.data)
        .map_err(|e| format!("credentials: {e}"))?;
    drop(sm);
    let plain = dk
        .open(&sealed.sealed, &crate::secrets::aad(scope.as_str(), key))
        .map_err(|e| format!("credentials: {e}"))?;
    String::from_utf8(plain).map_err(|_| format!("credentials: secret {key:?} is not UTF-8"))
}

/// One message: deliver, then ack, nak, or dead-letter and term.
async fn handle(
    cluster: &Arc<Cluster>,
    delivery: &Delivery,
    t: &Trigger,
    js: &jetstream::Context,
    dead_letter: Option<&str>,
    msg: jetstream::Message,
) {
    let (seq, delivered, published_ms) = match msg.info() {
        Ok(i) => (
            i.stream_sequence,
            u32::try_from(i.delivered).unwrap_or(1),
            u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        ),
        Err(_) => (0, 1, now_ms()),
    };
    let event = seq.to_string();
    let mut headers: Vec<(String, String)> =
        vec![("x-nats-subject".into(), msg.subject.to_string())];
    if let Some(h) = &msg.headers {
        for (k, vs) in h.iter() {
            for v in vs {
                headers.push((
                    format!("x-nats-{}", k.to_string().to_ascii_lowercase()),
                    v.to_string(),
                ));
            }
        }
    }
    let sent_ms = now_ms();
    let started = Instant::now();
    let mut platform_tries = 0;
    let status = loop {
        match delivery
            .send_event(t, &event, msg.payload.clone(), &headers)
            .await
        {
            // Not the handler's doing: again, without spending a delivery
            // (the ack wait is held off meanwhile).
            Ok(Answer::Platform(why)) if started.elapsed() < PLATFORM_BUDGET => {
                platform_tries += 1;
                tracing::debug!(trigger = %t.id(), event = %event, why = %why, "the platform could not deliver; retrying");
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(backoff(platform_tries)).await;
            }
            Ok(Answer::Platform(why)) => break Err(why),
            Ok(Answer::Status(code)) => break Ok(code),
            Err(e) => break Err(e),
        }
    };
    let ok = matches!(&status, Ok(code) if (200..300).contains(code));
    let status_text = match &status {
        Ok(code) => code.to_string(),
        Err(e) => e.clone(),
    };
    let last_try = delivered > t.spec.max_retries;
    if ok {
        let _ = msg.ack().await;
    } else if last_try {
        if let Some(dl) = dead_letter {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Rouse-Trigger", t.id().as_str());
            h.insert("Rouse-Event-Id", event.as_str());
            h.insert("Rouse-Status", status_text.as_str());
            h.insert("Nats-Original-Subject", msg.subject.as_str());
            match js
                .publish_with_headers(dl.to_string(), h, msg.payload.clone())
                .await
            {
                Ok(ack) => {
                    let _ = ack.await;
                }
                Err(e) => {
                    tracing::warn!(trigger = %t.id(), error = %e, "publishing to the dead-letter subject")
                }
            }
        }
        let _ = msg.ack_with(AckKind::Term).await;
    } else {
        let _ = msg.ack_with(AckKind::Nak(Some(backoff(delivered)))).await;
    }
    // Successes and final failures are recorded; a nak is only a try.
    if ok || last_try {
        let firing = Firing {
            event_id: event,
            scheduled_ms: published_ms,
            sent_ms,
            status: status_text,
            ok,
            latency_ms: started.elapsed().as_millis() as u64,
            attempts: delivered,
            node: cluster.id,
        };
        record(cluster, t, firing).await;
    }
}

async fn record(cluster: &Cluster, t: &Trigger, firing: Firing) {
    let cmd = Command::RecordFiring {
        namespace: t.namespace.clone(),
        container: t.container.clone(),
        name: t.name.clone(),
        firing,
    };
    if let Err(e) = cluster.write(cmd).await {
        tracing::debug!(error = %e, "recording a NATS delivery");
    }
}
