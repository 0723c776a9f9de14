//! Image builds for `rouse apply`: a container with `build:` is built with
//! buildah (daemonless) and pushed to its `image:` repository, or, with no
//! `image:`, imported on every node. The tag is the content digest of the
//! build (context files, Dockerfile name, build args), so an unchanged
//! context builds nothing and deploys nothing new.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rouse_client::apply::{Action, Observed, Plan};
use rouse_client::manifest::{Build, Manifest};
use sha2::{Digest, Sha256};

/// SHA-256 over the build's inputs, hex.
fn digest(context: &Path, b: &Build) -> Result<String, String> {
    let mut files = Vec::new();
    walk(context, context, &mut files)
        .map_err(|e| format!("build.context: {}: {e}", context.display()))?;
    files.sort();
    let mut h = Sha256::new();
    for rel in &files {
        let bytes = std::fs::read(context.join(rel))
            .map_err(|e| format!("build.context: {}: {e}", rel.display()))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.update(b.dockerfile.as_deref().unwrap_or("Dockerfile").as_bytes());
    for (k, v) in &b.args {
        h.update(format!("\0{k}={v}").as_bytes());
    }
    Ok(h.finalize().iter().map(|x| format!("{x:02x}")).collect())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            if e.file_name() != ".git" {
                walk(root, &p, out)?;
            }
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// Where a built image goes: its `image:` repository (a tag replaced), or a
/// local name imported on the nodes.
fn reference(ns: &str, name: &str, image: Option<&str>, digest: &str) -> String {
    let tag = format!("build-{}", &digest[..16]);
    match image {
        Some(i) => {
            let repo = match i.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => r,
                _ => i,
            };
            let repo = repo.split('@').next().unwrap_or(repo);
            format!("{repo}:{tag}")
        }
        None => format!("rouse-build/{ns}-{name}:{tag}"),
    }
}

/// The image each built container runs, by `ns/name` (nothing is built
/// here).
pub fn images(
    m: &Manifest,
    base: &Path,
    _observed: &BTreeMap<String, Observed>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for ns in &m.namespaces {
        for c in &ns.containers {
            let Some(b) = &c.build else { continue };
            let d = digest(&base.join(&b.context), b)
                .map_err(|e| format!("namespaces.{}.containers.{}.{e}", ns.name, c.name))?;
            out.insert(
                format!("{}/{}", ns.name, c.name),
                reference(&ns.name.0, &c.name.0, c.image.as_deref(), &d),
            );
        }
    }
    Ok(out)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run buildah ({e}); install it (Debian: buildah)"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("{what}: {last}"))
    }
}

/// Builds what the plan deploys with a new built image; returns the
/// OCI archives to import on the nodes (`ref`, file).
pub fn run_builds(
    m: &Manifest,
    base: &Path,
    plan: &Plan,
) -> Result<Vec<(String, PathBuf)>, String> {
    let images = images(m, base, &BTreeMap::new())?;
    let mut imports = Vec::new();
    for ns in &m.namespaces {
        for c in &ns.containers {
            let Some(b) = &c.build else { continue };
            let key = format!("{}/{}", ns.name, c.name);
            let new_image = plan.items.iter().any(|i| {
                i.kind == "container"
                    && i.name == key
                    && i.action != Action::Unchanged
                    && i.fields.iter().any(|f| f.field == "image")
            });
            if !new_image {
                continue;
            }
            let r = &images[&key];
            let context = base.join(&b.context);
            let dockerfile = context.join(b.dockerfile.as_deref().unwrap_or("Dockerfile"));
            let what = format!("namespaces.{}.containers.{}.build", ns.name, c.name);
            eprintln!("building {key} as {r}");
            let mut bud = Command::new("buildah");
            bud.args(["bud", "--quiet", "--layers", "--tls-verify=false", "-f"])
                .arg(&dockerfile)
                .args(["-t", r]);
            for (k, v) in &b.args {
                bud.args(["--build-arg", &format!("{k}={v}")]);
            }
            run(bud.arg(&context), &what)?;
            if c.image.is_some() {
                run(
                    Command::new("buildah").args([
                        "push",
                        "--quiet",
                        "--tls-verify=false",
                        r,
                        &format!("docker://{r}"),
                    ]),
                    &what,
                )?;
            } else {
                let file =
                    std::env::temp_dir().join(format!("rouse-build-{}-{}.tar", ns.name, c.name));
                let _ = std::fs::remove_file(&file);
                run(
                    Command::new("buildah").args([
                        "push",
                        "--quiet",
                        r,
                        &format!("oci-archive:{}:{r}", file.display()),
                    ]),
                    &what,
                )?;
                imports.push((r.clone(), file));
            }
        }
    }
    Ok(imports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_content_only() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
        let b = Build {
            context: dir.clone(),
            dockerfile: None,
            args: BTreeMap::new(),
        };
        let a = digest(&dir, &b).unwrap();
        assert_eq!(a, digest(&dir, &b).unwrap());
        std::fs::write(dir.join("index.html"), "hi").unwrap();
        assert_ne!(a, digest(&dir, &b).unwrap());
        assert_eq!(
            reference("shop", "web", Some("127.0.0.1:5000/shop/web:1.4"), &a),
            format!("127.0.0.1:5000/shop/web:build-{}", &a[..16])
        );
        assert_eq!(
            reference("shop", "web", None, &a),
            format!("rouse-build/shop-web:build-{}", &a[..16])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("rouse-build-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
