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

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDn, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::state::NodeId;

/// The name every node certificate carries and every peer checks.
pub const PEER_NAME: &str = "peer.rouse.internal";
/// Prefix of join tokens.
const JOIN_PREFIX: &str = "rjt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn invalid(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{what}: {e}"))
}

/// The one crypto provider every TLS configuration and handshake check
/// uses (built once: handshakes consult it on every signature).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// The cluster CA as stored in the replicated state: the certificate, and
/// its private key sealed by the master key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key: crate::secrets::Envelope,
}

/// Associated data the CA key is sealed under.
pub const CA_KEY_AAD: &str = "cluster-ca-key";

fn validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365 * years);
}

/// A new cluster CA: (certificate PEM, private key PEM).
pub fn generate_ca() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(|e| invalid("cluster CA key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "rouse cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 20);
    let cert = params
        .self_signed(&key)
        .map_err(|e| invalid("cluster CA", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node's new key pair and certificate request: (key PEM, CSR PEM).
pub fn node_request(id: NodeId) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(|e| invalid("node key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("node-{id}"));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| invalid("certificate request", e))?;
    Ok((key.serialize_pem(), csr))
}

/// Signs a node's certificate request with the CA. Only the request's
/// public key is used: names, usages and validity are the CA's choice.
pub fn sign_node(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    id: NodeId,
) -> Result<String, TlsError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| invalid("csr", format!("not a valid certificate request ({e})")))?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| invalid("cluster CA key", e))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| invalid("cluster CA", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("node-{id}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName(PEER_NAME.try_into().map_err(|e| invalid("peer name", e))?),
        SanType::DnsName(
            format!("node-{id}.{PEER_NAME}")
                .try_into()
                .map_err(|e| invalid("peer name", e))?,
        ),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    validity(&mut params, 10);
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|e| invalid("node certificate", e))?;
    Ok(cert.pem())
}

/// SHA-256 of a PEM certificate's DER, hex.
pub fn fingerprint(cert_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| invalid("certificate", e))?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// The node id in a peer certificate's common name (`node-<id>`).
pub fn node_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
    cn.strip_prefix("node-")?.parse().ok()
}

/// A one-time join token: `rjt_<CA fingerprint>_<id>_<secret>`. Raft holds
/// only the secret's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}, <redacted>)", self.id)
    }
}

impl JoinToken {
    pub fn new(ca_fingerprint: &str) -> Self {
        let mut id = [0u8; 6];
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            id: hex::encode(id),
            secret: hex::encode(secret),
        }
    }

    pub fn parse(s: &str) -> Result<Self, TlsError> {
        let bad = || {
            TlsError::Invalid(
                "join_token: not a join token (expected rjt_<ca-fingerprint>_<id>_<secret>, as written to <data-dir>/join-token or printed by `rouse cluster join-token`)".into(),
            )
        };
        let mut parts = s.trim().split('_');
        if parts.next() != Some(JOIN_PREFIX) {
            return Err(bad());
        }
        let (Some(fp), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hexy = |v: &str, len: usize| v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit());
        if !hexy(fp, 64) || !hexy(id, 12) || !hexy(secret, 48) {
            return Err(bad());
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// What Raft stores and compares.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(format!("{}:{}", self.id, self.secret)))
    }

    pub fn expose(&self) -> String {
        format!(
            "{JOIN_PREFIX}_{}_{}_{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

/// One node's TLS material: the cluster CA and, once issued, its own
/// certificate and key.
pub struct Material {
    pub ca_pem: String,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<rustls::client::WebPkiServerVerifier>,
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
        self.material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, m: Material) {
        *self.material.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m));
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

/// A connection accepted on a listener that speaks both plain and TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a handler may know of its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub tls: bool,
    /// The verified cluster certificate the other side showed.
    pub peer: Option<PeerCert>,
}

/// A verified peer certificate: the node it names, and its SHA-256.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub node: NodeId,
    pub cert_sha256: String,
}

impl Io {
    pub fn info(&self) -> ConnInfo {
        match self {
            Io::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                tls: false,
                peer: None,
            },
            Io::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    tls: true,
                    peer: conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| {
                            Some(PeerCert {
                                node: node_of(c)?,
                                cert_sha256: hex::encode(Sha256::digest(c.as_ref())),
                            })
                        }),
                }
            }
        }
    }
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Tells TLS from plain by the first byte, and completes a TLS handshake.
/// `acceptor` is `None` when TLS is off (`--insecure`): everything is plain.
/// A client that sends nothing, or no finished handshake, within `timeout`
/// is dropped.
pub async fn accept(
    stream: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> io::Result<Io> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(timeout, stream.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data before the timeout"))??;
    let Some(acceptor) = acceptor else {
        return Ok(Io::Plain(stream));
    };
    if n == 1 && first[0] == TLS_HANDSHAKE {
        let s = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
        Ok(Io::Tls(Box::new(s)))
    } else {
        Ok(Io::Plain(stream))
    }
}

/// Accepts connections on `listener` and yields them once told apart (and
/// handshaken), for tonic's `serve_with_incoming`. A connection that fails
/// its handshake is logged and dropped; it never reaches a handler.
pub fn incoming(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Io>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match accept(stream, acceptor.as_ref(), timeout).await {
                    Ok(io) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        tracing::debug!(%remote, error = %e, "connection dropped: too slow")
                    }
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "peer connection refused: TLS handshake failed")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An HTTP connector for peer traffic: `https://` URLs get mTLS with the
/// cluster's certificates, `http://` stays plain (local instances,
/// `--insecure`).
pub fn connector(
    tls: &Tls,
    local: Option<std::net::IpAddr>,
    http2: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    https_connector(tls.client_config(), local, http2)
}

/// An HTTP connector that speaks TLS with `config` to `https://` URLs.
pub fn https_connector(
    config: rustls::ClientConfig,
    local: Option<std::net::IpAddr>,
    http2: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    http.set_local_address(local);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    if http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    }
}

#[cfg(test)]
mod tests {
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
