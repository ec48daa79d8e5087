//! What else runs on this shared machine while the bench measures: other people's tracers on
//! bind()/listen() and other jobs' CPU time, both of which slow every configuration.

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// Tracers attached to bind()/listen() hooks that are not ours: on a shared machine they slow
/// every configuration (the untraced one too), and they are the first thing to look at when
/// figures jump. Call it while none of the bench's tracers runs.
///
/// Two kinds of attachment: perf-event ones (bpftrace, BCC), which `bpftool perf list` names
/// with their pid, and BPF links (aya, libbpf: portwatch), which only the owner's
/// /proc/PID/fdinfo describes.
pub(super) fn foreign_tracers() -> Vec<String> {
    let hooked = |name: &str| name.contains("bind") || name.contains("listen");
    let mut by_pid: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    if let Ok(out) = Command::new("bpftool").args(["perf", "list"]).output() {
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| hooked(l))
        {
            // "pid 15244  fd 7: prog_id 149  tracepoint  sys_enter_bind"
            let mut f = l.split_whitespace();
            let pid = f.nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let hook = l.split_whitespace().last().unwrap_or("?").to_string();
            by_pid.entry(pid).or_default().push(hook);
        }
    }
    for pid in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = pid.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_link =
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link");
            if !is_link {
                continue;
            }
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(tp) = info.lines().find_map(|l| l.strip_prefix("tp_name:"))
                && hooked(tp)
            {
                by_pid.entry(pid).or_default().push(tp.trim().to_string());
            }
        }
    }
    by_pid
        .into_iter()
        .map(|(pid, hooks)| {
            let cmd = fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| c.replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            format!("pid {pid} ({cmd}): {}", hooks.join(", "))
        })
        .collect()
}

/// Gives other people's bind tracers, and other jobs using more than `max_cpu` cores, up to
/// `patience` to go away, saying what they are. Returns the tracers still attached.
pub(super) fn wait_for_quiet(patience: Duration, max_cpu: f64) -> Vec<String> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let foreign = foreign_tracers();
        let busy0 = busy_cpu_s();
        thread::sleep(Duration::from_secs(1));
        let busy = busy_cpu_s() - busy0;
        let quiet = foreign.is_empty() && busy <= max_cpu;
        if quiet || started.elapsed() >= patience {
            if !quiet {
                eprintln!("bench: measuring anyway; the report lists the disturbance under Noise");
            }
            return foreign;
        }
        if !said {
            eprintln!(
                "bench: waiting up to {patience:?} for a quiet machine: {:.2} cores busy{}{}",
                busy,
                if foreign.is_empty() {
                    ""
                } else {
                    "; tracers on bind()/listen():\n  "
                },
                foreign.join("\n  ")
            );
            said = true;
        }
    }
}

pub(super) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds all CPUs spent not idle since boot (/proc/stat: user, nice, system, irq,
/// softirq, steal).
pub(super) fn busy_cpu_s() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    busy as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
