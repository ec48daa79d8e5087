//! The bind loop (xtask/bench/bindloop.c), compiled at bench time and driven line by line over
//! its stdin and stdout.
//!
//! One long-lived worker serves every configuration of a run: it creates its network namespace
//! and pins itself once, so no measurement pays for (or is disturbed by) a namespace being
//! created or torn down, and every tracer sees the same pid and namespace.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};

/// The C source, embedded so a run can never pick up a stale copy.
const SOURCE: &str = include_str!("../../bench/bindloop.c");

/// Compiles the workload into `scratch` with gcc -O2.
pub fn build(scratch: &Path) -> Result<PathBuf> {
    let src = scratch.join("bindloop.c");
    let bin = scratch.join("bindloop");
    fs::write(&src, SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running gcc (the bench compiles its bind loop with it)")?;
    ensure!(
        out.status.success(),
        "gcc failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(bin)
}

/// One reply of the worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Binds made (getppid() calls, for [`Worker::getppid`]).
    pub binds: u64,
    pub ns: u64,
    /// Binds (or sockets) that failed; the loop should never see one.
    pub errors: u64,
}

impl Sample {
    pub fn ns_per_bind(&self) -> f64 {
        self.ns as f64 / self.binds.max(1) as f64
    }

    pub fn rate(&self) -> f64 {
        self.binds as f64 * 1e9 / self.ns.max(1) as f64
    }
}

pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Worker {
    /// Starts a worker in a fresh network namespace, pinned to `cpu`, binding 127.0.0.1:`port`.
    pub fn spawn(bin: &Path, port: u16, cpu: usize) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(port.to_string())
            .arg(cpu.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(pid) = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "bind loop did not start (said {line:?}); it needs root for unshare(CLONE_NEWNET)"
            );
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for the answer to the last command: `ok BINDS NS ERRORS`.
    pub fn reply(&mut self) -> Result<Sample> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let f: Vec<u64> = line
            .strip_prefix("ok ")
            .map(|r| {
                r.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(f.len() == 3, "bind loop answered {line:?}");
        Ok(Sample {
            binds: f[0],
            ns: f[1],
            errors: f[2],
        })
    }

    /// `warmup` untimed binds, then `binds` timed ones, as fast as one core goes.
    pub fn run(&mut self, binds: u64, warmup: u64) -> Result<Sample> {
        self.send(&format!("run {binds} {warmup}"))?;
        self.reply()
    }

    /// `warmup` untimed getppid() calls, then `calls` timed ones: no bind at all.
    pub fn getppid(&mut self, calls: u64, warmup: u64) -> Result<Sample> {
        self.send(&format!("getppid {calls} {warmup}"))?;
        self.reply()
    }

    /// `warmup` untimed, then `connects` timed connect()s to a local listener (accepted and
    /// closed): what a tracer costs a successful connect().
    pub fn connect(&mut self, connects: u64, warmup: u64) -> Result<Sample> {
        self.send(&format!("connect {connects} {warmup}"))?;
        self.reply()
    }

    /// Starts binding at `rate` per second (∞ for flat out) for `ms`; collect with [`Self::reply`].
    pub fn send_pace(&mut self, rate: f64, ms: u64) -> Result<()> {
        let rate = if rate.is_finite() { rate } else { 1e12 };
        self.send(&format!("pace {rate:.0} {ms}"))
    }

    /// Binds flat out until [`Self::spin_stop`].
    pub fn spin_start(&mut self) -> Result<()> {
        self.send("spin")
    }

    pub fn spin_stop(&mut self) -> Result<Sample> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) };
        self.reply()
    }
}

impl Drop for Worker {
    /// Asks politely, then kills: a worker left spinning by an error never reads "quit".
    fn drop(&mut self) {
        let _ = self.send("quit");
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
