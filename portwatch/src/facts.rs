//! The facts explain reasons from, besides the call itself: who else holds the port, the
//! namespace's sysctls and addresses, the caller's capabilities. Pure data here;
//! [`finder`] gathers them (the I/O half), [`crate::explain`] reasons over them.

mod binders;
mod connect;
pub mod enrich;
pub mod finder;
pub mod holders;
mod plan;
pub mod port_use;
pub mod ports;
mod range_sockets;

use std::net::IpAddr;

pub use finder::FactFinder;

/// The namespace's sysctls and its address probe are read in the namespace, by `netns`; they
/// are facts like the rest.
pub use crate::netns::{probe::address_is_local, sysctls::Sysctls};
use crate::{socket_units::SocketUnit, sockets::Holder};

/// Everything explain may use besides the event itself.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Other sockets on the call's port in its namespace (TCP and UDP), if they were looked up.
    pub holders: Option<Vec<Holder>>,
    /// Why holders could not be looked up, when they could not (said in the explanation).
    pub holders_unavailable: Option<String>,
    /// Holders came from the kernel at the call, and the list is cut short: "nothing else"
    /// cannot be said.
    pub holders_incomplete: bool,
    /// Sockets on the same port in other namespaces (for "different netns never conflict").
    pub other_netns: Vec<Holder>,
    pub sysctls: Sysctls,
    /// The namespace's interface addresses (shown for EADDRNOTAVAIL).
    pub local_addrs: Option<Vec<IpAddr>>,
    /// Whether the kernel takes the call's address as local now (a probe bind in the
    /// namespace; this also covers 127.0.0.0/8 and AnyIP routes, which no interface lists).
    pub addr_is_local: Option<bool>,
    /// Whether the calling process has CAP_NET_BIND_SERVICE (None: it exited).
    pub cap_net_bind_service: Option<bool>,
    /// Distinct ports in the ephemeral range held by TCP or UDP sockets (for port 0 failures).
    pub ephemeral_ports_in_use: Option<u32>,
    /// The `.socket` units that name the call's port, looked up when systemd owns a holder
    /// (socket activation); None when not looked up.
    pub socket_units: Option<Vec<SocketUnit>>,
    /// Names of BPF programs attached to the caller's cgroup for bind (for EPERM).
    pub cgroup_bind_programs: Vec<String>,
    /// How full the ephemeral range is (a failed connect(), or bind() to port 0): the
    /// numbers, or why they could not be read. None when not looked at.
    pub range_use: Option<Result<RangeUse, String>>,
}

/// The ephemeral range's use in the call's namespace and port space, read after the call
/// (the numbers may have moved since: the sentences say "now").
#[derive(Clone, Debug)]
pub enum RangeUse {
    /// A TCP connect(): the range's ports toward its destination. Only the sockets that count
    /// toward it were read, so nothing is said of the rest of the range.
    Toward(port_use::DestUse),
    /// The whole port space (bind() to port 0, a UDP connect(), a TCP connect() whose
    /// destination is unknown), and the processes holding most of its ports.
    Space {
        space: port_use::SpaceUse,
        owners: Vec<port_use::PortOwner>,
    },
}

impl RangeUse {
    /// The whole port space's use, when that was read.
    pub fn space(&self) -> Option<&port_use::SpaceUse> {
        match self {
            RangeUse::Space { space, .. } => Some(space),
            RangeUse::Toward(_) => None,
        }
    }
}
