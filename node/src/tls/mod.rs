//! Mutual TLS between nodes: the cluster CA, node certificates, join
//! tokens, and the rustls configurations every peer connection uses.
//!
//! ```text
//!  bootstrap ─▶ CA (key sealed by the master key, in Raft) ─▶ own cert ─▶ <data-dir>/tls/
//!            └▶ one-time join token ─▶ <data-dir>/join-token
//!  join ─▶ GetClusterCa (plain; checked against the token's CA fingerprint)
//!       ─▶ IssueCertificate(token, CSR) over TLS ─▶ cert signed by any member ─▶ <data-dir>/tls/
//! ```
//!
//! Every node certificate names [`PEER_NAME`], and peers check that name
//! whatever address they dialled: what matters is the cluster CA. The gRPC
//! listener and the mesh listener tell TLS from plain traffic by the first
//! byte, so the public API and mesh stay plain while peers speak mTLS.
//!
//! - `error`: [`TlsError`] and the crypto provider.
//! - [`pki`]: the CA, node certificates, join tokens.
//! - [`material`]: a node's material ([`Tls`]) and rustls configurations.
//! - [`conn`]: plain-or-TLS connections ([`Io`], [`ConnInfo`]) and connectors.

pub mod conn;
mod error;
pub mod material;
pub mod pki;

pub use conn::{accept, connector, https_connector, incoming, ConnInfo, Io, PeerCert};
pub use error::TlsError;
pub use material::{dir, join_client_config, load, save, Material, Tls};
pub use pki::{
    csr_key_sha256, fingerprint, generate_ca, node_of, node_request, sign_node, JoinToken,
    CA_KEY_AAD, PEER_NAME,
};

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let t = JoinToken::new(&"ab".repeat(32));
        let back = JoinToken::parse(&t.expose()).expect("parses");
        assert_eq!(back, t);
        assert_eq!(back.hash(), t.hash());
        for bad in [
            "",
            "rjt",
            "rk_abc_def",
            &t.expose().replace("rjt_", "xyz_"),
            &format!("{}_extra", t.expose()),
            &t.expose()[..t.expose().len() - 1],
        ] {
            let e = JoinToken::parse(bad).expect_err(bad);
            assert!(e.to_string().starts_with("join_token:"), "{e}");
        }
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn node_certificates_chain_to_the_cluster_ca_only() {
        let (ca, ca_key) = generate_ca().expect("ca");
        let (key, csr) = node_request(7).expect("csr");
        let cert = sign_node(&ca, &ca_key, &csr, 7).expect("signed");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        assert_eq!(node_of(&der), Some(7));
        let m = Material::new(&ca, Some((&cert, &key))).expect("material");
        let now = UnixTime::now();
        m.client_verifier
            .verify_client_cert(&der, &[], now)
            .expect("verifies as a client");
        let name = ServerName::try_from(PEER_NAME).expect("name");
        m.server_verifier
            .verify_server_cert(&der, &[], &name, &[], now)
            .expect("verifies as a server");
        // Another cluster's CA does not accept it.
        let (other, _) = generate_ca().expect("ca");
        let o = Material::new(&other, None).expect("material");
        assert!(o
            .client_verifier
            .verify_client_cert(&der, &[], now)
            .is_err());
        // A tampered request is refused.
        let bad = csr.replace('A', "B");
        assert!(sign_node(&ca, &ca_key, &bad, 7).is_err());
    }
}
