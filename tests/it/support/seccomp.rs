//! Runs a child with `openat2` failing ENOSYS, as on Linux before 5.6 (RHEL 8's 4.18) or under
//! a container runtime whose seccomp profile does not know it: a classic BPF filter installed
//! between fork and exec. The webdav role then takes its component-walk resolver, and the same
//! path-escape tests run against it.

#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// openat2's number, the same on every architecture (new syscalls share one table since 5.1).
const SYS_OPENAT2: u32 = 437;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn filter() -> [libc::sock_filter; 4] {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        // seccomp_data.nr is the first field.
        op(BPF_LD_W_ABS, 0, 0, 0),
        op(BPF_JEQ_K, 0, 1, SYS_OPENAT2),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

/// Makes `command`'s process see `openat2` fail with ENOSYS.
pub fn without_openat2(command: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec only async-signal-safe calls are made (two prctl), on a
    // filter built before the fork and living on this closure's stack.
    unsafe {
        command.pre_exec(|| {
            let mut filter = filter();
            let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
