//! The kernel's socket tables, read through the iter/tcp and iter/udp programs.
//!
//! An iterator sees the network namespace of the thread that creates its fd, so the read runs
//! on a thread that joined the namespace in question. It sees listening, connected, TIME_WAIT
//! and UDP sockets with the kernel's own view of their options (the TIME_WAIT socket's
//! SO_REUSEADDR bit included, which decides the restart case). It does not see TCP sockets
//! that are bound but not listening: see [`crate::sockinfo`] for those.

use std::io::{self, Read as _};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
    programs::{Iter, ProgramError, links::LinkError},
};
use portwatch_common::{HolderRecord, ITER_ALL_PORTS, TaskFileRecord, maps, programs};
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
    #[error("{} map missing", maps::ITER_PORT)]
    PortMapMissing,
    #[error("{0}")]
    PortMap(MapError),
    #[error("setting the port: {0}")]
    SetPort(MapError),
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
            TablesError::PortMap(e) | TablesError::SetPort(e) => crate::errno::os_errno(e),
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

/// One socket a process holds, from the task-file iterator.
#[derive(Clone, Debug)]
pub struct TaskFile {
    pub owner: Owner,
    pub socket: SocketView,
}

/// Every TCP and UDP socket that a process holds, on `port` (all for None), with its holder,
/// from the kernel's fd tables: every network namespace at once (the socket says its own),
/// no fd duplicated, nothing read from /proc.
pub fn read_task_files(ebpf: &mut Ebpf, port: Option<u16>) -> Result<Vec<TaskFile>, TablesError> {
    set_port(ebpf, port)?;
    let (name, _) = TASK_FILES;
    let p = iter_program(ebpf, name)?;
    let id = p.attach().map_err(|detail| TablesError::Attach {
        program: name,
        detail,
    })?;
    let link = p.take_link(id).map_err(|detail| TablesError::Program {
        program: name,
        detail,
    })?;
    let mut bytes = Vec::new();
    link.into_file()
        .map_err(TablesError::Create)?
        .read_to_end(&mut bytes)
        .map_err(TablesError::Read)?;
    let now = monotonic_ns();
    Ok(bytes
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
        .collect())
}

/// Sets the port the iterators dump.
fn set_port(ebpf: &mut Ebpf, port: Option<u16>) -> Result<(), TablesError> {
    let mut cfg: Array<&mut MapData, u32> = Array::try_from(
        ebpf.map_mut(maps::ITER_PORT)
            .ok_or(TablesError::PortMapMissing)?,
    )
    .map_err(TablesError::PortMap)?;
    cfg.set(0, &port.map_or(ITER_ALL_PORTS, u32::from), 0)
        .map_err(TablesError::SetPort)
}

/// Every TCP and UDP socket on `port` (all ports for None) in namespace `netns`.
pub fn read(
    ebpf: &mut Ebpf,
    namespaces: &mut Namespaces,
    netns: u32,
    port: Option<u16>,
) -> Result<Vec<SocketView>, TablesError> {
    read_tables(ebpf, namespaces, netns, port).map_err(TablesError::named)
}

fn read_tables(
    ebpf: &mut Ebpf,
    namespaces: &mut Namespaces,
    netns: u32,
    port: Option<u16>,
) -> Result<Vec<SocketView>, TablesError> {
    set_port(ebpf, port)?;
    let mut links = Vec::new();
    for (name, _) in PROGRAMS {
        let p = iter_program(ebpf, name)?;
        let id = p.attach().map_err(|detail| TablesError::Attach {
            program: name,
            detail,
        })?;
        links.push(p.take_link(id).map_err(|detail| TablesError::Program {
            program: name,
            detail,
        })?);
    }
    let bytes = namespaces
        .run_in(netns, move || -> Result<Vec<u8>, TablesError> {
            let mut all = Vec::new();
            for link in links {
                let mut file = link.into_file().map_err(TablesError::Create)?;
                file.read_to_end(&mut all).map_err(TablesError::Read)?;
            }
            Ok(all)
        })
        .ok_or(TablesError::NetnsGone(netns))??;
    let now = monotonic_ns();
    Ok(bytes
        .chunks_exact(size_of::<HolderRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of plain integers.
            let r: HolderRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            decode_holder(&r, now).socket
        })
        .collect())
}
