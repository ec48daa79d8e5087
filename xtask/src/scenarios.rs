//! The scenario runner: `xtask scenarios --portwatch PATH --backend B`.
//!
//! It runs as root on the machine under test (this host, or inside the VM where it is copied
//! along with portwatch), performs real socket calls in fresh network namespaces while a real
//! portwatch traces them, and asserts on portwatch's output. Each result is printed as one
//! line and, with `--json-results`, written as one JSON object per line: that file (the VM's
//! second serial port, inside the VM) is how `cargo xtask test` learns the outcome.
//!
//! Building blocks, for writing more scenarios:
//! - [`netns`]: fresh namespaces, sysctls inside them, the root namespace for portwatch;
//! - [`sock`]: sockets from a [`sock::SockSpec`] (protocol, address, options);
//! - [`holder`]: separate processes that hold sockets in a namespace until told to exit;
//! - [`portwatch`]: portwatch as a child, waiting for the events a scenario caused;
//! - [`check`]: field-by-field assertions on portwatch's JSON;
//! - [`cgroup_deny`]: a cgroup BPF program that makes bind() fail with EPERM;
//! - [`vanish`]: holders that exit right after another process's call;
//! - [`prometheus`]: Debian's Prometheus and promtool, fetched once and run by hand.
//!
//! A scenario is a name plus a body of one of three kinds (see [`Body`]). Most share one
//! portwatch per backend, because starting one is slow under emulation; filter tests and
//! other flag tests start their own.

pub mod cgroup_deny;
pub mod check;
mod demo;
mod explain;
mod hardening;
pub mod holder;
mod journal;
mod metrics;
pub mod netns;
mod outbound;
mod paths;
pub mod portwatch;
mod privilege;
pub mod prometheus;
pub mod schema;
pub mod sock;
mod trace;
pub mod uring;
pub mod vanish;
mod who;
mod workload;

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use portwatch_common::Backend;
use serde::{Deserialize, Serialize};

use self::{
    netns::{Netns, RootNs},
    portwatch::{Config, Portwatch, Stopped},
};

/// `--backend` and `--auto-expect`: a backend by its stable name.
fn backend_parser() -> impl clap::builder::TypedValueParser<Value = Backend> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Backend::ALL.map(Backend::name))
        .map(|name| Backend::from_name(&name).expect("one of the possible values"))
}

/// `xtask scenarios`
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The portwatch binary to test.
    #[arg(long, value_name = "PATH", required_unless_present = "list")]
    pub portwatch: Option<PathBuf>,
    /// Backend to test with (repeat to run the scenarios once per backend).
    #[arg(long, value_parser = backend_parser(), required_unless_present = "list")]
    pub backend: Vec<Backend>,
    /// Only scenarios whose name contains one of these (repeatable).
    #[arg(long, value_name = "SUBSTRING")]
    pub filter: Vec<String>,
    /// Also write each result as a JSON line here ("-" for stdout; lines for people then go
    /// to stderr).
    #[arg(long, value_name = "PATH|-")]
    pub json_results: Option<String>,
    /// What `--backend auto` must pick on this kernel; enables the backend_auto scenario.
    #[arg(long, value_parser = backend_parser())]
    pub auto_expect: Option<Backend>,
    /// Multiply all timeouts (emulated VMs are 10-50x slower than the host).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
    /// Running inside the test VM: skip scenarios that need programs only the host has.
    #[arg(long)]
    pub in_vm: bool,
    /// Print the scenario names and exit.
    #[arg(long)]
    pub list: bool,
}

/// What a scenario body gets.
pub struct Ctx {
    pub pw: Config,
    /// `uname -r`.
    pub kernel: String,
    pub auto_expect: Option<Backend>,
    /// Inode of the namespace portwatch runs in (not any scenario's).
    pub root_netns: u64,
}

type SharedFn = dyn Fn(&Ctx, &Portwatch, &Netns) -> Result<()> + Send + Sync;
type AloneFn = dyn Fn(&Ctx, &Netns) -> Result<()> + Send + Sync;
type AfterFn = dyn Fn(&Ctx, &SharedRun) -> Result<()> + Send + Sync;

pub enum Body {
    /// Runs on its own thread in a fresh netns while the backend's shared portwatch (no
    /// filters) watches; it waits for its own events with [`Portwatch::wait_for`].
    Shared(Box<SharedFn>),
    /// Same fresh netns, but starts whatever portwatch it needs (filters, other flags).
    Alone(Box<AloneFn>),
    /// Checks the shared portwatch after it was stopped: its whole output, what it loaded.
    After(Box<AfterFn>),
}

pub struct Scenario {
    pub name: &'static str,
    pub body: Body,
    /// Runs only under these backends (`None`: all).
    pub backends: Option<&'static [Backend]>,
    /// Needs `--auto-expect`.
    pub needs_auto_expect: bool,
    /// Needs a program that only the host has (python3, ss): skipped with `--in-vm`.
    pub host_only: bool,
    /// Kernel modules it needs that the VM must load (the host's kernel has them built in or
    /// loads them itself).
    pub modules: &'static [&'static str],
}

impl Scenario {
    pub fn shared(
        name: &'static str,
        f: impl Fn(&Ctx, &Portwatch, &Netns) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, Body::Shared(Box::new(f)))
    }
    pub fn alone(
        name: &'static str,
        f: impl Fn(&Ctx, &Netns) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, Body::Alone(Box::new(f)))
    }
    pub fn after(
        name: &'static str,
        f: impl Fn(&Ctx, &SharedRun) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, Body::After(Box::new(f)))
    }
    fn new(name: &'static str, body: Body) -> Self {
        Scenario {
            name,
            body,
            backends: None,
            needs_auto_expect: false,
            host_only: false,
            modules: &[],
        }
    }
    pub fn only_backends(mut self, b: &'static [Backend]) -> Self {
        self.backends = Some(b);
        self
    }
    /// The VM loads these kernel modules (with their dependencies) when this scenario runs.
    pub fn needs_modules(mut self, m: &'static [&'static str]) -> Self {
        self.modules = m;
        self
    }
    pub fn host_only(mut self) -> Self {
        self.host_only = true;
        self
    }
    pub fn needing_auto_expect(mut self) -> Self {
        self.needs_auto_expect = true;
        self
    }
}

/// The shared portwatch of one backend, after it stopped.
pub struct SharedRun {
    pub stopped: Stopped,
    /// (id, name) of the programs it held while running, from bpftool.
    pub programs: Result<Vec<(u64, String)>, String>,
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    let mut v = trace::scenarios();
    v.extend(explain::scenarios());
    v.extend(who::scenarios());
    v.extend(workload::scenarios());
    v.extend(outbound::scenarios());
    v.extend(metrics::scenarios());
    v.extend(privilege::scenarios());
    v.extend(journal::scenarios());
    v.extend(demo::scenarios());
    v.extend(hardening::scenarios());
    v.extend(paths::scenarios());
    v
}

/// Whether `s` runs for `backend` with these filters.
fn selected(
    s: &Scenario,
    backend: Backend,
    filters: &[String],
    auto_expect: bool,
    in_vm: bool,
) -> bool {
    (filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        && s.backends.is_none_or(|b| b.contains(&backend))
        && (auto_expect || !s.needs_auto_expect)
        && !(in_vm && s.host_only)
}

/// The kernel modules the scenarios these filters select in a VM need ([`Scenario::modules`]).
pub fn modules_needed(filters: &[String]) -> Vec<&'static str> {
    let mut m: Vec<&'static str> = all()
        .iter()
        .filter(|s| {
            Backend::ALL
                .iter()
                .any(|&b| selected(s, b, filters, true, true))
        })
        .flat_map(|s| s.modules.iter().copied())
        .collect();
    m.sort_unstable();
    m.dedup();
    m
}

/// The (scenario, backend) pairs a run with these arguments will report, so the caller can
/// tell a missing result (runner crashed, VM died) from a pass.
pub fn planned(
    backends: &[Backend],
    filters: &[String],
    auto_expect: bool,
    in_vm: bool,
) -> Vec<(String, String)> {
    let all = all();
    backends
        .iter()
        .flat_map(|b| {
            all.iter()
                .filter(|s| selected(s, *b, filters, auto_expect, in_vm))
                .map(|s| (s.name.to_string(), b.name().to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One scenario's outcome: a line of the results file.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub backend: String,
    pub kernel: String,
    pub ok: bool,
    /// Why it failed; may span lines (the first is the summary).
    #[serde(default)]
    pub reason: Option<String>,
    pub ms: u64,
}

impl Outcome {
    /// `ok   name (backend, kernel)` or `FAIL name (backend, kernel): reason` with the rest
    /// of the reason indented below.
    pub fn line(&self) -> String {
        if self.ok {
            return format!("ok   {} ({}, {})", self.name, self.backend, self.kernel);
        }
        let reason = self.reason.as_deref().unwrap_or("(no reason given)");
        let mut lines = reason.lines();
        let mut s = format!(
            "FAIL {} ({}, {}): {}",
            self.name,
            self.backend,
            self.kernel,
            lines.next().unwrap_or("")
        );
        for l in lines {
            s.push_str("\n     ");
            s.push_str(l);
        }
        s
    }
}

struct Reporter {
    sink: Option<Box<dyn Write>>,
    human_to_stderr: bool,
    passed: usize,
    failed: usize,
}

impl Reporter {
    fn report(&mut self, o: Outcome) -> Result<()> {
        if self.human_to_stderr {
            eprintln!("{}", o.line());
        } else {
            println!("{}", o.line());
        }
        if o.ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if let Some(w) = &mut self.sink {
            writeln!(w, "{}", serde_json::to_string(&o)?)?;
            w.flush()?;
        }
        Ok(())
    }
}

pub fn main(args: RunArgs) -> Result<()> {
    let scenarios = all();
    if args.list {
        for s in &scenarios {
            println!("{}", s.name);
        }
        return Ok(());
    }
    if !crate::cmd::is_root() {
        bail!("the scenarios load eBPF programs and create network namespaces: run them as root");
    }
    let exe = args.portwatch.clone().context("--portwatch is required")?;
    let exe = std::fs::canonicalize(&exe).with_context(|| format!("{}", exe.display()))?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?
        .trim()
        .to_string();
    let (sink, human_to_stderr): (Option<Box<dyn Write>>, bool) = match args.json_results.as_deref()
    {
        None => (None, false),
        Some("-") => (Some(Box::new(std::io::stdout())), true),
        Some(p) => (
            Some(Box::new(
                File::create(p).with_context(|| format!("opening {p} for results"))?,
            )),
            false,
        ),
    };
    let mut rep = Reporter {
        sink,
        human_to_stderr,
        passed: 0,
        failed: 0,
    };
    for &backend in &args.backend {
        let ctx = Ctx {
            pw: Config {
                exe: exe.clone(),
                backend: Some(backend),
                timeout_scale: args.timeout_scale,
                root_ns: RootNs::open()?,
            },
            kernel: kernel.clone(),
            auto_expect: args.auto_expect,
            root_netns: netns::current_inode()?,
        };
        let pick = |s: &Scenario, filters: &[String]| {
            selected(s, backend, filters, args.auto_expect.is_some(), args.in_vm)
        };
        let shared_run = scenarios
            .iter()
            .any(|s| matches!(s.body, Body::Shared(_)) && pick(s, &args.filter));
        // The checks of the shared run as a whole (every JSON line it printed against the
        // schema, nothing left attached) go with any scenario of it, whatever the filter:
        // otherwise a filter would drop their failures without a word.
        let chosen: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| {
                pick(s, &args.filter)
                    || (shared_run && matches!(s.body, Body::After(_)) && pick(s, &[]))
            })
            .collect();
        run_backend(&ctx, &chosen, &mut rep)?;
    }
    // Standalone, this is the run's verdict. Under `cargo xtask test` (results to a file) the
    // suite prints the one `scenarios:` line at the very end, so don't compete with it.
    let prefix = if args.json_results.is_some() {
        "runner"
    } else {
        "scenarios"
    };
    let line = format!("{prefix}: {} passed, {} failed", rep.passed, rep.failed);
    if human_to_stderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    if rep.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn run_backend(ctx: &Ctx, chosen: &[&Scenario], rep: &mut Reporter) -> Result<()> {
    let outcome = |name: &str, started: Instant, r: Result<()>| Outcome {
        name: name.to_string(),
        backend: ctx.pw.backend_flag().to_string(),
        kernel: ctx.kernel.clone(),
        ok: r.is_ok(),
        reason: r.err().map(|e| format!("{e:#}")),
        ms: started.elapsed().as_millis() as u64,
    };
    let shared: Vec<&&Scenario> = chosen
        .iter()
        .filter(|s| matches!(s.body, Body::Shared(_)))
        .collect();
    let after: Vec<&&Scenario> = chosen
        .iter()
        .filter(|s| matches!(s.body, Body::After(_)))
        .collect();

    if !shared.is_empty() || !after.is_empty() {
        let started = Instant::now();
        match Portwatch::start(&ctx.pw, &[]) {
            Err(e) => {
                let why = format!("the shared portwatch did not start: {e:#}");
                for s in shared.iter().chain(&after) {
                    rep.report(outcome(s.name, started, Err(anyhow::anyhow!(why.clone()))))?;
                }
            }
            Ok(pw) => {
                let programs = pw.programs().map_err(|e| format!("{e:#}"));
                for s in &shared {
                    let Body::Shared(f) = &s.body else {
                        unreachable!()
                    };
                    let t = Instant::now();
                    let r = netns::in_new_netns(s.name, |ns| f(ctx, &pw, ns));
                    rep.report(outcome(s.name, t, r))?;
                }
                let run = pw
                    .stop()
                    .map(|stopped| SharedRun { stopped, programs })
                    .map_err(|e| format!("stopping the shared portwatch: {e:#}"));
                for s in &after {
                    let Body::After(f) = &s.body else {
                        unreachable!()
                    };
                    let t = Instant::now();
                    let r = match &run {
                        Ok(run) => f(ctx, run),
                        Err(e) => Err(anyhow::anyhow!(e.clone())),
                    };
                    rep.report(outcome(s.name, t, r))?;
                }
            }
        }
    }

    for s in chosen {
        let Body::Alone(f) = &s.body else { continue };
        let t = Instant::now();
        let r = netns::in_new_netns(s.name, |ns| f(ctx, ns));
        rep.report(outcome(s.name, t, r))?;
    }
    Ok(())
}

/// Polls `cond` until it holds or `timeout` passes; for effects that settle asynchronously
/// (programs freed after exit).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_filterable() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let b = [Backend::Fexit];
        let with_auto = planned(&b, &[], true, false).len();
        assert_eq!(planned(&b, &[], false, false).len(), with_auto - 1);
        assert_eq!(planned(&b, &["filter_".into()], true, false).len(), 4);
    }

    #[test]
    fn outcome_lines() {
        let mut o = Outcome {
            name: "x".into(),
            backend: "fexit".into(),
            kernel: "6.1".into(),
            ok: true,
            reason: None,
            ms: 1,
        };
        assert_eq!(o.line(), "ok   x (fexit, 6.1)");
        o.ok = false;
        o.reason = Some("why\ndetail".into());
        assert_eq!(o.line(), "FAIL x (fexit, 6.1): why\n     detail");
    }
}
