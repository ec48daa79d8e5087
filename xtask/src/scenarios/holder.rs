//! Holder processes: another process, with its own pid and comm, that creates sockets in a
//! given network namespace and keeps them until told to exit.
//!
//! Why a process and not a thread: portwatch names the process behind a socket (pid, comm) and
//! resolves interface names through `/proc/<pid>/ns/net`, so scenarios about "who holds this
//! port" need a holder that is a real, separate process living entirely in the namespace.
//!
//! The runner re-executes itself (`/proc/self/exe hold --netns PATH --comm NAME`). The child
//! joins the namespace, renames itself, prints one ready line with its pid, then serves one
//! JSON request per stdin line (bind a [`SockSpec`], close, exit) with one JSON reply per line.
//! Closing its stdin also ends it, so a runner that dies takes its holders along. The child
//! side is in `holder/serve.rs`; this file has the protocol and the runner's handle.

mod serve;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

pub use self::serve::main;
use super::{
    netns::Netns,
    sock::{self, SockSpec},
    vanish::Target,
};

/// `xtask hold`: the child side. Not for humans.
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// Network namespace to join (a /proc/.../ns/net path).
    #[arg(long)]
    netns: Option<String>,
    /// Process name (comm) to take, at most 15 bytes.
    #[arg(long, default_value = "pw-holder")]
    comm: String,
    /// Drop to this uid (and gid) after joining the namespace: the socket's owner for
    /// SO_REUSEPORT and privileged-port rules.
    #[arg(long)]
    uid: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Bind {
        spec: SockSpec,
    },
    /// listen() on a socket made earlier.
    Listen {
        id: u32,
    },
    /// A socket from `spec` that is never bound, then listen(): the kernel picks its port.
    ListenUnbound {
        spec: SockSpec,
    },
    Close {
        id: u32,
    },
    Exit,
    /// Exit the moment a byte arrives on this FIFO ([`super::vanish::exit_on`]).
    ExitOn {
        fifo: PathBuf,
    },
    /// Right after the next bind or listen returns, make these processes go and wait until
    /// they have ([`super::vanish::Armed`]); the reply says how long that took.
    FireAfterNextCall {
        targets: Vec<Target>,
    },
    /// Bind a socket from `spec`, send it over a unix socket pair in an SCM_RIGHTS message
    /// that is never received, and close it: the message is then its only reference.
    BindInFlight {
        spec: SockSpec,
    },
    /// A socket from `spec`, bound (and listening, if the spec says so) through io_uring
    /// (IORING_OP_BIND, IORING_OP_LISTEN): no bind or listen system call.
    UringBind {
        spec: SockSpec,
    },
    /// A socket from `spec` (its options; bound to its address first when `bind`, and
    /// listening when the spec says so), then connect() to `to`: the system call, or
    /// IORING_OP_CONNECT when `uring`; made again on the same socket while it fails, `tries`
    /// times in all. The socket is kept, connected or not.
    Connect {
        spec: SockSpec,
        bind: bool,
        to: SocketAddr,
        uring: bool,
        tries: u32,
    },
    /// `n` times: a new socket from `spec`, bind, hold it `hold_us`, close, wait `gap_us`.
    BindLoop {
        spec: SockSpec,
        n: u32,
        hold_us: u64,
        gap_us: u64,
    },
}

#[derive(Serialize, Deserialize, Debug)]
struct Ready {
    pid: u32,
    netns: u64,
    comm: String,
}

/// What a holder's bind did. The socket stays open (even after a failed bind) until closed.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Bound {
    pub id: u32,
    pub fd: i32,
    pub ino: u64,
    /// 0 on success.
    pub errno: i32,
    /// getsockname() after the call.
    pub local: Option<SocketAddr>,
    /// After a [`Holder::fire_after_next_call`]: when this call returned, and how soon the
    /// targets were gone.
    #[serde(default)]
    pub fired: Option<Fired>,
}

/// See [`Bound::fired`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Fired {
    /// CLOCK_MONOTONIC ([`super::vanish::now_ns`]) right after the call returned.
    pub call_returned_ns: u64,
    /// Microseconds from then until every target had exited (measured by the caller, so it
    /// includes the caller's own wake-up).
    pub gone_after_us: u64,
}

/// What a [`Holder::bind_loop`] did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Counted {
    pub binds: u32,
    pub failed: u32,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(untagged)]
enum Reply {
    Bound(Bound),
    Counted(Counted),
    Error { error: String },
    Done { done: bool },
}

/// The runner's handle on a holder process.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// As the kernel reports it (truncated to 15 bytes).
    pub comm: String,
    pub netns: u64,
}

impl Holder {
    /// Starts a holder in `ns` named `comm` and waits for its ready line.
    pub fn spawn(ns: &Netns, comm: &str) -> Result<Holder> {
        Self::spawn_at(&ns.path(), comm)
    }

    /// A holder that runs as `uid` once it is in the namespace.
    pub fn spawn_as(ns: &Netns, comm: &str, uid: u32) -> Result<Holder> {
        Self::start(&ns.path(), comm, Some(uid))
    }

    pub fn spawn_at(netns_path: &str, comm: &str) -> Result<Holder> {
        Self::start(netns_path, comm, None)
    }

    fn start(netns_path: &str, comm: &str, uid: Option<u32>) -> Result<Holder> {
        let mut args = vec!["hold", "--netns", netns_path, "--comm", comm];
        let uid_text = uid.map(|u| u.to_string());
        if let Some(u) = &uid_text {
            args.extend(["--uid", u.as_str()]);
        }
        let mut child = Command::new("/proc/self/exe")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a holder (/proc/self/exe hold)")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("reading the holder's ready line")?;
        let ready: Ready = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("holder did not start ({status}); it printed {line:?}");
            }
        };
        Ok(Holder {
            child,
            stdin,
            stdout,
            pid: ready.pid,
            comm: ready.comm,
            netns: ready.netns,
        })
    }

    fn request(&mut self, req: &Request) -> Result<Reply> {
        let stdin = self.stdin.as_mut().context("holder already told to exit")?;
        writeln!(stdin, "{}", serde_json::to_string(req)?)?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!("holder {} exited instead of answering {req:?}", self.pid);
        }
        let reply: Reply = serde_json::from_str(&line)
            .with_context(|| format!("holder {} answered {line:?}", self.pid))?;
        if let Reply::Error { error } = reply {
            bail!("holder {}: {error}", self.pid);
        }
        Ok(reply)
    }

    /// Creates a socket from `spec` in the holder and binds it (and listens, if the spec
    /// says so). A failed bind is not an error: see [`Bound::errno`].
    pub fn bind(&mut self, spec: &SockSpec) -> Result<Bound> {
        match self.request(&Request::Bind { spec: spec.clone() })? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// Like [`Holder::bind`], but the bind must succeed.
    pub fn bind_ok(&mut self, spec: &SockSpec) -> Result<Bound> {
        let b = self.bind(spec)?;
        if b.errno != 0 {
            bail!(
                "holder bind of {} {} failed: {}",
                spec.proto.name(),
                spec.addr,
                sock::errno_text(b.errno)
            );
        }
        Ok(b)
    }

    /// Like [`Holder::bind`], but the bind must fail with `errno` (set-up for a scenario
    /// about that failure).
    pub fn bind_fails(&mut self, spec: &SockSpec, errno: i32) -> Result<Bound> {
        let b = self.bind(spec)?;
        sock::expect_errno(spec, b.errno, errno)?;
        Ok(b)
    }

    /// Like [`Holder::bind`], through io_uring ([`super::uring`]). A failure is not an
    /// error: see [`Bound::errno`] (EINVAL before Linux 6.11, which lacks the operation).
    pub fn uring_bind(&mut self, spec: &SockSpec) -> Result<Bound> {
        match self.request(&Request::UringBind { spec: spec.clone() })? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// listen() on socket `id` (made by an earlier bind). A failure is not an error: see
    /// [`Bound::errno`].
    pub fn listen(&mut self, id: u32) -> Result<Bound> {
        match self.request(&Request::Listen { id })? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// listen() on a new socket that was never bound.
    pub fn listen_unbound(&mut self, spec: &SockSpec) -> Result<Bound> {
        match self.request(&Request::ListenUnbound { spec: spec.clone() })? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// A socket from `spec`, bound to its address first when `bind`, connected to `to`. A
    /// failed connect (or bind) is not an error: see [`Bound::errno`].
    pub fn connect(&mut self, spec: &SockSpec, bind: bool, to: &str) -> Result<Bound> {
        self.connect_by(spec, bind, to, false, 1)
    }

    /// Like [`Holder::connect`], the connect() through io_uring ([`super::uring`]): no
    /// connect system call.
    pub fn uring_connect(&mut self, spec: &SockSpec, bind: bool, to: &str) -> Result<Bound> {
        self.connect_by(spec, bind, to, true, 1)
    }

    /// Like [`Holder::connect`] (not bound first), the connect() system call made again on the
    /// same socket while it fails, `tries` times in all, back to back: a client that retries.
    pub fn connect_tries(&mut self, spec: &SockSpec, to: &str, tries: u32) -> Result<Bound> {
        self.connect_by(spec, false, to, false, tries)
    }

    fn connect_by(
        &mut self,
        spec: &SockSpec,
        bind: bool,
        to: &str,
        uring: bool,
        tries: u32,
    ) -> Result<Bound> {
        let req = Request::Connect {
            spec: spec.clone(),
            bind,
            to: to.parse().with_context(|| format!("bad address {to:?}"))?,
            uring,
            tries,
        };
        match self.request(&req)? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// Like [`Holder::connect`], but it must succeed.
    pub fn connect_ok(&mut self, spec: &SockSpec, bind: bool, to: &str) -> Result<Bound> {
        let b = self.connect(spec, bind, to)?;
        if b.errno != 0 {
            bail!(
                "holder connect of {} to {to} failed: {}",
                spec.proto.name(),
                sock::errno_text(b.errno)
            );
        }
        Ok(b)
    }

    pub fn close(&mut self, id: u32) -> Result<()> {
        self.request(&Request::Close { id }).map(|_| ())
    }

    /// From now on the holder exits the moment a byte arrives on `fifo`.
    pub fn exit_on(&mut self, fifo: &Path) -> Result<()> {
        self.request(&Request::ExitOn {
            fifo: fifo.to_path_buf(),
        })
        .map(|_| ())
    }

    /// Right after its next bind or listen returns, this holder makes `targets` go and waits
    /// for them: see [`Bound::gone_after_us`].
    pub fn fire_after_next_call(&mut self, targets: &[Target]) -> Result<()> {
        self.request(&Request::FireAfterNextCall {
            targets: targets.to_vec(),
        })
        .map(|_| ())
    }

    /// Binds a socket from `spec` (it must succeed) and leaves it only in flight: see
    /// [`Request::BindInFlight`]. The reply's fd is -1: no process has it.
    pub fn bind_in_flight(&mut self, spec: &SockSpec) -> Result<Bound> {
        match self.request(&Request::BindInFlight { spec: spec.clone() })? {
            Reply::Bound(b) => Ok(b),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// `n` binds from `spec`, each socket held `hold` then closed, `gap` between them;
    /// returns how many failed.
    pub fn bind_loop(
        &mut self,
        spec: &SockSpec,
        n: u32,
        hold: Duration,
        gap: Duration,
    ) -> Result<Counted> {
        let req = Request::BindLoop {
            spec: spec.clone(),
            n,
            hold_us: hold.as_micros() as u64,
            gap_us: gap.as_micros() as u64,
        };
        match self.request(&req)? {
            Reply::Counted(c) => Ok(c),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }

    /// Tells the holder to exit and waits for it.
    pub fn exit(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", serde_json::to_string(&Request::Exit)?);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait()?;
        bail!("holder {} did not exit when told to; killed", self.pid)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
