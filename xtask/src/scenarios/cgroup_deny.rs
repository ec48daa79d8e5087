//! A cgroup program that refuses binds, loaded with the raw bpf(2) syscall: the one way to
//! make bind() fail with EPERM for a reason portwatch must name (a BPF program, not a
//! missing privilege). Two instructions, so no loader library and no object file.

use anyhow::{Context, Result};

/// A cgroup bind4 program that refuses every bind (`r0 = 0; exit`), attached to a cgroup of
/// its own; processes moved there with [`DenyProgram::add`] cannot bind IPv4 sockets.
/// Dropping it detaches the program and removes the cgroup.
pub struct DenyProgram {
    prog: std::os::fd::OwnedFd,
    cgroup: std::fs::File,
    dir: std::path::PathBuf,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_BIND: u32 = 8;

impl DenyProgram {
    pub fn attach(name: &str) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let dir = super::workload::v2_root()?.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..57].copy_from_slice(b"deny_bind");
        attr[68..72].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_LOAD with a zero-padded bpf_attr that outlives the call.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), 128) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("loading the deny program");
        }
        // SAFETY: a new fd.
        let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let cgroup = std::fs::File::open(&dir)?;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_ATTACH with a zero-padded bpf_attr.
        if unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, attr.as_ptr(), 128) } != 0 {
            return Err(std::io::Error::last_os_error()).context("attaching the deny program");
        }
        Ok(DenyProgram { prog, cgroup, dir })
    }

    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.dir.display()))
    }
}

impl Drop for DenyProgram {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(self.prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_DETACH with a zero-padded bpf_attr.
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_DETACH, attr.as_ptr(), 128) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}
