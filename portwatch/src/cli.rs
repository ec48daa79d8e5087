//! Command-line interface: the flags as typed. The help text is written to teach: someone who
//! runs `portwatch trace --help` should come away knowing what a bind conflict is.
//! [`crate::settings`] turns these flags into what the commands use.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `portwatch --version`: the version, the commit it was built from and the target triple
/// (`x86_64-unknown-linux-musl` for the static release binary), set by build.rs.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTWATCH_GIT_COMMIT"),
    ", ",
    env!("PORTWATCH_TARGET"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version = LONG_VERSION,
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
sudo portwatch who 8080 --addr 0.0.0.0    ... and would a bind to 0.0.0.0:8080 work?\n  \
sudo portwatch why 8080                   why did port 8080 fail, a while ago?\n  \
sudo portwatch ports                      how close connect() is to running out of ports"
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
It also explains a connect() that fails for want of a local port (EADDRNOTAVAIL \"Cannot \
assign requested address\", UDP EAGAIN): how full the ephemeral range is toward that \
destination, and who holds it (--no-connect turns that off).\n\n\
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
--json: one object per line; \"type\" is \"bind\", \"listen\", \"connect\", \"lost\" or\n  \
\"summary\".\n  \
Status lines (ready, lost events, summary) go to stderr in human format.\n\n\
Filters:\n  \
--port and --pid are applied in the kernel, so calls you filter out cost almost nothing.\n  \
A port filter matches the port asked for, or the port the kernel assigned for port 0;\n  \
for connect(), the destination port.\n  \
The short flags are bcc's (bindsnoop): -p PID, -P PORT, -x (failed only), -j (JSON)."
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
    /// How full the ephemeral port range is, per namespace and destination: see "Cannot
    /// assign requested address" coming.
    #[command(
        long_about = "How full the ephemeral port range is, per network namespace and \
destination: see connect()'s \"Cannot assign requested address\" coming.\n\n\
connect() takes its local port from net.ipv4.ip_local_port_range (less \
ip_local_reserved_ports). It shares a port between different destinations, but toward one \
destination from one source address each port serves one connection, TIME_WAIT ones \
included; and it never takes a port that a bind() placed a socket on. So the range runs out \
per destination: a client with thousands of connections to one database fails with \
EADDRNOTAVAIL while other destinations still work. UDP does not share ports at all: an \
unbound UDP socket's connect() or sendto() fails with EAGAIN once the range is full.\n\n\
For each namespace, this lists the busiest TCP destinations (ports connect() cannot take \
toward each, how many are TIME_WAIT, and the processes holding most of the connections) and \
the UDP ports in use. `trace --metrics` exports the worst ratio per namespace as \
portwatch_ephemeral_ports_used_ratio, to alert on before anything fails.",
        after_help = "Examples:\n  \
sudo portwatch ports\n  \
sudo portwatch ports --top 10 --netns /run/netns/blue\n  \
sudo portwatch ports --json"
    )]
    Ports(PortsArgs),
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
    /// Why did that port fail? The failures a running tracer saw, with their explanations.
    #[command(
        long_about = "Why did that port fail? The failures a running tracer saw, with their \
explanations.\n\n\
Every `portwatch trace` (the systemd unit, or one started by hand) keeps its last 1000 failed \
calls, at most 4 MiB of them, and answers `why` on a unix socket in /run/portwatch that only \
root may use (the JSON log is no more open than that). `why` asks every tracer on the host and \
prints their failures, oldest first, as `trace` printed them (--json: the same objects as \
`trace --json`), and says how far back each record goes.\n\n\
With no tracer running it reads the unit's JSON log (/var/log/portwatch/events.jsonl) if \
there is one; --log FILE reads FILE and its rotated siblings (FILE.1, FILE.2, ...) instead \
of asking tracers. Lines it cannot parse (a line cut short by a crash) are skipped and \
counted.",
        after_help = "Examples:\n  \
sudo portwatch why 8080                   why did port 8080 fail?\n  \
sudo portwatch why 8080 --since 1h        ... in the last hour\n  \
sudo portwatch why --json                 every recorded failure, one JSON object per line\n  \
portwatch why 8080 --log events.jsonl     from a JSON log (trace --json --output FILE)\n\n\
Exit status: 0 when it could ask a tracer or read a log (also when nothing failed), 1 when \
there is nothing to ask (no tracer, no log) or it may not ask (not root)."
    )]
    Why(WhyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(after_help = "Install (see the README):\n  \
portwatch completions bash > /usr/share/bash-completion/completions/portwatch\n  \
portwatch completions zsh > /usr/local/share/zsh/site-functions/_portwatch\n  \
portwatch completions fish > /usr/share/fish/vendor_completions.d/portwatch.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: portwatch man > /usr/local/share/man/man1/portwatch.1
    Man,
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
pub struct WhyArgs {
    /// Only failures on this port (as asked, or as bound). Default: every failure.
    #[arg(value_parser = port_arg)]
    pub port: Option<u16>,

    /// Only failures in the last DURATION: a number with s, m, h or d (30s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub since: Option<std::time::Duration>,

    /// The failures as `trace --json` wrote them, one object per line.
    #[arg(short, long)]
    pub json: bool,

    /// Read this JSON log (trace --json --output FILE) and its rotated siblings instead of
    /// asking the running tracers.
    #[arg(long, value_name = "FILE")]
    pub log: Option<std::path::PathBuf>,
}

/// `why --since`: 30s, 10m, 2h, 1d (a bare number is seconds).
fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 30s, 10m, 2h or 1d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(secs) {
        Some(0) => Err("0 would show nothing; give a duration such as 10m".into()),
        Some(t) => Ok(std::time::Duration::from_secs(t)),
        None => Err(format!("{s:?} is too long")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct WhoArgs {
    /// The port to look at.
    #[arg(value_parser = port_arg)]
    pub port: u16,

    /// Predict a bind to this address on PORT (0.0.0.0, ::, 127.0.0.1, ::ffff:10.0.0.1,
    /// fe80::1%eth0...). An IPv6 link-local address takes its interface as %NAME or %INDEX.
    #[arg(long, value_name = "ADDR", value_parser = addr_arg)]
    pub addr: Option<ScopedAddr>,

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
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PortsArgs {
    /// Show this many TCP destinations per namespace, busiest first.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub top: u16,

    /// Only this network namespace: its inode or a path (/run/netns/NAME, /proc/PID/ns/net).
    /// Default: every namespace portwatch can see.
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,

    /// One JSON object (schema in the README).
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only calls on this port (repeat for several); a connect() matches by its destination
    /// port. -P as in bcc's bindsnoop.
    #[arg(short = 'P', long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Only calls made by this process (its process id; -p as in bcc's tools). The process
    /// must exist when portwatch starts.
    #[arg(short = 'p', long, value_parser = pid_arg)]
    pub pid: Option<u32>,

    /// Only calls made by processes named NAME: the process's name (its main thread's comm,
    /// as ps shows it), so a program's worker threads match too; a thread's own name matches
    /// as well. At most 15 bytes: the kernel keeps no more.
    #[arg(long, value_name = "NAME", value_parser = comm_arg)]
    pub comm: Option<String>,

    /// Only calls made by this user id.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Only calls on sockets in this network namespace: its inode (as printed in DETAILS) or a
    /// path (/run/netns/NAME, /proc/PID/ns/net).
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,

    /// Only calls made by processes in this cgroup (v2): a path such as
    /// /sys/fs/cgroup/system.slice/nginx.service. Processes in its child cgroups are not
    /// included.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<std::path::PathBuf>,

    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,

    /// Only this address family: 4 (IPv4) or 6 (IPv6).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,

    /// Only calls that failed (-x as in bcc's tools).
    #[arg(short = 'x', long)]
    pub failed: bool,

    /// Do not trace connect(). By default, a connect() that fails for want of a local port
    /// (EADDRNOTAVAIL "Cannot assign requested address" and EADDRINUSE for TCP, EAGAIN for
    /// UDP) is traced and explained too; every other connect() result is dropped in the
    /// kernel. --port matches a connect()'s destination port.
    #[arg(long)]
    pub no_connect: bool,

    /// One JSON object per line (schema in the README).
    #[arg(short, long)]
    pub json: bool,

    /// Accepted for bcc users: every line already has its time (the TIME column; "time" in
    /// JSON).
    #[arg(short = 't', long = "timestamp")]
    pub timestamp: bool,

    /// Where to hook. auto tries fexit (sees every bind path, cheapest) and falls back to the
    /// syscall tracepoints, saying why on stderr.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Color: auto colors only when stdout is a terminal.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Exit after this many events have been printed (at least 1).
    #[arg(long, value_name = "N", value_parser = count_arg)]
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

    /// Also write every failed call to the systemd journal, filed under the failing process's
    /// unit: `journalctl -u nginx.service` and `systemctl status nginx` then show portwatch's
    /// explanation next to nginx's own error, even after it exited. Repeats of one failure
    /// within 10 s become one line with a count. Run as root: journald files an entry under
    /// another unit only when uid 0 sends it. Fields (PORTWATCH_PORT, PORTWATCH_RULE, ...) are
    /// listed in the README.
    #[arg(long)]
    pub journal: bool,

    /// Print no event lines (status lines still go to stderr). For a metrics-only agent.
    #[arg(long, conflicts_with_all = ["json", "output"])]
    pub quiet: bool,
}

/// `who --addr`: an address, with the scope (interface) an IPv6 address may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedAddr {
    pub addr: std::net::IpAddr,
    /// After `%`: an interface name or index, as in `fe80::1%eth0`.
    pub scope: Option<String>,
}

fn addr_arg(s: &str) -> Result<ScopedAddr, String> {
    let (addr, scope) = match s.split_once('%') {
        Some((a, scope)) => (a, Some(scope)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.parse().map_err(|e| format!("{e}"))?;
    match scope {
        Some("") => Err("nothing after %: give an interface, as in fe80::1%eth0".into()),
        Some(_) if addr.is_ipv4() => Err("an IPv4 address has no %scope".into()),
        _ => Ok(ScopedAddr {
            addr,
            scope: scope.map(str::to_string),
        }),
    }
}

/// `--pid`: a process id. 0 is none (the kernel side would read it as "no filter").
fn pid_arg(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("0 is not a process id".into()),
        Ok(pid) => Ok(pid),
        Err(e) => Err(e.to_string()),
    }
}

/// `who PORT`: no socket holds port 0 (a bind to port 0 gets a port picked by the kernel).
fn port_arg(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("no socket holds port 0: give the port a socket is bound to".into()),
        Ok(port) => Ok(port),
        Err(e) => Err(e.to_string()),
    }
}

/// `--count`: 0 would attach and exit without showing anything.
fn count_arg(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("0 events would end the trace before it starts; give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The most of a process name the kernel keeps (TASK_COMM_LEN, 16, less the NUL).
pub const COMM_MAX: usize = 15;

/// `--comm`: a longer name can never match, because the kernel cuts names to 15 bytes.
fn comm_arg(s: &str) -> Result<String, String> {
    if s.len() <= COMM_MAX {
        return Ok(s.to_string());
    }
    let mut cut = COMM_MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Err(format!(
        "{} bytes long, and the kernel keeps {COMM_MAX} bytes of a process name, so it could \
         never match; use {:?}",
        s.len(),
        &s[..cut]
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        let cli = Cli::try_parse_from(["portwatch", "trace"].iter().chain(args))?;
        match cli.command {
            Command::Trace(t) => Ok(t),
            _ => panic!("not trace"),
        }
    }

    /// Values that would make a filter match everything, or nothing, ever: refused with the
    /// reason.
    #[test]
    fn refuses_values_that_cannot_mean_what_they_say() {
        for (args, why) in [
            (&["trace", "--pid", "0"][..], "0 is not a process id"),
            (&["trace", "-p", "0"][..], "0 is not a process id"),
            (&["who", "0"][..], "no socket holds port 0"),
            (&["trace", "--count", "0"][..], "give 1 or more"),
            (
                &["trace", "--comm", "a-sixteen-bytes!"][..],
                "use \"a-sixteen-bytes\"",
            ),
        ] {
            let err = Cli::try_parse_from(std::iter::once(&"portwatch").chain(args))
                .expect_err(&args.join(" "));
            assert!(err.to_string().contains(why), "{}: {err}", args.join(" "));
        }
        assert_eq!(
            trace(&["--comm", "fifteen-bytes-x"])
                .expect("15 bytes")
                .comm
                .as_deref(),
            Some("fifteen-bytes-x")
        );
    }

    #[test]
    fn who_addr_takes_a_scope() {
        let who = |addr: &str| -> Result<ScopedAddr, clap::Error> {
            let cli = Cli::try_parse_from(["portwatch", "who", "80", "--addr", addr])?;
            match cli.command {
                Command::Who(w) => Ok(w.addr.expect("an address")),
                _ => panic!("not who"),
            }
        };
        let a = who("fe80::1%lo").expect("fe80::1%lo");
        assert_eq!(a.addr, "fe80::1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(a.scope.as_deref(), Some("lo"));
        assert_eq!(who("::1").expect("::1").scope, None);
        assert!(who("127.0.0.1%lo").is_err());
        assert!(who("fe80::1%").is_err());
    }

    #[test]
    fn why_takes_a_port_and_a_duration() {
        let why = |args: &[&str]| -> Result<WhyArgs, clap::Error> {
            let cli = Cli::try_parse_from(["portwatch", "why"].iter().chain(args))?;
            match cli.command {
                Command::Why(w) => Ok(w),
                _ => panic!("not why"),
            }
        };
        let w = why(&["8080", "--since", "2h"]).expect("why 8080 --since 2h");
        assert_eq!(w.port, Some(8080));
        assert_eq!(w.since, Some(std::time::Duration::from_secs(7200)));
        assert_eq!(why(&[]).expect("why").port, None);
        for bad in [&["--since", "10y"][..], &["--since", "0m"], &["0"]] {
            assert!(why(bad).is_err(), "{bad:?}");
        }
    }

    /// bcc's bindsnoop: -p PID, -P PORT, -x failed only, -t timestamps; -j for JSON.
    #[test]
    fn takes_the_short_flags_bcc_users_type() {
        let t =
            trace(&["-p", "1234", "-P", "80", "-P", "443", "-x", "-t", "-j"]).expect("bcc flags");
        assert_eq!(t.pid, Some(1234));
        assert_eq!(t.ports, [80, 443]);
        assert!(t.failed && t.json && t.timestamp);
    }
}
