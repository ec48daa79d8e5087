//! The facts explain reasons from, besides the call itself: who else holds the port, the
//! namespace's sysctls and addresses, the caller's capabilities. Pure data here;
//! [`finder`] gathers them (the I/O half), [`crate::explain`] reasons over them.

pub mod finder;

use std::net::IpAddr;

pub use finder::{FactFinder, address_is_local};

use crate::sockets::Holder;

/// The namespace's settings that change the rules. Read, never assumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub ip_local_port_range: Option<(u16, u16)>,
    pub ip_unprivileged_port_start: Option<u32>,
    pub ip_nonlocal_bind: Option<bool>,
    pub ipv6_ip_nonlocal_bind: Option<bool>,
    pub bindv6only: Option<bool>,
    pub ip_autobind_reuse: Option<bool>,
}

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
    /// Names of BPF programs attached to the caller's cgroup for bind (for EPERM).
    pub cgroup_bind_programs: Vec<String>,
}
