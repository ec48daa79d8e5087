//! Command-line interface: the flags as typed. The help text is written to teach: someone who
//! runs `portwatch trace --help` should come away knowing what a bind conflict is.
//! [`crate::settings`] turns these flags into what the commands use.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version,
    about = "Who holds that port, and why does the kernel refuse?",
    long_about = "Who holds that port, and why does the kernel refuse?\n\n\
portwatch watches every bind() and listen() on this machine with eBPF and explains each \
result in plain words: which socket is in the way of an \"Address already in use\", which \
kernel rule made them clash, and what to change. It also finds sockets that are bound but \
not listening, which lsof and fuser do not show, nor ss before iproute2 6.8 on kernels before \
6.8 (since then `ss -tB` lists TCP ones, without owners and without saying what a bind \
would do).",
    after_help = "Examples:\n  \
sudo portwatch trace --port 8080          watch every bind and listen on port 8080\n  \
sudo portwatch trace --failed --json      every failure, one JSON object per line\n  \
sudo portwatch who 8080                   who holds port 8080 right now\n  \
sudo portwatch who 8080 --addr 0.0.0.0    ... and would a bind to 0.0.0.0:8080 work?"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print debug logs (loading, BTF offsets, holder lookups) on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch bind() and listen() calls live, and explain each result.
    #[command(
        long_about = "Watch bind() and listen() calls live, and explain each result.\n\n\
Every call on the machine is shown, in every network namespace: the process, the address \
and port it asked for (as asked, even when the call fails), the protocol, the socket options \
that decide whether two sockets may share a port (SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY, \
SO_BINDTODEVICE, IP_FREEBIND, IP_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT), and the result. \
For a port 0 bind it shows the port the kernel picked.\n\n\
Stop with Ctrl-C: portwatch detaches from the kernel and prints a summary (events, failures \
by errno, and events lost, if any).",
        after_help = "How the kernel decides (what the explanations refer to):\n  \
Two sockets clash on bind() or listen() when all of these hold:\n  \
- same port, same port space (TCP and UDP have separate ones), same network namespace;\n  \
- their addresses overlap: equal, or one is the wildcard (0.0.0.0 covers all IPv4, [::]\n    \
covers all IPv6 and, unless IPV6_V6ONLY is set, all IPv4 too);\n  \
- their devices overlap: the same SO_BINDTODEVICE, or either has none;\n  \
- no option lets them share: SO_REUSEADDR on both with neither listening (for UDP: on\n    \
both, whatever the state), or SO_REUSEPORT on both as the same user.\n  \
A TIME_WAIT connection left by a server counts as a holder with the SO_REUSEADDR it had.\n\n\
Output:\n  \
Human format: one line per call, columns TIME PID COMM CALL PROTO ADDRESS RESULT DETAILS,\n  \
and under it the explanation (↳) and the fix.\n  \
--json: one object per line; \"type\" is \"bind\", \"listen\", \"lost\" or \"summary\".\n  \
Status lines (ready, lost events, summary) go to stderr in human format.\n\n\
Filters:\n  \
--port and --pid are applied in the kernel, so calls you filter out cost almost nothing.\n  \
A port filter matches the port asked for, or the port the kernel assigned for port 0."
    )]
    Trace(TraceArgs),
    /// Show every socket holding a port now, and predict whether a bind would succeed.
    #[command(
        long_about = "Show every socket holding a port now, and predict whether a bind would \
succeed.\n\n\
Lists TCP and UDP sockets on PORT in every network namespace portwatch can see: listening, \
connected, TIME_WAIT (with the time left and its SO_REUSEADDR bit, which decides whether a \
restarted server can bind), and sockets that are bound but not listening, which lsof and \
`ss -tan` do not show (`ss -tB` lists TCP ones on kernels and iproute2 6.8 and later, without \
owners). Each comes with its options, uid, owning processes and their workload (systemd \
unit, container, pod).\n\n\
With --addr, portwatch also says whether a bind to ADDR:PORT with the given options would \
succeed right now, and why, by the same rules `trace` uses to explain real binds.",
        after_help = "Examples:\n  \
sudo portwatch who 8080\n  \
sudo portwatch who 8080 --addr 0.0.0.0 --reuseaddr\n  \
sudo portwatch who 53 --addr 127.0.0.1 --udp --netns /run/netns/blue --json"
    )]
    Who(WhoArgs),
    /// Can two programs use the same port? Try it on this kernel, and see why.
    #[command(
        long_about = "Can two programs use the same port? Try it on this kernel, and see why.\n\n\
Runs small experiments with real sockets in a scratch network namespace (TCP next to UDP, \
two addresses, wildcard vs specific, IPv6 dual-stack vs IPv4, SO_REUSEADDR, SO_REUSEPORT, a \
server restart with connections in TIME_WAIT, another namespace) while portwatch traces \
them, and shows for each the question, the sockets, the result this kernel gave, and \
portwatch's explanation. Needs the same privileges as trace; leaves no namespace, socket, \
sysctl change or BPF program behind, also when interrupted.",
        after_help = "Examples:\n  \
sudo portwatch demo\n  \
sudo portwatch demo --quiz                     predict each result first (y/n), keep score\n  \
sudo portwatch demo --only reuseport-other-user --json"
    )]
    Demo(DemoArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Ask for a prediction (y/n on stdin: will the last call succeed?) before each result,
    /// and keep score.
    #[arg(long)]
    pub quiz: bool,

    /// Run only the experiment with this id (see --list).
    #[arg(long, value_name = "NAME")]
    pub only: Option<String>,

    /// List the experiments and exit.
    #[arg(long)]
    pub list: bool,

    /// One JSON object per experiment (experiment, question, sockets, result, rule,
    /// explanation).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WhoArgs {
    /// The port to look at.
    pub port: u16,

    /// Predict a bind to this address on PORT (0.0.0.0, ::, 127.0.0.1, ::ffff:10.0.0.1...).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<std::net::IpAddr>,

    /// The predicted bind is UDP (default TCP).
    #[arg(long, requires = "addr")]
    pub udp: bool,

    /// The predicted socket sets SO_REUSEADDR.
    #[arg(long, requires = "addr")]
    pub reuseaddr: bool,

    /// The predicted socket sets SO_REUSEPORT.
    #[arg(long, requires = "addr")]
    pub reuseport: bool,

    /// The predicted IPv6 socket sets IPV6_V6ONLY (default: net.ipv6.bindv6only).
    #[arg(long, requires = "addr")]
    pub v6only: bool,

    /// The predicted socket is bound to this interface (SO_BINDTODEVICE).
    #[arg(long, value_name = "IFACE", requires = "addr")]
    pub device: Option<String>,

    /// The user the predicted bind runs as (SO_REUSEPORT and privileged ports depend on it).
    /// Default: the caller's uid.
    #[arg(long, requires = "addr")]
    pub uid: Option<u32>,

    /// Network namespace for the prediction: /run/netns/NAME or /proc/PID/ns/net.
    /// Default: portwatch's own.
    #[arg(long, value_name = "PATH", requires = "addr")]
    pub netns: Option<std::path::PathBuf>,

    /// One JSON object (schema in the README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only calls on this port (repeat for several).
    #[arg(short, long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Only calls made by this process id.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Only calls made by processes whose name (comm) is exactly NAME.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,

    /// Only this address family: 4 (IPv4) or 6 (IPv6).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,

    /// Only calls that failed.
    #[arg(long)]
    pub failed: bool,

    /// One JSON object per line (schema in the README).
    #[arg(long)]
    pub json: bool,

    /// Where to hook. auto tries fexit (sees every bind path, cheapest) and falls back to the
    /// syscall tracepoints, saying why on stderr.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Color: auto colors only when stdout is a terminal.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Exit after this many events have been printed.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (and /healthz) while tracing.
    /// The metrics are listed in the README; their labels never hold a pid, an address or a
    /// process name. Use a loopback address unless the network is trusted.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Append event lines to FILE instead of stdout, each line whole (a log shipper tailing
    /// it never sees half a line). SIGHUP reopens FILE (after logrotate moved it).
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Rotate FILE before it grows past SIZE bytes (K, M, G suffixes): FILE becomes FILE.1,
    /// FILE.1 becomes FILE.2, and so on.
    #[arg(long, value_name = "SIZE", requires = "output", value_parser = crate::output::file::parse_size)]
    pub output_max_size: Option<u64>,

    /// How many rotated files to keep (FILE.1 ... FILE.N); older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "output")]
    pub output_keep: u32,

    /// Print no event lines (status lines still go to stderr). For a metrics-only agent.
    #[arg(long, conflicts_with_all = ["json", "output"])]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyArg {
    #[value(name = "4")]
    V4,
    #[value(name = "6")]
    V6,
}

/// `--backend`: the names are [`portwatch_common::Backend`]'s (a test checks), plus auto.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendArg {
    Auto,
    Fexit,
    Tracepoint,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}
