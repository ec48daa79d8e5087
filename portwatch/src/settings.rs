//! The flags, resolved once into what the commands use (as ripgrep turns its low-level
//! arguments into high-level ones): the loader's backend choice and kernel filter, the
//! filters applied in user space, whether to color and how to print.

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, Result, bail};
use portwatch_common::Backend;

use crate::{
    cli::{BackendArg, ColorChoice, FamilyArg, ProtoArg, TraceArgs},
    event::Event,
    loader::{BackendChoice, KernelFilter},
    netns,
    output::file::FileTarget,
    procfs,
    sockets::{Family, Proto},
};

/// `portwatch trace`, resolved.
pub struct TraceSettings {
    pub backend: BackendChoice,
    /// The filters the kernel applies (cheap: filtered-out calls cost almost nothing).
    pub kernel_filter: KernelFilter,
    /// The filters applied here, after decoding.
    pub filter: EventFilter,
    pub json: bool,
    pub color: bool,
    /// Exit after this many events have been printed.
    pub count: Option<u64>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// No event lines.
    pub quiet: bool,
    /// `--output`: event lines to this file, rotated.
    pub output: Option<FileTarget>,
    /// `--journal`: failures to the systemd journal.
    pub journal: bool,
}

impl TraceSettings {
    /// Fails, with one line saying why, on a filter that cannot match: a process that does not
    /// exist, a namespace or cgroup path that is not one.
    pub fn resolve(args: TraceArgs) -> Result<Self> {
        if let Some(pid) = args.pid
            && !procfs::exists(pid)
        {
            bail!("--pid {pid}: no such process (--pid takes the id of a running process)");
        }
        let netns = args.netns.as_deref().map(netns_arg).transpose()?;
        let cgroup = args.cgroup.as_deref().map(cgroup_arg).transpose()?;
        Ok(TraceSettings {
            backend: backend_choice(args.backend),
            kernel_filter: KernelFilter {
                pid: args.pid,
                ports: args.ports.clone(),
                failed_only: args.failed,
                include_self: false,
                connect: !args.no_connect,
            },
            filter: EventFilter {
                comm: args.comm,
                uid: args.uid,
                netns,
                cgroup,
                proto: args.proto.map(|p| match p {
                    ProtoArg::Tcp => Proto::Tcp,
                    ProtoArg::Udp => Proto::Udp,
                }),
                family: args.family.map(|f| match f {
                    FamilyArg::V4 => Family::Ipv4,
                    FamilyArg::V6 => Family::Ipv6,
                }),
            },
            json: args.json,
            color: match args.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => {
                    args.output.is_none()
                        && std::io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none()
                }
            },
            count: args.count,
            metrics: args.metrics,
            quiet: args.quiet,
            output: args.output.map(|path| FileTarget {
                path,
                max_size: args.output_max_size,
                keep: args.output_keep,
            }),
            journal: args.journal,
        })
    }
}

/// `--netns`: an inode as portwatch prints it, or a path that must be a network namespace.
pub fn netns_arg(arg: &str) -> Result<u32> {
    if let Ok(ino) = arg.parse::<u32>() {
        return Ok(ino);
    }
    let (ino, _handle) = netns::open_path(Path::new(arg)).context("--netns")?;
    Ok(ino)
}

/// `--cgroup`: a cgroup v2 directory; its id is its inode number.
fn cgroup_arg(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("--cgroup {}", path.display()))?;
    if !meta.is_dir() || !path.join("cgroup.procs").exists() {
        bail!(
            "--cgroup {}: not a cgroup v2 directory (e.g. /sys/fs/cgroup/system.slice/NAME.service)",
            path.display()
        );
    }
    Ok(meta.ino())
}

fn backend_choice(arg: BackendArg) -> BackendChoice {
    match arg {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Fexit => BackendChoice::Only(Backend::Fexit),
        BackendArg::Tracepoint => BackendChoice::Only(Backend::Tracepoint),
    }
}

/// The filters that run in user space (port and pid run in the kernel).
#[derive(Default)]
pub struct EventFilter {
    /// The process name (comm), exactly: the calling thread's, or its process's.
    pub comm: Option<String>,
    pub uid: Option<u32>,
    /// Network namespace inode of the call's socket.
    pub netns: Option<u32>,
    /// cgroup v2 id of the caller.
    pub cgroup: Option<u64>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
}

impl EventFilter {
    pub fn keeps(&self, ev: &Event) -> bool {
        if let Some(c) = &self.comm
            && !named(ev, c)
        {
            return false;
        }
        if self.uid.is_some_and(|u| u != ev.uid) || self.cgroup.is_some_and(|c| c != ev.cgroup_id) {
            return false;
        }
        if let Some(n) = self.netns
            && ev.socket.as_ref().map(|s| s.netns) != Some(n)
        {
            return false;
        }
        let sock = ev.socket.as_ref();
        if let Some(p) = self.proto
            && sock.map(|s| s.proto) != Some(p)
        {
            return false;
        }
        if let Some(f) = self.family
            && sock.map(|s| s.family) != Some(f)
        {
            return false;
        }
        true
    }
}

/// Whether the call's thread, or its process, is named `name`. The kernel reports the thread's
/// name; a worker thread is often named otherwise (python3's "worker-1"), so the process's
/// name (its main thread's, from /proc) is looked up when the thread's does not match.
fn named(ev: &Event, name: &str) -> bool {
    ev.comm == name || (ev.tid != ev.pid && procfs::comm(ev.pid).is_some_and(|c| c == name))
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    /// `--backend NAME` takes the backends' stable names and maps each onto its own backend.
    #[test]
    fn backend_flag_names_are_the_backends_names() {
        for arg in BackendArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("a name")
                .get_name()
                .to_string();
            match backend_choice(*arg) {
                BackendChoice::Auto => assert_eq!(name, "auto"),
                BackendChoice::Only(b) => assert_eq!(Backend::from_name(&name), Some(b)),
            }
        }
        assert_eq!(BackendArg::value_variants().len(), Backend::ALL.len() + 1);
    }

    /// A call from a worker thread carries the thread's name; `--comm` with the process's
    /// name keeps it. The test's own process stands in: this test runs on a thread of it.
    #[test]
    fn comm_matches_the_process_name_of_a_worker_thread() {
        let pid = std::process::id();
        let tid = unsafe { libc::gettid() } as u32;
        assert_ne!(pid, tid, "tests run on worker threads");
        let process = procfs::comm(pid).expect("our own /proc entry");
        let ev = Event {
            tid,
            ..Event::imagined(crate::event::Call::Bind, pid, "worker-1")
        };
        let filter = |name: &str| EventFilter {
            comm: Some(name.to_string()),
            ..EventFilter::default()
        };
        assert!(filter(&process).keeps(&ev), "process name {process:?}");
        assert!(filter("worker-1").keeps(&ev), "thread name");
        assert!(!filter("someone-else").keeps(&ev));
    }
}
