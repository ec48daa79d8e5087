//! `cargo xtask test`: the whole suite, and what `.ci/run` runs.
//!
//! Stages: setup, lint (rustfmt, clippy), unit tests, release build, live scenarios on this
//! host's kernel, the same scenarios in a VM on Debian 12's 6.1 and on Debian 13's 6.12 kernel
//! (both backends on each, one stage per kernel), then a summary ending in
//! `scenarios: N passed, M failed`. A failing stage does not stop the later
//! ones (one CI run shows every problem), except that scenarios need a build.
//!
//! Scenario results come back as JSON lines: from a file on the host, and from the VM's second
//! serial port (see vm.rs), never by reading the console. Every (scenario, backend) pair that
//! was planned but has no result counts as a failure, so a crashed runner or VM cannot pass.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use portwatch_common::Backend;

use crate::{
    bench,
    cmd::{self, workspace_root},
    deploy, dist, run, scenarios,
    scenarios::Outcome,
    setup, vm,
};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Skip the VM stages (Debian's 6.1 and 6.12 kernels under emulation, the only place the
    /// fexit backend can run here).
    #[arg(long)]
    pub no_vm: bool,
    /// Only setup, the release build and the VM stages.
    #[arg(long, conflicts_with = "no_vm")]
    pub only_vm: bool,
    /// Only the VM stage of this kernel (repeatable; default: every kernel).
    #[arg(long, value_enum, value_name = "KERNEL")]
    pub vm_kernel: Vec<vm::Distro>,
    /// Skip rustfmt, clippy and the unit tests.
    #[arg(long)]
    pub no_checks: bool,
    /// Only scenarios whose name contains this (repeatable).
    #[arg(long, value_name = "SUBSTRING")]
    pub filter: Vec<String>,
}

/// The VM's timeouts are the host's times this: TCG emulates every instruction.
const VM_TIMEOUT_SCALE: f64 = 10.0;
/// Boot, two backends of scenarios, power-off, per kernel. A normal run takes 2-3 min; with
/// two kernels a hung VM still leaves the whole CI run well inside its 90 min.
const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);

struct Stage {
    name: String,
    ok: bool,
    took: Duration,
    note: String,
}

struct Suite {
    stages: Vec<Stage>,
    outcomes: Vec<Outcome>,
}

impl Suite {
    /// Runs one stage with a banner before and a verdict after.
    fn stage<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Option<T> {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let r = f(self);
        let took = started.elapsed();
        let (ok, note) = match &r {
            Ok(_) => (true, String::new()),
            Err(e) => (false, format!("{e:#}")),
        };
        if ok {
            eprintln!("<== {name}: ok ({:.1} s)", took.as_secs_f64());
        } else {
            eprintln!("<== {name}: FAILED ({:.1} s): {note}", took.as_secs_f64());
        }
        self.stages.push(Stage {
            name: name.to_string(),
            ok,
            took,
            note,
        });
        r.ok()
    }
}

pub fn main(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    let mut suite = Suite {
        stages: Vec::new(),
        outcomes: Vec::new(),
    };
    suite.stage("setup", |_| setup::ensure(true));
    if !args.no_checks && !args.only_vm {
        suite.stage("rustfmt", |_| {
            cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))
        });
        suite.stage("clippy", |_| clippy());
        suite.stage("unit tests", |_| {
            // portwatch-ebpf has nothing to test on the host: its binary sets `test = false`
            // (a no_main harness cannot link) and its library is an empty placeholder.
            cmd::run(cmd::cargo().args(["test", "--workspace", "--exclude", "portwatch-ebpf"]))
        });
    }
    let bin = suite.stage("release build", |_| run::build_release());
    match bin {
        Some(bin) => {
            if !args.only_vm
                && (args.filter.is_empty()
                    || args.filter.iter().any(|f| "deploy".contains(f.as_str())))
            {
                suite.stage("deploy manifests", |_| deploy::check(&bin));
            }
            if !args.only_vm
                && (args.filter.is_empty()
                    || args.filter.iter().any(|f| "dist".contains(f.as_str())))
            {
                dist_stages(&mut suite, &args);
            }
            if !args.only_vm {
                suite.stage("scenarios on this host", |s| {
                    host_scenarios(s, &bin, &args.filter)
                });
            }
            if !args.no_vm {
                for distro in vm::Distro::ALL {
                    if args.vm_kernel.is_empty() || args.vm_kernel.contains(&distro) {
                        suite.stage(&format!("VM, {}", distro.label()), |s| {
                            vm_scenarios(s, &bin, &args.filter, distro)
                        });
                    }
                }
            }
            // A scenario filter means "just these": the bench is not one of them.
            if args.filter.is_empty() && !args.only_vm {
                suite.stage("bench smoke", |_| bench::smoke());
            }
        }
        None => eprintln!("\n(no binary, so no scenarios)"),
    }

    eprintln!(
        "\n==> summary ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    for st in &suite.stages {
        let first = st.note.lines().next().unwrap_or("");
        eprintln!(
            "  {:<4} {:<24} {:>7.1} s{}",
            if st.ok { "ok" } else { "FAIL" },
            st.name,
            st.took.as_secs_f64(),
            if first.is_empty() {
                String::new()
            } else {
                format!("  {first}")
            }
        );
    }
    let failed: Vec<&Outcome> = suite.outcomes.iter().filter(|o| !o.ok).collect();
    for o in &failed {
        eprintln!("  {}", o.line().lines().next().unwrap_or(""));
    }
    let passed = suite.outcomes.len() - failed.len();
    println!("scenarios: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() || suite.stages.iter().any(|s| !s.ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// Clippy as the aya-template runs it: the kernel crate separately, because in one
/// workspace-wide run feature unification links std (through aya in portwatch-common's "user"
/// feature) into it, and its own #[panic_handler] then clashes with std's ("duplicate lang
/// item panic_impl"). Alone, for the host target with panic=abort, it checks the same code
/// the BPF build compiles: its one target_arch cfg only turns on `asm_experimental_arch` for
/// the BPF target (asm! is stable on x86).
fn clippy() -> Result<()> {
    let mut failures = Vec::new();
    for args in [
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "portwatch-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ][..],
        &[
            "clippy",
            "-p",
            "portwatch-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
            "-C",
            "panic=abort",
            "-Zpanic_abort_tests",
        ][..],
    ] {
        if let Err(e) = cmd::run(cmd::cargo().args(args)) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(failures.join("; "));
    }
    Ok(())
}

/// `cargo xtask dist`, then its artifacts as an operator would use them (dist/check.rs): the
/// .deb and the image on this host (as root), the static binary alone in each VM.
fn dist_stages(suite: &mut Suite, args: &TestArgs) {
    let Some(built) = suite.stage("dist build", |_| dist::build()) else {
        return;
    };
    suite.stage("dist: .deb and image", |_| {
        cmd::run(cmd::privileged(std::env::current_exe()?).arg("dist-check"))
    });
    if args.no_vm {
        return;
    }
    for distro in vm::Distro::ALL {
        if args.vm_kernel.is_empty() || args.vm_kernel.contains(&distro) {
            suite.stage(&format!("dist: static in {}", distro.dir_name()), |_| {
                dist::check::static_in_vm(&built.binary, distro)
            });
        }
    }
}

/// Whether this kernel loads BPF_PROG_TYPE_TRACING (fentry/fexit), by bpftool's probe.
fn host_has_fexit() -> Result<bool> {
    let out = cmd::privileged("bpftool")
        .args(["-j", "feature", "probe", "kernel"])
        .output()
        .context("running bpftool feature probe")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bpftool feature probe")?;
    Ok(v["program_types"]["have_tracing_prog_type"].as_bool() == Some(true))
}

fn host_scenarios(suite: &mut Suite, bin: &Path, filters: &[String]) -> Result<()> {
    // On these machines only the tracepoint backend loads, so auto must fall back to it.
    let fexit = host_has_fexit()?;
    let mut backends = vec![Backend::Tracepoint];
    if fexit {
        backends.insert(0, Backend::Fexit);
    }
    let auto = if fexit {
        Backend::Fexit
    } else {
        Backend::Tracepoint
    };
    eprintln!(
        "kernel {} ; backends: {} ; --backend auto must pick {auto}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let results = workspace_root().join("target/xtask-scenarios-host.jsonl");
    let _ = std::fs::remove_file(&results);
    let mut c = cmd::privileged(std::env::current_exe()?);
    c.arg("scenarios").arg("--portwatch").arg(bin);
    for b in &backends {
        c.args(["--backend", b.name()]);
    }
    c.args(["--auto-expect", auto.name()])
        .arg("--json-results")
        .arg(&results);
    for f in filters {
        c.args(["--filter", f]);
    }
    // The runner prints its per-scenario lines live; its exit code only repeats the results.
    eprintln!("$ {}", cmd::render(&c));
    let status = c.status().context("starting the scenario runner")?;
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let got = collect(suite, &text, kernel.trim(), &backends, filters, false);
    if !status.success() && got.1 == 0 {
        bail!("the scenario runner failed ({status}) without failing a scenario");
    }
    finish(got)
}

/// Every scenario on both backends in a VM on `distro`'s kernel, where `auto` must pick fexit.
fn vm_scenarios(
    suite: &mut Suite,
    bin: &Path,
    filters: &[String],
    distro: vm::Distro,
) -> Result<()> {
    let kernel = vm::ensure_kernel(&workspace_root().join("vm-cache"), distro)?;
    let backends = Backend::ALL;
    // Modules the kernel package has and the guest loads: TUN, which the SO_BINDTODEVICE
    // scenarios use, and what the selected scenarios need (vxlan for a kernel-made socket),
    // with their dependencies.
    let mut wanted = vec!["tun"];
    wanted.extend(scenarios::modules_needed(filters));
    let (module_files, load_modules) = vm::modules(&kernel, &wanted)?;
    let mut command = format!(
        "{load_modules}/bin/xtask scenarios --portwatch /bin/portwatch --backend {} \
         --backend {} --auto-expect {} --json-results /dev/ttyS1 --in-vm",
        Backend::Fexit,
        Backend::Tracepoint,
        Backend::Fexit,
    );
    command.push_str(&format!(" --timeout-scale {VM_TIMEOUT_SCALE}"));
    for f in filters {
        command.push_str(&format!(" --filter '{}'", f.replace('\'', "")));
    }
    let mut files = vec![
        (bin.to_path_buf(), "/bin/portwatch".into()),
        (std::env::current_exe()?, "/bin/xtask".into()),
        (
            cmd::find_program("bpftool").context("bpftool not found")?,
            "/usr/sbin/bpftool".into(),
        ),
    ];
    files.extend(module_files);
    // busybox's `ip` cannot make a VXLAN device (no `id`, `dstport`): iproute2's goes in
    // ahead of it on PATH when a scenario needs one.
    if wanted.contains(&"vxlan") {
        files.push((
            cmd::find_program("ip").context("iproute2's ip not found")?,
            "/usr/local/sbin/ip".into(),
        ));
    }
    let guest = vm::Guest {
        files,
        command,
        timeout: VM_TIMEOUT,
        memory_mb: 1024,
        cpus: 1,
        kernel_args: String::new(),
    };
    let work = workspace_root()
        .join("target/xtask-vm-test")
        .join(distro.dir_name());
    eprintln!(
        "booting {} under TCG; console in {}",
        kernel.version,
        work.join("console.log").display()
    );
    let out = vm::run(&kernel, &guest, &work)?;
    let text = String::from_utf8_lossy(&out.results);
    let got = collect(suite, &text, &kernel.version, &backends, filters, true);
    eprintln!(
        "VM {} ({}): {} passed, {} failed; {:.1} s from boot to power-off, runner exit code {:?}",
        distro.label(),
        kernel.version,
        got.0,
        got.1,
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    if out.exit_code.is_none() {
        eprintln!("last console lines:\n{}", vm::tail(&out.console, 40));
        bail!("the VM stopped without the runner's exit code (kernel panic or crash?)");
    }
    if got.1 > 0 {
        eprintln!("(full VM console: {})", work.join("console.log").display());
    }
    finish(got)
}

/// Parses results, adds a failure for every planned (scenario, backend) without one, records
/// them in the suite and prints those not printed yet (`in_vm`: all; the host runner printed
/// its own). `kernel` is the release the results come from. Returns (passed, failed).
fn collect(
    suite: &mut Suite,
    text: &str,
    kernel: &str,
    backends: &[Backend],
    filters: &[String],
    in_vm: bool,
) -> (usize, usize) {
    let mut outcomes: Vec<Outcome> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Outcome>(line) {
            Ok(o) => outcomes.push(o),
            Err(e) => eprintln!("unreadable result line ({e}): {line:?}"),
        }
    }
    let seen: HashSet<(String, String)> = outcomes
        .iter()
        .map(|o| (o.name.clone(), o.backend.clone()))
        .collect();
    let mut missing = Vec::new();
    for (name, backend) in scenarios::planned(backends, filters, true, in_vm) {
        if !seen.contains(&(name.clone(), backend.clone())) {
            missing.push(Outcome {
                name,
                backend,
                kernel: kernel.to_string(),
                ok: false,
                reason: Some("no result: the runner stopped before reaching it".into()),
                ms: 0,
            });
        }
    }
    for o in outcomes.iter().filter(|_| in_vm).chain(&missing) {
        println!("{}", o.line());
    }
    outcomes.extend(missing);
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    let passed = outcomes.len() - failed;
    suite.outcomes.extend(outcomes);
    (passed, failed)
}

fn finish((passed, failed): (usize, usize)) -> Result<()> {
    if failed > 0 {
        bail!("{failed} of {} scenarios failed", passed + failed);
    }
    Ok(())
}
