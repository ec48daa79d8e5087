//! Who holds a port: the socket tables (iter/tcp, iter/udp), the owners of each socket (the
//! task-file iterator, else /proc), the bound-only sockets no table lists (the task-file
//! iterator, else pidfd_getfd on each candidate), and the holders the kernel side read at the
//! call. Read once per batch and cached in [`FactFinder`].
//!
//! Every read of the OS goes through [`HolderReads`]: the loaded object ([`Ebpf`]) for real,
//! fixed tables in the unit tests, so the choices made here are tested without root.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Arc,
};

use aya::Ebpf;
use portwatch_common::walk;

use super::{FactFinder, Facts};
use crate::{
    event::{Event, KernelHolder},
    netns::Namespaces,
    procfs,
    sockets::{Holder, Owner, OwnerStatus, SocketView, Source},
    sockinfo::{self, Inspected},
    tables::{self, TablesError, TaskFile},
};

/// Why holders could not be looked up. Shared: one failed lookup is cached for the batch and
/// reported for every call that needed it.
pub type HoldersError = Arc<TablesError>;

/// Ports whose sockets a batch reads from the task-file iterator one by one, before one read
/// of every port serves the rest of the batch ([`FactFinder::task_file_scope`]).
const MAX_PORT_READS: usize = 4;

/// The OS reads holder lookup makes. [`Ebpf`] (the loaded object, with /proc and pidfd beside
/// it) is the real one; the unit tests pass fixed tables.
pub trait HolderReads {
    /// Every TCP and UDP socket on `port` (all for None) in namespace `netns`, from the
    /// socket table iterators ([`tables::read`]).
    fn socket_table(
        &mut self,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<SocketView>, TablesError>;
    /// Every TCP and UDP socket a process holds, from the task-file iterator
    /// ([`tables::read_task_files`]), on `port` only unless None.
    fn task_files(&mut self, port: Option<u16>) -> Result<Vec<TaskFile>, TablesError>;
    /// Socket inode → the processes that hold it, from /proc/*/fd
    /// ([`procfs::socket_owners`]).
    fn proc_socket_owners(&mut self) -> HashMap<u64, Vec<Owner>>;
    /// Whether /proc shows every process's fds ([`procfs::sees_all_processes`]).
    fn sees_all_processes(&mut self) -> bool;
    /// What socket fd `fd` of process `pid` is ([`sockinfo::inspect`]).
    fn inspect(&mut self, pid: u32, fd: i32) -> Option<Inspected>;
}

impl HolderReads for Ebpf {
    fn socket_table(
        &mut self,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<SocketView>, TablesError> {
        tables::read(self, ns, netns, &tables::Filter::port(port))
    }

    fn task_files(&mut self, port: Option<u16>) -> Result<Vec<TaskFile>, TablesError> {
        tables::read_task_files(self, &tables::Filter::port(port))
    }

    fn proc_socket_owners(&mut self) -> HashMap<u64, Vec<Owner>> {
        procfs::socket_owners()
    }

    fn sees_all_processes(&mut self) -> bool {
        procfs::sees_all_processes()
    }

    fn inspect(&mut self, pid: u32, fd: i32) -> Option<Inspected> {
        sockinfo::inspect(pid, fd)
    }
}

/// What is known about a socket inode that the tables did not show. Irrelevant sockets
/// (AF_UNIX, netlink...) and the namespace of any socket never change, so they are cached for
/// good; bound/unbound state is looked at again each time.
#[derive(Clone, Copy)]
pub(super) enum Known {
    Irrelevant,
    InNetns(u32),
}

impl FactFinder {
    /// Socket inode → the processes that hold it, for sockets on `port` (None: on every
    /// port), read once per batch: from the kernel's fd tables through the task-file iterator
    /// when it loaded (it also lists the bound-only sockets, see [`FactFinder::task_files`]),
    /// else by reading /proc/*/fd as `ss -p` does. The map may hold other ports' sockets too.
    fn owners(
        &mut self,
        ebpf: &mut impl HolderReads,
        port: Option<u16>,
    ) -> &HashMap<u64, Vec<Owner>> {
        let key = match self.task_files(ebpf, port) {
            Some(_) => self.task_file_scope(port),
            None => None,
        };
        if !self.owners.contains_key(&key) {
            let owners = match self.task_files(ebpf, port) {
                Some(files) => {
                    let mut m: HashMap<u64, Vec<Owner>> = HashMap::new();
                    for f in files {
                        if f.socket.ino != 0 {
                            m.entry(f.socket.ino).or_default().push(f.owner.clone());
                        }
                    }
                    m
                }
                None => ebpf.proc_socket_owners(),
            };
            self.owners.insert(key, owners);
        }
        &self.owners[&key]
    }

    /// Whether every socket a process holds can be seen: through the task-file iterator, or
    /// (without it) by reading every process's fd table, which needs CAP_SYS_PTRACE and
    /// CAP_DAC_READ_SEARCH. When not, a bound-but-not-listening socket may be missed. `port`:
    /// the port the caller is about, so that the answer comes with the read it needs anyway.
    pub fn sees_every_socket(&mut self, ebpf: &mut impl HolderReads, port: Option<u16>) -> bool {
        self.task_files(ebpf, port).is_some() || ebpf.sees_all_processes()
    }

    /// Which read of the task-file iterator serves sockets on `port`: that port's own, while
    /// a batch has read fewer than [`MAX_PORT_READS`] ports, else (or for None) every port's.
    ///
    /// Why per port: the iterator walks every open file of every process in the kernel, and
    /// keeps only the sockets its filter asks for. On a host with 100k sockets, copying and
    /// decoding all of them to name the owner of the one socket in the way cost most of a
    /// second per batch; one port's are a handful.
    fn task_file_scope(&self, port: Option<u16>) -> Option<u16> {
        if self.task_files.contains_key(&None) {
            return None;
        }
        port.filter(|p| {
            self.task_files.contains_key(&Some(*p)) || self.task_files.len() < MAX_PORT_READS
        })
    }

    /// The TCP and UDP sockets that processes hold on `port` (or more: see
    /// [`FactFinder::task_file_scope`]), from the task-file iterator, read once per batch.
    /// None when the iterator is not available (then /proc and pidfd_getfd serve).
    fn task_files(
        &mut self,
        ebpf: &mut impl HolderReads,
        port: Option<u16>,
    ) -> Option<&[TaskFile]> {
        if !self.task_files_work {
            return None;
        }
        let key = self.task_file_scope(port);
        if let Entry::Vacant(slot) = self.task_files.entry(key) {
            match ebpf.task_files(key) {
                Ok(files) => {
                    slot.insert(files);
                }
                Err(e) => {
                    log::debug!("task-file iterator unavailable ({e}); reading /proc instead");
                    self.task_files_work = false;
                    return None;
                }
            }
        }
        self.task_files.get(&key).map(Vec::as_slice)
    }

    /// Every socket on `port` in `netns` (or on all ports for None), with owners.
    pub fn holders(
        &mut self,
        ebpf: &mut impl HolderReads,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<Holder>, HoldersError> {
        self.cached_holders(ebpf, ns, netns, port).clone()
    }

    /// [`FactFinder::holders`] without the copy: read from the tables once per batch.
    pub(super) fn cached_holders(
        &mut self,
        ebpf: &mut impl HolderReads,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> &Result<Vec<Holder>, HoldersError> {
        let key = (netns, port.unwrap_or(0));
        if !self.holders.contains_key(&key) {
            // Each read walks a whole socket table: past a budget per pass, say so rather than
            // fall behind a storm.
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
        ebpf: &mut impl HolderReads,
        ns: &mut Namespaces,
        netns: u32,
        port: Option<u16>,
    ) -> Result<Vec<Holder>, HoldersError> {
        self.tables.clone()?;
        let in_tables = ebpf.socket_table(ns, netns, port).map_err(Arc::new)?;
        let seen: HashSet<u64> = in_tables
            .iter()
            .map(|s| s.ino)
            .filter(|&i| i != 0)
            .collect();
        let mut out: Vec<Holder> = Vec::with_capacity(in_tables.len());
        let owners = self.owners(ebpf, port).clone();
        let sees_all = self.sees_every_socket(ebpf, port);
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
        // Sockets in no table: bound but not listening. The task-file iterator lists them with
        // their state, from the kernel, without touching anyone's fd.
        if let Some(files) = self.task_files(ebpf, port) {
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
        // What is known of sockets no process holds any more is of no use: they are gone.
        // This keeps the cache as large as the machine's open sockets, however many churn.
        // (/proc lists every process's sockets, so `owners` is whole here.)
        self.known.retain(|ino, _| owners.contains_key(ino));
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
            let Some(found) = ebpf.inspect(first.pid, first.fd) else {
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

    /// Holders as the kernel had them at the call: the whole evidence, in the caller's
    /// namespace by construction. Owners are looked up now; one that is gone is named from
    /// what portwatch saw bind it.
    pub(super) fn kernel_facts(
        &mut self,
        ebpf: &mut impl HolderReads,
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
        // Every socket a walk finds is on the call's port (the other protocol's too).
        let port = walked.first().map(|k| k.socket.port);
        let sees_all = walked.is_empty() || self.sees_every_socket(ebpf, port);
        for k in &walked {
            let mut socket = k.socket.clone();
            ns.name_device(&mut socket);
            let owners = if socket.ino != 0 {
                self.owners(ebpf, Some(socket.port))
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
    pub(super) fn mark_kernel_reported(
        &mut self,
        ebpf: &mut impl HolderReads,
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
                let port = Some(r.port);
                let owners = self
                    .owners(ebpf, port)
                    .get(&r.ino)
                    .cloned()
                    .unwrap_or_default();
                let sees_all = self.sees_every_socket(ebpf, port);
                holders.push(Holder {
                    status: self.binders.status(r, &owners, k.flags, sees_all),
                    socket: r.clone(),
                    owners,
                    source: Source::KernelConflictCheck,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use portwatch_common::holder;

    use super::*;
    use crate::{
        event::Call,
        explain::tests::sock,
        facts::{binders::Binder, finder::MAX_TABLE_READS_PER_BATCH},
        sockets::{Proto, State},
    };

    /// Fixed tables in place of the kernel, counting what was read.
    #[derive(Default)]
    struct Fixed {
        /// What the socket table iterators list, every namespace and port.
        table: Vec<SocketView>,
        /// What the task-file iterator lists; None: it did not load.
        task_files: Option<Vec<TaskFile>>,
        /// What /proc/*/fd says.
        proc_owners: HashMap<u64, Vec<Owner>>,
        /// What pidfd_getfd finds, by (pid, fd).
        inspected: HashMap<(u32, i32), Inspected>,
        table_reads: usize,
        inspections: usize,
        /// The port of each task-file read (None: every port).
        task_file_reads: Vec<Option<u16>>,
    }

    impl HolderReads for Fixed {
        fn socket_table(
            &mut self,
            _ns: &mut Namespaces,
            netns: u32,
            port: Option<u16>,
        ) -> Result<Vec<SocketView>, TablesError> {
            self.table_reads += 1;
            Ok(self
                .table
                .iter()
                .filter(|s| s.netns == netns && port.is_none_or(|p| p == s.port))
                .cloned()
                .collect())
        }

        fn task_files(&mut self, port: Option<u16>) -> Result<Vec<TaskFile>, TablesError> {
            self.task_file_reads.push(port);
            let files = self
                .task_files
                .clone()
                .ok_or(TablesError::ProgramMissing("iter_task_file"))?;
            Ok(files
                .into_iter()
                .filter(|f| port.is_none_or(|p| p == f.socket.port))
                .collect())
        }

        fn proc_socket_owners(&mut self) -> HashMap<u64, Vec<Owner>> {
            self.proc_owners.clone()
        }

        fn sees_all_processes(&mut self) -> bool {
            false
        }

        fn inspect(&mut self, pid: u32, fd: i32) -> Option<Inspected> {
            self.inspections += 1;
            self.inspected.get(&(pid, fd)).cloned()
        }
    }

    fn owner(pid: u32, fd: i32) -> Owner {
        Owner {
            pid,
            comm: format!("p{pid}"),
            fd,
            workload: None,
            forward: None,
        }
    }

    /// A TCP socket on `port` in namespace `netns` with inode `ino`.
    fn socket(netns: u32, port: u16, ino: u64, state: State) -> SocketView {
        let mut s = sock(Proto::Tcp, "0.0.0.0", port);
        s.netns = netns;
        s.ino = ino;
        s.state = state;
        s
    }

    fn file(pid: u32, fd: i32, socket: SocketView) -> TaskFile {
        TaskFile {
            owner: owner(pid, fd),
            socket,
        }
    }

    /// (inode, source, owner pids, status) of each holder, by inode.
    fn summary(holders: &[Holder]) -> Vec<(u64, Source, Vec<u32>, &'static str)> {
        let mut out: Vec<_> = holders
            .iter()
            .map(|h| {
                let pids = h.owners.iter().map(|o| o.pid).collect();
                (h.socket.ino, h.source, pids, h.status.name())
            })
            .collect();
        out.sort_by_key(|h| h.0);
        out
    }

    #[test]
    fn with_the_task_file_iterator_owners_and_bound_only_sockets_come_from_it() {
        let listener = socket(7, 8080, 10, State::LISTEN);
        let mut time_wait = socket(7, 8080, 0, State::TIME_WAIT);
        time_wait.uid = None;
        let bound_only = socket(7, 8080, 11, State::CLOSE);
        let mut reads = Fixed {
            table: vec![
                listener.clone(),
                time_wait,
                socket(7, 9090, 15, State::LISTEN),
            ],
            task_files: Some(vec![
                file(100, 5, listener),
                // One socket shared by two processes (a fork).
                file(200, 6, bound_only.clone()),
                file(201, 6, bound_only),
                // Not on this port in this namespace, or not bound at all.
                file(300, 7, socket(9, 8080, 12, State::CLOSE)),
                file(300, 8, socket(7, 9090, 13, State::CLOSE)),
                file(300, 9, socket(7, 0, 14, State::CLOSE)),
            ]),
            // /proc would say otherwise: it must not be read when the iterator works.
            proc_owners: HashMap::from([(10, vec![owner(999, 1)])]),
            ..Fixed::default()
        };
        let mut finder = FactFinder::new(Ok(()));
        let mut ns = Namespaces::default();
        let holders = finder.holders(&mut reads, &mut ns, 7, Some(8080)).unwrap();
        assert_eq!(
            summary(&holders),
            vec![
                (0, Source::SocketTable, vec![], "no-process"),
                (10, Source::SocketTable, vec![100], "live"),
                (11, Source::FdTable, vec![200, 201], "live"),
            ]
        );
        assert_eq!(reads.inspections, 0);
        // Owners were read for that port alone, once.
        assert_eq!(reads.task_file_reads, vec![Some(8080)]);
        assert!(finder.sees_every_socket(&mut reads, Some(8080)));
        assert_eq!(reads.task_file_reads, vec![Some(8080)]);
    }

    #[test]
    fn owners_are_read_port_by_port_then_all_at_once() {
        let files: Vec<TaskFile> = (0..8)
            .map(|i| {
                file(
                    100 + i,
                    5,
                    socket(7, 8000 + i as u16, 10 + u64::from(i), State::LISTEN),
                )
            })
            .collect();
        let mut reads = Fixed {
            table: files.iter().map(|f| f.socket.clone()).collect(),
            task_files: Some(files),
            ..Fixed::default()
        };
        let mut finder = FactFinder::new(Ok(()));
        let mut ns = Namespaces::default();
        for i in 0..8u16 {
            let holders = finder
                .holders(&mut reads, &mut ns, 7, Some(8000 + i))
                .unwrap();
            // Whichever read served it, the owner is right.
            assert_eq!(
                summary(&holders),
                vec![(
                    10 + u64::from(i),
                    Source::SocketTable,
                    vec![100 + u32::from(i)],
                    "live"
                )]
            );
        }
        let mut expected: Vec<Option<u16>> =
            (8000..8000 + MAX_PORT_READS as u16).map(Some).collect();
        expected.push(None);
        assert_eq!(reads.task_file_reads, expected);
        // A new batch starts over, port by port.
        finder.new_batch();
        finder.holders(&mut reads, &mut ns, 7, Some(8001)).unwrap();
        assert_eq!(reads.task_file_reads.last(), Some(&Some(8001)));
    }

    #[test]
    fn without_the_task_file_iterator_candidates_are_inspected_and_remembered() {
        let bound_only = socket(7, 8080, 11, State::CLOSE);
        let mut reads = Fixed {
            table: vec![
                socket(7, 8080, 10, State::LISTEN),
                // In the table, held by no process portwatch can see.
                socket(7, 8080, 20, State::LISTEN),
            ],
            task_files: None,
            proc_owners: HashMap::from([
                (10, vec![owner(100, 5)]),
                (11, vec![owner(200, 6)]),
                (12, vec![owner(300, 7)]),
                (13, vec![owner(400, 8)]),
            ]),
            inspected: HashMap::from([
                ((200, 6), Inspected::Bound(bound_only)),
                ((300, 7), Inspected::Irrelevant),
                ((400, 8), Inspected::Unbound { netns: 9 }),
            ]),
            ..Fixed::default()
        };
        let mut finder = FactFinder::new(Ok(()));
        let mut ns = Namespaces::default();
        let holders = finder.holders(&mut reads, &mut ns, 7, Some(8080)).unwrap();
        assert_eq!(
            summary(&holders),
            vec![
                (10, Source::SocketTable, vec![100], "live"),
                (11, Source::FdTable, vec![200], "live"),
                (20, Source::SocketTable, vec![], "unknown"),
            ]
        );
        // /proc does not show every process here: the unknown owner says so.
        let unknown = holders.iter().find(|h| h.socket.ino == 20).unwrap();
        let OwnerStatus::Unknown { why } = &unknown.status else {
            unreachable!()
        };
        assert!(why.contains("cannot see every process's files"), "{why}");
        assert!(!finder.sees_every_socket(&mut reads, None));
        // The table's socket (10) is not inspected; 11, 12 and 13 are.
        assert_eq!(reads.inspections, 3);

        // Next batch: the AF_UNIX socket (12) and the one in another namespace (13) are
        // remembered; the bound one (11) is looked at again, as it may have closed.
        finder.new_batch();
        finder.holders(&mut reads, &mut ns, 7, Some(8080)).unwrap();
        assert_eq!(reads.inspections, 4);
        // In namespace 9, 13 is a candidate again; 12 never is.
        finder.holders(&mut reads, &mut ns, 9, Some(8080)).unwrap();
        assert_eq!(reads.inspections, 6);

        // What is known of a socket no process holds any more is dropped.
        reads.proc_owners.remove(&12);
        finder.new_batch();
        finder.holders(&mut reads, &mut ns, 7, Some(8080)).unwrap();
        assert!(!finder.known.contains_key(&12));
        assert!(finder.known.contains_key(&13));
    }

    #[test]
    fn a_trace_reads_the_tables_a_bounded_number_of_times_per_batch() {
        let mut reads = Fixed {
            task_files: Some(vec![]),
            ..Fixed::default()
        };
        let mut ns = Namespaces::default();
        let mut finder = FactFinder::new(Ok(())).for_trace();
        for port in 1..=MAX_TABLE_READS_PER_BATCH as u16 {
            assert!(finder.holders(&mut reads, &mut ns, 7, Some(port)).is_ok());
        }
        // The same port again is cached, and costs nothing.
        assert!(finder.holders(&mut reads, &mut ns, 7, Some(1)).is_ok());
        assert_eq!(reads.table_reads, MAX_TABLE_READS_PER_BATCH);
        let over = finder
            .holders(&mut reads, &mut ns, 7, Some(1000))
            .unwrap_err();
        assert!(
            over.to_string()
                .contains("already read 32 times in this pass"),
            "{over}"
        );
        assert_eq!(reads.table_reads, MAX_TABLE_READS_PER_BATCH);
        // A new batch has its budget back.
        finder.new_batch();
        assert!(finder.holders(&mut reads, &mut ns, 7, Some(1000)).is_ok());

        // `who` (no trace) has no budget.
        let mut finder = FactFinder::new(Ok(()));
        for port in 1..=2 * MAX_TABLE_READS_PER_BATCH as u16 {
            assert!(finder.holders(&mut reads, &mut ns, 7, Some(port)).is_ok());
        }
    }

    #[test]
    fn without_the_table_iterators_nothing_is_read_and_the_cause_is_said() {
        let mut reads = Fixed::default();
        let mut finder = FactFinder::new(Err(TablesError::ProgramMissing("iter_tcp")));
        let err = finder
            .holders(&mut reads, &mut Namespaces::default(), 7, Some(8080))
            .unwrap_err();
        assert_eq!(err.to_string(), "program iter_tcp missing");
        assert_eq!(reads.table_reads, 0);
    }

    #[test]
    fn the_kernels_holders_get_owners_now_and_the_conflict_check_is_marked() {
        let held = socket(7, 8080, 10, State::LISTEN);
        let closed = socket(7, 8080, 11, State::LISTEN);
        let mut reads = Fixed {
            task_files: Some(vec![file(100, 5, held.clone())]),
            ..Fixed::default()
        };
        let kernel = |s: &SocketView, flags| KernelHolder {
            socket: s.clone(),
            flags: holder::FULL | flags,
        };
        let mut mine = sock(Proto::Tcp, "0.0.0.0", 0);
        mine.ino = 30;
        let ev = Event {
            uid: 1000,
            ret: -libc::EADDRINUSE,
            socket: Some(mine),
            kernel_holders: vec![
                kernel(&held, 0),
                kernel(&closed, 0),
                kernel(&held, holder::CONFLICT_CHECK),
            ],
            walk: Some(walk::DONE | walk::CUT),
            holders_sent: 2,
            ..Event::imagined(Call::Bind, 42, "server")
        };
        let mut finder = FactFinder::new(Ok(()));
        // portwatch saw pid 300 bind socket 11, which no process holds now.
        finder.binders.note(
            11,
            Binder {
                pid: 300,
                fd: 4,
                comm: "old".into(),
                workload: None,
            },
        );
        let mut facts = Facts::default();
        finder.kernel_facts(&mut reads, &mut Namespaces::default(), &ev, &mut facts);
        assert!(facts.holders_incomplete);
        let holders = facts.holders.unwrap();
        assert_eq!(
            summary(&holders),
            vec![
                (10, Source::KernelConflictCheck, vec![100], "live"),
                (11, Source::KernelAtCall, vec![], "closed"),
            ]
        );
        assert_eq!(reads.table_reads, 0);
    }
}
