//! The cluster's certificates and join tokens: the CA, node certificate
//! requests and signatures, fingerprints, and one-time join tokens.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::error::{invalid, TlsError, JOIN_PREFIX};
use crate::state::NodeId;

/// The name every node certificate carries and every peer checks.
pub const PEER_NAME: &str = "peer.rouse.internal";

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
/// SHA-256 (hex) of the public key a certificate request is for.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, TlsError> {
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| invalid("csr", format!("not a valid certificate request ({e})")))?;
    Ok(hex::encode(Sha256::digest(csr.public_key.der_bytes())))
}

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
