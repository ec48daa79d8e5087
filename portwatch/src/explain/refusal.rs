//! The sentences for the other errors: privileged ports, addresses that are not local,
//! invalid arguments, families, BPF and LSM refusals, missing devices.

use std::net::IpAddr;

use portwatch_common::{AF_INET, AF_INET6};

use super::{Attempt, Rule, Verdict, phrase::err_name};
use crate::{
    errno,
    event::Call,
    facts::Facts,
    sockets::{Family, Proto, State},
};

pub fn eacces(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let start = f.sysctls.ip_unprivileged_port_start;
    match start {
        Some(s) if u32::from(at.port) < s && at.port != 0 => {
            let cap = match f.cap_net_bind_service {
                Some(false) => format!("pid {} lacks CAP_NET_BIND_SERVICE", at.ev.pid),
                Some(true) => format!(
                    "pid {} has CAP_NET_BIND_SERVICE, but not in the user namespace that owns \
                     this network namespace",
                    at.ev.pid
                ),
                None => format!("pid {} did not have CAP_NET_BIND_SERVICE", at.ev.pid),
            };
            let mut v = Verdict::new(
                false,
                Rule::PrivilegedPort,
                format!(
                    "{e}: port {} is below net.ipv4.ip_unprivileged_port_start ({s}), and {cap} \
                     (uid {}).",
                    at.port, at.ev.uid
                ),
            );
            v.fix = Some(format!(
                "use a port >= {s}, grant the capability (setcap cap_net_bind_service=+ep BINARY, \
                 or systemd AmbientCapabilities=CAP_NET_BIND_SERVICE), or lower \
                 net.ipv4.ip_unprivileged_port_start"
            ));
            v
        }
        _ => Verdict::new(
            false,
            Rule::EaccesLsm,
            format!(
                "{e}: port {} is not privileged here (ip_unprivileged_port_start {}), so a \
                 security module (SELinux, AppArmor) or a BPF program refused it.",
                at.port,
                start.map_or("unknown".to_string(), |s| s.to_string())
            ),
        ),
    }
}

pub fn eaddrnotavail(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let addr = match at.addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(at.addr),
        a => a,
    };
    let nonlocal = if addr.is_ipv4() {
        "net.ipv4.ip_nonlocal_bind"
    } else {
        "net.ipv6.ip_nonlocal_bind"
    };
    let mut v = Verdict::new(
        false,
        Rule::AddressNotLocal,
        if f.addr_is_local == Some(true) {
            format!(
                "{e}: {addr} was not an address of this network namespace when bind() ran (it is \
                 now: it was added since)."
            )
        } else {
            format!(
                "{e}: {addr} is not an address of any interface in this network namespace, and \
                 neither IP_FREEBIND, IP_TRANSPARENT nor {nonlocal} is set."
            )
        },
    );
    if let Some(l) = &f.local_addrs {
        let list: Vec<String> = l.iter().map(IpAddr::to_string).take(8).collect();
        v.details
            .push(format!("local addresses here: {}", list.join(", ")));
    }
    v.fix = Some(format!(
        "bind an address the host has (see `ip addr`) or the wildcard; if the address comes \
         later (VRRP, DHCP), set IP_FREEBIND on the socket or {nonlocal}=1"
    ));
    v
}

pub fn einval(at: &Attempt) -> Verdict {
    let e = err_name(at);
    let sock = at.sock;
    if at.ev.call == Call::Listen {
        return Verdict::new(
            false,
            Rule::ListenInvalid,
            format!(
                "{e}: listen() needs a TCP socket that is not connected ({} is {}).",
                sock.proto_family(),
                sock.state.describe(sock.proto)
            ),
        );
    }
    let v6 = match at.addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    };
    let mut v = if sock.port != 0 || sock.state != State::CLOSE {
        let mut v = Verdict::new(
            false,
            Rule::AlreadyBound,
            format!(
                "{e}: this socket is already bound to {} (by an earlier bind(), or implicitly \
                 by connect() or listen()); a socket binds once.",
                sock.endpoint()
            ),
        );
        v.fix = Some("create a new socket for the new address".to_string());
        v
    } else if let (Some(a), true) = (v6, sock.options.v6only) {
        if a.to_ipv4_mapped().is_some() {
            let mut v = Verdict::new(
                false,
                Rule::V4MappedOnV6only,
                format!(
                    "{e}: {a} is an IPv4 address in IPv6 clothing, and this socket is IPv6-only \
                     (IPV6_V6ONLY=1)."
                ),
            );
            v.fix = Some(
                "use an AF_INET socket for IPv4, or clear IPV6_V6ONLY before bind()".to_string(),
            );
            v
        } else {
            einval_v6(at, a)
        }
    } else if let Some(a) = v6 {
        einval_v6(at, a)
    } else {
        Verdict::new(
            false,
            Rule::EinvalOther,
            format!("{e}: the kernel rejected the arguments (address length or family)."),
        )
    };
    if v.rule == Rule::EinvalOther && sock.family == Family::Ipv6 {
        v.details
            .push("IPv6 sockets need a full sockaddr_in6 (28 bytes)".to_string());
    }
    v
}

fn einval_v6(at: &Attempt, a: std::net::Ipv6Addr) -> Verdict {
    let e = err_name(at);
    if a.is_multicast() && at.side.proto == Proto::Tcp {
        let mut v = Verdict::new(
            false,
            Rule::MulticastOnTcp,
            format!("{e}: {a} is a multicast address, and TCP cannot bind one."),
        );
        v.fix = Some("use UDP for multicast".to_string());
        return v;
    }
    if a.is_unicast_link_local() {
        let mut v = Verdict::new(
            false,
            Rule::LinkLocalNeedsScope,
            format!(
                "{e}: {a} is link-local, so it exists once per interface; the kernel needs to \
                 know which (no sin6_scope_id, no SO_BINDTODEVICE)."
            ),
        );
        v.fix = Some(format!(
            "give the interface: bind [{a}%eth0]:PORT (sin6_scope_id = its index)"
        ));
        return v;
    }
    Verdict::new(
        false,
        Rule::EinvalOther,
        format!("{e}: the kernel rejected the arguments (address length or family)."),
    )
}

pub fn eafnosupport(at: &Attempt) -> Verdict {
    let mut v = Verdict::new(
        false,
        Rule::FamilyMismatch,
        format!(
            "{}: the address family does not match the socket: {} socket, {} address.",
            err_name(at),
            if at.sock.family == Family::Ipv6 {
                "IPv6"
            } else {
                "IPv4"
            },
            match at.ev.requested.as_ref().map(|r| r.sa_family) {
                Some(AF_INET) => "AF_INET".to_string(),
                Some(AF_INET6) => "AF_INET6".to_string(),
                Some(n) => format!("family {n}"),
                None => "unknown".to_string(),
            }
        ),
    );
    v.fix = Some("create the socket with the address's family".to_string());
    v
}

pub fn eperm(at: &Attempt, f: &Facts) -> Verdict {
    let mut v = Verdict::new(
        false,
        Rule::BpfOrLsmDenied,
        format!(
            "{}: not a port conflict: a BPF cgroup program (bind4/bind6) or a security module \
             refused this bind.",
            err_name(at)
        ),
    );
    if !f.cgroup_bind_programs.is_empty() {
        v.details.push(format!(
            "BPF programs attached to the caller's cgroup: {}",
            f.cgroup_bind_programs.join(", ")
        ));
    }
    v.fix = Some("check `bpftool cgroup tree` and the LSM's logs (audit, dmesg)".to_string());
    v
}

pub fn enodev(at: &Attempt) -> Verdict {
    Verdict::new(
        false,
        Rule::NoSuchDevice,
        format!(
            "{}: the interface given by sin6_scope_id or SO_BINDTODEVICE (index {}) does not \
             exist in this network namespace.",
            err_name(at),
            at.sock.options.bound_dev_if
        ),
    )
}

/// An errno no rule covers: said as such, with the C library's words for it.
pub fn unexplained(e: i32) -> Verdict {
    Verdict::new(
        false,
        Rule::Unexplained,
        format!(
            "{}: {}; portwatch has no rule for this error.",
            errno::name(e),
            errno::describe(e)
        ),
    )
}
