//! A node's TLS material and the rustls configurations built on it: the
//! cluster CA as the only root, this node's certificate presented on both
//! sides, verifiers that follow the material as it changes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDn, SignatureScheme};
use sha2::{Digest, Sha256};

use super::error::{invalid, provider, TlsError};
use super::pki::PEER_NAME;

/// One node's TLS material: the cluster CA and, once issued, its own
/// certificate and key.
pub struct Material {
    pub ca_pem: String,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<rustls::client::WebPkiServerVerifier>,
    key: Option<Arc<CertifiedKey>>,
}

impl Material {
    pub fn new(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| invalid("cluster CA certificate", e))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| invalid("cluster CA certificate", e))?;
        let roots = Arc::new(roots);
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| invalid("cluster CA certificate", e))?;
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| invalid("cluster CA certificate", e))?;
        let key = match identity {
            None => None,
            Some((cert_pem, key_pem)) => {
                let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                    .map_err(|e| invalid("node certificate", e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|e| invalid("node key", e))?;
                let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                    .map_err(|e| invalid("node key", e))?;
                Some(Arc::new(CertifiedKey::new(vec![cert, ca], signer)))
            }
        };
        Ok(Material {
            ca_pem: ca_pem.to_string(),
            client_verifier,
            server_verifier,
            key,
        })
    }
}

/// Where a node keeps its TLS files.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Reads `<data-dir>/tls/{ca,node}.crt` and `node.key`, when present.
pub fn load(data_dir: &Path) -> Result<Option<Material>, TlsError> {
    let d = dir(data_dir);
    let read = |f: &str| std::fs::read_to_string(d.join(f));
    let (ca, cert, key) = match (read("ca.crt"), read("node.crt"), read("node.key")) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Err(TlsError::Io {
                what: format!("reading {}", d.display()),
                source: e,
            })
        }
    };
    Material::new(&ca, Some((&cert, &key))).map(Some)
}

/// Writes this node's TLS files: the key first (0600), the certificate last,
/// so a certificate on disk always has its key.
pub fn save(data_dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    let d = dir(data_dir);
    let io_err = |what: String| move |source| TlsError::Io { what, source };
    std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
    crate::secrets::write_private(&d.join("node.key"), key_pem.as_bytes())
        .map_err(io_err("writing node.key".into()))?;
    std::fs::write(d.join("ca.crt"), ca_pem).map_err(io_err("writing ca.crt".into()))?;
    let tmp = d.join("node.crt.tmp");
    std::fs::write(&tmp, cert_pem).map_err(io_err("writing node.crt".into()))?;
    std::fs::rename(&tmp, d.join("node.crt")).map_err(io_err("writing node.crt".into()))?;
    Ok(())
}

/// This node's TLS state, shared by every listener and client. Empty until
/// the node has a certificate; `insecure` turns mTLS off altogether.
#[derive(Clone, Default)]
pub struct Tls {
    material: Arc<RwLock<Option<Arc<Material>>>>,
    insecure: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("insecure", &self.insecure)
            .field("ready", &self.ready())
            .finish()
    }
}

impl Tls {
    pub fn new(insecure: bool) -> Self {
        Tls {
            material: Default::default(),
            insecure,
        }
    }

    /// Peer traffic is plain (development only).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// Whether this node has its certificate.
    pub fn ready(&self) -> bool {
        self.material().is_some_and(|m| m.key.is_some())
    }

    /// SHA-256 of this node's own certificate, once it has one.
    pub fn own_fingerprint(&self) -> Option<String> {
        let m = self.material()?;
        let cert = m.key.as_ref()?.cert.first()?;
        Some(hex::encode(Sha256::digest(cert.as_ref())))
    }

    pub fn material(&self) -> Option<Arc<Material>> {
        self.material.read().clone()
    }

    pub fn set(&self, m: Material) {
        *self.material.write() = Some(Arc::new(m));
    }

    /// The URL scheme peers are reached with.
    pub fn scheme(&self) -> &'static str {
        if self.insecure {
            "http"
        } else {
            "https"
        }
    }

    /// Client side of a peer connection: checks the server against the
    /// cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> rustls::ClientConfig {
        client_config_with(
            Arc::new(DynServerVerifier(self.clone())),
            Some(self.clone()),
        )
    }

    /// Server side. `mandatory`: connections without a cluster certificate
    /// fail the handshake; otherwise they may go on without one (the gRPC
    /// listener, where a joining node asks for its certificate).
    pub fn server_config(&self, mandatory: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e))?
            .with_client_cert_verifier(Arc::new(DynClientVerifier {
                tls: self.clone(),
                mandatory,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn client_config_with(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<Tls>,
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| unreachable!("ring supports the default TLS versions: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        Some(t) => builder.with_client_cert_resolver(Arc::new(Resolver(t))),
        None => builder.with_no_client_auth(),
    }
}

/// A client config that trusts only `ca_pem` and presents no certificate
/// (a joining node asking for its certificate).
pub fn join_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let t = Tls::new(false);
    t.set(Material::new(ca_pem, None)?);
    Ok(client_config_with(Arc::new(DynServerVerifier(t)), None))
}

/// The handshake-signature checks both verifiers share: the crypto
/// provider's algorithms, whatever the certificate.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = provider().signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = provider().signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

fn no_ca() -> rustls::Error {
    rustls::Error::General("this node has no cluster CA yet".into())
}

/// Checks a server against the current cluster CA, under [`PEER_NAME`].
#[derive(Debug)]
struct DynServerVerifier(Tls);

impl ServerCertVerifier for DynServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let m = self.0.material().ok_or_else(no_ca)?;
        let name = ServerName::try_from(PEER_NAME)
            .map_err(|e| rustls::Error::General(format!("peer name: {e}")))?;
        m.server_verifier
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    handshake_signatures!();
}

/// Checks a client certificate against the current cluster CA.
#[derive(Debug)]
struct DynClientVerifier {
    tls: Tls,
    mandatory: bool,
}

impl ClientCertVerifier for DynClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[TlsDn] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let m = self.tls.material().ok_or_else(no_ca)?;
        m.client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    handshake_signatures!();
}

/// Presents this node's current certificate, client and server side.
#[derive(Debug)]
struct Resolver(Tls);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.material()?.key.clone()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.material()?.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.ready()
    }
}
