//! The OCI runtime spec of an instance. Pure: image config and settings in,
//! spec out.
//!
//! - args from the image's Entrypoint + Cmd, its WorkingDir and User;
//! - env merged image < namespace < container (< secrets, later), then `PORT`;
//! - cpu mVCPU → CFS quota over a 100 ms period (1000 mVCPU = one period),
//!   memory MB → memory limit with swap off, a pids limit;
//! - Docker's default capability set without NET_RAW, no-new-privileges,
//!   a seccomp profile of rouse's own (`seccomp`), masked and read-only
//!   kernel paths, /proc, /dev, read-only /sys, a size-bounded tmpfs /tmp
//!   (its pages count in the memory limit), optionally a read-only root;
//! - a network namespace of its own (the node connects it to its bridge
//!   once the task exists), or the node's network in host mode;
//! - a user namespace mapping root to an unprivileged range of node ids,
//!   when the node has one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::image::ImageInfo;
use super::RuntimeError;

/// How an instance is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own.
    Isolated,
    /// The node's network (development mode).
    Host,
}

/// The node ids an instance's user namespace maps to: inside ids
/// `0..size` are `base..base+size` on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub base: u32,
    pub size: u32,
}

pub const CFS_PERIOD_US: u64 = 100_000;
pub const PIDS_LIMIT: i64 = 1024;
/// cgroup parent of every instance (cgroupfs driver): /sys/fs/cgroup/<ctl>/rouse/<id>.
pub const CGROUP_PARENT: &str = "rouse";

/// Settings of one instance.
pub struct InstanceSpec<'a> {
    pub id: &'a str,
    pub image: &'a ImageInfo,
    pub namespace_env: &'a BTreeMap<String, String>,
    pub container_env: &'a BTreeMap<String, String>,
    /// Opened secrets (namespace's, then container's, which win).
    pub secrets: &'a BTreeMap<String, crate::secrets::SecretValue>,
    /// The port the instance listens on (`PORT`).
    pub port: u16,
    pub cpu_mvcpu: u32,
    pub memory_mb: u32,
    pub network: Network,
    /// A user namespace, or none (the image's user runs as that uid on the node).
    pub userns: Option<IdMap>,
    pub read_only_rootfs: bool,
}

/// Size of an instance's /tmp: a quarter of its memory, at least 16 MiB.
pub fn tmp_size_mb(memory_mb: u32) -> u32 {
    (memory_mb / 4).max(16)
}

/// Merges env vars: image < namespace < container < secrets, then `PORT`.
pub fn merged_env(s: &InstanceSpec<'_>) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in &s.image.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.extend(s.namespace_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(s.container_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(
        s.secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string())),
    );
    env.insert("PORT".into(), s.port.to_string());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// CFS quota in µs for `mvcpu` over [`CFS_PERIOD_US`].
pub fn cpu_quota(mvcpu: u32) -> i64 {
    i64::from(mvcpu) * i64::try_from(CFS_PERIOD_US).unwrap_or(100_000) / 1000
}

fn parse_user(user: &str) -> Result<(u32, u32), RuntimeError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse::<u32>().map_err(|_| {
        RuntimeError::Spec(format!("user: image user {user:?} is a name; rouse runs images whose User is a numeric uid[:gid]"))
    })?;
    let gid = if g.is_empty() {
        uid
    } else {
        g.parse::<u32>()
            .map_err(|_| RuntimeError::Spec(format!("user: group in {user:?} must be numeric")))?
    };
    Ok((uid, gid))
}

fn spec_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Spec(e.to_string())
}

pub fn build(s: &InstanceSpec<'_>) -> Result<Spec, RuntimeError> {
    let mut args = s.image.entrypoint.clone();
    args.extend(s.image.cmd.iter().cloned());
    if args.is_empty() {
        return Err(RuntimeError::Spec(
            "image has neither Entrypoint nor Cmd: nothing to run".into(),
        ));
    }
    let (uid, gid) = parse_user(&s.image.user)?;
    let caps: std::collections::HashSet<Capability> = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(spec_err)?;
    let cwd = if s.image.working_dir.is_empty() {
        "/".to_string()
    } else {
        s.image.working_dir.clone()
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(merged_env(s))
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(spec_err)?,
        )
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(spec_err)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    // /sys read-only; the cgroup tree visible read-only. A user namespace
    // may mount sysfs only with a network namespace it owns: on the host
    // network the node's /sys is bound read-only instead.
    let bind_sys = s.userns.is_some() && s.network == Network::Host;
    for m in &mut mounts {
        if m.destination() == &PathBuf::from("/sys") {
            let mut opts: Vec<String> = vec!["nosuid".into(), "noexec".into(), "nodev".into()];
            if bind_sys {
                m.set_typ(Some("bind".into()));
                m.set_source(Some("/sys".into()));
                opts.push("rbind".into());
            }
            opts.push("ro".into());
            m.set_options(Some(opts));
        }
    }
    let tmp_size = format!("size={}m", tmp_size_mb(s.memory_mb));
    let extra = [
        (
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            vec!["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        (
            "/tmp",
            "tmpfs",
            "tmpfs",
            vec!["nosuid", "nodev", "mode=1777", tmp_size.as_str()],
        ),
        (
            "/etc/resolv.conf",
            "bind",
            "/etc/resolv.conf",
            vec!["rbind", "ro"],
        ),
        ("/etc/hosts", "bind", "/etc/hosts", vec!["rbind", "ro"]),
    ];
    for (dest, typ, source, opts) in extra {
        if (typ == "bind") && !std::path::Path::new(source).exists() {
            continue;
        }
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(source)
                .options(opts.into_iter().map(String::from).collect::<Vec<_>>())
                .build()
                .map_err(spec_err)?,
        );
    }

    let memory = i64::from(s.memory_mb) * 1024 * 1024;
    let resources = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota(s.cpu_mvcpu))
                .period(CFS_PERIOD_US)
                .build()
                .map_err(spec_err)?,
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(memory)
                .build()
                .map_err(spec_err)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(PIDS_LIMIT)
                .build()
                .map_err(spec_err)?,
        )
        .devices(vec![oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(spec_err)?])
        .build()
        .map_err(spec_err)?;
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if s.network == Network::Isolated {
        kinds.push(LinuxNamespaceType::Network);
    }
    if s.userns.is_some() {
        kinds.push(LinuxNamespaceType::User);
    }
    let namespaces = kinds
        .into_iter()
        .map(|t| {
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(spec_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = oci_spec::runtime::Linux::default();
    let mut linux = LinuxBuilder::default()
        .resources(resources)
        .cgroups_path(PathBuf::from(format!("/{CGROUP_PARENT}/{}", s.id)))
        .namespaces(namespaces)
        .seccomp(super::seccomp::profile()?)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(spec_err)?;
    if let Some(m) = s.userns {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(m.base)
            .size(m.size)
            .build()
            .map_err(spec_err)?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(s.read_only_rootfs)
            .build()
            .map_err(spec_err)?,
    ));
    spec.set_hostname(Some(short_hostname(s.id)));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn short_hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageInfo {
        ImageInfo {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["exec httpd".into()],
            env: vec!["A=image".into(), "B=image".into(), "PATH=/bin".into()],
            working_dir: "/www".into(),
            user: "65534".into(),
            ..Default::default()
        }
    }

    #[test]
    fn env_precedence_and_port() {
        let img = image();
        let ns = BTreeMap::from([
            ("B".to_string(), "ns".to_string()),
            ("C".to_string(), "ns".to_string()),
        ]);
        let ct = BTreeMap::from([("C".to_string(), "ct".to_string())]);
        let s = InstanceSpec {
            id: "i1",
            image: &img,
            namespace_env: &ns,
            container_env: &ct,
            secrets: &BTreeMap::new(),
            port: 20001,
            cpu_mvcpu: 250,
            memory_mb: 128,
            network: Network::Isolated,
            userns: None,
            read_only_rootfs: false,
        };
        let env = merged_env(&s);
        assert_eq!(env, ["A=image", "B=ns", "C=ct", "PATH=/bin", "PORT=20001"]);
    }

    #[test]
    fn limits_args_and_user() {
        let img = image();
        let e = BTreeMap::new();
        let s = InstanceSpec {
            id: "i1",
            image: &img,
            namespace_env: &e,
            container_env: &e,
            secrets: &BTreeMap::new(),
            port: 1,
            cpu_mvcpu: 250,
            memory_mb: 128,
            network: Network::Host,
            userns: None,
            read_only_rootfs: false,
        };
        let spec = build(&s).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(25_000));
        assert_eq!(res.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(
            res.memory().as_ref().unwrap().limit(),
            Some(128 * 1024 * 1024)
        );
        assert_eq!(
            res.memory().as_ref().unwrap().swap(),
            Some(128 * 1024 * 1024)
        );
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap(),
            &PathBuf::from("/rouse/i1")
        );
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            !ns.contains(&LinuxNamespaceType::Network),
            "host networking"
        );
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "exec httpd"]);
        assert_eq!((p.user().uid(), p.user().gid()), (65534, 65534));
        assert_eq!(p.cwd(), &PathBuf::from("/www"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetBindService));
        assert!(!p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
    }

    #[test]
    fn the_sandbox_is_hardened() {
        let img = image();
        let e = BTreeMap::new();
        let s = InstanceSpec {
            id: "i1",
            image: &img,
            namespace_env: &e,
            container_env: &e,
            secrets: &BTreeMap::new(),
            port: 8080,
            cpu_mvcpu: 250,
            memory_mb: 256,
            network: Network::Isolated,
            userns: Some(IdMap {
                base: 200_000,
                size: 65_536,
            }),
            read_only_rootfs: true,
        };
        let spec = build(&s).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::User));
        let uid = linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 200_000, 65_536)
        );
        assert!(linux.seccomp().is_some());
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            assert!(!set.as_ref().unwrap().contains(&Capability::NetRaw));
        }
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let tmp = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/tmp"))
            .unwrap();
        assert!(tmp
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=64m".to_string()));
    }

    #[test]
    fn user_names_and_empty_images_are_refused() {
        let mut img = image();
        img.user = "nginx".into();
        let e = BTreeMap::new();
        let s = InstanceSpec {
            id: "i",
            image: &img,
            namespace_env: &e,
            container_env: &e,
            secrets: &BTreeMap::new(),
            port: 1,
            cpu_mvcpu: 100,
            memory_mb: 64,
            network: Network::Isolated,
            userns: None,
            read_only_rootfs: false,
        };
        assert!(build(&s).unwrap_err().to_string().contains("user:"));
        let empty = ImageInfo::default();
        let s = InstanceSpec { image: &empty, ..s };
        assert!(build(&s).is_err());
    }
}
