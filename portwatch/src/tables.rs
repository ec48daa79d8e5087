//! The kernel's socket tables, read through the iter/tcp and iter/udp programs, and the
//! processes' sockets through iter/task_file; each read keeps only what its [`Filter`] asks for,
//! decided in the kernel.
//!
//! An iterator sees the network namespace of the thread that creates its fd, so the read runs
//! on a thread that joined the namespace in question. It sees listening, connected, TIME_WAIT
//! and UDP sockets with the kernel's own view of their options (the TIME_WAIT socket's
//! SO_REUSEADDR bit included, which decides the restart case). It does not see TCP sockets
//! that are bound but not listening: see [`crate::sockinfo`] for those.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read as _},
    ops::RangeInclusive,
};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
    programs::{Iter, ProgramError, iter::IterLink, links::LinkError},
};
use portwatch_common::{HolderRecord, IterFilter, TaskFileRecord, maps, programs};
use thiserror::Error;

use crate::{
    event::{comm_str, decode_holder, monotonic_ns},
    netns::Namespaces,
    sockets::{Owner, SocketView},
};

const PROGRAMS: [(&str, &str); 2] = [(programs::ITER_TCP, "tcp"), (programs::ITER_UDP, "udp")];
/// Every process's open socket files: owners without /proc, bound-only sockets without
/// duplicating anyone's fd. Optional: without it, /proc and pidfd_getfd serve instead.
const TASK_FILES: (&str, &str) = (programs::ITER_TASK_FILE, "task_file");

/// Why the socket tables could not be read. The text of each variant is what a user reads
/// in an explanation ("could not look up who holds it (...)"), so it carries its cause inline.
#[derive(Debug, Error)]
pub enum TablesError {
    #[error("program {0} missing")]
    ProgramMissing(&'static str),
    #[error("{program}: {detail}")]
    Program {
        program: &'static str,
        detail: ProgramError,
    },
    #[error("loading iter/{target}: {detail}")]
    Load {
        target: &'static str,
        detail: ProgramError,
    },
    #[error("attaching {program}: {detail}")]
    Attach {
        program: &'static str,
        detail: ProgramError,
    },
    #[error("{0} map missing")]
    FilterMapMissing(&'static str),
    #[error("{0}")]
    FilterMap(MapError),
    #[error("setting the filter: {0}")]
    SetFilter(MapError),
    #[error("creating the iterator: {0}")]
    Create(LinkError),
    #[error("reading the iterator: {0}")]
    Read(io::Error),
    #[error(
        "the socket tables were already read {0} times in this pass (each read walks a whole table); this one was skipped to keep up"
    )]
    Budget(usize),
    #[error("network namespace {0} is gone or cannot be entered")]
    NetnsGone(u32),
    /// Any of the above, when the cause was the open-files limit: said once, with the fix.
    #[error("{}", crate::limits::out_of_files_message())]
    OutOfFiles,
}

impl TablesError {
    /// The error as the user should read it: [`TablesError::OutOfFiles`] when the open-files
    /// limit was the real cause, whatever step ran into it.
    fn named(self) -> Self {
        let errno = match &self {
            TablesError::Program { detail, .. }
            | TablesError::Load { detail, .. }
            | TablesError::Attach { detail, .. } => crate::errno::os_errno(detail),
            TablesError::FilterMap(e) | TablesError::SetFilter(e) => crate::errno::os_errno(e),
            TablesError::Create(e) => crate::errno::os_errno(e),
            TablesError::Read(e) => e.raw_os_error(),
            TablesError::NetnsGone(_) if crate::netns::ran_out_of_files() => Some(libc::EMFILE),
            _ => None,
        };
        if errno.is_some_and(crate::limits::is_out_of_files) {
            TablesError::OutOfFiles
        } else {
            self
        }
    }
}

/// The kernel functions whose BTF ids aya looks up to load the iterators (`bpf_iter_<target>`).
pub fn btf_functions() -> impl Iterator<Item = String> {
    PROGRAMS
        .iter()
        .chain([&TASK_FILES])
        .map(|(_, target)| format!("bpf_iter_{target}"))
}

fn iter_program<'e>(
    ebpf: &'e mut Ebpf,
    program: &'static str,
) -> Result<&'e mut Iter, TablesError> {
    ebpf.program_mut(program)
        .ok_or(TablesError::ProgramMissing(program))?
        .try_into()
        .map_err(|detail| TablesError::Program { program, detail })
}

/// Loads the iterator programs (once per process). The socket table ones must load; the
/// task-file one may not (its failure is logged, and [`read_task_files`] then says so).
pub fn load_iterators(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), TablesError> {
    for (name, target) in PROGRAMS {
        iter_program(ebpf, name)?
            .load(target, btf)
            .map_err(|detail| TablesError::Load { target, detail })?;
    }
    let (name, target) = TASK_FILES;
    if let Err(e) = iter_program(ebpf, name).and_then(|p| {
        p.load(target, btf)
            .map_err(|detail| TablesError::Load { target, detail })
    }) {
        log::debug!("no task-file iterator ({e}); owners come from /proc");
    }
    Ok(())
}

/// Which sockets a read dumps. The kernel side decides ([`IterFilter`]), so what the filter
/// drops is never copied, described or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Local ports.
    pub ports: RangeInclusive<u16>,
    /// Sockets with a peer: only those toward one of these peer ports (None: toward any).
    /// Sockets without a peer are kept whatever this says.
    pub peers: Option<BTreeSet<u16>>,
    /// The task-file read only: sockets of this network namespace (None: of every one).
    pub netns: Option<u32>,
}

impl Filter {
    /// Every socket on `port`, or on every port for None.
    pub fn port(port: Option<u16>) -> Filter {
        Filter {
            ports: port.map_or(0..=u16::MAX, |p| p..=p),
            peers: None,
            netns: None,
        }
    }

    /// What the kernel side reads: the port range and whether the peer bitmap applies.
    fn kernel(&self) -> IterFilter {
        IterFilter {
            port_lo: *self.ports.start(),
            port_hi: *self.ports.end(),
            peer_ports: u8::from(self.peers.is_some()),
            netns: self.netns.unwrap_or(0),
            ..IterFilter::ALL
        }
    }

    /// The peer bitmap's words that have a bit set: word index → word.
    fn peer_words(&self) -> BTreeMap<u32, u64> {
        let mut words = BTreeMap::new();
        for &p in self.peers.iter().flatten() {
            *words.entry(u32::from(p >> 6)).or_insert(0) |= 1u64 << (p & 63);
        }
        words
    }
}

/// Runs `read` with `filter` set for the iterators, then clears the peer bitmap's words it set
/// (whether the read worked or not), so the next filter starts from an empty bitmap.
fn with_filter<T>(
    ebpf: &mut Ebpf,
    filter: &Filter,
    read: impl FnOnce(&mut Ebpf) -> Result<T, TablesError>,
) -> Result<T, TablesError> {
    let words = filter.peer_words();
    set_peer_words(ebpf, words.iter().map(|(&i, &w)| (i, w)))?;
    let set = filter_array::<IterFilter>(ebpf, maps::ITER_FILTER).and_then(|mut m| {
        m.set(0, &filter.kernel(), 0)
            .map_err(TablesError::SetFilter)
    });
    let out = set.and_then(|()| read(ebpf));
    let cleared = set_peer_words(ebpf, words.keys().map(|&i| (i, 0)));
    let out = out?;
    cleared?;
    Ok(out)
}

fn set_peer_words(
    ebpf: &mut Ebpf,
    words: impl Iterator<Item = (u32, u64)>,
) -> Result<(), TablesError> {
    let mut bits = filter_array::<u64>(ebpf, maps::ITER_PEER_PORTS)?;
    for (i, w) in words {
        bits.set(i, &w, 0).map_err(TablesError::SetFilter)?;
    }
    Ok(())
}

fn filter_array<'e, V: aya::Pod>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<Array<&'e mut MapData, V>, TablesError> {
    Array::try_from(
        ebpf.map_mut(name)
            .ok_or(TablesError::FilterMapMissing(name))?,
    )
    .map_err(TablesError::FilterMap)
}

/// One socket a process holds, from the task-file iterator.
#[derive(Clone, Debug)]
pub struct TaskFile {
    pub owner: Owner,
    pub socket: SocketView,
}

/// Every TCP and UDP socket that a process holds and `filter` keeps, with its holder, from the
/// kernel's fd tables: every network namespace at once (the socket says its own) unless the
/// filter names one, no fd duplicated, nothing read from /proc.
pub fn read_task_files(ebpf: &mut Ebpf, filter: &Filter) -> Result<Vec<TaskFile>, TablesError> {
    let bytes = with_filter(ebpf, filter, |ebpf| read_link(link(ebpf, TASK_FILES.0)?))?;
    Ok(task_files(&bytes))
}

/// Every TCP and UDP socket that `filter` keeps in namespace `netns`.
pub fn read(
    ebpf: &mut Ebpf,
    namespaces: &mut Namespaces,
    netns: u32,
    filter: &Filter,
) -> Result<Vec<SocketView>, TablesError> {
    with_filter(ebpf, filter, |ebpf| {
        let links = table_links(ebpf)?;
        read_tables_in(namespaces, netns, links)
    })
    .map(|bytes| table_sockets(&bytes))
    .map_err(TablesError::named)
}

/// [`read`] and [`read_task_files`] with one filter, the two walks on two threads at once: on a
/// host with 100k sockets each takes tens of milliseconds, most of it in the kernel.
pub fn read_with_task_files(
    ebpf: &mut Ebpf,
    namespaces: &mut Namespaces,
    netns: u32,
    filter: &Filter,
) -> Result<(Vec<SocketView>, Vec<TaskFile>), TablesError> {
    let (tables, files) = with_filter(ebpf, filter, |ebpf| {
        let links = table_links(ebpf)?;
        let files_link = link(ebpf, TASK_FILES.0)?;
        std::thread::scope(|s| {
            let files = s.spawn(move || read_link(files_link));
            let tables = read_tables_in(namespaces, netns, links);
            let files = files.join().unwrap_or_else(|_| {
                Err(TablesError::Read(io::Error::other(
                    "the task-file reader stopped",
                )))
            });
            Ok((tables?, files?))
        })
    })
    .map_err(TablesError::named)?;
    Ok((table_sockets(&tables), task_files(&files)))
}

/// Attaches iterator program `name`: a link whose file runs it, in the network namespace of
/// the thread that makes the file.
fn link(ebpf: &mut Ebpf, name: &'static str) -> Result<IterLink, TablesError> {
    let p = iter_program(ebpf, name)?;
    let id = p.attach().map_err(|detail| TablesError::Attach {
        program: name,
        detail,
    })?;
    p.take_link(id).map_err(|detail| TablesError::Program {
        program: name,
        detail,
    })
}

fn table_links(ebpf: &mut Ebpf) -> Result<Vec<IterLink>, TablesError> {
    PROGRAMS.iter().map(|&(name, _)| link(ebpf, name)).collect()
}

/// Runs an iterator to its end: the records it wrote.
fn read_link(link: IterLink) -> Result<Vec<u8>, TablesError> {
    let mut bytes = Vec::new();
    link.into_file()
        .map_err(TablesError::Create)?
        .read_to_end(&mut bytes)
        .map_err(TablesError::Read)?;
    Ok(bytes)
}

/// Runs the table iterators inside namespace `netns`, which is the one they walk.
fn read_tables_in(
    namespaces: &mut Namespaces,
    netns: u32,
    links: Vec<IterLink>,
) -> Result<Vec<u8>, TablesError> {
    namespaces
        .run_in(netns, move || -> Result<Vec<u8>, TablesError> {
            let mut all = Vec::new();
            for link in links {
                all.extend(read_link(link)?);
            }
            Ok(all)
        })
        .ok_or(TablesError::NetnsGone(netns))?
}

fn table_sockets(bytes: &[u8]) -> Vec<SocketView> {
    let now = monotonic_ns();
    bytes
        .chunks_exact(size_of::<HolderRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of plain integers.
            let r: HolderRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            decode_holder(&r, now).socket
        })
        .collect()
}

fn task_files(bytes: &[u8]) -> Vec<TaskFile> {
    let now = monotonic_ns();
    bytes
        .chunks_exact(size_of::<TaskFileRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of plain integers.
            let r: TaskFileRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            TaskFile {
                owner: Owner {
                    pid: r.tgid,
                    comm: comm_str(&r.comm),
                    fd: r.fd as i32,
                    workload: None,
                    forward: None,
                },
                socket: decode_holder(&r.sock, now).socket,
            }
        })
        .collect()
}
