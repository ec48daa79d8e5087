//! The rules an explanation can name, each with its stable id: the one definition that the
//! engine, the JSON output, the tests and the README's rule table all go by.

use std::fmt;

/// Declares the rules once: the enum, [`Rule::ALL`] and [`Rule::id`] come from one list, so
/// none can be left out of the others.
macro_rules! rules {
    ($($(#[doc = $doc:literal])* $variant:ident => $id:literal,)+) => {
        /// A kernel rule (or the lack of one) that decided a call's result.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Rule {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Rule {
            /// Every rule, in the README's order.
            #[allow(dead_code, reason = "the tests hold the README's rule table to it")]
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)+];

            /// The stable id, as JSON prints it and the README lists it.
            pub const fn id(self) -> &'static str {
                match self {
                    $(Rule::$variant => $id,)+
                }
            }
        }
    };
}

rules! {
    // EADDRINUSE: how the addresses overlap (when no option was there to help).
    /// The holder is on exactly the address and port asked for.
    SameAddress => "same-address",
    /// The holder is on a wildcard, which covers the specific address asked for.
    WildcardCoversSpecific => "wildcard-covers-specific",
    /// The holder is on a specific address, which the wildcard asked for would cover.
    SpecificBlocksWildcard => "specific-blocks-wildcard",
    /// The holder is a dual-stack [::], which covers IPv4.
    DualStackCoversIpv4 => "dual-stack-covers-ipv4",
    /// A dual-stack [::] bind next to an IPv4 holder.
    Ipv4BlocksDualStack => "ipv4-blocks-dual-stack",
    /// ::ffff:a.b.c.d is the same IPv4 address as a.b.c.d.
    V4Mapped => "v4-mapped",
    // EADDRINUSE: the sharing option that did not help.
    /// SO_REUSEADDR on one side only.
    ReuseaddrNeedsBoth => "reuseaddr-needs-both",
    /// SO_REUSEADDR on both, but the holder listens.
    ReuseaddrVsListen => "reuseaddr-vs-listen",
    /// listen() after both bound with SO_REUSEADDR: only one may listen.
    ListenConflict => "listen-conflict",
    /// A TIME_WAIT connection holds the port.
    TimeWait => "time-wait",
    /// A connection holds the port as its local port, in the ephemeral range: the kernel
    /// handed it to an outgoing connection.
    OutboundTookPort => "outbound-took-port",
    /// SO_REUSEPORT on one side only.
    ReuseportNeedsBoth => "reuseport-needs-both",
    /// SO_REUSEPORT on both, different users.
    ReuseportUidMismatch => "reuseport-uid-mismatch",
    /// One socket bound to a device, the other to none.
    BindtodeviceUnbound => "bindtodevice-unbound",
    // EADDRINUSE without a holder to blame.
    /// Port 0 and no free port in the ephemeral range.
    EphemeralExhausted => "ephemeral-exhausted",
    /// listen() on an unbound socket and no free port in the ephemeral range.
    ListenEphemeralExhausted => "listen-ephemeral-exhausted",
    /// The socket in the way was not found.
    HolderNotFound => "holder-not-found",
    // connect(): the local port.
    /// TCP connect(): no local port free toward the destination.
    ConnectPortsExhausted => "connect-ports-exhausted",
    /// connect() on a socket bound to a fixed port: its 4-tuple to the destination exists.
    ConnectTupleInUse => "connect-tuple-in-use",
    /// UDP connect(): autobind found no free UDP port.
    ConnectUdpPortsExhausted => "connect-udp-ports-exhausted",
    /// connect() failed for want of a port, but the numbers read after it do not show why.
    ConnectUnexplained => "connect-unexplained",
    // The other errors.
    /// EACCES: a privileged port without CAP_NET_BIND_SERVICE.
    PrivilegedPort => "privileged-port",
    /// EACCES on an unprivileged port: an LSM or BPF program refused.
    EaccesLsm => "eacces-lsm",
    /// EADDRNOTAVAIL: not an address of the namespace.
    AddressNotLocal => "address-not-local",
    /// EINVAL: the socket is bound already.
    AlreadyBound => "already-bound",
    /// EINVAL: a v4-mapped address on an IPV6_V6ONLY socket.
    V4MappedOnV6only => "v4-mapped-on-v6only",
    /// EINVAL: TCP bind to an IPv6 multicast address.
    MulticastOnTcp => "multicast-on-tcp",
    /// EINVAL: IPv6 link-local address without an interface.
    LinkLocalNeedsScope => "link-local-needs-scope",
    /// EAFNOSUPPORT.
    FamilyMismatch => "family-mismatch",
    /// EPERM: a cgroup bind program or an LSM refused.
    BpfOrLsmDenied => "bpf-or-lsm-denied",
    /// ENODEV: the scope id or bound device does not exist.
    NoSuchDevice => "no-such-device",
    /// EINVAL from listen().
    ListenInvalid => "listen-invalid",
    /// EINVAL for another reason.
    EinvalOther => "einval-other",
    /// An errno portwatch has no rule for.
    Unexplained => "unexplained",
    // Successes.
    /// Nothing else holds the port.
    OkPortFree => "ok-port-free",
    /// Port 0: the kernel picked a port.
    OkEphemeral => "ok-ephemeral",
    /// listen() succeeded, nothing shared.
    OkListen => "ok-listen",
    /// Bound; the holders were not looked up.
    Ok => "ok",
    /// Port 0 got a port held by SO_REUSEADDR sockets (net.ipv4.ip_autobind_reuse=1).
    OkAutobindReuse => "ok-autobind-reuse",
    /// TCP and UDP have separate port spaces.
    OkSeparatePortSpaces => "ok-separate-port-spaces",
    /// Different specific addresses coexist.
    OkDifferentAddresses => "ok-different-addresses",
    /// An IPv6-only socket leaves IPv4 free.
    OkV6only => "ok-v6only",
    /// An IPv6-only socket leaves IPv4 free, by default (net.ipv6.bindv6only=1).
    OkV6onlyByDefault => "ok-v6only-by-default",
    /// Both SO_REUSEADDR, holder not listening.
    OkReuseaddr => "ok-reuseaddr",
    /// Both UDP sockets SO_REUSEADDR.
    OkUdpReuseaddr => "ok-udp-reuseaddr",
    /// Both SO_REUSEPORT, same user.
    OkReuseport => "ok-reuseport",
    /// Got past a TIME_WAIT connection: both have SO_REUSEADDR.
    OkTimeWaitReuse => "ok-time-wait-reuse",
    /// Bound to different devices.
    OkDifferentDevices => "ok-different-devices",
    /// The same port in another network namespace.
    OkDifferentNetns => "ok-different-netns",
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Rule;

    /// The ids in the first column of the README's rule table (a cell may list several).
    fn readme_rule_ids() -> Vec<String> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Rules\n")
            .nth(1)
            .expect("README has a Rules section");
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .flat_map(|l| {
                let cell = l.split(" |").next().unwrap_or_default();
                cell.split(", ")
                    .map(|id| id.trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn readme_lists_exactly_the_rules() {
        let readme = readme_rule_ids();
        let listed: BTreeSet<&str> = readme.iter().map(String::as_str).collect();
        assert_eq!(
            listed.len(),
            readme.len(),
            "an id is listed twice: {readme:?}"
        );
        let defined: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(
            listed.difference(&defined).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "in the README but not in Rule::ALL"
        );
        assert_eq!(
            defined.difference(&listed).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "in Rule::ALL but not in the README"
        );
    }

    #[test]
    fn ids_are_unique() {
        let ids: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), Rule::ALL.len());
    }
}
