//! The facts of a connect() that failed for want of a local port, and the range numbers of a
//! failed bind() to port 0: how full the ephemeral range is in the caller's namespace, toward
//! the call's destination, and who holds it. Read from the namespace's sockets on range ports
//! once per batch ([`super::range_sockets`]), counted per event by [`super::port_use`].

use aya::Ebpf;

use super::{
    Facts, RangeUse, Sysctls, address_is_local,
    finder::FactFinder,
    plan::walked,
    port_use::{self, PortOwner, Range},
    range_sockets::Peers,
};
use crate::{
    event::Event,
    netns::Namespaces,
    sockets::{Proto, SocketView},
};

/// How many processes an explanation names.
pub const TOP_OWNERS: usize = 3;

impl FactFinder {
    /// Reads now, or notes for the batch's one read of the range, what
    /// [`FactFinder::connect_facts`] will need.
    pub(super) fn prefetch_connect(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        ev: &Event,
        sock: &SocketView,
    ) {
        if let Some(peers) = range_peers(ev, sock) {
            self.want_range(sock.netns, peers);
        }
        if sock.port != 0 {
            let _ = self.cached_holders(ebpf, ns, sock.netns, Some(sock.port));
        }
    }

    /// The facts of a failed connect() on `sock`: the source address's state, the socket that
    /// has the same 4-tuple (a socket bound to a fixed port), and the range numbers.
    pub(super) fn connect_facts(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        ev: &Event,
        sock: &SocketView,
        facts: &mut Facts,
    ) {
        let netns = sock.netns;
        if !sock.addr.is_unspecified() {
            facts.local_addrs = self.netns_facts(ns, netns).1;
            facts.addr_is_local = address_is_local(ns, netns, sock.addr, 0);
        }
        if sock.port != 0 {
            // The port's owners as the kernel had them at the call, else as they are now.
            if walked(ev) {
                self.kernel_facts(ebpf, ns, ev, facts);
            } else {
                match self.holders(ebpf, ns, netns, Some(sock.port)) {
                    Ok(h) => facts.holders = Some(h),
                    Err(e) => facts.holders_unavailable = Some(e.to_string()),
                }
            }
            crate::cgroup::name_owners(facts.holders.iter_mut().flatten());
        }
        if range_peers(ev, sock).is_some() {
            let dest = ev.requested.as_ref().map(|r| (r.addr, r.port));
            facts.range_use = Some(self.range_use(ebpf, ns, sock, &facts.sysctls, dest));
        }
    }

    /// How full the range is in `sock`'s namespace and port space, and (TCP, with `dest`)
    /// toward `dest` from `sock`'s address; or why that could not be read.
    pub(super) fn range_use(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        sock: &SocketView,
        sysctls: &Sysctls,
        dest: Option<(std::net::IpAddr, u16)>,
    ) -> Result<RangeUse, String> {
        let range = Range::of(sysctls).ok_or_else(|| {
            format!(
                "net.ipv4.ip_local_port_range or ip_local_reserved_ports could not be read in \
                 network namespace {} (it is gone, or portwatch cannot enter it)",
                sock.netns
            )
        })?;
        let dest = dest.filter(|_| sock.proto.shares_ports_with(Proto::Tcp));
        let peers = Peers::toward(dest.map(|d| d.1));
        let all = self
            .range_sockets(ebpf, ns, sock.netns, range, peers)
            .map_err(|e| format!("the socket table could not be read: {e}"))?;
        let reserved = |p: u16| sysctls.reserved(p) == Some(true);
        let mut out = match dest {
            Some(d) => RangeUse::Toward(port_use::dest_use(
                all,
                range,
                reserved,
                d,
                Some(sock.addr),
                TOP_OWNERS,
            )),
            None => RangeUse::Space {
                space: port_use::space_use(all, sock.proto, range),
                owners: port_use::space_owners(all, sock.proto, range, reserved, TOP_OWNERS),
            },
        };
        let owners = match &mut out {
            RangeUse::Toward(d) => &mut d.owners,
            RangeUse::Space { owners, .. } => owners,
        };
        owners.iter_mut().for_each(name_owner);
        Ok(out)
    }
}

/// The owner's workload, read from its cgroup (a handful per explanation).
pub(super) fn name_owner(o: &mut PortOwner) {
    if o.workload.is_none() {
        o.workload = crate::cgroup::workload_of_pid(o.pid);
    }
}

/// A connect() with no local port yet (the kernel had to pick one) is explained by the
/// range's numbers, for which it needs the range's sockets with these peers: a TCP one's
/// connections toward its destination port, a UDP one's every socket. One on a socket bound to
/// a fixed port is explained by the 4-tuple that exists (None: no range read).
fn range_peers(ev: &Event, sock: &SocketView) -> Option<Peers> {
    let tcp_dest = ev
        .requested
        .as_ref()
        .filter(|_| sock.proto.shares_ports_with(Proto::Tcp))
        .map(|r| r.port);
    (sock.port == 0).then(|| Peers::toward(tcp_dest))
}
