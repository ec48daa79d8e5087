//! portwatch as a scenario sees it: a child process started with `trace --json`, whose stdout
//! is collected line by line as it comes, so a scenario can wait for exactly the events it
//! caused (those in its network namespace) instead of sleeping.
//!
//! Events are kept as the JSON values portwatch printed ([`Event`] only adds accessors), so
//! assertions are about what a user of `--json` would read, and fields added later (such as
//! the explanations) are there without changes here.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use portwatch_common::Backend;
use serde_json::Value;

use super::netns::{Netns, RootNs};

/// portwatch's ready line on stderr starts with this.
pub const READY_PREFIX: &str = "portwatch: tracing bind() and listen() with the";

/// More output lines than the scenarios themselves cause: someone else is binding a lot.
const BUSY_LINES: usize = 2000;

/// How to start portwatch in this run.
pub struct Config {
    pub exe: PathBuf,
    /// The backend portwatch is asked for; None: `auto`.
    pub backend: Option<Backend>,
    /// Multiplies every timeout: 1 on the host, more under TCG emulation.
    pub timeout_scale: f64,
    pub root_ns: RootNs,
}

impl Config {
    /// `--backend`'s value.
    pub fn backend_flag(&self) -> &'static str {
        self.backend.map_or("auto", Backend::name)
    }

    pub fn timeout(&self, base_secs: f64) -> Duration {
        Duration::from_secs_f64(base_secs * self.timeout_scale)
    }
}

/// One `bind` or `listen` line of `--json` output.
#[derive(Clone, Debug)]
pub struct Event(pub Value);

impl Event {
    pub fn kind(&self) -> &str {
        self.0["type"].as_str().unwrap_or("")
    }
    pub fn netns(&self) -> Option<u64> {
        self.0["netns"].as_u64()
    }
    pub fn pid(&self) -> Option<u64> {
        self.0["pid"].as_u64()
    }
    pub fn fd(&self) -> Option<i64> {
        self.0["fd"].as_i64()
    }
    pub fn ok(&self) -> bool {
        self.0["ok"].as_bool().unwrap_or(false)
    }
    pub fn errno(&self) -> Option<&str> {
        self.0["errno"].as_str()
    }
    pub fn requested_port(&self) -> Option<u64> {
        self.0["requested"]["port"].as_u64()
    }
    pub fn bound_port(&self) -> Option<u64> {
        self.0["bound"]["port"].as_u64()
    }
    /// Field by dotted path, e.g. `requested.port`; `Value::Null` when absent.
    pub fn get(&self, path: &str) -> &Value {
        lookup(&self.0, path)
    }
    /// The explanation's sentence (`explain.message`); empty when there is none.
    pub fn message(&self) -> &str {
        self.get("explain.message").as_str().unwrap_or_default()
    }
    pub fn sock_ino(&self) -> Option<u64> {
        self.0["sock_ino"].as_u64()
    }
    /// A call of `kind` by process `pid` on the socket with inode `ino`. The inode, unlike an
    /// fd number, is never reused while the socket is open, so it names one socket.
    pub fn is(&self, kind: &str, pid: u32, ino: u64) -> bool {
        self.kind() == kind && self.pid() == Some(pid.into()) && self.sock_ino() == Some(ino)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A field by dotted path; numeric parts index arrays (`explain.holders.0.owners.0.pid`).
pub fn lookup<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, k| match (v, k.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i).unwrap_or(&Value::Null),
            _ => &v[k],
        })
}

#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    ready: bool,
    stdout_closed: bool,
    stderr_closed: bool,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

/// A running portwatch.
pub struct Portwatch {
    child: Child,
    pub pid: u32,
    pub args: Vec<String>,
    shared: Shared,
    readers: Vec<JoinHandle<()>>,
    wait_timeout: Duration,
    stop_timeout: Duration,
}

/// What a stopped portwatch left behind.
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// Parsed stdout lines, in order; `Err` holds a line that is not JSON.
    pub records: Vec<Result<Value, String>>,
}

impl Stopped {
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.records
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|v| matches!(v["type"].as_str(), Some("bind" | "listen" | "connect")))
            .map(|v| Event(v.clone()))
    }

    pub fn events_in(&self, ns: &Netns) -> Vec<Event> {
        self.events()
            .filter(|e| e.netns() == Some(ns.inode()))
            .collect()
    }

    pub fn summary(&self) -> Option<&Value> {
        self.records
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find(|v| v["type"] == "summary")
    }

    /// stderr and the last stdout lines, for failure messages.
    pub fn describe(&self) -> String {
        describe_output(&self.stdout, &self.stderr, Some(self.status))
    }
}

fn describe_output(stdout: &[String], stderr: &[String], status: Option<ExitStatus>) -> String {
    let mut s = String::new();
    if let Some(st) = status {
        s.push_str(&format!("portwatch {st}\n"));
    }
    s.push_str("portwatch stderr:\n");
    for l in stderr.iter().rev().take(20).rev() {
        s.push_str(&format!("  {l}\n"));
    }
    if !stdout.is_empty() {
        s.push_str(&format!(
            "portwatch stdout ({} lines, last 5):\n",
            stdout.len()
        ));
        for l in stdout.iter().rev().take(5).rev() {
            s.push_str(&format!("  {l}\n"));
        }
    }
    s
}

impl Portwatch {
    /// `portwatch trace --json --backend <cfg.backend> <extra>`, started in the root network
    /// namespace; returns once it printed its ready line.
    pub fn start(cfg: &Config, extra: &[&str]) -> Result<Portwatch> {
        let mut args: Vec<String> = ["trace", "--json", "--backend", cfg.backend_flag()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_args(cfg, args)
    }

    /// Starts portwatch with exactly `args` and waits for the ready line.
    pub fn start_args(cfg: &Config, args: Vec<String>) -> Result<Portwatch> {
        Self::start_wrapped(cfg, &[], args)
    }

    /// As [`Portwatch::start_args`], through `wrapper` (a program and its arguments that
    /// exec portwatch, such as setpriv dropping to a user with some capabilities).
    pub fn start_wrapped(cfg: &Config, wrapper: &[&str], args: Vec<String>) -> Result<Portwatch> {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&cfg.exe);
                c
            }
            None => Command::new(&cfg.exe),
        };
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cfg.root_ns.enter_on_spawn(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cfg.exe.display()))?;
        let shared: Shared = Arc::default();
        let readers = vec![
            spawn_reader(child.stdout.take().expect("piped"), shared.clone(), false),
            spawn_reader(child.stderr.take().expect("piped"), shared.clone(), true),
        ];
        let mut pw = Portwatch {
            pid: child.id(),
            child,
            args,
            shared,
            readers,
            wait_timeout: cfg.timeout(10.0),
            stop_timeout: cfg.timeout(10.0),
        };
        let deadline = Instant::now() + cfg.timeout(30.0);
        let shared = pw.shared.clone();
        let (lock, cv) = &*shared;
        let mut out = lock.lock().unwrap();
        loop {
            if out.ready {
                drop(out);
                return Ok(pw);
            }
            let exited = out.stderr_closed;
            if exited || Instant::now() >= deadline {
                drop(out);
                if !exited {
                    let _ = pw.child.kill();
                }
                let stopped = pw.finish()?;
                bail!(
                    "portwatch {}\n{}",
                    if exited {
                        "exited before it was ready".to_string()
                    } else {
                        format!("was not ready after {:.0?}; killed", cfg.timeout(30.0))
                    },
                    stopped.describe()
                );
            }
            out = cv.wait_timeout(out, deadline - Instant::now()).unwrap().0;
        }
    }

    /// stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// stdout lines so far (for output without --json).
    pub fn stdout(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().stdout.clone()
    }

    /// Events so far in namespace `ns`, in the order portwatch printed them.
    pub fn events_in(&self, ns: &Netns) -> Vec<Event> {
        let out = self.shared.0.lock().unwrap();
        events_of(&out.stdout, ns.inode())
    }

    /// Waits until the events in `ns` satisfy `done` and returns them. On timeout the error
    /// says what was awaited and lists the events that did arrive.
    pub fn wait_for(
        &self,
        ns: &Netns,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Result<Vec<Event>> {
        let deadline = Instant::now() + self.wait_timeout;
        let (lock, cv) = &*self.shared;
        let mut out = lock.lock().unwrap();
        loop {
            let evs = events_of(&out.stdout, ns.inode());
            if done(&evs) {
                return Ok(evs);
            }
            let now = Instant::now();
            if now >= deadline || out.stdout_closed {
                let mut msg = format!(
                    "{} waiting for {what} in netns {}; its events:\n",
                    if out.stdout_closed {
                        "portwatch exited".to_string()
                    } else {
                        format!("timed out after {:.0?}", self.wait_timeout)
                    },
                    ns.inode()
                );
                for e in &evs {
                    msg.push_str(&format!("  {e}\n"));
                }
                if evs.is_empty() {
                    msg.push_str("  (none)\n");
                }
                // When nothing arrives, this tells "lagging behind other traffic" (many
                // lines, the last one old) from "saw nothing" (few lines).
                let last_time = out
                    .stdout
                    .last()
                    .and_then(|l| serde_json::from_str::<Value>(l).ok())
                    .and_then(|v| v["time"].as_str().map(String::from))
                    .unwrap_or_else(|| "-".into());
                msg.push_str(&format!(
                    "portwatch printed {} lines in all so far; the last one's time: {last_time}\n",
                    out.stdout.len()
                ));
                if out.stdout.len() > BUSY_LINES {
                    msg.push_str(
                        "(that many lines means other processes bind heavily, a benchmark say, \
                         and the unfiltered portwatch is behind: see docs/TESTING.md)\n",
                    );
                }
                msg.push_str(&describe_output(&[], &out.stderr, None));
                bail!(msg.trim_end().to_string());
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Waits for at least `n` events in `ns`.
    pub fn wait_n(&self, ns: &Netns, n: usize) -> Result<Vec<Event>> {
        self.wait_for(ns, &format!("{n} events"), |e| e.len() >= n)
    }

    /// Waits for the one event of `kind` that process `pid` made on socket inode `ino`
    /// ([`super::sock::Sock::ino`], [`super::holder::Bound::ino`]).
    pub fn wait_call(&self, ns: &Netns, kind: &str, pid: u32, ino: u64) -> Result<Event> {
        let what = format!("a {kind} event of pid {pid} on socket inode {ino}");
        let evs = self.wait_for(ns, &what, |e| e.iter().any(|e| e.is(kind, pid, ino)))?;
        let hits: Vec<&Event> = evs.iter().filter(|e| e.is(kind, pid, ino)).collect();
        if hits.len() != 1 {
            bail!(
                "expected one {kind} event of pid {pid} on socket inode {ino}, got {}:\n{}",
                hits.len(),
                hits.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(hits[0].clone())
    }

    /// Ids and names of the BPF programs this portwatch holds open. The ids come from its
    /// fds' /proc fdinfo (`prog_id:`), which is exact even when other portwatch instances run
    /// on the machine and needs no bpftool pid support; bpftool supplies the names.
    pub fn programs(&self) -> Result<Vec<(u64, String)>> {
        let dir = format!("/proc/{}/fdinfo", self.pid);
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u64>().ok()),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        let all = bpftool_programs()?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let name = all
                    .iter()
                    .find(|p| p["id"].as_u64() == Some(id))
                    .and_then(|p| p["name"].as_str())
                    .unwrap_or("?");
                (id, name.to_string())
            })
            .collect())
    }

    /// SIGINT (what Ctrl-C sends), then waits for the exit and the last output.
    pub fn stop(self) -> Result<Stopped> {
        // SAFETY: kill() on our own child's pid; it has not been reaped, so the pid is ours.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGINT) };
        self.finish()
    }

    /// Waits for the exit (killing it after the stop timeout) and collects the output.
    fn finish(mut self) -> Result<Stopped> {
        let deadline = Instant::now() + self.stop_timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let st = self.child.wait()?;
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let out = self.shared.0.lock().unwrap();
                bail!(
                    "portwatch did not exit within {:.0?} of SIGINT; killed\n{}",
                    self.stop_timeout,
                    describe_output(&out.stdout, &out.stderr, Some(st))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            r.join().map_err(|_| anyhow!("output reader panicked"))?;
        }
        let out = std::mem::take(&mut *self.shared.0.lock().unwrap());
        // Every JSON object portwatch printed matches the documented schema.
        super::schema::check_lines(&out.stdout)
            .context("portwatch's JSON output against its schema")?;
        let records = out
            .stdout
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).map_err(|_| l.clone()))
            .collect();
        Ok(Stopped {
            status,
            stdout: out.stdout,
            stderr: out.stderr,
            records,
        })
    }
}

impl Drop for Portwatch {
    fn drop(&mut self) {
        // Only reached when a scenario bailed out early: don't leave it running.
        if self.readers.is_empty() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events_of(lines: &[String], netns: u64) -> Vec<Event> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| matches!(v["type"].as_str(), Some("bind" | "listen" | "connect")))
        .filter(|v| v["netns"].as_u64() == Some(netns))
        .map(Event)
        .collect()
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    shared: Shared,
    is_stderr: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let (lock, cv) = &*shared;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut out = lock.lock().unwrap();
            if is_stderr {
                if line.starts_with(READY_PREFIX) {
                    out.ready = true;
                }
                out.stderr.push(line);
            } else {
                out.stdout.push(line);
            }
            cv.notify_all();
        }
        let mut out = lock.lock().unwrap();
        if is_stderr {
            out.stderr_closed = true;
        } else {
            out.stdout_closed = true;
        }
        cv.notify_all();
    })
}

/// `bpftool -j prog show`: one JSON object per loaded program (with `pids` holding it, where
/// bpftool can tell).
pub fn bpftool_programs() -> Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .stdin(Stdio::null())
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool -j prog show failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("bpftool printed no JSON array"))
}
