//! The holder process itself (`xtask hold`): joins the namespace, takes its name and uid,
//! then answers the runner's requests one line at a time.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, Write},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{Bound, Counted, Fired, HoldArgs, Ready, Reply, Request};
use crate::scenarios::{
    netns,
    sock::{self, InFlight, Sock, SockSpec},
    uring,
    vanish::{self, Armed},
};

pub fn main(args: HoldArgs) -> Result<()> {
    if let Some(path) = &args.netns {
        let f = File::open(path).with_context(|| format!("opening {path}"))?;
        // SAFETY: joining a namespace through an open nsfs fd; single-threaded here.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("setns({path})"));
        }
    }
    if let Some(uid) = args.uid {
        // SAFETY: plain credential changes of this single-threaded process.
        let failed = unsafe {
            libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error()).context(format!("dropping to uid {uid}"));
        }
    }
    let comm = std::ffi::CString::new(args.comm.as_bytes()).context("comm")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (it truncates).
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };

    let mut out = std::io::stdout().lock();
    let ready = Ready {
        pid: std::process::id(),
        netns: netns::current_inode()?,
        comm: netns::current_comm()?,
    };
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;

    let mut state = State::default();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Error {
                error: format!("bad request {line:?}: {e}"),
            },
            Ok(Request::Exit) => break,
            Ok(req) => state.handle(req),
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

/// What the holder keeps between requests.
#[derive(Default)]
struct State {
    socks: HashMap<u32, Sock>,
    next_id: u32,
    /// Targets to fire after the next call.
    armed: Option<Armed>,
    in_flight: Vec<InFlight>,
}

impl State {
    fn handle(&mut self, req: Request) -> Reply {
        self.try_handle(req)
            .unwrap_or_else(|error| Reply::Error { error })
    }

    fn try_handle(&mut self, req: Request) -> Result<Reply, String> {
        Ok(match req {
            Request::Exit => Reply::Done { done: true },
            Request::Close { id } => Reply::Done {
                done: self.socks.remove(&id).is_some(),
            },
            Request::Listen { id } => {
                let s = self.socks.get(&id).ok_or(format!("no socket {id}"))?;
                let r = s.listen(128);
                let fired = fire(&mut self.armed, vanish::now_ns())?;
                Reply::Bound(bound(id, s, &r, fired))
            }
            Request::ListenUnbound { spec } => {
                let s = Sock::open(&spec).map_err(|e| format!("creating the socket: {e}"))?;
                let r = s.listen(128);
                let fired = fire(&mut self.armed, vanish::now_ns())?;
                Reply::Bound(self.keep(s, &r, fired))
            }
            Request::Bind { spec } => {
                let (s, r) =
                    sock::open_and_bind(&spec).map_err(|e| format!("creating the socket: {e}"))?;
                let fired = fire(&mut self.armed, vanish::now_ns())?;
                Reply::Bound(self.keep(s, &r, fired))
            }
            Request::UringBind { spec } => {
                let s = Sock::open(&spec).map_err(|e| format!("creating the socket: {e}"))?;
                let mut r = uring::bind(s.fd(), spec.addr);
                if r.is_ok() && spec.listen {
                    r = uring::listen(s.fd(), 128);
                }
                let fired = fire(&mut self.armed, vanish::now_ns())?;
                Reply::Bound(self.keep(s, &r, fired))
            }
            Request::ExitOn { fifo } => {
                vanish::exit_on(&fifo).map_err(|e| format!("opening {}: {e}", fifo.display()))?;
                Reply::Done { done: true }
            }
            Request::FireAfterNextCall { targets } => {
                let armed = Armed::open(&targets).map_err(|e| format!("{targets:?}: {e}"))?;
                self.armed = Some(armed);
                Reply::Done { done: true }
            }
            Request::BindInFlight { spec } => {
                let (s, r) =
                    sock::open_and_bind(&spec).map_err(|e| format!("creating the socket: {e}"))?;
                r.map_err(|e| format!("binding {}: {e}", spec.addr))?;
                let mut b = bound(0, &s, &Ok(()), None);
                b.fd = -1;
                let f = InFlight::send(s).map_err(|e| format!("sending it in flight: {e}"))?;
                self.in_flight.push(f);
                Reply::Bound(b)
            }
            Request::Connect {
                spec,
                bind,
                to,
                uring,
                tries,
            } => {
                let s = Sock::open(&spec).map_err(|e| format!("creating the socket: {e}"))?;
                let mut r = if bind { s.bind() } else { Ok(()) };
                if r.is_ok() && bind && spec.listen {
                    r = s.listen(128);
                }
                if r.is_ok() {
                    for _ in 0..tries.max(1) {
                        r = if uring {
                            uring::connect(s.fd(), to)
                        } else {
                            s.connect(to)
                        };
                        if r.is_ok() {
                            break;
                        }
                    }
                }
                Reply::Bound(self.keep(s, &r, None))
            }
            Request::BindLoop {
                spec,
                n,
                hold_us,
                gap_us,
            } => Reply::Counted(bind_loop(&spec, n, hold_us, gap_us)?),
        })
    }

    /// Keeps socket `s` under a new id and describes it.
    fn keep(&mut self, s: Sock, r: &std::io::Result<()>, fired: Option<Fired>) -> Bound {
        self.next_id += 1;
        let b = bound(self.next_id, &s, r, fired);
        self.socks.insert(self.next_id, s);
        b
    }
}

/// Fires the armed targets, if any, right after a call that returned at `call_returned`
/// ([`vanish::now_ns`]); says when the call returned and how long the targets took to exit.
fn fire(armed: &mut Option<Armed>, call_returned: u64) -> Result<Option<Fired>, String> {
    armed
        .take()
        .map(|a| a.fire(call_returned))
        .transpose()
        .map(|gone| {
            gone.map(|gone_after_us| Fired {
                call_returned_ns: call_returned,
                gone_after_us,
            })
        })
        .map_err(|e| format!("making the holders go after the call: {e}"))
}

/// Socket `id` after a call that returned `r`.
fn bound(id: u32, s: &Sock, r: &std::io::Result<()>, fired: Option<Fired>) -> Bound {
    Bound {
        id,
        fd: s.fd(),
        ino: s.ino().unwrap_or(0),
        errno: sock::errno_of(r),
        local: s.local_addr().ok(),
        fired,
    }
}

fn bind_loop(spec: &SockSpec, n: u32, hold_us: u64, gap_us: u64) -> Result<Counted, String> {
    let mut c = Counted {
        binds: 0,
        failed: 0,
    };
    for _ in 0..n {
        let (s, r) = sock::open_and_bind(spec).map_err(|e| format!("creating the socket: {e}"))?;
        c.binds += 1;
        if r.is_err() {
            c.failed += 1;
        }
        std::thread::sleep(Duration::from_micros(hold_us));
        drop(s);
        std::thread::sleep(Duration::from_micros(gap_us));
    }
    Ok(c)
}
