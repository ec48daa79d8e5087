//! The flags, resolved once into what the commands use (as ripgrep turns its low-level
//! arguments into high-level ones): the loader's backend choice and kernel filter, the
//! filters applied in user space, whether to color and how to print.

use std::io::IsTerminal as _;

use portwatch_common::Backend;

use crate::{
    cli::{BackendArg, ColorChoice, FamilyArg, ProtoArg, TraceArgs},
    event::Event,
    loader::{BackendChoice, KernelFilter},
    output::file::FileTarget,
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
}

impl TraceSettings {
    pub fn resolve(args: TraceArgs) -> Self {
        TraceSettings {
            backend: backend_choice(args.backend),
            kernel_filter: KernelFilter {
                pid: args.pid,
                ports: args.ports.clone(),
                failed_only: args.failed,
                include_self: false,
            },
            filter: EventFilter {
                comm: args.comm,
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
        }
    }
}

fn backend_choice(arg: BackendArg) -> BackendChoice {
    match arg {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Fexit => BackendChoice::Only(Backend::Fexit),
        BackendArg::Tracepoint => BackendChoice::Only(Backend::Tracepoint),
    }
}

/// The filters that run in user space (port and pid run in the kernel).
pub struct EventFilter {
    /// The process name (comm), exactly.
    pub comm: Option<String>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
}

impl EventFilter {
    pub fn keeps(&self, ev: &Event) -> bool {
        if let Some(c) = &self.comm
            && &ev.comm != c
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
}
