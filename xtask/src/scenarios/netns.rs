//! Network namespaces for scenarios.
//!
//! Every scenario gets a fresh namespace, so it can use any port without meeting the machine's
//! own sockets or another scenario's, and so its events can be told apart from everything else
//! portwatch sees: they are the ones whose `netns` is the scenario's inode.
//!
//! `unshare(CLONE_NEWNET)` moves only the calling thread, so a scenario runs on a thread of its
//! own and does its socket calls there, the way a program inside a container would. Other
//! processes (holders) join it through `/proc/<pid>/task/<tid>/ns/net`, and portwatch is kept in
//! the namespace the runner started in (see [`RootNs`]), since it traces all of them from there.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Command,
};

use anyhow::{Context, Result, anyhow};

/// A network namespace that a scenario thread lives in.
#[derive(Debug, Clone)]
pub struct Netns {
    inode: u64,
    path: String,
}

impl Netns {
    /// The inode portwatch reports as `netns`.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// A path another process can open to join this namespace. For a scenario's namespace it
    /// is valid while the thread that created it runs, i.e. during the closure given to
    /// [`in_new_netns`]; for a [`Named`] one, until it is deleted.
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// Makes `cmd`'s child (a program not written here, a real server) run in this namespace.
    pub fn enter_on_spawn(&self, cmd: &mut Command) -> Result<()> {
        let path = self.path();
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        join_before_exec(cmd, ns);
        Ok(())
    }
}

/// Runs `f` on a new thread named `name` (its comm, as portwatch will report it) inside a fresh
/// network namespace whose `lo` is up. A panic in `f` becomes an error, so one broken scenario
/// cannot take the runner down.
pub fn in_new_netns<R: Send>(name: &str, f: impl FnOnce(&Netns) -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(comm_name(name))
            .spawn_scoped(s, || {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
                }
                lo_up().context("bringing lo up in the new netns")?;
                keep_alive()?;
                // SAFETY: gettid cannot fail.
                let tid = unsafe { libc::gettid() };
                let ns = Netns {
                    inode: current_inode()?,
                    path: format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
                };
                f(&ns)
            })
            .context("spawning a scenario thread")?;
        handle.join().map_err(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            anyhow!("panicked: {msg}")
        })?
    })
}

/// A namespace made the way administrators make them, `ip netns add NAME`: it lives under
/// /run/netns and outlives any process in it, until [`Named::delete`] (or drop) runs
/// `ip netns del NAME`. Unlike the scenario namespaces, the runner does not keep it open, so
/// once deleted the kernel frees it and may give its inode to the next one.
pub struct Named {
    pub ns: Netns,
    name: String,
    deleted: bool,
}

impl Named {
    /// `ip netns add NAME` and `lo` up inside. NAME should be unique on the machine (other
    /// test runs may use the same names at the same time): put the runner's pid in it.
    pub fn add(name: &str) -> Result<Named> {
        ip(None, &["netns", "add", name])?;
        let mut named = Named {
            ns: Netns {
                inode: 0,
                path: format!("/run/netns/{name}"),
            },
            name: name.to_string(),
            deleted: false,
        };
        ip(None, &["-n", name, "link", "set", "lo", "up"])?;
        named.ns.inode = std::fs::metadata(&named.ns.path)
            .with_context(|| format!("stat {}", named.ns.path))?
            .ino();
        Ok(named)
    }

    /// `ip netns del NAME`.
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        ip(None, &["netns", "del", &self.name])
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = ip(None, &["netns", "del", &self.name]);
        }
    }
}

/// Runs `ip ARGS` (iproute2, on the host only), inside `ns` if given; fails with its stderr.
pub fn ip(ns: Option<&Netns>, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(std::process::Stdio::null());
    if let Some(ns) = ns {
        ns.enter_on_spawn(&mut cmd)?;
    }
    let out = cmd.output().context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Namespaces made by this run, kept open until it exits. Without this a freed namespace's
/// inode is handed to the next one, and a scenario would see the previous one's events as
/// its own.
static KEEP: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());

fn keep_alive() -> Result<()> {
    let f = File::open("/proc/thread-self/ns/net").context("opening /proc/thread-self/ns/net")?;
    KEEP.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    Ok(())
}

/// Thread names become the comm, which the kernel cuts at 15 bytes.
fn comm_name(name: &str) -> String {
    name.chars().take(15).collect()
}

/// The comm of the calling thread, as the kernel (and so portwatch) sees it.
pub fn current_comm() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/thread-self/comm")
        .context("reading /proc/thread-self/comm")?
        .trim_end()
        .to_string())
}

/// Inode of the calling thread's network namespace.
pub fn current_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat /proc/thread-self/ns/net")?
        .ino())
}

/// Sets the IFF_UP flag on `lo` with SIOCSIFFLAGS, so the VM needs no `ip` binary.
fn lo_up() -> io::Result<()> {
    // A socket made here belongs to this thread's (new) namespace, and so does its ioctl.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the fd is open and ifr is a valid ifreq for these requests.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace, e.g.
/// `set_sysctl("net/ipv4/ip_local_port_range", "41000 41000")`. /proc/sys/net resolves the
/// namespace of the task that opens it, so this must run on the scenario thread.
pub fn set_sysctl(name: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{name}");
    std::fs::write(&path, value).with_context(|| format!("writing {value:?} to {path}"))?;
    let back = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    anyhow::ensure!(
        norm(&back) == norm(value),
        "{path} reads {back:?} after writing {value:?}"
    );
    Ok(())
}

/// The namespace the runner started in. Children that must not inherit a scenario thread's
/// namespace (portwatch itself) are moved back into it between fork and exec.
pub struct RootNs(File);

impl RootNs {
    /// Call on the main thread before any scenario runs.
    pub fn open() -> Result<Self> {
        Ok(RootNs(
            File::open("/proc/thread-self/ns/net").context("opening /proc/thread-self/ns/net")?,
        ))
    }

    /// Makes `cmd`'s child join this namespace before it execs.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        join_before_exec(cmd, self.0.as_raw_fd());
    }

    /// Runs `f` on a thread of its own in this namespace: to reach what portwatch serves on
    /// its loopback (`--metrics`), and to start programs that must live there with it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: an open nsfs file; setns moves only this thread.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("setns to the root namespace");
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("a thread in the root namespace panicked"))?
        })
    }
}

/// Makes `cmd`'s child join the network namespace `ns` (an open nsfs file) between fork and
/// exec. `ns` must stay open until the child is spawned: the hook owns it when it can.
fn join_before_exec(cmd: &mut Command, ns: impl AsRawFd + Send + Sync + 'static) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setns is async-signal-safe; the fd stays open in the child until exec (it is
    // close-on-exec, which is what we want after).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Creates a TUN interface `name` in the current thread's namespace; it lives as long as the
/// returned file. Scenarios use it as a second device for SO_BINDTODEVICE, since a fresh
/// namespace has only `lo` and TUN is the one virtual device every kernel here can make.
pub fn tun_device(name: &str) -> Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (is the tun module loaded?)")?;
    // struct ifreq: a 16-byte name, then the flags (the rest is padding).
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    anyhow::ensure!(bytes.len() < 16, "interface name too long: {name}");
    ifr[..bytes.len()].copy_from_slice(bytes);
    ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context(format!("creating TUN device {name}"));
    }
    Ok(f)
}
