//! Gathers the facts explain needs: who holds the port (socket tables, fd tables, the
//! kernel's own conflict report), the namespace's sysctls and addresses, the caller's
//! capabilities. This is the I/O half; [`crate::explain`] is the pure half.
//!
//! Lookups are cached for one drain of the ring buffer: a burst of binds on one port costs one
//! table walk, not one per bind.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use aya::Ebpf;
use portwatch_common::walk;

use super::{Facts, RangeUse, Sysctls};
use crate::{
    docker_proxy::{self, DockerProxy, Forward},
    event::{Event, KernelHolder},
    netns::Namespaces,
    procfs,
    socket_units::{self, SocketUnit},
    sockets::{Holder, Owner, OwnerStatus, Proto, SocketView, Source},
    sockinfo::{self, Inspected},
    tables::{self, TablesError, TaskFile},
};

/// Why holders could not be looked up. Shared: one failed lookup is cached for the batch and
/// reported for every call that needed it.
pub type HoldersError = Arc<TablesError>;

/// The capability that lets a process bind ports below ip_unprivileged_port_start.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// What is known about a socket inode that the tables did not show. Irrelevant sockets
/// (AF_UNIX, netlink...) and the namespace of any socket never change, so they are cached for
/// good; bound/unbound state is looked at again each time.
#[derive(Clone, Copy)]
enum Known {
    Irrelevant,
    InNetns(u32),
}

pub struct FactFinder {
    /// Whether the socket table iterators loaded, and why not.
    tables: Result<(), HoldersError>,
    /// Sockets (by inode) held by some process now: at most as many as are open.
    known: HashMap<u64, Known>,
    /// Per-drain caches.
    holders: HashMap<(u32, u16), Result<Vec<Holder>, HoldersError>>,
    owners: Option<HashMap<u64, Vec<Owner>>>,
    task_files: Option<Vec<TaskFile>>,
    /// False once the task-file iterator failed: /proc is read instead from then on.
    task_files_work: bool,
    /// Table reads allowed per batch (None: as many as asked, as `who` needs).
    pub(super) read_budget: Option<usize>,
    /// Per-drain: the ephemeral range's sockets, read filtered in the kernel.
    pub(super) range_reads: super::range_sockets::RangeReads,
    netns_facts: HashMap<u32, (Sysctls, Option<Vec<IpAddr>>)>,
    /// Who bound each socket portwatch saw bound: names the owner of a holder that has been
    /// closed since.
    binders: Binders,
    /// Port → namespaces where a bind or listen on it succeeded while tracing. A successful
    /// bind is compared with those other namespaces only ("different netns never conflict"):
    /// every table walk covers a whole hash table, too costly to do for every namespace.
    bound_ports: HashMap<u16, Vec<(u32, Proto)>>,
}

/// Socket table reads per batch in a trace, at most (each walks a whole table, ~3 ms for
/// TCP's); see [`FactFinder::for_trace`].
const MAX_TABLE_READS_PER_BATCH: usize = 32;

/// How many other namespaces a successful bind is compared against.
const MAX_OTHER_NETNS: usize = 8;

impl FactFinder {
    /// `tables`: whether the loader loaded the socket table iterators, and why not.
    pub fn new(tables: Result<(), TablesError>) -> Self {
        FactFinder {
            tables: tables.map_err(Arc::new),
            known: HashMap::new(),
            holders: HashMap::new(),
            owners: None,
            task_files: None,
            task_files_work: true,
            read_budget: None,
            range_reads: Default::default(),
            netns_facts: HashMap::new(),
            bound_ports: HashMap::new(),
            binders: Binders::default(),
        }
    }

    /// Forget per-drain caches: the world may have changed.
    /// For a live trace: table reads are capped per batch, so a storm of events that each
    /// want a walk cannot make portwatch fall behind; the skipped ones say why.
    pub fn for_trace(mut self) -> Self {
        self.read_budget = Some(MAX_TABLE_READS_PER_BATCH);
        self
    }

    pub fn new_batch(&mut self) {
        self.holders.clear();
        self.owners = None;
        self.task_files = None;
        self.netns_facts.clear();
        self.range_reads.clear();
    }

    /// Socket inode → the processes that hold it, read once per batch: from the kernel's fd
    /// tables through the task-file iterator when it loaded (it also lists the bound-only
    /// sockets, see [`FactFinder::task_files`]), else by reading /proc/*/fd as `ss -p` does.
    fn owners(&mut self, ebpf: &mut Ebpf) -> &HashMap<u64, Vec<Owner>> {
        if self.owners.is_none() {
            let owners = match self.task_files(ebpf) {
                Some(files) => {
                    let mut m: HashMap<u64, Vec<Owner>> = HashMap::new();
                    for f in files {
                        if f.socket.ino != 0 {
                            m.entry(f.socket.ino).or_default().push(f.owner.clone());
                        }
                    }
                    m
                }
                None => procfs::socket_owners(),
            };
            self.owners = Some(owners);
        }
        self.owners.get_or_insert_with(HashMap::new)
    }

    /// Whether every socket a process holds can be seen: through the task-file iterator, or
    /// (without it) by reading every process's fd table, which needs CAP_SYS_PTRACE and
    /// CAP_DAC_READ_SEARCH. When not, a bound-but-not-listening socket may be missed.
    pub fn sees_every_socket(&mut self, ebpf: &mut Ebpf) -> bool {
        self.task_files(ebpf).is_some() || procfs::sees_all_processes()
    }

    /// Every TCP and UDP socket that a process holds, from the task-file iterator, read once
    /// per batch. None when the iterator is not available (then /proc and pidfd_getfd serve).
    fn task_files(&mut self, ebpf: &mut Ebpf) -> Option<&[TaskFile]> {
        if self.task_files.is_none() && self.task_files_work {
            match tables::read_task_files(ebpf, &tables::Filter::port(None)) {
                Ok(files) => self.task_files = Some(files),
                Err(e) => {
                    log::debug!("task-file iterator unavailable ({e}); reading /proc instead");
                    self.task_files_work = false;
                }
            }
        }
        self.task_files.as_deref()
    }

    /// Every socket on `port` in `netns` (or on all ports for None), with owners.
    pub fn holders(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<Holder>, HoldersError> {
        self.cached_holders(ebpf, ns, netns, port).clone()
    }

    /// [`FactFinder::holders`] without the copy: read from the tables once per batch.
    pub(super) fn cached_holders(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> &Result<Vec<Holder>, HoldersError> {
        let key = (netns, port.unwrap_or(0));
        if !self.holders.contains_key(&key) {
            // Each read walks a whole socket table (~3 ms for the TCP hash): past a budget per
            // pass, say so rather than fall behind a storm.
            let result = if self
                .read_budget
                .is_some_and(|max| self.holders.len() >= max)
            {
                Err(Arc::new(TablesError::Budget(self.holders.len())))
            } else {
                self.look_up(ebpf, ns, netns, port)
            };
            self.holders.insert(key, result);
        }
        &self.holders[&key]
    }

    fn look_up(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<Holder>, HoldersError> {
        self.tables.clone()?;
        let in_tables =
            tables::read(ebpf, ns, netns, &tables::Filter::port(port)).map_err(Arc::new)?;
        let seen: HashSet<u64> = in_tables
            .iter()
            .map(|s| s.ino)
            .filter(|&i| i != 0)
            .collect();
        let mut out: Vec<Holder> = Vec::with_capacity(in_tables.len());
        let owners = self.owners(ebpf).clone();
        let sees_all = self.sees_every_socket(ebpf);
        for mut s in in_tables {
            ns.name_device(&mut s);
            let who = owners.get(&s.ino).cloned().unwrap_or_default();
            out.push(Holder {
                status: self.binders.status(&s, &who, 0, sees_all),
                owners: who,
                socket: s,
                source: Source::SocketTable,
            });
        }
        // What is known of sockets no process holds any more is of no use: they are gone.
        // This keeps the cache as large as the machine's open sockets, however many churn.
        self.known.retain(|ino, _| owners.contains_key(ino));
        // Sockets in no table: bound but not listening. Ask each candidate directly.
        // Sockets in no table: bound but not listening. The task-file iterator lists them with
        // their state, from the kernel, without touching anyone's fd.
        if let Some(files) = self.task_files(ebpf) {
            let mut bound_only: HashMap<u64, Holder> = HashMap::new();
            for f in files {
                let s = &f.socket;
                let in_port = port.is_none_or(|p| p == s.port);
                if s.netns != netns || !in_port || s.port == 0 || seen.contains(&s.ino) {
                    continue;
                }
                bound_only
                    .entry(s.ino)
                    .or_insert_with(|| Holder {
                        socket: s.clone(),
                        owners: Vec::new(),
                        source: Source::FdTable,
                        status: OwnerStatus::Live,
                    })
                    .owners
                    .push(f.owner.clone());
            }
            for (_, mut h) in bound_only {
                ns.name_device(&mut h.socket);
                out.push(h);
            }
            return Ok(out);
        }
        // Without the iterator: ask each candidate directly (pidfd_getfd + getsockname).
        for (&ino, who) in &owners {
            if seen.contains(&ino) {
                continue;
            }
            match self.known.get(&ino) {
                Some(Known::Irrelevant) => continue,
                Some(Known::InNetns(n)) if *n != netns => continue,
                _ => {}
            }
            let Some(first) = who.first() else { continue };
            let Some(found) = sockinfo::inspect(first.pid, first.fd) else {
                continue;
            };
            match found {
                Inspected::Irrelevant => {
                    self.known.insert(ino, Known::Irrelevant);
                }
                Inspected::Unbound { netns: n } => {
                    self.known.insert(ino, Known::InNetns(n));
                }
                Inspected::Bound(mut view) => {
                    self.known.insert(ino, Known::InNetns(view.netns));
                    ns.name_device(&mut view);
                    if view.netns == netns && port.is_none_or(|p| p == view.port) {
                        out.push(Holder {
                            socket: view,
                            owners: who.clone(),
                            source: Source::FdTable,
                            status: OwnerStatus::Live,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Forgets that ports were bound in namespace `ino` (see [`crate::trace::Session::forget_netns`]).
    pub fn forget_netns(&mut self, ino: u32) {
        for seen in self.bound_ports.values_mut() {
            seen.retain(|&(n, _)| n != ino);
        }
        self.bound_ports.retain(|_, seen| !seen.is_empty());
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
            .run_in(netns, || (read_sysctls(), local_addrs()))
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
        match self.table_lookup(ev) {
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
                    for other in self.other_namespaces(netns, port) {
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
        match self.table_lookup(ev) {
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

    /// Holders as the kernel had them at the call: the whole evidence, in the caller's
    /// namespace by construction. Owners are looked up now; one that is gone is named from
    /// what portwatch saw bind it.
    pub(super) fn kernel_facts(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        ev: &Event,
        facts: &mut Facts,
    ) {
        let walked: Vec<&KernelHolder> = ev
            .kernel_holders
            .iter()
            .filter(|h| !h.is_conflict_check())
            .collect();
        let bits = ev.walk.unwrap_or(0);
        facts.holders_incomplete =
            bits & (walk::CUT | walk::LOST) != 0 || walked.len() < usize::from(ev.holders_sent);
        let mut holders = Vec::with_capacity(walked.len());
        let sees_all = walked.is_empty() || self.sees_every_socket(ebpf);
        for k in &walked {
            let mut socket = k.socket.clone();
            ns.name_device(&mut socket);
            let owners = if socket.ino != 0 {
                self.owners(ebpf)
                    .get(&socket.ino)
                    .cloned()
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            holders.push(Holder {
                status: self.binders.status(&socket, &owners, k.flags, sees_all),
                owners,
                socket,
                source: Source::KernelAtCall,
            });
        }
        // What the conflict check named (fexit) leads; it is the same socket as one walked.
        let checked: Vec<&KernelHolder> = ev
            .kernel_holders
            .iter()
            .filter(|h| h.is_conflict_check())
            .collect();
        self.mark_kernel_reported(ebpf, &mut holders, &checked);
        facts.holders = Some(holders);
    }

    /// Holders the kernel's conflict check named (fexit) lead the list; a named socket that has
    /// already left the tables is added as the kernel reported it.
    fn mark_kernel_reported(
        &mut self,
        ebpf: &mut Ebpf,
        holders: &mut Vec<Holder>,
        reported: &[&KernelHolder],
    ) {
        for k in reported {
            let r = &k.socket;
            let same = |h: &Holder| {
                if r.ino != 0 {
                    h.socket.ino == r.ino
                } else {
                    h.socket.addr == r.addr && h.socket.port == r.port && h.socket.state == r.state
                }
            };
            if let Some(h) = holders.iter_mut().find(|h| same(h)) {
                h.source = Source::KernelConflictCheck;
            } else {
                let owners = self.owners(ebpf).get(&r.ino).cloned().unwrap_or_default();
                let sees_all = self.sees_every_socket(ebpf);
                holders.push(Holder {
                    status: self.binders.status(r, &owners, k.flags, sees_all),
                    socket: r.clone(),
                    owners,
                    source: Source::KernelConflictCheck,
                });
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
        let key = (sock.netns, sock.proto);
        if ev.ok() && sock.netns != 0 && sock.port != 0 {
            let seen = self.bound_ports.entry(sock.port).or_default();
            if !seen.contains(&key) {
                seen.push(key);
                if seen.len() > MAX_OTHER_NETNS {
                    seen.remove(0);
                }
            }
        }
    }

    fn other_netns(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        port: u16,
    ) -> Vec<Holder> {
        let mut out = Vec::new();
        for other in self.other_namespaces(netns, port) {
            if let Ok(h) = self.holders(ebpf, ns, other, Some(port)) {
                out.extend(h);
            }
        }
        out
    }

    /// The namespaces other than `netns` where `port` was bound while tracing.
    fn other_namespaces(&self, netns: u32, port: u16) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .bound_ports
            .get(&port)
            .map(|seen| {
                seen.iter()
                    .map(|&(n, _)| n)
                    .filter(|&n| n != netns)
                    .collect()
            })
            .unwrap_or_default();
        out.dedup();
        out
    }

    /// Whether a socket of another port space (UDP next to TCP) was bound on `port` in `netns`
    /// while tracing: only then is a success worth a table walk after the fact, since the
    /// kernel side read the call's own port space at the call. Without this, a storm of
    /// successful binds on ever-new ports (port 0) cost a whole table walk each.
    fn other_space_bound(&self, netns: u32, port: u16, proto: Proto) -> bool {
        self.bound_ports.get(&port).is_some_and(|seen| {
            seen.iter()
                .any(|&(n, p)| n == netns && !p.shares_ports_with(proto))
        })
    }

    /// The table lookups an event's facts need. [`FactFinder::prefetch`] and
    /// [`FactFinder::gather`] both follow it, so that the second finds what the first read.
    fn table_lookup(&self, ev: &Event) -> TableLookup {
        if !needs_holders(ev) {
            return TableLookup::Nothing;
        }
        let port = ev.port();
        let port_zero =
            port == 0 || (!ev.ok() && ev.requested.as_ref().is_some_and(|r| r.port == 0));
        if port_zero && !ev.ok() {
            return TableLookup::EphemeralRange;
        }
        // A port the kernel picked (port 0) shares nothing on purpose: that other namespaces
        // hand out the same number is chance, not worth a table walk.
        let asked_zero = ev.requested.as_ref().is_some_and(|r| r.port == 0);
        let other_netns = ev.ok() && !asked_zero && {
            let netns = ev.netns().unwrap_or(0);
            !self.other_namespaces(netns, port).is_empty()
        };
        // A failure is explained from the kernel's list alone; a success also looks at the
        // other protocol's sockets on the port, when one was seen there.
        let tables = !walked(ev)
            || (ev.ok()
                && !asked_zero
                && ev
                    .socket
                    .as_ref()
                    .is_some_and(|s| self.other_space_bound(s.netns, port, s.proto)));
        TableLookup::Port {
            port,
            other_netns,
            tables,
        }
    }
}

/// The table lookups an event's facts need. [`FactFinder::prefetch`] and
/// [`FactFinder::gather`] both follow it, so that the second finds what the first read.
enum TableLookup {
    Nothing,
    /// A failed port 0 bind: how full the ephemeral range is (every port of the namespace).
    EphemeralRange,
    /// The call's port; for a success, also in the other namespaces that bound it. `tables`:
    /// the kernel did not read the port's owners at the call, so the tables must be read now.
    Port {
        port: u16,
        other_netns: bool,
        tables: bool,
    },
}

/// Whether explaining this call needs the port's holders (they cost a table walk): a success
/// on a port (what it shares the port with) and EADDRINUSE (what is in the way).
fn needs_holders(ev: &Event) -> bool {
    match ev.errno() {
        None => ev.socket.as_ref().is_some_and(|s| s.port != 0),
        Some(e) => e == libc::EADDRINUSE,
    }
}

/// Whether the kernel side read the call's port's owners at the call.
pub(super) fn walked(ev: &Event) -> bool {
    ev.walk.is_some_and(|w| w & walk::DONE != 0)
}

/// The socket units naming `port`, when systemd owns one of `holders` (socket activation).
pub fn socket_units_for(holders: &[Holder], port: u16) -> Option<Vec<SocketUnit>> {
    holders
        .iter()
        .flat_map(|h| &h.owners)
        .any(Owner::is_systemd)
        .then(|| socket_units::find(port))
}

/// Who bound the sockets portwatch saw bound, by socket inode. Bounded: the oldest are
/// forgotten first, so a week of churn holds no more than an hour of it.
#[derive(Default)]
struct Binders {
    by_ino: HashMap<u64, Binder, std::hash::BuildHasherDefault<InoHasher>>,
    order: std::collections::VecDeque<u64>,
}

/// Socket inodes are kernel-assigned counters, not attacker-chosen keys: a multiply spreads
/// them well enough, at a fraction of SipHash's cost (the record sees every successful bind).
#[derive(Default)]
struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Who bound one socket, kept small: the record holds tens of thousands of them. The
/// workload is shared with every other bind from the same cgroup.
struct Binder {
    pid: u32,
    fd: i32,
    comm: Box<str>,
    workload: Option<Arc<crate::workload::Workload>>,
}

impl Binder {
    fn owner(&self) -> Owner {
        Owner {
            pid: self.pid,
            comm: self.comm.to_string(),
            fd: self.fd,
            workload: self.workload.as_deref().cloned(),
            forward: None,
        }
    }
}

impl Binders {
    /// Sockets remembered at most (~60 bytes each, with the map's own).
    const MAX: usize = 1 << 15;

    fn note(&mut self, ino: u64, binder: Binder) {
        if self.by_ino.insert(ino, binder).is_none() {
            self.order.push_back(ino);
            if self.order.len() > Self::MAX
                && let Some(old) = self.order.pop_front()
            {
                self.by_ino.remove(&old);
            }
        }
    }

    /// What is known of the owner of `s`, held now by `owners`; `flags` are the kernel side's
    /// [`portwatch_common::holder`] bits (0 when the socket came from elsewhere).
    /// `sees_all`: every process's sockets could be seen ([`FactFinder::sees_every_socket`]),
    /// so an owner that is not found is not merely hidden.
    fn status(&self, s: &SocketView, owners: &[Owner], flags: u8, sees_all: bool) -> OwnerStatus {
        use portwatch_common::holder;
        if !owners.is_empty() {
            OwnerStatus::Live
        } else if flags & holder::NO_FILE != 0 {
            OwnerStatus::InKernel {
                bound_by: self.by_ino.get(&s.ino).map(Binder::owner),
            }
        } else if flags & holder::ORPHAN != 0 || s.state.is_time_wait() || s.ino == 0 {
            OwnerStatus::NoProcess
        } else if let Some(b) = self.by_ino.get(&s.ino) {
            OwnerStatus::Closed {
                bound_by: b.owner(),
            }
        } else if sees_all {
            OwnerStatus::Unknown {
                why: "no process holds it now: it was closed after the call, or its only \
                      reference is in flight in a unix-socket message (SCM_RIGHTS)",
            }
        } else {
            OwnerStatus::Unknown {
                why: "portwatch cannot see every process's files: the kernel's task-file \
                      iterator is not available, so run it as root, or with CAP_SYS_PTRACE and \
                      CAP_DAC_READ_SEARCH",
            }
        }
    }
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_bool(path: &str) -> Option<bool> {
    sysctl(path)
        .and_then(|v| v.parse::<u32>().ok())
        .map(|v| v != 0)
}

/// The sysctls that change bind()'s rules, for the namespace this thread is in.
fn read_sysctls() -> Sysctls {
    let range = sysctl("net/ipv4/ip_local_port_range").and_then(|v| {
        let mut it = v.split_whitespace().map(|x| x.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    Sysctls {
        ip_local_port_range: range,
        ip_unprivileged_port_start: sysctl("net/ipv4/ip_unprivileged_port_start")
            .and_then(|v| v.parse().ok()),
        ip_nonlocal_bind: sysctl_bool("net/ipv4/ip_nonlocal_bind"),
        ipv6_ip_nonlocal_bind: sysctl_bool("net/ipv6/ip_nonlocal_bind"),
        bindv6only: sysctl_bool("net/ipv6/bindv6only"),
        ip_autobind_reuse: sysctl_bool("net/ipv4/ip_autobind_reuse"),
        ip_local_reserved_ports: sysctl("net/ipv4/ip_local_reserved_ports"),
        tcp_tw_reuse: sysctl("net/ipv4/tcp_tw_reuse").and_then(|v| v.parse().ok()),
    }
}

/// Whether the kernel of namespace `netns` takes `addr` as a local address: a bind to port 0
/// with IP_BIND_ADDRESS_NO_PORT, which runs bind()'s own address check and takes no port.
pub fn address_is_local(
    ns: &mut Namespaces,
    netns: u32,
    addr: IpAddr,
    scope_id: u32,
) -> Option<bool> {
    ns.run_in(netns, move || {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                raw,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let rc = match addr {
            IpAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr = u32::from(a).to_be();
                unsafe { libc::bind(raw, (&raw const sin).cast(), size_of_val(&sin) as u32) }
            }
            IpAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_addr.s6_addr = a.octets();
                // A link-local address is local to one interface: without it the kernel
                // answers EINVAL, which says nothing about the address.
                sin6.sin6_scope_id = scope_id;
                unsafe { libc::bind(raw, (&raw const sin6).cast(), size_of_val(&sin6) as u32) }
            }
        };
        let err = std::io::Error::last_os_error().raw_os_error();
        Some(rc == 0 || err != Some(libc::EADDRNOTAVAIL))
    })
    .flatten()
}

/// Addresses of the interfaces in the namespace this thread is in.
fn local_addrs() -> Option<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a list getifaddrs built; freed below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}
