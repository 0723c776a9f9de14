//! One tick's delivery: an HTTP request to this node's mesh, retried with
//! backoff on connection failures, 5xx and timeouts, then recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::cluster::{now_ms, Cluster};
use crate::keys::Keyring;
use crate::state::{Command, Firing, Trigger};

/// Headers every delivery carries.
pub const TRIGGER_HEADER: &str = "x-rouse-trigger";
pub const EVENT_ID_HEADER: &str = "x-rouse-event-id";

/// What a delivery needs: where the mesh answers and how to sign.
pub struct Delivery {
    pub cluster: Arc<Cluster>,
    pub keys: Arc<Keyring>,
    /// This node's public mesh (`host:port`, reachable from this node).
    pub mesh: String,
    pub base_domain: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The event id of a cron tick: stable whoever delivers it.
pub fn event_id(trigger: &str, tick_ms: u64) -> String {
    format!("{trigger}-{tick_ms}")
}

/// How long a delivery keeps trying through the platform's own failures
/// (a node that just died, a full queue) before it counts as failed.
pub const PLATFORM_BUDGET: Duration = Duration::from_secs(60);

/// What a delivery attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The handler's status (or the mesh's, for the handler: a timeout).
    Status(u16),
    /// The platform failed before the handler had the request: a node's
    /// mesh unreachable, a full queue, an instance that could not resume.
    Platform(String),
}

/// Mesh errors that are not the handler's doing.
fn platform_error(kind: &str) -> bool {
    matches!(kind, "node-unreachable" | "queue-full" | "resume")
}

/// The wait before retry `n` (1-based): 250 ms doubling, at most 5 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(
        250u64
            .saturating_mul(1 << n.saturating_sub(1).min(5))
            .min(5000),
    )
}

/// Whether an answer is worth a retry.
pub fn retryable(status: u16) -> bool {
    status >= 500 || status == 429
}

/// `{{event_id}}`, `{{scheduled_at}}` (RFC 3339) and `{{trigger}}` in a
/// body template.
pub fn render(template: &str, event_id: &str, tick_ms: u64, trigger: &str) -> String {
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(tick_ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    template
        .replace("{{event_id}}", event_id)
        .replace("{{scheduled_at}}", &at)
        .replace("{{trigger}}", trigger)
}

impl Delivery {
    pub fn new(
        cluster: Arc<Cluster>,
        keys: Arc<Keyring>,
        mesh: String,
        base_domain: String,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        Delivery {
            cluster,
            keys,
            mesh,
            base_domain,
            client: Client::builder(TokioExecutor::new()).build(http),
        }
    }

    /// Delivers `tick` of trigger `(ns, container, name)` and records the
    /// outcome (a trigger deleted meanwhile: nothing to record).
    pub async fn fire(&self, (ns, ct, name): &(String, String, String), tick: u64) {
        let id = format!("{ns}/{ct}/{name}");
        let (trigger, timeout, token) = {
            let sm = self.cluster.sm.read();
            let Some(t) = sm.data.triggers.get(&id).cloned() else {
                return;
            };
            let Some(c) = sm.data.container(ns, ct) else {
                return;
            };
            let private = c.spec.privacy == crate::state::Privacy::Private;
            let token = if private {
                super::token(&sm.data, &self.keys, &t, now_ms())
            } else {
                None
            };
            (
                t,
                Duration::from_secs(u64::from(c.spec.timeout_secs) + 2),
                token,
            )
        };
        let event = event_id(name, tick);
        let sent_ms = now_ms();
        let started = Instant::now();
        let mut attempts = 0;
        let mut platform_tries = 0;
        let (status, ok) = loop {
            let sent =
                tokio::time::timeout(timeout, self.send(&trigger, &event, tick, token.as_deref()))
                    .await;
            let (status, retry) = match sent {
                Ok(Ok(Answer::Status(code))) => (code.to_string(), retryable(code)),
                Ok(Ok(Answer::Platform(why))) | Ok(Err(why)) => {
                    // Not the handler's doing: retried without spending
                    // its retries, within the platform budget.
                    platform_tries += 1;
                    if started.elapsed() < PLATFORM_BUDGET {
                        tracing::debug!(trigger = %id, tick, why = %why, "the platform could not deliver; retrying");
                        tokio::time::sleep(backoff(platform_tries)).await;
                        continue;
                    }
                    (why, false)
                }
                Err(_) => ("timeout".to_string(), true),
            };
            attempts += 1;
            let ok = status.starts_with('2') && status.len() == 3;
            if ok || !retry || attempts > trigger.spec.max_retries {
                break (status, ok);
            }
            tracing::debug!(trigger = %id, tick, attempt = attempts, status = %status, "delivery failed; retrying");
            tokio::time::sleep(backoff(attempts)).await;
        };
        let firing = Firing {
            event_id: event,
            scheduled_ms: tick,
            sent_ms,
            status,
            ok,
            latency_ms: started.elapsed().as_millis() as u64,
            attempts,
            node: self.cluster.id,
        };
        if !ok {
            tracing::warn!(trigger = %id, tick, status = %firing.status, attempts, "trigger delivery failed");
        }
        let cmd = Command::RecordFiring {
            namespace: ns.clone(),
            container: ct.clone(),
            name: name.clone(),
            firing,
        };
        // Recorded by whoever leads; retried a few times through elections.
        for _ in 0..20 {
            match self.cluster.write(cmd.clone()).await {
                Ok(_) | Err(crate::cluster::ClusterError::Rejected(_)) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn send(
        &self,
        t: &Trigger,
        event: &str,
        tick: u64,
        token: Option<&str>,
    ) -> Result<Answer, String> {
        let body = render(&t.spec.body, event, tick, &t.name);
        self.request(t, event, Bytes::from(body), &[], token).await
    }

    /// Delivers one event of `t` (a NATS message: `payload` is the body
    /// unless the trigger has a body template) once; the status, or what
    /// went wrong.
    pub async fn send_event(
        &self,
        t: &Trigger,
        event: &str,
        payload: Bytes,
        headers: &[(String, String)],
    ) -> Result<Answer, String> {
        let (timeout, token) = {
            let sm = self.cluster.sm.read();
            let c = sm
                .data
                .container(&t.namespace, &t.container)
                .ok_or("the container is gone")?;
            let token = (c.spec.privacy == crate::state::Privacy::Private)
                .then(|| super::token(&sm.data, &self.keys, t, now_ms()))
                .flatten();
            (
                Duration::from_secs(u64::from(c.spec.timeout_secs) + 2),
                token,
            )
        };
        let body = if t.spec.body.is_empty() {
            payload
        } else {
            Bytes::from(render(&t.spec.body, event, now_ms(), &t.name))
        };
        match tokio::time::timeout(
            timeout,
            self.request(t, event, body, headers, token.as_deref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn request(
        &self,
        t: &Trigger,
        event: &str,
        body: Bytes,
        extra: &[(String, String)],
        token: Option<&str>,
    ) -> Result<Answer, String> {
        let host = format!("{}.{}.{}", t.container, t.namespace, self.base_domain);
        let uri = format!("http://{}{}", self.mesh, t.spec.path);
        let mut req = http::Request::builder()
            .method(t.spec.method.as_str())
            .uri(uri)
            .header(http::header::HOST, host)
            .header(TRIGGER_HEADER, t.name.as_str())
            .header(EVENT_ID_HEADER, event);
        for (k, v) in t
            .spec
            .headers
            .iter()
            .chain(extra.iter().map(|(k, v)| (k, v)))
        {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                req = req.header(k, v);
            }
        }
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            // This node's own mesh: a platform failure.
            Err(e) => return Ok(Answer::Platform(format!("mesh: {e}"))),
        };
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get(crate::mesh::error::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read the answer to its end so the connection can be reused.
        let _ = resp.into_body().collect().await;
        match kind {
            Some(k) if platform_error(&k) => Ok(Answer::Platform(format!("{status} ({k})"))),
            _ => Ok(Answer::Status(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(5), Duration::from_millis(4000));
        assert_eq!(backoff(9), Duration::from_millis(5000));
    }

    #[test]
    fn bodies_are_rendered() {
        let b = render(
            "{\"id\":\"{{event_id}}\",\"at\":\"{{scheduled_at}}\",\"t\":\"{{trigger}}\"}",
            "tick-0",
            0,
            "tick",
        );
        assert_eq!(
            b,
            "{\"id\":\"tick-0\",\"at\":\"1970-01-01T00:00:00.000Z\",\"t\":\"tick\"}"
        );
        assert!(retryable(503) && retryable(429) && !retryable(404) && !retryable(200));
    }
}
