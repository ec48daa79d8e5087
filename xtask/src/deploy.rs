//! The `deploy manifests` stage: the shipped systemd unit and Kubernetes manifests, checked
//! offline by real validators. `systemd-analyze verify` for the unit (any complaint fails,
//! since unknown keys are only warnings there); `kubernetes-validate --strict` from PyPI,
//! whose bundled OpenAPI schemas need no cluster, for the manifests, in a venv under
//! `target/` installed once.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cmd::{self, target_dir, workspace_root};

const VALIDATOR: &str = "kubernetes-validate==1.37.0";

/// The venv's `bin/`, creating the venv and installing the validator the first time.
fn venv_bin() -> Result<PathBuf> {
    let venv = target_dir().join("kubernetes-validate");
    let bin = venv.join("bin");
    if bin.join("kubernetes-validate").exists() {
        return Ok(bin);
    }
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(Command::new(bin.join("pip")).args(["install", "-q", VALIDATOR]))?;
    Ok(bin)
}

pub fn check(portwatch: &Path) -> Result<()> {
    let root = workspace_root().join("deploy");
    systemd_unit(&root.join("systemd/portwatch.service"), portwatch)?;
    kubernetes(&root.join("kubernetes"))?;
    prometheus_rules(&root.join("prometheus"))?;
    grafana_dashboard(&root.join("grafana/portwatch-dashboard.json"))
}

/// Every query of the Grafana dashboard, with Grafana's variables filled in, must be PromQL
/// that Prometheus accepts: each is sent to Debian's Prometheus, started on loopback, whose
/// HTTP API answers a parse error with an error.
fn grafana_dashboard(file: &Path) -> Result<()> {
    use crate::scenarios::prometheus::Prometheus;
    let board: Value = serde_json::from_slice(&std::fs::read(file)?)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .context("no panels")?
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    ensure!(!exprs.is_empty(), "{}: no queries", file.display());
    // Nothing listens there: only the queries matter, not what is scraped.
    let prom = Prometheus::start("127.0.0.1:9".parse()?)?;
    let started = std::time::Instant::now();
    while prom.query("vector(1)").is_err() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            bail!("Prometheus did not answer within 20 s:\n{}", prom.log());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for e in &exprs {
        let promql = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        prom.query(&promql)
            .with_context(|| format!("{}: query {e}", file.display()))?;
    }
    eprintln!(
        "grafana dashboard: {} queries accepted by Prometheus",
        exprs.len()
    );
    Ok(())
}

/// The alerting rules: `promtool check rules` on the plain file and on the PrometheusRule's
/// `spec` (which must hold the same rules), then the unit tests with `promtool test rules`.
/// promtool is Debian's, unpacked as the prometheus scenario does it.
fn prometheus_rules(dir: &Path) -> Result<()> {
    let promtool = crate::scenarios::prometheus::binary("promtool")?;
    let plain = dir.join("portwatch-rules.yaml");
    cmd::run(Command::new(&promtool).args(["check", "rules"]).arg(&plain))?;
    let load = |file: &Path, key: &str| -> Result<Value> {
        let out = Command::new(venv_bin()?.join("python"))
            .args([
                "-c",
                "import json,sys,yaml; d=yaml.safe_load(open(sys.argv[1])); \
                 print(json.dumps(d[sys.argv[2]] if sys.argv[2] else d))",
            ])
            .arg(file)
            .arg(key)
            .output()?;
        ensure!(
            out.status.success(),
            "reading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let operator = dir.join("prometheusrule.yaml");
    let spec = load(&operator, "spec")?;
    ensure!(
        spec == load(&plain, "")?,
        "{}'s spec is not the rules of {}: copy them over",
        operator.display(),
        plain.display()
    );
    // JSON is YAML: promtool reads the spec as a rules file.
    let spec_file = target_dir().join("deploy-check/prometheusrule-spec.yaml");
    std::fs::create_dir_all(spec_file.parent().context("a parent")?)?;
    std::fs::write(&spec_file, serde_json::to_vec(&spec)?)?;
    cmd::run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&spec_file),
    )?;
    cmd::run(
        Command::new(&promtool)
            .args(["test", "rules", "portwatch-rules.test.yaml"])
            .current_dir(dir),
    )
}

/// `systemd-analyze verify`, with ExecStart pointing at the binary just built (verify checks
/// that it exists).
fn systemd_unit(unit: &Path, portwatch: &Path) -> Result<()> {
    let text = std::fs::read_to_string(unit)?;
    let copy = target_dir().join("deploy-check/portwatch.service");
    std::fs::create_dir_all(copy.parent().context("a parent")?)?;
    std::fs::write(
        &copy,
        text.replace("/usr/bin/portwatch", &portwatch.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .context("running systemd-analyze (apt-get install systemd)")?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{said}",
        unit.display(),
        out.status
    );
    // The flags in ExecStart are ones portwatch takes.
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart")?;
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let out = Command::new(portwatch).args(&args).arg("--help").output()?;
    ensure!(
        out.status.success(),
        "ExecStart's arguments: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `--journal` files entries under the failing unit only from uid 0 (README, Least
    // privilege): the unit must not switch users.
    ensure!(
        args.contains(&"--journal")
            && !text
                .lines()
                .any(|l| l.starts_with("User=") || l.starts_with("DynamicUser=yes")),
        "the unit must run `trace --journal` as uid 0 (no User=, no DynamicUser=yes)"
    );
    eprintln!("systemd-analyze verify: {} ok", unit.display());
    Ok(())
}

fn kubernetes(dir: &Path) -> Result<()> {
    let bin = venv_bin()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let out = Command::new(bin.join("kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{said}");
    ensure!(out.status.success(), "kubernetes-validate: {}", out.status);
    for f in &files {
        let name = f.display().to_string();
        let line = said
            .lines()
            .find(|l| l.contains(&name))
            .with_context(|| format!("kubernetes-validate said nothing about {name}"))?;
        // The Prometheus Operator's CRD has no schema in the validator's bundle: it may only
        // say so, for that kind only.
        let crd = line.contains("Couldn't find schema for kind ServiceMonitor");
        if !(line.starts_with("INFO") && line.contains("passed") || crd) {
            bail!("kubernetes-validate on {name}: {line}");
        }
    }
    daemonset_shape()
}

/// deploy/kubernetes/daemonset.yaml as JSON (through the validator venv's PyYAML): the
/// `dist` stage runs the image the way it says.
pub fn daemonset() -> Result<Value> {
    let file = workspace_root().join("deploy/kubernetes/daemonset.yaml");
    let out = Command::new(venv_bin()?.join("python"))
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "reading {}", file.display());
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// What the issue asks of the DaemonSet, beyond the schema.
fn daemonset_shape() -> Result<()> {
    let ds = daemonset()?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true, "hostPID is not true");
    let c = &pod["containers"][0];
    let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
    let volumes = pod["volumes"].as_array().context("no volumes")?;
    for host in [
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/proc",
        "/var/log/pods",
    ] {
        let vol = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .with_context(|| format!("no hostPath volume for {host}"))?;
        let mount = mounts
            .iter()
            .find(|m| m["name"] == vol["name"])
            .with_context(|| format!("{host} is not mounted"))?;
        ensure!(mount["readOnly"] == true, "{host} is not mounted read-only");
    }
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    ensure!(
        ann["prometheus.io/scrape"] == "true" && ann["prometheus.io/port"] == "9464",
        "scrape annotations: {ann}"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("no args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        args.windows(2).any(|w| w == ["--metrics", "0.0.0.0:9464"]),
        "the container does not serve metrics on :9464: {args:?}"
    );
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .context("no capabilities")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        caps == [
            "BPF",
            "PERFMON",
            "DAC_READ_SEARCH",
            "SYS_PTRACE",
            "SYS_ADMIN"
        ],
        "capabilities {caps:?} are not the documented set"
    );
    Ok(())
}
