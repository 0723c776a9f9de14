//! Secret values: sealed before they enter a Raft proposal, so the log,
//! snapshots and sled files hold only ciphertext.
//!
//! ```text
//!  master key file (KEK, per node, 0600) ──wraps──▶ cluster data key (DK)
//!  DK (random, in the replicated state only wrapped)
//!     seal(value, aad = "scope/KEY") ──▶ AES-256-GCM envelope ──▶ Raft
//!     hmac(value) ──▶ what reads show instead of the value
//! ```
//!
//! Values are opened only on the node that starts an instance, into the
//! instance's environment. [`SecretValue`] never prints its contents.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Writes a file only its owner can read (0600), atomically: a temporary
/// file renamed over `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    // A name of this write's own, so concurrent writers never share one.
    let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A sealed value: nonce and ciphertext (with its tag), hex in JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Envelope({} sealed bytes)", self.ciphertext.len())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// A secret's value in memory; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(v: String) -> Self {
        SecretValue(v)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("master_key_file: {0}")]
    MasterKey(String),
    #[error("the sealed value failed authentication (wrong key or tampered data)")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// A 256-bit key (the KEK or the cluster data key).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn random() -> Self {
        Key(rand::random())
    }

    /// Reads the master key file (64 hex characters); creates it with mode
    /// 0600 when `create` is set and it does not exist.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Self, SecretError> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| {
                    SecretError::MasterKey(format!("{} is not 64 hex characters", path.display()))
                })?;
                let arr: [u8; 32] = bytes.try_into().map_err(|_| {
                    SecretError::MasterKey(format!("{} is not a 256-bit key", path.display()))
                })?;
                Ok(Key(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let k = Key::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| SecretError::MasterKey(e.to_string()))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        SecretError::MasterKey(format!("creating {}: {e}", path.display()))
                    })?;
                std::io::Write::write_all(&mut f, hex::encode(k.0).as_bytes())
                    .map_err(|e| SecretError::MasterKey(e.to_string()))?;
                Ok(k)
            }
            Err(e) => Err(SecretError::MasterKey(format!("{}: {e}", path.display()))),
        }
    }

    /// Parses 64 hex characters (the master key file's format).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| SecretError::MasterKey("not 64 hex characters".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::MasterKey("not a 256-bit key".into()))?;
        Ok(Key(arr))
    }

    /// The key as the master key file holds it. Only for handing the master
    /// key to a joining node over mutual TLS.
    pub fn export_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Writes the key to `path` (mode 0600).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, self.export_hex().as_bytes())
    }

    fn cipher(&self) -> Aes256Gcm {
        // 32 bytes is always a valid AES-256 key.
        Aes256Gcm::new((&self.0).into())
    }

    /// Seals `plain`, bound to `aad` (the slot it belongs to).
    pub fn seal(&self, plain: &[u8], aad: &str) -> Result<Envelope, SecretError> {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Seal)?;
        Ok(Envelope {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, env: &Envelope, aad: &str) -> Result<Vec<u8>, SecretError> {
        if env.nonce.len() != 12 {
            return Err(SecretError::Open);
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(&env.nonce),
                Payload {
                    msg: &env.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)
    }

    /// Wraps a data key with this key-encryption key.
    pub fn wrap(&self, dk: &Key) -> Result<Envelope, SecretError> {
        self.seal(&dk.0, "rouse/data-key")
    }

    pub fn unwrap_key(&self, env: &Envelope) -> Result<Key, SecretError> {
        let b = self.open(env, "rouse/data-key")?;
        let arr: [u8; 32] = b.try_into().map_err(|_| SecretError::Open)?;
        Ok(Key(arr))
    }

    /// A short public id of this key (which master key wraps the data key).
    pub fn id(&self) -> String {
        self.fingerprint("rouse/kek-id/v1")[..16].to_string()
    }

    /// The credential nodes present to each other's peer service.
    pub fn peer_credential(&self) -> String {
        self.fingerprint("rouse/peer-credential/v1")
    }

    /// HMAC-SHA256 of a value: what reads show instead of it.
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length: cannot fail.
    pub fn fingerprint(&self, value: &str) -> String {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        m.update(value.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

/// The additional data binding a sealed value to its slot.
pub fn aad(scope: &str, key: &str) -> String {
    format!("{scope}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let k = Key::random();
        let e = k.seal(b"hunter2", "shop/DB").unwrap();
        assert_eq!(k.open(&e, "shop/DB").unwrap(), b"hunter2");
        assert_eq!(
            k.open(&e, "shop/OTHER"),
            Err(SecretError::Open),
            "bound to its slot"
        );
        assert!(!e.ciphertext.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn wrong_key_fails() {
        let e = Key::random().seal(b"v", "a/b").unwrap();
        assert_eq!(Key::random().open(&e, "a/b"), Err(SecretError::Open));
    }

    #[test]
    fn tampered_ciphertext_and_nonce_fail() {
        let k = Key::random();
        let mut e = k.seal(b"value", "a/b").unwrap();
        e.ciphertext[0] ^= 1;
        assert_eq!(k.open(&e, "a/b"), Err(SecretError::Open));
        let mut e = k.seal(b"value", "a/b").unwrap();
        e.nonce[0] ^= 1;
        assert_eq!(k.open(&e, "a/b"), Err(SecretError::Open));
        let mut e = k.seal(b"value", "a/b").unwrap();
        e.ciphertext.truncate(3);
        assert_eq!(k.open(&e, "a/b"), Err(SecretError::Open));
    }

    #[test]
    fn data_key_wrapping() {
        let (kek, dk) = (Key::random(), Key::random());
        let w = kek.wrap(&dk).unwrap();
        let back = kek.unwrap_key(&w).unwrap();
        assert_eq!(back.fingerprint("x"), dk.fingerprint("x"));
        assert!(Key::random().unwrap_key(&w).is_err());
    }

    #[test]
    fn nothing_prints_a_value() {
        let v = SecretValue::new("s3cr3t".into());
        assert!(!format!("{v:?}").contains("s3cr3t"));
        let k = Key::random();
        assert!(!format!("{k:?}").contains(&hex::encode(k.0)));
    }

    #[test]
    fn master_key_file_is_created_0600_and_reread() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.key");
        assert!(Key::load_or_create(&p, false).is_err());
        let k = Key::load_or_create(&p, true).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Key::load_or_create(&p, false).unwrap();
        assert_eq!(k.fingerprint("x"), again.fingerprint("x"));
        std::fs::write(&p, "not hex").unwrap();
        assert!(Key::load_or_create(&p, false)
            .unwrap_err()
            .to_string()
            .starts_with("master_key_file:"));
    }
}
