//! `EventService`: the cluster's event stream, from any node: the kept
//! events, then (following) each new one as this node applies it.

use std::pin::Pin;
use std::time::Duration;

use rouse_proto::v1 as pb;
use rouse_proto::v1::event_service_server::EventService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::service::Api;
use crate::auth::Principal;
use crate::state::Event;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Which events a request asks for (and its caller may see). Pure.
pub struct Filter {
    pub who: Principal,
    pub namespace: String,
    pub container: String,
    pub since_ms: u64,
}

impl Filter {
    pub fn wants(&self, e: &Event) -> bool {
        // A cluster event (no namespace) only for an admin.
        self.who.may(&e.namespace)
            && (self.namespace.is_empty() || e.namespace == self.namespace)
            && (self.container.is_empty() || e.container == self.container)
            && e.at_ms >= self.since_ms
    }
}

fn to_pb(e: &Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.clone(),
        namespace: e.namespace.clone(),
        container: e.container.clone(),
        instance: e.instance.clone(),
        node: e.node,
        reason: e.reason.clone(),
        message: e.message.clone(),
        exit_code: e.exit_code,
    }
}

#[tonic::async_trait]
impl EventService for Api {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = self.list_scope(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        super::input::list_filter(&r.namespace, &r.container)?;
        // What the cluster committed before the call is in the first batch.
        self.cluster
            .read_barrier(false)
            .await
            .map_err(super::ApiError::from)?;
        let filter = Filter {
            who,
            namespace: r.namespace,
            container: r.container,
            since_ms: r.since_ms,
        };
        let (tx, rx) = mpsc::channel::<Result<pb::Event, Status>>(64);
        let cluster = self.cluster.clone();
        let (follow, mut after) = (r.follow, r.after_seq);
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let batch: Vec<pb::Event> = {
                    let sm = cluster.sm.read();
                    let batch = sm
                        .data
                        .events
                        .iter()
                        .filter(|e| e.seq > after && filter.wants(e))
                        .map(to_pb)
                        .collect();
                    after = after.max(sm.data.events.back().map_or(0, |e| e.seq));
                    batch
                };
                for e in batch {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    _ = cluster.applied_change(&mut seen, Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_key_sees_its_namespace_only_and_no_cluster_events() {
        let e = |ns: &str, ct: &str, at| Event {
            namespace: ns.into(),
            container: ct.into(),
            at_ms: at,
            ..Event::default()
        };
        let f = Filter {
            who: Principal::Namespace("a".into()),
            namespace: String::new(),
            container: String::new(),
            since_ms: 10,
        };
        assert!(f.wants(&e("a", "x", 10)));
        assert!(!f.wants(&e("a", "x", 9)), "before since");
        assert!(!f.wants(&e("b", "x", 10)), "another namespace");
        assert!(!f.wants(&e("", "", 10)), "a cluster event");
        let admin = Filter {
            who: Principal::Admin,
            namespace: "a".into(),
            container: "x".into(),
            since_ms: 0,
        };
        assert!(admin.wants(&e("a", "x", 1)));
        assert!(!admin.wants(&e("a", "y", 1)));
        assert!(!admin.wants(&e("", "", 1)), "filtered to a/x");
        let all = Filter {
            who: Principal::Admin,
            namespace: String::new(),
            container: String::new(),
            since_ms: 0,
        };
        assert!(all.wants(&e("", "", 1)));
    }
}
