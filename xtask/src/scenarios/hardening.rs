//! Scenarios for hostile and mistaken input: a process name made of escape sequences, flags
//! that cannot mean what they say, paths that are not namespaces. What a user sees must stay
//! theirs: no foreign escape sequence reaches the terminal, and a mistake gets one clear line
//! and a non-zero exit, never a panic or a silent run.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use super::{
    Ctx, Scenario,
    holder::Holder,
    netns::{Named, Netns, ip},
    portwatch::Portwatch,
    sock::SockSpec,
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::alone("hostile_comm_is_escaped", hostile_comm_is_escaped),
        Scenario::alone("bad_input_one_line", bad_input_one_line),
        Scenario::alone("few_open_files_named_once", few_open_files_named_once).host_only(),
        Scenario::alone("soak_memory_stays_flat", soak_memory_stays_flat).host_only(),
        Scenario::alone("link_local_scope", link_local_scope).host_only(),
        Scenario::alone("filter_uid_and_netns", filter_uid_and_netns),
    ]
}

/// A process name with a CSI color, an OSC window title ended by a bell, and a newline
/// followed by a forged line (15 bytes, the most a comm holds).
const HOSTILE_COMM: &str = "\x1b[1m\x07\nFORGED\x1b]0";
/// How the human output must show it.
const HOSTILE_SHOWN: &str = r"\x1b[1m\x07\nFORGED\x1b]0";

/// A holder named [`HOSTILE_COMM`] binds, then fails to bind the same port: `trace`'s COMM
/// column and its explanation ("held by pid N (...)"), and `who`'s OWNER column, show the name
/// escaped, and nothing of it reaches the terminal raw.
fn hostile_comm_is_escaped(cx: &Ctx, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, HOSTILE_COMM)?;
    ensure!(
        h.comm == HOSTILE_COMM,
        "set-up: the holder's comm is {:?}, not the hostile name",
        h.comm
    );
    let pid = h.pid.to_string();
    let pw = Portwatch::start_args(
        &cx.pw,
        [
            "trace",
            "--backend",
            cx.pw.backend_flag(),
            "--color",
            "never",
            "--pid",
            &pid,
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let spec = SockSpec::tcp("127.0.0.1:45100").listening();
    h.bind_ok(&spec)?;
    h.bind_fails(&SockSpec::tcp("127.0.0.1:45100"), EADDRINUSE)?;
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    let lines = loop {
        let lines = pw.stdout();
        let explained = lines
            .iter()
            .any(|l| l.contains('↳') && l.contains(HOSTILE_SHOWN));
        if explained || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let st = pw.stop()?;
    let show = |lines: &[String]| format!("stdout:\n  {}", lines.join("\n  "));
    let calls = lines
        .iter()
        .filter(|l| l.split_whitespace().any(|w| w == pid))
        .count();
    ensure!(
        calls >= 2
            && lines
                .iter()
                .any(|l| l.contains('↳') && l.contains(HOSTILE_SHOWN)),
        "want the holder's calls and an explanation naming it escaped; {}",
        show(&lines)
    );
    no_raw_name(&lines).with_context(|| show(&lines))?;
    ensure!(st.status.success(), "exit {}\n{}", st.status, st.describe());

    let out = run(cx, &["who", "45100"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    ensure!(
        out.status.success() && lines.iter().any(|l| l.contains(HOSTILE_SHOWN)),
        "who does not show the holder's name escaped: exit {}; {}",
        out.status,
        show(&lines)
    );
    no_raw_name(&lines).with_context(|| show(&lines))
}

/// No escape character, no bell, no forged line: the name reached the output escaped only.
fn no_raw_name(lines: &[String]) -> Result<()> {
    ensure!(
        !lines.iter().any(|l| l.contains(['\x1b', '\x07'])),
        "an escape sequence or a bell from the name reached the output"
    );
    ensure!(
        !lines.iter().any(|l| l.starts_with("FORGED")),
        "the newline in the name forged a line"
    );
    Ok(())
}

/// Each mistake ends portwatch at once with a non-zero exit and one line that names the flag,
/// nothing on stdout, no panic: before, `--pid` of no process traced forever, a FIFO given as
/// `--netns` hung, and a regular file was "a namespace that is gone".
fn bad_input_one_line(cx: &Ctx, ns: &Netns) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pw-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("scratch dir")?;
    let fifo = dir.join("fifo");
    let file = dir.join("file");
    std::fs::write(&file, b"not a namespace").context("scratch file")?;
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path.
    ensure!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0,
        "mkfifo: {}",
        std::io::Error::last_os_error()
    );
    let (fifo, file) = (fifo.display().to_string(), file.display().to_string());
    let netns_path = ns.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["trace", "--pid", "0"], "0 is not a process id"),
        (vec!["who", "0"], "no socket holds port 0"),
        (vec!["trace", "--count", "0"], "1 or more"),
        (
            vec!["trace", "--comm", "a-sixteen-bytes!"],
            "could never match",
        ),
        (vec!["trace", "--pid", "999999999"], "no such process"),
        (
            vec!["trace", "--netns", &file],
            "not a network namespace (a regular file)",
        ),
        (
            vec!["who", "80", "--addr", "127.0.0.1", "--netns", &fifo],
            "not a network namespace (a FIFO)",
        ),
        (
            vec!["who", "80", "--addr", "127.0.0.1", "--netns", &file],
            "not a network namespace (a regular file)",
        ),
        (
            vec!["trace", "--cgroup", "/etc"],
            "not a cgroup v2 directory",
        ),
    ];
    let mut failures = Vec::new();
    for (args, want) in &cases {
        let out = run(cx, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        let ok = !out.status.success()
            && out.status.code().is_some()
            && out.stdout.is_empty()
            && first.contains(want)
            && !stderr.contains("panicked");
        if !ok {
            failures.push(format!(
                "portwatch {}: exit {}, stderr {stderr:?}; want a first line with {want:?}",
                args.join(" "),
                out.status
            ));
        }
    }
    // A full disk: the error says what failed; a generated script fails the same way.
    for args in [&["who", "80"][..], &["completions", "bash"], &["man"]] {
        let mut cmd = Command::new(&cx.pw.exe);
        cmd.stdout(std::fs::File::create("/dev/full").context("/dev/full")?);
        let out = wait_output(cx, cmd, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || !stderr.starts_with("portwatch: error: writing to stdout: No space left")
            || stderr.lines().count() != 1
        {
            failures.push(format!(
                "portwatch {} > /dev/full: exit {}, stderr {stderr:?}; want one line saying \
                 writing to stdout failed",
                args.join(" "),
                out.status
            ));
        }
    }
    // A real namespace path is taken.
    let out = run(
        cx,
        &["who", "80", "--addr", "127.0.0.1", "--netns", &netns_path],
    )?;
    if !out.status.success() {
        failures.push(format!(
            "who --netns {netns_path} (a real namespace) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// With 40 more namespaces than usual: a soft open-files limit of 32 under a high hard one
/// is raised, and `who` reads every namespace; with the hard limit at 32 too, the cause is
/// named once (EMFILE, the limit, the fix) in a short error, not repeated per namespace.
/// Before, the first case failed, and the second printed "bpf_link_create failed" per
/// namespace without naming EMFILE.
fn few_open_files_named_once(cx: &Ctx, _ns: &Netns) -> Result<()> {
    let named: Vec<Named> = (0..40)
        .map(|i| Named::add(&format!("pw-fd-{}-{i}", std::process::id())))
        .collect::<Result<_>>()?;
    let raised = run_limited(cx, &["who", "80"], 32, 4096)?;
    let stderr = String::from_utf8_lossy(&raised.stderr);
    let stdout = String::from_utf8_lossy(&raised.stdout);
    ensure!(
        raised.status.success() && stderr.is_empty() && stdout.contains("network namespace"),
        "soft limit 32, hard 4096: want the limit raised and every namespace read; exit {}, \
         stdout {stdout:?}, stderr {stderr:?}",
        raised.status
    );
    let capped = run_limited(cx, &["who", "80"], 32, 32)?;
    let stderr = String::from_utf8_lossy(&capped.stderr);
    let naming = stderr.lines().filter(|l| l.contains("EMFILE")).count();
    ensure!(
        naming == 1 && stderr.len() < 600 && stderr.contains("limit is 32"),
        "hard limit 32: want one line naming EMFILE and the limit, under 600 bytes; exit {}, \
         stderr ({} bytes) {stderr:?}",
        capped.status,
        stderr.len()
    );
    for n in named {
        n.delete()?;
    }
    Ok(())
}

/// A namespace with fe80::1 on lo (lo is the one interface every machine can have in a new
/// namespace). `who --addr fe80::1%lo` takes the scope and agrees with the kernel (fe80::1 is
/// there, fe80::2 is not); a bind to `[fe80::1%lo]` shows in `trace` as `%lo`, not as the
/// interface's index. Before, `--addr` refused any `%`.
fn link_local_scope(cx: &Ctx, _ns: &Netns) -> Result<()> {
    let named = Named::add(&format!("pw-scope-{}", std::process::id()))?;
    let ns = &named.ns;
    ip(
        Some(ns),
        &["addr", "add", "fe80::1/64", "dev", "lo", "nodad"],
    )?;
    let path = ns.path();
    for (addr, succeeds) in [("fe80::1%lo", true), ("fe80::2%lo", false)] {
        let out = run(cx, &["who", "45300", "--addr", addr, "--netns", &path])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = if succeeds {
            "would succeed"
        } else {
            "would fail"
        };
        ensure!(
            out.status.success() && stdout.contains(want),
            "who --addr {addr}: want {want:?}; exit {}, stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = Portwatch::start_args(
        &cx.pw,
        [
            "trace",
            "--backend",
            cx.pw.backend_flag(),
            "--port",
            "45300",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    // A process in the namespace binds, then stays a moment (longer under emulation) so that
    // its namespace can be entered to name the interface.
    let script = format!(
        "import socket,time\n\
         s=socket.socket(socket.AF_INET6)\n\
         s.bind(('fe80::1',45300,0,socket.if_nametoindex('lo')))\n\
         time.sleep({:.1})\n",
        cx.pw.timeout(2.0).as_secs_f64()
    );
    let bound = Command::new("ip")
        .args(["netns", "exec", &named_name(ns), "python3", "-c", &script])
        .output()
        .context("running python3 in the namespace")?;
    ensure!(
        bound.status.success(),
        "set-up: the bind failed: {}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    let lines = loop {
        let lines = pw.stdout();
        if lines.iter().any(|l| l.contains("[fe80::1")) || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    pw.stop()?;
    ensure!(
        lines.iter().any(|l| l.contains("[fe80::1%lo]:45300")),
        "want the bind shown as [fe80::1%lo]:45300; stdout:\n  {}",
        lines.join("\n  ")
    );
    named.delete()
}

/// The `ip netns` name of a namespace under /run/netns.
fn named_name(ns: &Netns) -> String {
    ns.path().rsplit('/').next().unwrap_or_default().to_string()
}

/// `--uid` keeps only that user's calls, `--netns PATH` only the calls in that namespace; the
/// others happen on the same traced port at the same time and must not show.
fn filter_uid_and_netns(cx: &Ctx, ns: &Netns) -> Result<()> {
    let pw = Portwatch::start(&cx.pw, &["--uid", "65534", "--port", "45400"])?;
    let mut root = Holder::spawn(ns, "pw-root")?;
    let mut nobody = Holder::spawn_as(ns, "pw-nobody", 65534)?;
    root.bind_ok(&SockSpec::tcp("127.0.0.1:45400"))?;
    let b = nobody.bind_ok(&SockSpec::tcp("127.0.0.2:45400"))?;
    pw.wait_call(ns, "bind", nobody.pid, b.ino)?;
    let st = pw.stop()?;
    let pids: Vec<Option<u64>> = st.events().map(|e| e.pid()).collect();
    ensure!(
        pids.iter().all(|p| *p == Some(nobody.pid.into())),
        "--uid 65534 let through calls of other processes (pids {pids:?}; root's is {})",
        root.pid
    );

    let path = ns.path();
    let pw = Portwatch::start(&cx.pw, &["--netns", &path, "--port", "45401"])?;
    // The runner's main thread stays in the namespace it started in.
    let runner_ns = format!("/proc/{}/ns/net", std::process::id());
    let mut outside = Holder::spawn_at(&runner_ns, "pw-outside")?;
    let mut inside = Holder::spawn(ns, "pw-inside")?;
    outside.bind_ok(&SockSpec::tcp("127.0.0.1:45401"))?;
    let b = inside.bind_ok(&SockSpec::tcp("127.0.0.1:45401"))?;
    pw.wait_call(ns, "bind", inside.pid, b.ino)?;
    let st = pw.stop()?;
    let netns: Vec<Option<u64>> = st.events().map(|e| e.netns()).collect();
    ensure!(
        netns.iter().all(|n| *n == Some(ns.inode())),
        "--netns {path} let through calls in other namespaces: {netns:?}"
    );
    Ok(())
}

/// Seconds [`soak_memory_stays_flat`] watches memory once the caches are full: short in the
/// suite, longer with `PW_SOAK_SECS=3600` in the runner's environment.
const SOAK_SECS_DEFAULT: u64 = 20;
/// Successful binds after which the largest cache (who bound each socket, 32768 entries) is
/// full, with a margin.
const SOAK_WARM_BINDS: u64 = 45_000;

/// Churn that once grew portwatch's memory without bound: one process
/// replaces a bound socket every 200 µs while another makes an EADDRINUSE on the port every
/// 50 ms, all traced and explained. Every cache has a bound, so once the largest is full
/// (after [`SOAK_WARM_BINDS`] binds), RSS stays within a margin of where it was then.
fn soak_memory_stays_flat(cx: &Ctx, ns: &Netns) -> Result<()> {
    let secs: u64 = std::env::var("PW_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SOAK_SECS_DEFAULT)
        .max(5);
    let mut cmd = Command::new(&cx.pw.exe);
    cmd.args([
        "trace",
        "--json",
        "--backend",
        cx.pw.backend_flag(),
        "--port",
        "45200",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cx.pw.root_ns.enter_on_spawn(&mut cmd);
    let mut child = cmd.spawn().context("starting portwatch")?;
    let pid = child.id() as i32;
    let stderr = child.stderr.take().context("stderr")?;
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .any(|l| l.starts_with(super::portwatch::READY_PREFIX));
    let result = (|| -> Result<()> {
        ensure!(ready, "portwatch ended before it was ready");
        let mut owner = Holder::spawn(ns, "pw-soak-owner")?;
        let mut asker = Holder::spawn(ns, "pw-soak-asker")?;
        let spec = SockSpec::tcp("127.0.0.1:45200");
        let stop = AtomicBool::new(false);
        let binds = AtomicU64::new(0);
        let rss = || crate::bench::proc_status_kib(pid, "VmRSS:").unwrap_or(0);
        std::thread::scope(|s| -> Result<()> {
            let owning = s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    let c =
                        owner.bind_loop(&spec, 2000, Duration::from_micros(200), Duration::ZERO)?;
                    binds.fetch_add(u64::from(c.binds - c.failed), Ordering::Relaxed);
                }
                Ok(())
            });
            let asking = s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    asker.bind_loop(&spec, 20, Duration::ZERO, Duration::from_millis(50))?;
                }
                Ok(())
            });
            let checked = (|| -> Result<()> {
                let warm_limit = Instant::now() + cx.pw.timeout(120.0);
                let mut warming = Vec::new();
                while binds.load(Ordering::Relaxed) < SOAK_WARM_BINDS {
                    ensure!(
                        Instant::now() < warm_limit && !owning.is_finished(),
                        "set-up: only {} binds in {:.0?}",
                        binds.load(Ordering::Relaxed),
                        cx.pw.timeout(120.0)
                    );
                    std::thread::sleep(Duration::from_secs(1));
                    warming.push(rss());
                }
                let settled = rss();
                let allowed = settled + settled / 10 + 2048;
                let mut samples = Vec::new();
                for _ in 0..secs {
                    std::thread::sleep(Duration::from_secs(1));
                    samples.push(rss());
                }
                let peak = samples.iter().copied().max().unwrap_or(0);
                ensure!(
                    settled > 0 && peak <= allowed,
                    "RSS grew: {settled} KiB once the caches were full, then up to {peak} KiB \
                     (allowed {allowed}); KiB per second while warming: {warming:?}, after: \
                     {samples:?}"
                );
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            owning
                .join()
                .map_err(|_| anyhow::anyhow!("owner thread panicked"))??;
            asking
                .join()
                .map_err(|_| anyhow::anyhow!("asker thread panicked"))??;
            checked
        })
    })();
    // SAFETY: our child; SIGINT makes it detach and exit.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let _ = child.wait();
    result
}

/// [`run`], with RLIMIT_NOFILE set to `soft` and `hard` for portwatch.
fn run_limited(cx: &Ctx, args: &[&str], soft: u64, hard: u64) -> Result<Output> {
    let mut cmd = Command::new(&cx.pw.exe);
    cmd.stdout(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe, and the struct is copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    wait_output(cx, cmd, args)
}

/// Runs portwatch with `args` (in the runner's namespace) and waits, at most 10 s.
pub fn run(cx: &Ctx, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(&cx.pw.exe);
    cmd.stdout(Stdio::piped());
    wait_output(cx, cmd, args)
}

/// Runs `cmd` (portwatch) with `args` and waits, at most 10 s.
/// Stdout goes where `cmd` says (the callers pipe it, or send it to /dev/full).
fn wait_output(cx: &Ctx, mut cmd: Command, args: &[&str]) -> Result<Output> {
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("running portwatch {}", args.join(" ")))?;
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    while !waiter.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !waiter.is_finished() {
        // SAFETY: our child, not yet reaped (the waiter thread still waits for it).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = waiter.join();
        anyhow::bail!(
            "portwatch {} was still running after {:.0?}",
            args.join(" "),
            cx.pw.timeout(10.0)
        );
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))?
        .context("waiting for portwatch")
}
