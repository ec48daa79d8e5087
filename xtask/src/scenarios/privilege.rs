//! Least privilege (issue 11): `trace` as uid 65534 with exactly the capabilities the README
//! and the systemd unit grant (through util-linux's setpriv, as ambient capabilities), and
//! the error that names a missing one.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use portwatch_common::Backend;
use serde_json::json;

use super::{
    Ctx, Scenario, check::fields, holder::Holder, netns::Netns, portwatch::Portwatch,
    sock::SockSpec,
};

/// What `trace` needs (BPF, PERFMON, DAC_READ_SEARCH) and what makes it whole (SYS_ADMIN and
/// SYS_PTRACE to enter other processes' network namespaces through /proc/PID/ns/net), as
/// setpriv spells them. Owners need no CAP_SYS_PTRACE: they come from the kernel's fd tables
/// (iter/task_file). Same list as deploy/systemd/portwatch.service.
pub const TRACE_CAPS: &str = "+bpf,+perfmon,+dac_read_search,+sys_ptrace,+sys_admin";

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::alone("least_privilege_trace", least_privilege_trace).host_only(),
        Scenario::alone("missing_capability_named", missing_capability_named)
            .host_only()
            .only_backends(&[Backend::Tracepoint]),
    ]
}

/// setpriv's arguments for uid/gid 65534 with exactly `caps` (ambient, so they survive exec).
fn as_nobody(caps: &str) -> Vec<String> {
    let set = format!(
        "-all{}",
        if caps.is_empty() {
            String::new()
        } else {
            format!(",{caps}")
        }
    );
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
}

/// A holder (root, another process) bound to device lo in the scenario's namespace; a bind
/// that clashes with it. portwatch as nobody must name the holder's pid and comm (from the
/// kernel's fd tables) and the device by name (entering the namespace through the holder's
/// /proc/PID/ns/net: CAP_SYS_PTRACE and CAP_SYS_ADMIN).
fn least_privilege_trace(cx: &Ctx, ns: &Netns) -> Result<()> {
    let wrapper = as_nobody(TRACE_CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let args = [
        "trace",
        "--json",
        "--backend",
        cx.pw.backend_flag(),
        "--port",
        "47200",
    ]
    .map(String::from)
    .to_vec();
    let pw = Portwatch::start_wrapped(&cx.pw, &wrapper, args)?;
    let mut holder = Holder::spawn(ns, "pw-lp-holder")?;
    let mut client = Holder::spawn(ns, "pw-lp-client")?;
    holder.bind_ok(
        &SockSpec::tcp("0.0.0.0:47200")
            .with(|o| o.bind_device = Some("lo".into()))
            .listening(),
    )?;
    let fail = client.bind_fails(&SockSpec::tcp("127.0.0.1:47200"), libc::EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", client.pid, fail.ino)?;
    fields(
        &ev,
        &[
            ("errno", json!("EADDRINUSE")),
            ("explain.rule", json!("bindtodevice-unbound")),
            ("explain.holders.0.owners.0.pid", json!(holder.pid)),
            ("explain.holders.0.owners.0.comm", json!("pw-lp-holder")),
            ("explain.holders.0.owner_status", json!("live")),
            ("explain.holders.0.options.bound_device", json!("lo")),
        ],
    )?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pw.pid))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    ensure!(
        uid_line.split_whitespace().nth(1) == Some("65534"),
        "portwatch did not run as 65534: {uid_line}"
    );
    holder.exit()?;
    client.exit()?;
    pw.stop()?;
    Ok(())
}

/// Without one required capability, one error line that names it, exit 1.
fn missing_capability_named(cx: &Ctx, _ns: &Netns) -> Result<()> {
    for (caps, named) in [
        ("+bpf", "CAP_PERFMON"),
        ("+perfmon", "CAP_BPF"),
        ("+bpf,+perfmon,+sys_admin", "CAP_DAC_READ_SEARCH"),
    ] {
        let argv = as_nobody(caps);
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .arg(&cx.pw.exe)
            .args(["trace", "--json", "--backend", cx.pw.backend_flag()])
            .stdin(Stdio::null())
            .output()
            .context("running setpriv")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error = stderr
            .lines()
            .find(|l| l.starts_with("portwatch: error:"))
            .unwrap_or("");
        ensure!(
            out.status.code() == Some(1) && stderr.contains(named) && out.stdout.is_empty(),
            "with only {caps}: want exit 1 and an error naming {named}; got {} and:\n  {}",
            out.status,
            stderr.trim_end().replace('\n', "\n  ")
        );
        ensure!(!error.is_empty(), "no `portwatch: error:` line: {stderr}");
    }
    Ok(())
}
