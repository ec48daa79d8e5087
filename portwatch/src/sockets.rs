//! The vocabulary for sockets that every other module shares: family, protocol, state,
//! options, one socket as portwatch sees it, and who holds it. Pure data, no I/O.

use std::net::IpAddr;

use portwatch_common::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, opt, tcp_state};

use crate::{address::endpoint, docker_proxy::Forward, workload::Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn from_af(af: u16) -> Self {
        if af == AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }

    /// The `sa_family` value of this family (AF_INET, AF_INET6).
    pub fn af(self) -> u16 {
        match self {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        }
    }

    /// The stable name: "ipv4", "ipv6".
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    UdpLite,
    Mptcp,
    Sctp,
    /// A raw socket (SOCK_RAW) of this IP protocol. It has no port: the number the kernel
    /// keeps where a port would be is the protocol's.
    Raw(u16),
    Other(u16),
}

impl Proto {
    pub fn from_raw(protocol: u16, sock_type: u16) -> Self {
        const SOCK_STREAM: u16 = 1;
        const SOCK_DGRAM: u16 = 2;
        const SOCK_RAW: u16 = 3;
        match protocol {
            // First: a raw socket may name TCP or UDP as its protocol.
            n if sock_type == SOCK_RAW => Proto::Raw(n),
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            136 => Proto::UdpLite,
            262 => Proto::Mptcp,
            132 => Proto::Sctp,
            0 if sock_type == SOCK_STREAM => Proto::Tcp,
            0 if sock_type == SOCK_DGRAM => Proto::Udp,
            n => Proto::Other(n),
        }
    }

    pub fn name(self) -> String {
        match self {
            Proto::Tcp => "tcp".into(),
            Proto::Udp => "udp".into(),
            Proto::UdpLite => "udplite".into(),
            Proto::Mptcp => "mptcp".into(),
            Proto::Sctp => "sctp".into(),
            Proto::Raw(_) => "raw".into(),
            Proto::Other(n) => format!("proto{n}"),
        }
    }

    /// Whether two protocols draw from the same port space (TCP's bind hash, UDP's table).
    pub fn shares_ports_with(self, other: Proto) -> bool {
        let space = |p: Proto| match p {
            Proto::Tcp | Proto::Mptcp => 1,
            Proto::Udp => 2,
            Proto::UdpLite => 3,
            Proto::Sctp => 4,
            Proto::Raw(n) => 1000 + u32::from(n),
            Proto::Other(n) => 100 + u32::from(n),
        };
        space(self) == space(other)
    }

    /// Whether sockets of this protocol have ports that the bind rules are about. Raw and
    /// unknown sockets are left out of every port rule.
    pub fn has_ports(self) -> bool {
        !matches!(self, Proto::Raw(_) | Proto::Other(_))
    }
}

/// The kernel's `sk_state` (TCP's numbering; UDP uses ESTABLISHED and CLOSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State(pub u8);

impl State {
    pub const ESTABLISHED: State = State(tcp_state::ESTABLISHED);
    pub const TIME_WAIT: State = State(tcp_state::TIME_WAIT);
    pub const CLOSE: State = State(tcp_state::CLOSE);
    pub const LISTEN: State = State(tcp_state::LISTEN);
    pub const SYN_SENT: State = State(tcp_state::SYN_SENT);

    /// A TIME_WAIT sock that stands for FIN_WAIT2: the server closed, the peer has not. The
    /// kernel keeps it as a timewait sock (same bind rules as TIME_WAIT), but it is not one.
    pub const FIN_WAIT2_TIMEWAIT: State = State(0x80 | 5);

    pub fn from_raw(raw: u8, _protocol: u16) -> Self {
        State(raw)
    }

    /// The state of a sock, given the `tw_substate` of a timewait sock (0 for others).
    pub fn with_substate(raw: u8, substate: u8) -> Self {
        if raw == State::TIME_WAIT.0 && substate == 5 {
            State::FIN_WAIT2_TIMEWAIT
        } else {
            State(raw)
        }
    }

    pub fn is_listen(self) -> bool {
        self == State::LISTEN
    }

    /// A timewait sock: TIME_WAIT, or FIN_WAIT2 after the owner closed.
    pub fn is_time_wait(self) -> bool {
        self == State::TIME_WAIT || self == State::FIN_WAIT2_TIMEWAIT
    }

    /// Stable names for JSON. A TCP socket in CLOSE with a port is bound but not listening;
    /// a UDP socket is UNCONN or ESTABLISHED (connected), as ss calls them.
    pub fn name(self, proto: Proto) -> &'static str {
        let udp = matches!(proto, Proto::Udp | Proto::UdpLite);
        match self.0 {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 if udp => "UNCONN",
            7 => "BOUND",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW_SYN_RECV",
            0x85 => "FIN_WAIT2",
            _ => "UNKNOWN",
        }
    }

    /// Words for people.
    pub fn describe(self, proto: Proto) -> &'static str {
        let udp = matches!(proto, Proto::Udp | Proto::UdpLite);
        match self.0 {
            1 if udp => "connected UDP",
            7 if udp => "UDP",
            7 => "bound, not listening",
            10 => "listening",
            6 => "TIME_WAIT",
            0x85 => "FIN_WAIT2 (closed by its owner, the peer has not closed yet)",
            1 => "connected",
            _ => self.name(proto),
        }
    }
}

/// The options that decide whether two sockets may share a port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub reuseaddr: bool,
    /// Raw `sk_reuse`: 1 is SO_REUSEADDR, 2 is the kernel forcing reuse (SK_FORCE_REUSE).
    pub reuse_raw: u8,
    pub reuseport: bool,
    pub v6only: bool,
    pub freebind: bool,
    pub transparent: bool,
    pub bind_address_no_port: bool,
    /// SO_BINDTODEVICE ifindex; 0 when unbound.
    pub bound_dev_if: u32,
    /// Interface name for `bound_dev_if`, looked up in the socket's network namespace.
    pub device: Option<String>,
}

impl Options {
    pub fn from_bits(bits: u16, reuse_raw: u8, bound_dev_if: u32) -> Self {
        Options {
            reuseaddr: bits & opt::REUSEADDR != 0,
            reuse_raw,
            reuseport: bits & opt::REUSEPORT != 0,
            v6only: bits & opt::V6ONLY != 0,
            freebind: bits & opt::FREEBIND != 0,
            transparent: bits & opt::TRANSPARENT != 0,
            bind_address_no_port: bits & opt::BIND_ADDRESS_NO_PORT != 0,
            bound_dev_if,
            device: None,
        }
    }

    /// Short words for a terminal, e.g. "reuseaddr,v6only,dev=eth0".
    pub fn words(&self, family: Family) -> Vec<String> {
        let mut w = Vec::new();
        if self.reuseaddr {
            w.push("reuseaddr".to_string());
        }
        if self.reuseport {
            w.push("reuseport".to_string());
        }
        if family == Family::Ipv6 {
            w.push(if self.v6only { "v6only" } else { "dual-stack" }.to_string());
        }
        if self.freebind {
            w.push("freebind".to_string());
        }
        if self.transparent {
            w.push("transparent".to_string());
        }
        if self.bind_address_no_port {
            w.push("bind_address_no_port".to_string());
        }
        if self.bound_dev_if != 0 {
            w.push(format!("dev={}", self.device_name()));
        }
        w
    }

    pub fn device_name(&self) -> String {
        self.device
            .clone()
            .unwrap_or_else(|| format!("if{}", self.bound_dev_if))
    }
}

/// One socket: the one a call was made on, or one already holding a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketView {
    pub family: Family,
    pub proto: Proto,
    /// Local address (0.0.0.0 / :: when bound to the wildcard).
    pub addr: IpAddr,
    pub port: u16,
    pub state: State,
    pub options: Options,
    /// `sk_uid`; None where the kernel keeps none (TIME_WAIT).
    pub uid: Option<u32>,
    pub netns: u32,
    /// Socket inode; 0 when no file owns it (TIME_WAIT, orphaned).
    pub ino: u64,
    /// Remote end, for connected sockets.
    pub peer: Option<(IpAddr, u16)>,
    /// For TIME_WAIT: how long until the kernel drops it.
    pub tw_left_ms: Option<u64>,
}

impl SocketView {
    /// `0.0.0.0:8080`, `[::]:8080`, `[fe80::1%2]:80`.
    pub fn endpoint(&self) -> String {
        endpoint(self.addr, self.port)
    }

    /// The state's stable name; a socket in CLOSE without a port is just "CLOSE", not bound.
    pub fn state_name(&self) -> &'static str {
        if self.state == State::CLOSE && self.port == 0 {
            "CLOSE"
        } else {
            self.state.name(self.proto)
        }
    }

    /// "tcp4", "udp6": the family of the socket, as ss prints it.
    pub fn proto_family(&self) -> String {
        format!(
            "{}{}",
            self.proto.name(),
            if self.family == Family::Ipv6 {
                "6"
            } else {
                "4"
            }
        )
    }
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// The fd number in that process.
    pub fd: i32,
    /// The cgroup it runs in and what that says (unit, container, pod); None when not read.
    pub workload: Option<Workload>,
    /// For a docker-proxy: where it forwards, and the container found there.
    pub forward: Option<Box<Forward>>,
}

impl Owner {
    /// Whether this owner is systemd: pid 1, or a process whose comm starts with `systemd`.
    /// A pure word about the owner, here so that the rules ([`crate::explain`]) and the fact
    /// finder (which reads the unit files only for such a holder) share it without either
    /// importing the other or the unit-file reader.
    pub fn is_systemd(&self) -> bool {
        self.pid == 1 || self.comm.starts_with("systemd")
    }
}

/// Where portwatch learned about a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// fexit on inet_bind_conflict: the very socket the kernel compared.
    KernelConflictCheck,
    /// The port's owners, read from the kernel's bind table or UDP hash at the call itself.
    KernelAtCall,
    /// The kernel's TCP/UDP socket tables (iter/tcp, iter/udp).
    SocketTable,
    /// A process's fd table: sockets that are bound but in no table (not listening).
    FdTable,
}

impl Source {
    /// The stable name, as JSON prints it.
    pub fn name(self) -> &'static str {
        match self {
            Source::KernelConflictCheck => "kernel-conflict-check",
            Source::KernelAtCall => "kernel-at-call",
            Source::SocketTable => "socket-table",
            Source::FdTable => "fd-table",
        }
    }
}

/// A socket on some port, and the processes that hold it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub socket: SocketView,
    pub owners: Vec<Owner>,
    pub source: Source,
    /// What is known of its owner beyond `owners` (who hold it now).
    pub status: OwnerStatus,
}

/// Who owns a holder, as far as portwatch could tell: never guessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerStatus {
    /// `owners` hold it now.
    Live,
    /// A socket the kernel opened for itself (a tunnel, a kernel service): no process.
    /// `bound_by`: the task that made the kernel bind it, when portwatch saw that bind (fexit).
    InKernel { bound_by: Option<Owner> },
    /// No process by nature: a TIME_WAIT connection, or an orphaned socket the kernel finishes.
    NoProcess,
    /// No process holds it any more; portwatch saw this process bind it.
    Closed { bound_by: Owner },
    /// No process holds it that portwatch can see, and portwatch did not see it bound.
    Unknown { why: &'static str },
}

impl OwnerStatus {
    /// The stable name, as JSON prints it.
    pub fn name(&self) -> &'static str {
        match self {
            OwnerStatus::Live => "live",
            OwnerStatus::InKernel { .. } => "in-kernel",
            OwnerStatus::NoProcess => "no-process",
            OwnerStatus::Closed { .. } => "closed",
            OwnerStatus::Unknown { .. } => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_states_like_ss() {
        assert_eq!(State(7).name(Proto::Tcp), "BOUND");
        assert_eq!(State(7).name(Proto::Udp), "UNCONN");
        assert_eq!(State(10).describe(Proto::Tcp), "listening");
    }

    /// A raw socket is raw whatever protocol it names (IPPROTO_TCP included), and portless.
    #[test]
    fn raw_sockets_are_raw_and_have_no_ports() {
        for protocol in [1, 6, 17, 255] {
            let p = Proto::from_raw(protocol, 3);
            assert_eq!(p, Proto::Raw(protocol));
            assert_eq!(p.name(), "raw");
            assert!(!p.has_ports());
        }
        assert!(Proto::from_raw(6, 1).has_ports());
    }

    #[test]
    fn systemd_owners() {
        let owner = |pid: u32, comm: &str| Owner {
            pid,
            comm: comm.into(),
            fd: 3,
            workload: None,
            forward: None,
        };
        assert!(owner(1, "init").is_systemd());
        assert!(owner(812, "systemd").is_systemd());
        assert!(!owner(812, "nginx").is_systemd());
    }

    #[test]
    fn port_spaces() {
        assert!(Proto::Tcp.shares_ports_with(Proto::Mptcp));
        assert!(!Proto::Tcp.shares_ports_with(Proto::Udp));
    }
}
