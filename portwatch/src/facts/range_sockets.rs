//! The sockets that decide how full the ephemeral range is, read with the kernel filtering
//! them ([`tables::Filter`]): only sockets on a port of the range and, when every call that
//! needs them is a TCP connect(), only the connections toward those calls' destination ports
//! (with every bound or listening socket of the range: connect() takes their ports toward no
//! destination). Owners are looked up for those sockets alone, from a task-file read
//! filtered the same way and to the namespace.
//!
//! Why: reading a namespace's every socket with every owner, as [`FactFinder::holders`] does
//! for `None`, costs most of a second on a host with 100k connections, while the counts of
//! [`super::port_use`] need only the sockets on range ports, and a failed connect() only those
//! toward its destination. One read per namespace per batch covers every call prefetched in
//! it ([`FactFinder::want_range`], [`FactFinder::read_wanted_ranges`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use aya::Ebpf;

use super::{finder::FactFinder, holders::HoldersError, port_use::Range};
use crate::{
    netns::Namespaces,
    sockets::{Holder, Owner, OwnerStatus, SocketView, Source},
    tables::{self, Filter, TablesError, TaskFile},
};

/// The connections a read of the range must include (sockets without a peer always are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Every connection: bind() to port 0, UDP, `portwatch ports`.
    All,
    /// Those toward these peer ports: TCP connect()s, counted per destination.
    Only(BTreeSet<u16>),
}

impl Peers {
    /// The connections toward `port` (a TCP connect()'s destination), or all for None.
    pub fn toward(port: Option<u16>) -> Peers {
        port.map_or(Peers::All, |p| Peers::Only(BTreeSet::from([p])))
    }

    fn add(&mut self, other: &Peers) {
        match (&mut *self, other) {
            (Peers::All, _) => {}
            (_, Peers::All) => *self = Peers::All,
            (Peers::Only(mine), Peers::Only(more)) => mine.extend(more),
        }
    }

    fn covers(&self, other: &Peers) -> bool {
        match (self, other) {
            (Peers::All, _) => true,
            (Peers::Only(_), Peers::All) => false,
            (Peers::Only(mine), Peers::Only(asked)) => asked.is_subset(mine),
        }
    }
}

/// The kernel-side filter of a read of `range`'s sockets with `peers`.
pub fn filter(range: Range, peers: &Peers) -> Filter {
    Filter {
        ports: range.lo..=range.hi,
        peers: match peers {
            Peers::All => None,
            Peers::Only(p) => Some(p.clone()),
        },
        netns: None,
    }
}

/// What one batch wanted and read, per namespace.
#[derive(Default)]
pub struct RangeReads {
    wanted: HashMap<u32, Peers>,
    read: HashMap<u32, RangeRead>,
}

impl RangeReads {
    /// Forget everything: a new batch, a world that may have changed.
    pub fn clear(&mut self) {
        self.wanted.clear();
        self.read.clear();
    }
}

/// One filtered read of a namespace's range sockets, and what it covers.
struct RangeRead {
    range: Range,
    peers: Peers,
    sockets: Result<Vec<Holder>, HoldersError>,
}

impl FactFinder {
    /// Notes that a call of this batch needs `netns`'s range sockets with `peers`, so that one
    /// read serves every such call ([`FactFinder::read_wanted_ranges`], or the first
    /// [`FactFinder::range_sockets`]).
    pub(super) fn want_range(&mut self, netns: u32, peers: Peers) {
        match self.range_reads.wanted.get_mut(&netns) {
            Some(w) => w.add(&peers),
            None => {
                self.range_reads.wanted.insert(netns, peers);
            }
        }
    }

    /// Reads the range sockets that the calls prefetched so far want: one filtered read per
    /// namespace, however many calls and destinations. Called once the whole pass is
    /// prefetched, so the tables are read before the look-ahead, as for every other call.
    pub fn read_wanted_ranges(&mut self, ebpf: &mut Ebpf, ns: &mut Namespaces) {
        let wanted: Vec<(u32, Peers)> = self.range_reads.wanted.drain().collect();
        for (netns, peers) in wanted {
            if let Some(range) = Range::of(&self.netns_facts(ns, netns).0) {
                let _ = self.range_sockets(ebpf, ns, netns, range, peers);
            }
        }
    }

    /// The sockets on `range`'s ports in `netns` that have no peer or whose peer is in
    /// `peers`, with their owners, as [`FactFinder::holders`] would list them (the other
    /// sockets may be there too); read once per batch. Where the filtered read fails (no
    /// task-file iterator, a read budget spent), the namespace's whole list serves, with the
    /// same errors as before.
    pub(super) fn range_sockets(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        range: Range,
        mut peers: Peers,
    ) -> Result<&[Holder], HoldersError> {
        let covered = self
            .range_reads
            .read
            .get(&netns)
            .is_some_and(|r| r.range == range && r.peers.covers(&peers));
        if !covered {
            // Whatever else the batch wants here comes along, so it needs no read of its own.
            if let Some(w) = self.range_reads.wanted.remove(&netns) {
                peers.add(&w);
            }
            let over_budget = self
                .read_budget
                .is_some_and(|max| self.range_reads.read.len() >= max);
            let sockets = if over_budget {
                Err(std::sync::Arc::new(TablesError::Budget(
                    self.range_reads.read.len(),
                )))
            } else {
                self.read_range(ebpf, ns, netns, range, &peers)
            };
            self.range_reads.read.insert(
                netns,
                RangeRead {
                    range,
                    peers,
                    sockets,
                },
            );
        }
        match &self.range_reads.read[&netns].sockets {
            Ok(s) => Ok(s.as_slice()),
            Err(e) => Err(e.clone()),
        }
    }

    fn read_range(
        &mut self,
        ebpf: &mut Ebpf,
        ns: &mut Namespaces,
        netns: u32,
        range: Range,
        peers: &Peers,
    ) -> Result<Vec<Holder>, HoldersError> {
        let filter = Filter {
            netns: Some(netns),
            ..filter(range, peers)
        };
        let started = std::time::Instant::now();
        match tables::read_with_task_files(ebpf, ns, netns, &filter) {
            Ok((table, files)) => {
                let (in_table, in_files) = (table.len(), files.len());
                let read = started.elapsed();
                let out = with_owners(netns, table, files);
                log::debug!(
                    "netns {netns}: range {}–{} ({peers:?}): {in_table} sockets in the tables and \
                     {in_files} in fd tables read in {read:.1?}, {} listed in {:.1?}",
                    range.lo,
                    range.hi,
                    out.len(),
                    started.elapsed() - read,
                );
                Ok(out)
            }
            Err(e) => {
                log::debug!("netns {netns}: filtered range read failed ({e}); reading all");
                let all = self.cached_holders(ebpf, ns, netns, None).as_ref();
                all.map(|all| {
                    all.iter()
                        .filter(|h| range.contains(h.socket.port))
                        .cloned()
                        .collect()
                })
                .map_err(std::sync::Arc::clone)
            }
        }
    }
}

/// The sockets of `table` (namespace `netns`'s tables) with their owners from `files`, and
/// the sockets of `netns` that only `files` has (bound, not listening: in no table), as
/// [`FactFinder::holders`] lists them. Owners are in the order the fd tables were walked:
/// the first is the one a count names.
fn with_owners(netns: u32, table: Vec<SocketView>, files: Vec<TaskFile>) -> Vec<Holder> {
    let in_table: HashSet<u64> = table.iter().map(|s| s.ino).filter(|&i| i != 0).collect();
    // Each file's owner goes to its table socket, or else to a socket only the fd tables have:
    // moved, not copied (tens of thousands of them toward a busy destination).
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::with_capacity(files.len());
    let mut bound_only: HashMap<u64, Holder> = HashMap::new();
    for f in files {
        let s = &f.socket;
        if in_table.contains(&s.ino) {
            owners.entry(s.ino).or_default().push(f.owner);
        } else if s.netns == netns && s.port != 0 {
            bound_only
                .entry(s.ino)
                .or_insert_with(|| Holder {
                    socket: f.socket.clone(),
                    owners: Vec::new(),
                    source: Source::FdTable,
                    status: OwnerStatus::Live,
                })
                .owners
                .push(f.owner);
        }
    }
    let mut out: Vec<Holder> = Vec::with_capacity(table.len() + bound_only.len());
    for socket in table {
        // Moved too: a socket is listed once (were a table walk to show one twice, as a
        // kernel may when its bucket changes under the walk, its owners would count once).
        let who = owners.remove(&socket.ino).unwrap_or_default();
        out.push(Holder {
            status: status(&socket, &who),
            owners: who,
            socket,
            source: Source::SocketTable,
        });
    }
    out.extend(bound_only.into_values());
    out
}

/// What these lists say of an owner: they are counted, never shown, so no more is looked up
/// than the fd tables tell.
fn status(s: &SocketView, owners: &[Owner]) -> OwnerStatus {
    if !owners.is_empty() {
        OwnerStatus::Live
    } else if s.state.is_time_wait() || s.ino == 0 {
        OwnerStatus::NoProcess
    } else {
        OwnerStatus::Unknown {
            why: "no process held it when the fd tables were read (counted, not looked up)",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::sockets::{Family, Options, Proto, State};

    fn socket(port: u16, ino: u64, netns: u32, peer: Option<u16>) -> SocketView {
        SocketView {
            family: Family::Ipv4,
            proto: Proto::Tcp,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            state: if peer.is_some() {
                State::ESTABLISHED
            } else {
                State::CLOSE
            },
            options: Options::default(),
            uid: Some(0),
            netns,
            ino,
            peer: peer.map(|p| (IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
            tw_left_ms: None,
        }
    }

    fn file(pid: u32, s: SocketView) -> TaskFile {
        TaskFile {
            owner: Owner {
                pid,
                comm: format!("p{pid}"),
                fd: 3,
                workload: None,
                forward: None,
            },
            socket: s,
        }
    }

    #[test]
    fn lists_table_sockets_with_owners_and_bound_only_sockets() {
        let conn = socket(40000, 10, 1, Some(5432));
        let tw = SocketView {
            state: State::TIME_WAIT,
            ino: 0,
            ..socket(40001, 0, 1, Some(5432))
        };
        let table = vec![conn.clone(), tw];
        let files = vec![
            // Two processes share the connection: the first walked is named first.
            file(7, conn.clone()),
            file(9, conn),
            // Bound, not listening: in no table.
            file(8, socket(40002, 11, 1, None)),
            // Another namespace's, and an unbound socket: not listed.
            file(8, socket(40003, 12, 2, None)),
            file(8, socket(0, 13, 1, None)),
        ];
        let out = with_owners(1, table, files);
        assert_eq!(out.len(), 3);
        let pids = |h: &Holder| h.owners.iter().map(|o| o.pid).collect::<Vec<_>>();
        assert_eq!(pids(&out[0]), [7, 9]);
        assert_eq!(out[0].status, OwnerStatus::Live);
        assert_eq!(
            (out[1].owners.len(), &out[1].status),
            (0, &OwnerStatus::NoProcess)
        );
        assert_eq!(
            (out[2].socket.port, out[2].source),
            (40002, Source::FdTable)
        );
        assert_eq!(pids(&out[2]), [8]);
    }

    #[test]
    fn one_read_covers_every_destination_asked() {
        let mut p = Peers::toward(Some(5432));
        assert!(p.covers(&Peers::toward(Some(5432))));
        assert!(!p.covers(&Peers::toward(Some(6379))));
        assert!(!p.covers(&Peers::All));
        p.add(&Peers::toward(Some(6379)));
        assert!(p.covers(&Peers::toward(Some(6379))));
        p.add(&Peers::All);
        assert!(p.covers(&Peers::toward(Some(1))));
        let r = Range {
            lo: 40000,
            hi: 40001,
            reserved: 0,
        };
        let f = filter(r, &Peers::toward(Some(5432)));
        assert_eq!(
            (f.ports, f.peers),
            (40000..=40001, Some(BTreeSet::from([5432])))
        );
        assert_eq!(filter(r, &Peers::All).peers, None);
    }
}
