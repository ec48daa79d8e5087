//! Making holders vanish right after another process's call, for the scenarios about what
//! the kernel saw at the instant of the call: the holder must be gone before portwatch can
//! look at /proc, so only what was captured at the call can name it.
//!
//! Three sides. The runner makes a [`Fifo`] per holder. The holder waits on it in a thread of
//! its own ([`exit_on`]); the moment a byte arrives it closes its sockets, notes the time in
//! a file next to the FIFO and exits. The process that makes the call opens every target
//! before it ([`Armed::open`]), so that firing right after the call costs one write (or one
//! kill, for servers not written here) per target, then waits on pidfds until every target has
//! exited. A FIFO, not a signal, so an unprivileged caller can make a root holder go (the
//! SO_REUSEPORT uid scenario).
//!
//! On a busy machine a woken thread can wait milliseconds for a CPU, and a running one can be
//! preempted for as long, so the holder's waiting thread and the caller, from arming to
//! firing, ask for a real-time priority (where they may: an unprivileged caller cannot). Both
//! only make one call or sleep meanwhile, so they cannot hog a CPU.
//! Times are CLOCK_MONOTONIC nanoseconds ([`now_ns`]), comparable across processes.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; all-zero is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// SCHED_FIFO for the calling thread (`true`), or back to the normal policy. Best effort:
/// without CAP_SYS_NICE the thread keeps its policy.
fn realtime(on: bool) {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO, 10)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: sets the calling thread's own policy from a valid sched_param.
    unsafe { libc::sched_setscheduler(0, policy, &p) };
}

/// How long a target may take to exit before firing counts as failed.
const EXIT_WAIT_MS: i32 = 5000;

/// A process to make go away right after the call, and how.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// The FIFO it waits on ([`exit_on`]); `None`: SIGKILL it (a program not written here).
    pub fifo: Option<PathBuf>,
}

/// A FIFO in the temporary directory that any user may write (the caller can be
/// unprivileged); removed on drop.
pub struct Fifo {
    path: PathBuf,
}

impl Fifo {
    pub fn new() -> Result<Fifo> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pw-vanish-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o666) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("mkfifo {}", path.display()));
        }
        let fifo = Fifo { path };
        // mkfifo's mode went through the umask.
        std::fs::set_permissions(&fifo.path, std::fs::Permissions::from_mode(0o666))?;
        Ok(fifo)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the holder waiting on this FIFO had closed its sockets ([`now_ns`]), once it has.
    pub fn closed_at_ns(&self) -> Result<u64> {
        let p = closed_path(&self.path);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}", p.display()))
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(closed_path(&self.path));
    }
}

/// Where the holder notes when it closed its sockets.
fn closed_path(fifo: &Path) -> PathBuf {
    let mut p = fifo.as_os_str().to_owned();
    p.push(".closed");
    PathBuf::from(p)
}

/// Holder side: the moment a byte, or the writer's close, arrives on `fifo`, closes every
/// file of this process but stdio (its sockets), notes the time, and exits. Returns once the
/// FIFO is open, so a writer that opens it afterwards finds a reader.
pub fn exit_on(fifo: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)?;
    let closed = closed_path(fifo);
    std::thread::spawn(move || {
        realtime(true);
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd. Linux reports no POLLHUP on a FIFO that never had a
            // writer, so this sleeps until the caller opens it and writes (or dies).
            let n = unsafe { libc::poll(&mut p, 1, -1) };
            if n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                // SAFETY: closes fds this process owns; no other thread uses them again,
                // since the process ends right after.
                unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
                let _ = std::fs::write(&closed, now_ns().to_string());
                // The rest of the exit (unmapping memory) is no longer urgent: leave the CPU
                // to the other holders woken by the same call.
                realtime(false);
                // SAFETY: ends the process at once; nothing of ours needs flushing.
                unsafe { libc::_exit(0) };
            }
        }
    });
    Ok(())
}

struct Opened {
    pid: u32,
    pidfd: OwnedFd,
    fifo: Option<File>,
}

/// Caller side: the targets, opened before the call.
pub struct Armed(Vec<Opened>);

impl Armed {
    /// Opens the targets; the calling thread runs real-time from here until [`Armed::fire`]
    /// has fired.
    pub fn open(targets: &[Target]) -> io::Result<Armed> {
        let mut v = Vec::new();
        for t in targets {
            // SAFETY: pidfd_open takes a pid and flags; the result is a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, t.pid as libc::c_int, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fifo = match &t.fifo {
                Some(p) => Some(
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(p)?,
                ),
                None => None,
            };
            v.push(Opened {
                pid: t.pid,
                // SAFETY: a new fd that nothing else owns.
                pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
                fifo,
            });
        }
        realtime(true);
        Ok(Armed(v))
    }

    /// Makes every target go, then waits until all have exited (their sockets are closed by
    /// then: a process closes its files before it becomes a zombie). Returns the
    /// microseconds from `call_returned` ([`now_ns`]) to the last exit.
    pub fn fire(self, call_returned: u64) -> io::Result<u64> {
        let fired = self.0.iter().try_for_each(|t| match &t.fifo {
            Some(f) => {
                let mut f: &File = f;
                f.write_all(b"x")
            }
            // SAFETY: kill(2) on a pid we hold a pidfd for, so it is still that process.
            None => match unsafe { libc::kill(t.pid as libc::pid_t, libc::SIGKILL) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            },
        });
        realtime(false);
        fired?;
        for t in &self.0 {
            let mut p = libc::pollfd {
                fd: t.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a pidfd turns readable when the process exits.
            let n = unsafe { libc::poll(&mut p, 1, EXIT_WAIT_MS) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::other(format!(
                    "pid {} did not exit within {EXIT_WAIT_MS} ms of being told to",
                    t.pid
                )));
            }
        }
        Ok(now_ns().saturating_sub(call_returned) / 1000)
    }
}
