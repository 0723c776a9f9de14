//! `TriggerService`: create, get, list, delete, enable and disable the
//! triggers of a container.

use rouse_proto::v1 as pb;
use rouse_proto::v1::trigger_service_server::TriggerService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::service::Api;
use crate::state::validate;
use crate::state::{Command, StateData, Trigger, TriggerSource, TriggerSpec};
use crate::triggers::schedule::Schedule;

type ApiResult<T> = Result<Response<T>, Status>;

pub const DEFAULT_CATCH_UP_S: u32 = 60;
pub const MAX_CATCH_UP_S: u32 = 86_400;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const MAX_RETRIES: u32 = 20;
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The spec a create request asks for, validated: each error names the
/// field and the rule. Pure.
pub fn spec_for(r: &pb::CreateTriggerRequest) -> Result<TriggerSpec, ApiError> {
    let cron = !r.cron.trim().is_empty();
    let nats = !r.nats_subject.trim().is_empty();
    let source = match (cron, nats) {
        (true, true) => {
            return Err(ApiError::invalid(
                "cron",
                "a trigger is either a cron schedule or a NATS subject, not both",
            ))
        }
        (false, false) => {
            return Err(ApiError::invalid(
                "cron",
                "is required (or nats_subject): what fires the trigger",
            ))
        }
        (true, false) => {
            let timezone = if r.timezone.is_empty() {
                "UTC".to_string()
            } else {
                r.timezone.clone()
            };
            Schedule::parse(&r.cron, &timezone).map_err(|(f, rule)| ApiError::invalid(f, rule))?;
            let catch_up = r.catch_up_seconds.unwrap_or(DEFAULT_CATCH_UP_S);
            if catch_up > MAX_CATCH_UP_S {
                return Err(ApiError::invalid(
                    "catch_up_seconds",
                    format!("{catch_up} is over {MAX_CATCH_UP_S} (a day)"),
                ));
            }
            TriggerSource::Cron {
                schedule: r.cron.split_whitespace().collect::<Vec<_>>().join(" "),
                timezone,
                catch_up_s: u64::from(catch_up),
            }
        }
        (false, true) => {
            if r.nats_url.is_empty() {
                return Err(ApiError::invalid(
                    "nats_url",
                    "is required with nats_subject (nats://host:4222)",
                ));
            }
            if !r.nats_url.starts_with("nats://") {
                return Err(ApiError::invalid(
                    "nats_url",
                    format!("{:?} must start with nats://", r.nats_url),
                ));
            }
            nats_subject("nats_subject", &r.nats_subject)?;
            if !r.dead_letter.is_empty() {
                nats_subject("dead_letter", &r.dead_letter)?;
                if r.dead_letter == r.nats_subject {
                    return Err(ApiError::invalid(
                        "dead_letter",
                        "must differ from nats_subject (dead letters would be delivered again)",
                    ));
                }
            }
            if !r.nats_stream.is_empty()
                && !r
                    .nats_stream
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ApiError::invalid(
                    "nats_stream",
                    format!(
                        "{:?} is not a stream name (A-Z, a-z, 0-9, - and _)",
                        r.nats_stream
                    ),
                ));
            }
            if !r.nats_credentials.is_empty() {
                validate::env(
                    "nats_credentials",
                    &std::collections::BTreeMap::from([(
                        r.nats_credentials.clone(),
                        String::new(),
                    )]),
                    &[],
                )?;
            }
            TriggerSource::Nats {
                url: r.nats_url.clone(),
                stream: r.nats_stream.clone(),
                subject: r.nats_subject.clone(),
                dead_letter: (!r.dead_letter.is_empty()).then(|| r.dead_letter.clone()),
                credentials: (!r.nats_credentials.is_empty()).then(|| r.nats_credentials.clone()),
            }
        }
    };
    let method = if r.method.is_empty() {
        "POST".to_string()
    } else {
        r.method.to_ascii_uppercase()
    };
    if !METHODS.contains(&method.as_str()) {
        return Err(ApiError::invalid(
            "method",
            format!("{method:?} is not one of {}", METHODS.join(", ")),
        ));
    }
    let path = if r.path.is_empty() {
        "/".to_string()
    } else {
        r.path.clone()
    };
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(ApiError::invalid(
            "path",
            format!("{path:?} must be an absolute path (/…)"),
        ));
    }
    for (k, v) in &r.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::invalid("headers", format!("{k:?} is not a header name")))?;
        if name.as_str().starts_with("x-rouse-")
            || name == http::header::HOST
            || name == http::header::AUTHORIZATION
        {
            return Err(ApiError::invalid(
                "headers",
                format!("{k:?} is set by rouse"),
            ));
        }
        http::HeaderValue::from_str(v).map_err(|_| {
            ApiError::invalid(
                "headers",
                format!("the value of {k:?} is not a header value"),
            )
        })?;
    }
    if r.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid(
            "body",
            format!("is {} bytes; at most {MAX_BODY_BYTES}", r.body.len()),
        ));
    }
    let max_retries = r.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > MAX_RETRIES {
        return Err(ApiError::invalid(
            "max_retries",
            format!("{max_retries} is over {MAX_RETRIES}"),
        ));
    }
    Ok(TriggerSpec {
        source,
        method,
        path,
        headers: r.headers.clone().into_iter().collect(),
        body: r.body.clone(),
        max_retries,
    })
}

/// A NATS subject: dot-separated tokens, no whitespace, no empty token.
fn nats_subject(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.split('.')
            .all(|t| !t.is_empty() && !t.chars().any(char::is_whitespace));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{s:?} is not a NATS subject (dot-separated tokens, no spaces)"),
        ))
    }
}

/// A trigger as the API shows it.
pub fn to_pb(t: &Trigger, now_ms: u64) -> pb::Trigger {
    let mut out = pb::Trigger {
        namespace: t.namespace.clone(),
        container: t.container.clone(),
        name: t.name.clone(),
        kind: t.spec.source.kind().into(),
        method: t.spec.method.clone(),
        path: t.spec.path.clone(),
        headers: t.spec.headers.clone().into_iter().collect(),
        body: t.spec.body.clone(),
        max_retries: t.spec.max_retries,
        enabled: t.enabled,
        fired: t.fired,
        failed: t.failed,
        missed: t.missed,
        last_fired_at_ms: t.history.last().map_or(0, |f| f.sent_ms),
        last_status: t
            .history
            .last()
            .map(|f| f.status.clone())
            .unwrap_or_default(),
        history: t
            .history
            .iter()
            .map(|f| pb::Firing {
                event_id: f.event_id.clone(),
                scheduled_ms: f.scheduled_ms,
                sent_ms: f.sent_ms,
                status: f.status.clone(),
                ok: f.ok,
                latency_ms: f.latency_ms,
                attempts: f.attempts,
                node: f.node,
            })
            .collect(),
        created_at_ms: t.created_at_ms,
        pending: t.pending.len() as u32,
        claimed_ticks: t.claimed.clone(),
        ..Default::default()
    };
    match &t.spec.source {
        TriggerSource::Cron {
            schedule,
            timezone,
            catch_up_s,
        } => {
            out.schedule = schedule.clone();
            out.timezone = timezone.clone();
            out.catch_up_seconds = *catch_up_s as u32;
            if t.enabled {
                out.next_fire_at_ms = Schedule::parse(schedule, timezone)
                    .ok()
                    .and_then(|s| {
                        s.next_after(
                            t.last_tick_ms
                                .max(t.created_at_ms)
                                .max(now_ms.saturating_sub(1)),
                        )
                    })
                    .unwrap_or(0);
            }
        }
        TriggerSource::Nats {
            url,
            stream,
            subject,
            dead_letter,
            credentials,
        } => {
            out.nats_credentials = credentials.clone().unwrap_or_default();
            out.subject = subject.clone();
            out.nats_url = url.clone();
            out.nats_stream = stream.clone();
            out.dead_letter = dead_letter.clone().unwrap_or_default();
        }
    }
    out
}

fn check_ref(r: &pb::TriggerRef) -> Result<String, ApiError> {
    validate::dns_label("namespace", &r.namespace)?;
    validate::dns_label("container", &r.container)?;
    validate::dns_label("name", &r.name)?;
    Ok(format!("{}/{}/{}", r.namespace, r.container, r.name))
}

fn get(data: &StateData, id: &str) -> Result<pb::Trigger, ApiError> {
    data.triggers
        .get(id)
        .map(|t| to_pb(t, crate::cluster::now_ms()))
        .ok_or_else(|| ApiError::NotFound(format!("trigger {id:?} not found")))
}

#[tonic::async_trait]
impl TriggerService for Api {
    async fn create(&self, req: Request<pb::CreateTriggerRequest>) -> ApiResult<pb::Trigger> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            let id = check_ref(&pb::TriggerRef {
                namespace: r.namespace.clone(),
                container: r.container.clone(),
                name: r.name.clone(),
            })?;
            let spec = spec_for(&r)?;
            if let TriggerSource::Nats {
                credentials: Some(k),
                ..
            } = &spec.source
            {
                self.cluster.read_barrier(false).await?;
                let sm = self.cluster.sm.read();
                let held = [
                    crate::state::Scope::of(&r.namespace, Some(&r.container)),
                    crate::state::Scope::namespace(&r.namespace),
                ]
                .iter()
                .any(|scope| {
                    sm.data
                        .secrets
                        .get(scope)
                        .is_some_and(|m| m.contains_key(k))
                });
                if !held {
                    return Err(ApiError::invalid(
                        "nats_credentials",
                        format!(
                            "no secret {k:?} in {}/{} or {}; set it first with `rouse secret set`",
                            r.namespace, r.container, r.namespace
                        ),
                    ));
                }
            }
            self.cluster
                .write(Command::CreateTrigger {
                    namespace: r.namespace.clone(),
                    container: r.container.clone(),
                    name: r.name.clone(),
                    spec,
                })
                .await?;
            get(&self.cluster.sm.read().data, &id)
        };
        Ok(Response::new(run.await?))
    }

    async fn get(&self, req: Request<pb::TriggerRef>) -> ApiResult<pb::Trigger> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            let id = check_ref(&r)?;
            self.cluster.read_barrier(false).await?;
            get(&self.cluster.sm.read().data, &id)
        };
        Ok(Response::new(run.await?))
    }

    async fn list(
        &self,
        req: Request<pb::ListTriggersRequest>,
    ) -> ApiResult<pb::ListTriggersResponse> {
        let who = self.list_scope(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            super::input::list_filter(&r.namespace, &r.container)?;
            self.cluster.read_barrier(false).await?;
            let now = crate::cluster::now_ms();
            let sm = self.cluster.sm.read();
            let triggers = sm
                .data
                .triggers
                .values()
                .filter(|t| r.namespace.is_empty() || t.namespace == r.namespace)
                .filter(|t| r.container.is_empty() || t.container == r.container)
                .filter(|t| who.may(&t.namespace))
                .map(|t| pb::Trigger {
                    claimed_ticks: Vec::new(),
                    ..to_pb(t, now)
                })
                .collect();
            Ok::<_, ApiError>(pb::ListTriggersResponse { triggers })
        };
        Ok(Response::new(run.await?))
    }

    async fn delete(&self, req: Request<pb::TriggerRef>) -> ApiResult<pb::DeleteTriggerResponse> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            check_ref(&r)?;
            self.cluster
                .write(Command::DeleteTrigger {
                    namespace: r.namespace,
                    container: r.container,
                    name: r.name,
                })
                .await?;
            Ok::<_, ApiError>(pb::DeleteTriggerResponse {})
        };
        Ok(Response::new(run.await?))
    }

    async fn set_enabled(
        &self,
        req: Request<pb::SetTriggerEnabledRequest>,
    ) -> ApiResult<pb::Trigger> {
        let ns = req
            .get_ref()
            .trigger
            .as_ref()
            .map(|t| t.namespace.clone())
            .unwrap_or_default();
        self.require_ns(&req, &ns)?;
        let r = req.into_inner();
        let run = async {
            let t = r
                .trigger
                .ok_or_else(|| ApiError::invalid("trigger", "is required"))?;
            let id = check_ref(&t)?;
            self.cluster
                .write(Command::SetTriggerEnabled {
                    namespace: t.namespace,
                    container: t.container,
                    name: t.name,
                    enabled: r.enabled,
                })
                .await?;
            get(&self.cluster.sm.read().data, &id)
        };
        Ok(Response::new(run.await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::CreateTriggerRequest {
        pb::CreateTriggerRequest {
            namespace: "n".into(),
            container: "c".into(),
            name: "t".into(),
            cron: "*/2 * * * * *".into(),
            ..Default::default()
        }
    }

    fn field(e: ApiError) -> String {
        match e {
            ApiError::Invalid(i) => i.field,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_rules_name_the_field() {
        let s = spec_for(&req()).unwrap();
        assert_eq!(
            (s.method.as_str(), s.path.as_str(), s.max_retries),
            ("POST", "/", 3)
        );
        assert!(
            matches!(s.source, TriggerSource::Cron { ref timezone, catch_up_s: 60, .. } if timezone == "UTC")
        );
        let bad = |f: &dyn Fn(&mut pb::CreateTriggerRequest)| {
            let mut r = req();
            f(&mut r);
            field(spec_for(&r).unwrap_err())
        };
        assert_eq!(bad(&|r| r.cron = "nope".into()), "schedule");
        assert_eq!(bad(&|r| r.cron.clear()), "cron");
        assert_eq!(bad(&|r| r.nats_subject = "a".into()), "cron");
        assert_eq!(bad(&|r| r.timezone = "Nowhere/Land".into()), "timezone");
        assert_eq!(bad(&|r| r.method = "BREW".into()), "method");
        assert_eq!(bad(&|r| r.path = "no-slash".into()), "path");
        assert_eq!(
            bad(&|r| {
                r.headers.insert("X-Rouse-Event-Id".into(), "x".into());
            }),
            "headers"
        );
        assert_eq!(
            bad(&|r| {
                r.headers.insert("bad header".into(), "x".into());
            }),
            "headers"
        );
        assert_eq!(bad(&|r| r.max_retries = Some(99)), "max_retries");
        assert_eq!(
            bad(&|r| r.catch_up_seconds = Some(100_000)),
            "catch_up_seconds"
        );
        assert_eq!(
            bad(&|r| {
                r.cron.clear();
                r.nats_subject = "s".into();
            }),
            "nats_url"
        );
        let nats = |f: &dyn Fn(&mut pb::CreateTriggerRequest)| {
            let mut r = req();
            r.cron.clear();
            r.nats_subject = "orders.new".into();
            r.nats_url = "nats://127.0.0.1:4222".into();
            f(&mut r);
            spec_for(&r).map(|_| ()).map_err(field)
        };
        assert_eq!(nats(&|_| {}), Ok(()));
        assert_eq!(
            nats(&|r| r.nats_subject = "a..b".into()),
            Err("nats_subject".into())
        );
        assert_eq!(
            nats(&|r| r.dead_letter = "orders.new".into()),
            Err("dead_letter".into())
        );
        assert_eq!(
            nats(&|r| r.nats_stream = "a.b".into()),
            Err("nats_stream".into())
        );
        assert_eq!(
            nats(&|r| r.nats_url = "http://x".into()),
            Err("nats_url".into())
        );
    }
}
