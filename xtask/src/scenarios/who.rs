//! Scenarios for `portwatch who`: it finds holders that `ss` misses, and its prediction for a
//! bind that was not made yet matches what the kernel then does and what `trace` explains.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{
    Ctx, Scenario, check,
    holder::Holder,
    netns::Netns,
    portwatch::{Portwatch, lookup},
    sock::{SockSpec, errno_text},
};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::shared("who_finds_bound_only_holder", who_bound_only),
        Scenario::shared("who_sees_what_ss_misses", who_vs_ss).host_only(),
        Scenario::shared("who_predicts_what_the_kernel_does", who_predicts),
        // setpriv (util-linux) is on the host, not in the VM's busybox.
        Scenario::shared("who_without_ptrace_still_sees", who_without_ptrace).host_only(),
    ]
}

/// Issue 8: run with fewer privileges, `who` used to say "Nothing holds port P" and "would
/// succeed" while a bound-only socket it could not see (no /proc/PID/fd access) held the port.
/// As uid 65534 with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_NET_ADMIN but neither
/// CAP_SYS_PTRACE nor CAP_DAC_READ_SEARCH, it must still see it, owner included (the kernel's
/// task-file iterator reads the fd tables), and predict the failure, as root does.
fn who_without_ptrace(cx: &Ctx, _pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.bind_ok(&SockSpec::tcp("127.0.0.1:8080"))?;
    let path = ns.path();
    let args = ["8080", "--addr", "0.0.0.0", "--netns", path.as_str()];
    let caps = "+bpf,+perfmon,+sys_admin,+net_admin";
    // nsenter (as root) puts it in the namespace: uid 65534 may not open another process's
    // /proc/PID/ns/net.
    let out = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args([
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
        ])
        .arg(&cx.pw.exe)
        .arg("who")
        .args(&args[..3])
        .arg("--json")
        .output()
        .context("running portwatch who through nsenter and setpriv")?;
    ensure!(
        out.status.success(),
        "portwatch who as uid 65534 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let low: Value = serde_json::from_slice(&out.stdout).context("parsing who --json")?;
    super::schema::check(&low).context("who --json")?;
    let root = who(cx, &args)?;
    for (v, as_whom) in [
        (&low, "as uid 65534 without CAP_SYS_PTRACE"),
        (&root, "as root"),
    ] {
        check::fields_of(
            v,
            &[
                ("prediction.would_succeed", json!(false)),
                ("prediction.verdict.rule", json!("specific-blocks-wildcard")),
                ("incomplete_because", Value::Null),
            ],
        )
        .context(as_whom)?;
        let mine = holders_in(v, ns)?;
        ensure!(
            mine.len() == 1,
            "{as_whom}: want one holder here, got {mine:?}"
        );
        check::fields_of(
            mine[0],
            &[("state", json!("BOUND")), ("owners.0.pid", json!(h.pid))],
        )
        .context(as_whom)?;
    }
    Ok(())
}

/// The holders `who --json` listed in `ns`.
pub(super) fn holders_in<'a>(v: &'a Value, ns: &Netns) -> Result<Vec<&'a Value>> {
    Ok(v["holders"]
        .as_array()
        .context("no holders array")?
        .iter()
        .filter(|x| x["netns"].as_u64() == Some(ns.inode()))
        .collect())
}

pub(super) fn who(cx: &Ctx, args: &[&str]) -> Result<Value> {
    let out = Command::new(&cx.pw.exe)
        .arg("who")
        .args(args)
        .arg("--json")
        .output()
        .context("running portwatch who")?;
    ensure!(
        out.status.success(),
        "portwatch who {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout).context("parsing portwatch who --json")?;
    super::schema::check(&v).context("who --json")?;
    Ok(v)
}

fn who_bound_only(cx: &Ctx, _pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let b = h.bind_ok(&SockSpec::tcp("127.0.0.1:8080").with(|o| o.reuseaddr = true))?;
    let v = who(cx, &["8080"])?;
    let mine = holders_in(&v, ns)?;
    ensure!(
        mine.len() == 1,
        "want the one holder in netns {}, got {mine:?}",
        ns.inode()
    );
    check::fields_of(
        mine[0],
        &[
            ("state", json!("BOUND")),
            ("source", json!("fd-table")),
            ("sock_ino", json!(b.ino)),
            ("owners.0.pid", json!(h.pid)),
            ("owners.0.comm", json!(h.comm)),
            ("options.reuseaddr", json!(true)),
        ],
    )
}

/// `ss -tanp` (run in the same namespace) lists no socket on the port; `who` does.
fn who_vs_ss(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let held = h.bind_ok(&SockSpec::tcp("127.0.0.1:8080"))?;
    pw.wait_call(ns, "bind", h.pid, held.ino)?;
    let out = Command::new("ss")
        .args(["-tanp"])
        .output()
        .context("running ss (iproute2)")?;
    let ss = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !ss.contains(":8080"),
        "ss shows the bound-only socket after all, so this test proves nothing:\n{ss}"
    );
    let v = who(cx, &["8080"])?;
    let found = v["holders"].as_array().is_some_and(|hs| {
        hs.iter().any(|x| {
            x["netns"].as_u64() == Some(ns.inode())
                && x["owners"][0]["pid"].as_u64() == Some(u64::from(h.pid))
        })
    });
    ensure!(found, "who did not list pid {}'s socket: {v}", h.pid);
    Ok(())
}

/// For each case, `who --addr` predicts; then the same bind is made, and the kernel's answer
/// and the trace's explanation must match the prediction.
fn who_predicts(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let held = h.bind_ok(
        &SockSpec::tcp("0.0.0.0:8080")
            .with(|o| o.reuseaddr = true)
            .listening(),
    )?;
    pw.wait_call(ns, "bind", h.pid, held.ino)?;
    let path = ns.path();
    let cases: Vec<(Vec<&str>, SockSpec)> = vec![
        (vec!["--addr", "127.0.0.1"], SockSpec::tcp("127.0.0.1:8080")),
        (
            vec!["--addr", "0.0.0.0", "--reuseaddr"],
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
        ),
        (
            vec!["--addr", "127.0.0.1", "--udp"],
            SockSpec::udp("127.0.0.1:8080"),
        ),
        (
            vec!["--addr", "::", "--v6only"],
            SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(true)),
        ),
        (
            vec!["--addr", "::"],
            SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(false)),
        ),
        (vec!["--addr", "192.0.2.9"], SockSpec::tcp("192.0.2.9:8080")),
    ];
    for (args, spec) in cases {
        let mut all = vec!["8080", "--netns", path.as_str()];
        all.extend(&args);
        let v = who(cx, &all)?;
        let predicted_ok = v["prediction"]["would_succeed"]
            .as_bool()
            .context("no prediction")?;
        let predicted_rule = v["prediction"]["verdict"]["rule"].clone();
        let mut a = Holder::spawn(ns, "pw-asker")?;
        let b = a.bind(&spec)?;
        ensure!(
            (b.errno == 0) == predicted_ok,
            "who {} predicted {}, the kernel said {}",
            args.join(" "),
            if predicted_ok { "success" } else { "failure" },
            errno_text(b.errno)
        );
        let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
        let traced_rule = lookup(&ev.0, "explain.rule").clone();
        ensure!(
            traced_rule == predicted_rule,
            "who {} predicted rule {predicted_rule}, trace explained {traced_rule}",
            args.join(" ")
        );
        a.exit()?;
    }
    Ok(())
}
