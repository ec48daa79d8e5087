//! What portwatch adds about the owners of a port's holders, the same way for every command:
//! each owner's workload (its cgroup), where a docker-proxy forwards and whether that
//! container is there, and the `.socket` units naming the port when systemd holds it.

use super::FactFinder;
use crate::{
    docker_proxy::{self, DockerProxy, Forward},
    netns::Namespaces,
    procfs,
    socket_units::{self, SocketUnit},
    sockets::{Holder, Owner},
};

impl FactFinder {
    /// Adds what portwatch shows about the owners of `holders`, in the same order for every
    /// command: each owner's workload (its cgroup), then, for a docker-proxy, where it
    /// forwards and whether that container is there.
    pub fn enrich(&mut self, ns: &mut Namespaces, holders: &mut [Holder]) {
        crate::cgroup::name_owners(holders.iter_mut());
        self.follow_proxies(ns, holders);
    }

    /// For every owner that is a docker-proxy: where its arguments say it forwards, which
    /// network namespace has that container address now (none: the container is gone), and the
    /// workload of a process in it.
    fn follow_proxies<'a>(
        &mut self,
        ns: &mut Namespaces,
        holders: impl IntoIterator<Item = &'a mut Holder>,
    ) {
        for h in holders {
            for o in &mut h.owners {
                if o.comm != docker_proxy::COMM {
                    continue;
                }
                let Some(proxy) = DockerProxy::parse(&procfs::cmdline(o.pid)) else {
                    continue;
                };
                let container_netns = ns.discover().into_iter().find(|&n| {
                    self.netns_facts(ns, n)
                        .1
                        .is_some_and(|addrs| addrs.contains(&proxy.container_ip))
                });
                let proxy_pid = o.pid;
                let container = container_netns.and_then(|n| {
                    procfs::pids()
                        .filter(|&p| p != proxy_pid && procfs::netns_of(p) == Some(u64::from(n)))
                        .find_map(|p| crate::cgroup::workload_of_pid(p).filter(|w| !w.is_root()))
                });
                o.forward = Some(Box::new(Forward {
                    proxy,
                    container_netns,
                    container,
                }));
            }
        }
    }
}

/// The socket units naming `port`, when systemd owns one of `holders` (socket activation).
pub fn socket_units_for(holders: &[Holder], port: u16) -> Option<Vec<SocketUnit>> {
    holders
        .iter()
        .flat_map(|h| &h.owners)
        .any(Owner::is_systemd)
        .then(|| socket_units::find(port))
}
