//! Small pure helpers: error construction, digests, this machine's OCI
//! platform, and the repository of a reference.

use oci_client::Reference;
use sha2::{Digest, Sha256};

use crate::runtime::RuntimeError;

pub(super) fn image_err(reference: &str, message: impl ToString) -> RuntimeError {
    RuntimeError::Image {
        reference: reference.to_string(),
        message: message.to_string(),
    }
}

pub(super) fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// This machine's platform as OCI names it (`linux/amd64`, `linux/arm64`…).
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
}

impl Platform {
    pub fn as_str(&self) -> String {
        format!("{}/{}", self.os, self.architecture)
    }
}

/// The OCI architecture name of a Rust target architecture.
pub const fn oci_architecture(rust_arch: &'static str) -> &'static str {
    match rust_arch.as_bytes() {
        b"x86_64" => "amd64",
        b"aarch64" => "arm64",
        b"x86" => "386",
        b"powerpc64" => "ppc64le",
        b"loongarch64" => "loong64",
        _ => rust_arch,
    }
}

/// The platform instances run on here.
pub const PLATFORM: Platform = Platform {
    os: "linux",
    architecture: oci_architecture(std::env::consts::ARCH),
};

/// Whether an index entry's platform is this machine's.
pub fn platform_matches(os: &str, architecture: &str) -> bool {
    os == PLATFORM.os && architecture == PLATFORM.architecture
}

/// `registry/repository` of a reference: its tag and digest dropped.
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// A pinned image name (`name@digest`) without its digest: the name the
/// image was asked for.
pub fn without_digest(name: &str) -> &str {
    name.split_once('@').map_or(name, |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = super::super::unpack::chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_hex(b"sha256:a sha256:b"));
    }

    #[test]
    fn repository_drops_tag_and_digest() {
        let r = |s: &str| repository(&s.parse::<Reference>().unwrap());
        assert_eq!(r("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b");
        assert_eq!(
            r("127.0.0.1:5000/a/b@sha256:0123456789012345678901234567890123456789012345678901234567890123"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(r("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(without_digest("a/b:1@sha256:x"), "a/b:1");
        assert_eq!(without_digest("a/b:1"), "a/b:1");
    }

    #[test]
    fn the_platform_is_this_machine_s() {
        assert_eq!(oci_architecture("aarch64"), "arm64");
        assert!(platform_matches("linux", PLATFORM.architecture));
        assert!(!platform_matches("windows", PLATFORM.architecture));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(PLATFORM.as_str(), "linux/amd64");
    }
}
