//! The seccomp profile every instance runs under: everything allowed but
//! the system calls a tenant has no business making, which fail with
//! EPERM (ENOSYS for `clone3`, whose flags a filter cannot read, so that
//! libc falls back to `clone`, whose flags it can). Pure.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::RuntimeError;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// `CLONE_NEWUSER`: creating a user namespace.
pub const CLONE_NEWUSER: u64 = 0x1000_0000;

/// Denied outright, by kind.
pub const DENIED: &[&str] = &[
    // kernel modules and replacing the kernel
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "kexec_load",
    "kexec_file_load",
    // kernel programs, performance counters, io_uring (its own syscall surface)
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // the kernel keyring
    "keyctl",
    "add_key",
    "request_key",
    // mounts and the root
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // other namespaces, and other processes' memory
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    // the clock
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "settimeofday",
    "stime",
    "adjtimex",
    // the machine
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "iopl",
    "ioperm",
    "quotactl",
    "lookup_dcookie",
    "nfsservctl",
    "vhangup",
    "syslog",
    "uselib",
    "get_kernel_syms",
    "query_module",
    "_sysctl",
];

fn err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Spec(format!("seccomp: {e}"))
}

/// A rule failing `names` with `errno`.
fn deny(names: &[&str], errno: u32) -> Result<LinuxSyscall, RuntimeError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
        .map_err(err)
}

/// `name` fails when its first argument (the flags) asks for a new user
/// namespace.
fn deny_new_userns(name: &str) -> Result<LinuxSyscall, RuntimeError> {
    let flag = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NEWUSER)
        .value_two(CLONE_NEWUSER)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(err)?;
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![flag])
        .build()
        .map_err(err)
}

/// The profile.
pub fn profile() -> Result<LinuxSeccomp, RuntimeError> {
    let syscalls = vec![
        deny(DENIED, EPERM)?,
        deny(&["clone3"], ENOSYS)?,
        deny_new_userns("unshare")?,
        deny_new_userns("clone")?,
    ];
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchArm,
        ])
        .syscalls(syscalls)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_calls_fail_and_new_user_namespaces_are_refused() {
        let p = profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let calls = p.syscalls().clone().unwrap();
        let denied: Vec<&String> = calls[0].names().iter().collect();
        for name in [
            "mount",
            "bpf",
            "kexec_load",
            "ptrace",
            "keyctl",
            "reboot",
            "setns",
        ] {
            assert!(denied.iter().any(|n| *n == name), "{name} is not denied");
        }
        let json = serde_json::to_value(&p).unwrap();
        let unshare = &json["syscalls"][2];
        assert_eq!(unshare["names"][0], "unshare");
        assert_eq!(unshare["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(unshare["args"][0]["value"], CLONE_NEWUSER);
        assert_eq!(json["syscalls"][1]["errnoRet"], 38, "clone3: ENOSYS");
    }
}
