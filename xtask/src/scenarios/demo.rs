//! `portwatch demo`: its observed results against its rule ids and against the same binds made
//! here, `--quiz` scoring answers from stdin, and nothing left behind (namespaces, BPF
//! programs) after a normal run and after a SIGINT in the middle.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{
    Ctx, Scenario,
    netns::Netns,
    portwatch::bpftool_programs,
    sock::{SockSpec, open_and_bind},
};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::alone("demo_results_match_rules_and_kernel", demo_json),
        Scenario::alone("demo_quiz_scores_stdin", demo_quiz),
        Scenario::alone("demo_leaves_nothing_behind", demo_cleanup),
    ]
}

/// Each experiment's result and rule on Linux (what the scenarios of the rules establish).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("tcp-udp", "ok", "ok-separate-port-spaces"),
    ("two-addresses", "ok", "ok-different-addresses"),
    ("same-address", "EADDRINUSE", "same-address"),
    (
        "wildcard-then-specific",
        "EADDRINUSE",
        "wildcard-covers-specific",
    ),
    (
        "specific-then-wildcard",
        "EADDRINUSE",
        "specific-blocks-wildcard",
    ),
    (
        "dual-stack-then-ipv4",
        "EADDRINUSE",
        "dual-stack-covers-ipv4",
    ),
    (
        "ipv4-then-dual-stack",
        "EADDRINUSE",
        "ipv4-blocks-dual-stack",
    ),
    ("v6only-next-to-ipv4", "ok", "ok-v6only"),
    ("bindv6only-sysctl", "ok", "ok-v6only-by-default"),
    ("reuseaddr-both", "ok", "ok-reuseaddr"),
    ("reuseaddr-both-listen", "EADDRINUSE", "listen-conflict"),
    ("reuseaddr-one-side", "EADDRINUSE", "reuseaddr-needs-both"),
    ("reuseaddr-vs-listener", "EADDRINUSE", "reuseaddr-vs-listen"),
    ("reuseport-same-user", "ok", "ok-reuseport"),
    (
        "reuseport-other-user",
        "EADDRINUSE",
        "reuseport-uid-mismatch",
    ),
    ("restart-plain", "EADDRINUSE", "time-wait"),
    ("restart-reuseaddr", "ok", "ok-time-wait-reuse"),
    ("restart-new-only", "EADDRINUSE", "time-wait"),
    ("other-netns", "ok", "ok-different-netns"),
];

/// The two-socket experiments, made again here: the first socket, then the one reported.
fn same_binds(id: &str) -> Option<(SockSpec, SockSpec)> {
    let p = 47900;
    let a = |s: &str| format!("{s}:{p}");
    let ra = |s: SockSpec| s.with(|o| o.reuseaddr = true);
    let rp = |s: SockSpec| s.with(|o| o.reuseport = true);
    let v6 = |s: SockSpec, on: bool| s.with(|o| o.v6only = Some(on));
    Some(match id {
        "tcp-udp" => (
            SockSpec::tcp(&a("0.0.0.0")).listening(),
            SockSpec::udp(&a("0.0.0.0")),
        ),
        "two-addresses" => (
            SockSpec::tcp(&a("127.0.0.1")).listening(),
            SockSpec::tcp(&a("127.0.0.2")).listening(),
        ),
        "same-address" => (
            SockSpec::tcp(&a("127.0.0.1")).listening(),
            SockSpec::tcp(&a("127.0.0.1")).listening(),
        ),
        "wildcard-then-specific" => (
            SockSpec::tcp(&a("0.0.0.0")).listening(),
            SockSpec::tcp(&a("127.0.0.1")).listening(),
        ),
        "specific-then-wildcard" => (
            SockSpec::tcp(&a("127.0.0.1")).listening(),
            SockSpec::tcp(&a("0.0.0.0")).listening(),
        ),
        "dual-stack-then-ipv4" => (
            v6(SockSpec::tcp(&a("[::]")), false).listening(),
            SockSpec::tcp(&a("0.0.0.0")).listening(),
        ),
        "ipv4-then-dual-stack" => (
            SockSpec::tcp(&a("0.0.0.0")).listening(),
            v6(SockSpec::tcp(&a("[::]")), false).listening(),
        ),
        "v6only-next-to-ipv4" => (
            SockSpec::tcp(&a("0.0.0.0")).listening(),
            v6(SockSpec::tcp(&a("[::]")), true).listening(),
        ),
        "reuseaddr-both" => (
            ra(SockSpec::tcp(&a("127.0.0.1"))),
            ra(SockSpec::tcp(&a("127.0.0.1"))),
        ),
        "reuseaddr-one-side" => (
            SockSpec::tcp(&a("127.0.0.1")),
            ra(SockSpec::tcp(&a("127.0.0.1"))),
        ),
        "reuseaddr-vs-listener" => (
            ra(SockSpec::tcp(&a("0.0.0.0"))).listening(),
            ra(SockSpec::tcp(&a("127.0.0.1"))),
        ),
        "reuseport-same-user" => (
            rp(SockSpec::tcp(&a("127.0.0.1"))).listening(),
            rp(SockSpec::tcp(&a("127.0.0.1"))).listening(),
        ),
        _ => return None,
    })
}

/// What a student must read in an experiment's object: every socket on port 8080 (outside the
/// ephemeral range: no note about reserving it), each server a process of its own (distinct
/// pids), named by its own name rather than portwatch's, an explanation about two programs
/// (never "itself among the holders", nor a fix about reusing one's own socket), and the
/// fix and details the human output shows (a failure has a fix).
fn as_a_student_reads(id: &str, o: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let sockets: Vec<&str> = o["sockets"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let made: Vec<&str> = sockets
        .iter()
        .filter(|s| !s.starts_with("listen on") && !s.starts_with("the old server"))
        .copied()
        .collect();
    let pids: Vec<&str> = made
        .iter()
        .filter_map(|s| s.split("pid ").nth(1))
        .filter_map(|s| s.split([',', ')']).next())
        .collect();
    let distinct: BTreeSet<&&str> = pids.iter().collect();
    if pids.len() < 2 || distinct.len() != pids.len() {
        problems.push(format!(
            "{id}: each socket should be made by a server process of its own, pids {pids:?}: {o}"
        ));
    }
    if !made.iter().all(|s| s.contains(":8080")) {
        problems.push(format!("{id}: a socket not on port 8080: {sockets:?}"));
    }
    for key in ["details", "fix"] {
        if o.get(key).is_none() {
            problems.push(format!("{id}: no {key} key: {o}"));
        }
    }
    if o["result"] != "ok" && !o["fix"].is_string() {
        problems.push(format!("{id}: a failure without a fix: {o}"));
    }
    let words = format!("{} {} {}", o["explanation"], o["details"], o["fix"]);
    for wrong in [
        "(portwatch)",
        "itself among the holders",
        "reuse the socket",
        "ip_local_reserved_ports",
    ] {
        if words.contains(wrong) {
            problems.push(format!("{id}: the explanation says {wrong:?}: {words}"));
        }
    }
    if o["result"] == "EADDRINUSE"
        && !["(server-a)", "(server-b)", "TIME_WAIT"]
            .iter()
            .any(|w| words.contains(w))
    {
        problems.push(format!(
            "{id}: the explanation names no server process (server-a, server-b): {words}"
        ));
    }
    problems
}

/// What this kernel does with the second socket, made here: `ok` or the errno name.
fn kernel_result(first: &SockSpec, second: &SockSpec) -> Result<String> {
    let (_a, ra) = open_and_bind(first)?;
    ra.with_context(|| format!("the first socket {first:?}"))?;
    let (_b, rb) = open_and_bind(second)?;
    Ok(match rb {
        Ok(()) => "ok".into(),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Err(e) => format!("{e}"),
    })
}

fn run_demo(cx: &Ctx, args: &[&str], stdin: Option<&str>) -> Result<(Vec<Value>, String)> {
    let mut child = Command::new(&cx.pw.exe)
        .arg("demo")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portwatch demo")?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "portwatch demo {args:?} failed ({}): {stderr}",
        out.status
    );
    let objs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<Vec<Value>>>()?;
    for o in &objs {
        super::schema::check(o).context("demo --json")?;
    }
    Ok((objs, stderr))
}

fn demo_json(cx: &Ctx, _ns: &Netns) -> Result<()> {
    let started = Instant::now();
    let (objs, _) = run_demo(cx, &["--json"], None)?;
    let took = started.elapsed();
    let ids: Vec<&str> = objs
        .iter()
        .filter_map(|o| o["experiment"].as_str())
        .collect();
    let want: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    ensure!(ids == want, "experiments {ids:?}, expected {want:?}");
    let mut problems = Vec::new();
    for (o, (id, result, rule)) in objs.iter().zip(EXPECTED) {
        for key in ["question", "sockets", "explanation"] {
            if o[key].is_null() {
                problems.push(format!("{id}: no {key}: {o}"));
            }
        }
        let got_result = o["result"].as_str().unwrap_or("?");
        let got_rule = o["rule"].as_str().unwrap_or("?");
        // The rule must fit the observed result: ok-* rules for successes only.
        if got_rule.starts_with("ok") != (got_result == "ok") {
            problems.push(format!("{id}: result {got_result} but rule {got_rule}"));
        }
        if (got_result, got_rule) != (*result, *rule) {
            problems.push(format!(
                "{id}: result {got_result}, rule {got_rule}; expected {result}, {rule}"
            ));
        }
        problems.extend(as_a_student_reads(id, o));
        if let Some((first, second)) = same_binds(id) {
            // Each in a fresh namespace of its own, so that nothing from before is in the way.
            let here = super::netns::in_new_netns("demo-same", |_| kernel_result(&first, &second))?;
            if here != got_result {
                problems.push(format!(
                    "{id}: the demo saw {got_result}, the same binds made here gave {here}"
                ));
            }
        }
    }
    ensure!(
        took < Duration::from_secs_f64(10.0 * cx.pw.timeout_scale),
        "the demo took {took:?}"
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

fn demo_quiz(cx: &Ctx, _ns: &Netns) -> Result<()> {
    // Alternate answers, so that some are right and some wrong whatever the kernel does.
    let answers: String = (0..EXPECTED.len())
        .map(|i| if i % 2 == 0 { "y\n" } else { "n\n" })
        .collect();
    let (objs, stderr) = run_demo(cx, &["--quiz", "--json"], Some(&answers))?;
    ensure!(objs.len() == EXPECTED.len(), "{} objects", objs.len());
    let mut right = 0;
    for (i, o) in objs.iter().enumerate() {
        let predicted = i % 2 == 0;
        ensure!(
            o["predicted_ok"].as_bool() == Some(predicted),
            "answer {i} not read: {o}"
        );
        let correct = predicted == (o["result"].as_str() == Some("ok"));
        ensure!(
            o["correct"].as_bool() == Some(correct),
            "answer {i} scored wrong: {o}"
        );
        right += usize::from(correct);
    }
    let line = format!("Score: {right}/{}", EXPECTED.len());
    ensure!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
    // Human mode: one question, the score on stdout.
    let out = Command::new(&cx.pw.exe)
        .args(["demo", "--quiz", "--only", "same-address"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut w) = c.stdin.take() {
                w.write_all(b"n\n")?;
            }
            c.wait_with_output()
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("Will the last call succeed?") && text.contains("Score: 1/1"),
        "human quiz: {text}"
    );
    // Nothing above the prompt gives the answer away; below it, the last call's line comes
    // with its result.
    let (asked, answered) = text
        .split_once("Will the last call succeed?")
        .unwrap_or_default();
    ensure!(
        !asked.contains("EADDRINUSE") && asked.contains(": ?"),
        "the question shows the last call's result before the answer:\n{text}"
    );
    ensure!(
        answered.contains("bind EADDRINUSE") && answered.contains("result  EADDRINUSE"),
        "after the answer, the last call's result is not shown:\n{text}"
    );
    Ok(())
}

/// Every network namespace inode something on the machine holds: a process's or thread's
/// namespace, an open nsfs file, a /run/netns mount.
fn netns_in_use() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let path = p.path();
        for sub in ["fd", "task"] {
            let Ok(entries) = std::fs::read_dir(path.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let link = if sub == "task" {
                    e.path().join("ns/net")
                } else {
                    e.path()
                };
                if let Ok(t) = std::fs::read_link(&link) {
                    let t = t.to_string_lossy().into_owned();
                    if t.starts_with("net:[") {
                        found.insert(t);
                    }
                }
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("named {l}")),
        );
    }
    found
}

/// Runs the demo in human mode; at its first experiment, notes its scratch namespace and BPF
/// programs; SIGINTs it there when asked; then checks that both are gone.
fn run_and_check(cx: &Ctx, interrupt: bool) -> Result<()> {
    let named_before: BTreeSet<String> = netns_in_use()
        .into_iter()
        .filter(|n| n.starts_with("named"))
        .collect();
    let mut child = Command::new(&cx.pw.exe)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portwatch demo")?;
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut status = String::new();
    stderr.read_line(&mut status)?;
    let scratch = status
        .split("net:[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .map(|n| format!("net:[{n}]"))
        .with_context(|| format!("no scratch namespace in {status:?}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    ensure!(line.starts_with("== "), "first line: {line:?}");
    let programs: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    ensure!(!programs.is_empty(), "the demo holds no BPF program");
    if interrupt {
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest)?;
    let mut err_rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err_rest)?;
    let st = child.wait()?;
    if interrupt {
        ensure!(
            st.code() == Some(130) && err_rest.contains("interrupted"),
            "after SIGINT: {st}, stderr {err_rest:?}"
        );
        ensure!(
            rest.matches("== ").count() + 1 < EXPECTED.len(),
            "SIGINT did not stop the demo early:\n{rest}"
        );
    } else {
        ensure!(st.success(), "demo failed: {st}: {err_rest}");
    }
    let in_use = netns_in_use();
    ensure!(
        !in_use.contains(&scratch),
        "the scratch namespace {scratch} is still held"
    );
    let named_after: BTreeSet<String> = in_use
        .into_iter()
        .filter(|n| n.starts_with("named"))
        .collect();
    ensure!(
        named_after.is_subset(&named_before),
        "new named namespaces: {:?}",
        named_after.difference(&named_before).collect::<Vec<_>>()
    );
    // The kernel frees a program asynchronously once its last fd is closed.
    let mut left = Vec::new();
    let gone = super::eventually(cx.pw.timeout(5.0), || {
        let loaded: BTreeSet<u64> = bpftool_programs()?
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        left = programs
            .iter()
            .filter(|id| loaded.contains(id))
            .copied()
            .collect();
        Ok(left.is_empty())
    })?;
    ensure!(
        gone,
        "BPF programs left loaded {:.0?} after the demo exited: {left:?}",
        cx.pw.timeout(5.0)
    );
    Ok(())
}

fn demo_cleanup(cx: &Ctx, _ns: &Netns) -> Result<()> {
    run_and_check(cx, false).context("normal run")?;
    run_and_check(cx, true).context("SIGINT in the middle")
}
