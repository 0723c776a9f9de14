//! What several end-to-end test files share: talking to a node's peer
//! service with a given TLS identity.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use rouse_e2e::TestCluster;

/// A tonic channel to `addr` over TLS with `config`.
pub async fn tls_channel(
    addr: &str,
    config: tokio_rustls::rustls::ClientConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_with_connector(rouse_node::tls::https_connector(config, None, true))
        .await
}

/// TLS material of a node: (CA, certificate, key) from `<data-dir>/tls/`.
pub fn node_tls(cluster: &TestCluster, id: u64) -> (String, String, String) {
    let d = cluster.data_dir(id).join("tls");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    (read("ca.crt"), read("node.crt"), read("node.key"))
}

pub fn client_config(
    ca: &str,
    identity: Option<(&str, &str)>,
) -> tokio_rustls::rustls::ClientConfig {
    let t = rouse_node::tls::Tls::new(false);
    t.set(rouse_node::tls::Material::new(ca, identity).unwrap());
    t.client_config()
}

pub async fn ping(ch: tonic::transport::Channel) -> Result<u64, tonic::Status> {
    rouse_proto::peer::raft_peer_client::RaftPeerClient::new(ch)
        .ping(rouse_proto::peer::PingRequest {})
        .await
        .map(|r| r.into_inner().id)
}
