//! Sends this node's demand to the leader about twice a second: the
//! autoscaler's input and this node's liveness lease. On the leader itself
//! the report goes straight into its [`LoadBook`].

use std::sync::Arc;
use std::time::Duration;

use super::stack::Mesh;
use crate::cluster::{now_ms, Cluster};
use crate::loads::LoadBook;

pub async fn run(
    cluster: Arc<Cluster>,
    mesh: Arc<Mesh>,
    book: Arc<LoadBook>,
    local: Arc<crate::local::LocalInstances>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut loads = mesh.demand().loads();
        for (key, n) in local.stopping_counts() {
            match loads.iter_mut().find(|l| l.key == key) {
                Some(l) => l.draining = n,
                None => loads.push(crate::loads::ContainerLoad {
                    key,
                    in_flight: 0,
                    last_request_ms: 0,
                    draining: n,
                }),
            }
        }
        let Some((leader, addr)) = cluster.leader() else {
            continue;
        };
        if leader == cluster.id {
            book.record(cluster.id, now_ms(), loads);
            continue;
        }
        if let Ok(mut client) = cluster.pool.client(&addr) {
            let mut req = tonic::Request::new(rouse_proto::peer::LoadReport {
                node: cluster.id,
                containers: loads.iter().map(Into::into).collect(),
            });
            req.set_timeout(Duration::from_secs(1));
            let _ = client.report_load(req).await;
        }
    }
}
