//! Gathers the facts explain needs: who holds the port (socket tables, fd tables, the
//! kernel's own conflict report), the namespace's sysctls and addresses, the caller's
//! capabilities. This is the I/O half; [`crate::explain`] is the pure half.
//!
//! Lookups are cached for one drain of the ring buffer: a burst of binds on one port costs one
//! table walk, not one per bind. The concerns live next to this file: which reads an event
//! needs ([`super::plan`]), holder lookup and its OS seam ([`super::holders`]), who bound what
//! ([`super::binders`]), what is added about owners ([`super::enrich`]), connect() and the
//! ephemeral range ([`super::connect`], [`super::ports`]).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use aya::Ebpf;

use super::{
    Facts, RangeUse, Sysctls, address_is_local,
    binders::{Binder, Binders},
    enrich::socket_units_for,
    holders::{HoldersError, Known},
    plan::{self, BoundPorts, TableLookup, walked},
};
use crate::{
    event::Event,
    netns::{Namespaces, probe, sysctls},
    procfs,
    sockets::{Holder, Owner, SocketView},
    tables::{TablesError, TaskFile},
};

/// The capability that lets a process bind ports below ip_unprivileged_port_start.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// The facts' gatherer: the caches of one batch, and what it keeps across batches (who bound
/// what, which ports were bound where).
pub struct FactFinder {
    /// Whether the socket table iterators loaded, and why not.
    pub(super) tables: Result<(), HoldersError>,
    /// Sockets (by inode) held by some process now: at most as many as are open.
    pub(super) known: HashMap<u64, Known>,
    /// Per-drain caches.
    pub(super) holders: HashMap<(u32, u16), Result<Vec<Holder>, HoldersError>>,
    /// Socket inode → holders, and the task-file iterator's sockets, per read: of one port
    /// (`Some`) or of every port (`None`). See [`FactFinder::task_files`].
    pub(super) owners: HashMap<Option<u16>, HashMap<u64, Vec<Owner>>>,
    pub(super) task_files: HashMap<Option<u16>, Vec<TaskFile>>,
    /// False once the task-file iterator failed: /proc is read instead from then on.
    pub(super) task_files_work: bool,
    /// Table reads allowed per batch (None: as many as asked, as `who` needs).
    pub(super) read_budget: Option<usize>,
    /// Per-drain: the ephemeral range's sockets, read filtered in the kernel.
    pub(super) range_reads: super::range_sockets::RangeReads,
    netns_facts: HashMap<u32, (Sysctls, Option<Vec<IpAddr>>)>,
    /// Who bound each socket portwatch saw bound: names the owner of a holder that has been
    /// closed since.
    pub(super) binders: Binders,
    /// Where each port was bound while tracing (see [`BoundPorts`]).
    bound_ports: BoundPorts,
}

/// Socket table reads per batch in a trace, at most (each walks a whole table); see
/// [`FactFinder::for_trace`].
pub(super) const MAX_TABLE_READS_PER_BATCH: usize = 32;

impl FactFinder {
    /// `tables`: whether the loader loaded the socket table iterators, and why not.
    pub fn new(tables: Result<(), TablesError>) -> Self {
        FactFinder {
            tables: tables.map_err(Arc::new),
            known: HashMap::new(),
            holders: HashMap::new(),
            owners: HashMap::new(),
            task_files: HashMap::new(),
            task_files_work: true,
            read_budget: None,
            range_reads: Default::default(),
            netns_facts: HashMap::new(),
            bound_ports: BoundPorts::default(),
            binders: Binders::default(),
        }
    }

    /// For a live trace: table reads are capped per batch, so a storm of events that each
    /// want a walk cannot make portwatch fall behind; the skipped ones say why.
    pub fn for_trace(mut self) -> Self {
        self.read_budget = Some(MAX_TABLE_READS_PER_BATCH);
        self
    }

    /// Forgets the per-batch caches: the world may have changed.
    pub fn new_batch(&mut self) {
        self.holders.clear();
        self.owners.clear();
        self.task_files.clear();
        self.netns_facts.clear();
        self.range_reads.clear();
    }

    /// Forgets that ports were bound in namespace `ino` (see [`crate::trace::Session::forget_netns`]).
    pub fn forget_netns(&mut self, ino: u32) {
        self.bound_ports.forget_netns(ino);
        self.netns_facts.remove(&ino);
    }

    /// Sysctls and addresses of a namespace, read from inside it.
    pub fn netns_facts(
        &mut self,
        ns: &mut Namespaces,
        netns: u32,
    ) -> (Sysctls, Option<Vec<IpAddr>>) {
        if let Some(f) = self.netns_facts.get(&netns) {
            return f.clone();
        }
        let f = ns
            .run_in(netns, || (sysctls::read(), probe::local_addrs()))
            .unwrap_or_default();
        self.netns_facts.insert(netns, f.clone());
        f
    }

    /// Everything explain may need for this event.
    pub fn gather(&mut self, ebpf: &mut Ebpf, ns: &mut Namespaces, ev: &Event) -> Facts {
        let mut facts = Facts::default();
        let Some(sock) = ev.socket.as_ref() else {
            return facts;
        };
        let netns = sock.netns;
        let (sysctls, addrs) = self.netns_facts(ns, netns);
        facts.sysctls = sysctls;
        if ev.call == crate::event::Call::Connect {
            self.connect_facts(ebpf, ns, ev, sock, &mut facts);
            return facts;
        }
        let errno = ev.errno();
        if errno == Some(libc::EADDRNOTAVAIL) {
            facts.local_addrs = addrs;
            if let Some(r) = &ev.requested {
                facts.addr_is_local = address_is_local(ns, netns, r.addr, r.scope_id);
            }
        }
        if errno == Some(libc::EACCES) {
            facts.cap_net_bind_service = procfs::has_cap(ev.pid, CAP_NET_BIND_SERVICE);
        }
        if errno == Some(libc::EPERM) {
            facts.cgroup_bind_programs = crate::cgroup::bind_programs(ev.cgroup_id);
        }
        self.table_facts(ebpf, ns, ev, sock, &mut facts);
        // Holders in other namespaces are named too (the explanation mentions them), but no
        // proxy is followed for them: they are not in the way.
        crate::cgroup::name_owners(&mut facts.other_netns);
        self.enrich(ns, facts.holders.as_deref_mut().unwrap_or_default());
        facts.socket_units =
            socket_units_for(facts.holders.as_deref().unwrap_or_default(), ev.port());
        facts
    }

    /// Reads now what [`FactFinder::gather`] will need from the socket and fd tables for `ev`,
    /// so that a `gather` later in the batch finds it cached. This lets the trace read the
    /// tables for a whole pass before it takes the look-ahead, and gather each event's facts
    /// only when it explains it, instead of keeping every event's facts at once.
    pub fn prefetch(&mut self, ebpf: &mut Ebpf, ns: &mut Namespaces, ev: &Event) {
        let Some(sock) = ev.socket.as_ref() else {
            return;
        };
        if ev.call == crate::event::Call::Connect {
            self.prefetch_connect(ebpf, ns, ev, sock);
            return;
        }
        self.note_bound(ev, sock);
        let netns = sock.netns;
        match plan::table_lookup(ev, &self.bound_ports) {
            TableLookup::Nothing => {}
            TableLookup::EphemeralRange => {
                self.want_range(netns, super::range_sockets::Peers::All);
            }
            TableLookup::Port {
                port,
                other_netns,
                tables,
            } => {
                if tables {
                    self.cached_holders(ebpf, ns, netns, Some(port));
                }
                if other_netns {
                    for other in self.bound_ports.other_namespaces(netns, port) {
                        self.cached_holders(ebpf, ns, other, Some(port));
                    }
                }
            }
        }
    }

    /// The facts that come from the socket and fd tables: holders (or how full the ephemeral
    /// range is) and the same port in other namespaces.
    fn table_facts(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        ev: &Event,
        sock: &SocketView,
        facts: &mut Facts,
    ) {
        self.note_bound(ev, sock);
        let netns = sock.netns;
        match plan::table_lookup(ev, &self.bound_ports) {
            TableLookup::Nothing => {}
            TableLookup::EphemeralRange => {
                let range = self.range_use(ebpf, ns, sock, &facts.sysctls, None);
                facts.ephemeral_ports_in_use = range
                    .as_ref()
                    .ok()
                    .and_then(RangeUse::space)
                    .map(|s| s.used);
                facts.range_use = Some(range);
            }
            TableLookup::Port {
                port,
                other_netns,
                tables,
            } => {
                if walked(ev) {
                    self.kernel_facts(ebpf, ns, ev, facts);
                    // The kernel read the call's own port space; a success is also explained
                    // by the other protocol's sockets on the port (separate port spaces).
                    if tables
                        && let (Some(h), Ok(more)) = (
                            facts.holders.as_mut(),
                            self.holders(ebpf, ns, netns, Some(port)),
                        )
                    {
                        h.extend(
                            more.into_iter()
                                .filter(|m| !m.socket.proto.shares_ports_with(sock.proto)),
                        );
                    }
                } else {
                    match self.holders(ebpf, ns, netns, Some(port)) {
                        Ok(mut h) => {
                            let reported: Vec<_> = ev.kernel_holders.iter().collect();
                            self.mark_kernel_reported(ebpf, &mut h, &reported);
                            facts.holders = Some(h);
                        }
                        Err(e) => facts.holders_unavailable = Some(e.to_string()),
                    }
                }
                if other_netns {
                    facts.other_netns = self.other_netns(ebpf, ns, netns, port);
                }
            }
        }
    }

    /// Remembers the namespace where a bind or listen on a port succeeded, and who bound the
    /// socket.
    fn note_bound(&mut self, ev: &Event, sock: &SocketView) {
        if ev.ok() && ev.call == crate::event::Call::Bind && sock.ino != 0 {
            self.binders.note(
                sock.ino,
                Binder {
                    pid: ev.pid,
                    fd: ev.fd.unwrap_or(-1),
                    comm: ev.comm.as_str().into(),
                    workload: ev.workload.clone(),
                },
            );
        }
        if ev.ok() && sock.netns != 0 && sock.port != 0 {
            self.bound_ports.note(sock.port, sock.netns, sock.proto);
        }
    }

    /// The holders of `port` in the other namespaces that bound it while tracing.
    fn other_netns(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        port: u16,
    ) -> Vec<Holder> {
        let mut out = Vec::new();
        for other in self.bound_ports.other_namespaces(netns, port) {
            if let Ok(h) = self.holders(ebpf, ns, other, Some(port)) {
                out.extend(h);
            }
        }
        out
    }
}
