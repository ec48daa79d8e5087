//! How full the ephemeral range is in one network namespace, now: toward each busy TCP
//! destination, and for UDP (whose ports are not shared per destination). For `portwatch
//! ports` and the `portwatch_ephemeral_ports_used_ratio` gauge, so that "Cannot assign
//! requested address" can be seen coming. One filtered read of the range's sockets per
//! namespace ([`super::range_sockets`]).

use aya::Ebpf;

use super::{
    finder::FactFinder,
    port_use::{self, DestUse, PortOwner, Range, SpaceUse},
    range_sockets::{self, Peers},
};
use crate::{
    netns::Namespaces,
    sockets::{Holder, OwnerStatus, Proto, Source},
    tables,
};

/// One namespace's range use.
#[derive(Clone, Debug)]
pub struct NetnsPorts {
    pub netns: u32,
    pub range: Range,
    /// TCP destinations, most blocked first.
    pub tcp: Vec<DestUse>,
    /// TCP range ports held by bound or listening sockets (blocked toward every destination).
    pub tcp_space: SpaceUse,
    pub udp: SpaceUse,
    pub udp_owners: Vec<PortOwner>,
}

impl NetnsPorts {
    /// The worst ratio of ports connect() cannot take toward one destination to usable ports
    /// (TCP; bound ports alone when no destination is busy), and of used to usable ports
    /// (UDP). None when the range has no usable port.
    pub fn worst_ratio(&self, proto: Proto) -> Option<f64> {
        let usable = self.range.usable();
        if usable == 0 {
            return None;
        }
        let worst = if proto == Proto::Tcp {
            self.tcp
                .first()
                .map_or(self.tcp_space.by_binds, |d| d.blocked)
        } else {
            self.udp.used
        };
        Some(f64::from(worst) / f64::from(usable))
    }
}

impl FactFinder {
    /// The range use of namespace `netns`, with the `top` busiest TCP destinations and the top
    /// `owners` processes of each; or why it could not be read.
    pub fn netns_ports(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        top: usize,
        owners: usize,
    ) -> Result<NetnsPorts, String> {
        let sysctls = self.netns_facts(ns, netns).0;
        let range = Range::of(&sysctls).ok_or_else(|| {
            "net.ipv4.ip_local_port_range or ip_local_reserved_ports could not be read there \
             (the namespace is gone, or portwatch cannot enter it)"
                .to_string()
        })?;
        let reserved = |p: u16| sysctls.reserved(p) == Some(true);
        let all = self
            .range_sockets(ebpf, ns, netns, range, Peers::All)
            .map_err(|e| format!("the socket table could not be read: {e}"))?;
        let mut out = count(netns, all, range, reserved, top, owners);
        for o in out
            .udp_owners
            .iter_mut()
            .chain(out.tcp.iter_mut().flat_map(|d| d.owners.iter_mut()))
        {
            super::connect::name_owner(o);
        }
        Ok(out)
    }

    /// [`FactFinder::netns_ports`] for the gauge: the kernel's socket tables alone (their
    /// sockets on range ports), no owner looked up and no fd table read. Bound sockets that
    /// are not listening are in no table, so their ports are not counted here.
    pub fn netns_ratios(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
    ) -> Result<NetnsPorts, String> {
        let sysctls = self.netns_facts(ns, netns).0;
        let range = Range::of(&sysctls)
            .ok_or("net.ipv4.ip_local_port_range or ip_local_reserved_ports could not be read")?;
        let all: Vec<Holder> =
            tables::read(ebpf, ns, netns, &range_sockets::filter(range, &Peers::All))
                .map_err(|e| format!("the socket table could not be read: {e}"))?
                .into_iter()
                .map(|socket| Holder {
                    socket,
                    owners: Vec::new(),
                    source: Source::SocketTable,
                    status: OwnerStatus::Unknown {
                        why: "not looked up for the gauge",
                    },
                })
                .collect();
        let reserved = |p: u16| sysctls.reserved(p) == Some(true);
        Ok(count(netns, &all, range, reserved, 1, 0))
    }
}

/// The range use of one namespace's sockets `all`.
fn count(
    netns: u32,
    all: &[Holder],
    range: Range,
    reserved: impl Fn(u16) -> bool + Copy,
    top: usize,
    owners: usize,
) -> NetnsPorts {
    NetnsPorts {
        netns,
        range,
        tcp: port_use::busy_destinations(all, range, reserved, top, owners),
        tcp_space: port_use::space_use(all, Proto::Tcp, range),
        udp: port_use::space_use(all, Proto::Udp, range),
        udp_owners: port_use::space_owners(all, Proto::Udp, range, reserved, owners),
    }
}
