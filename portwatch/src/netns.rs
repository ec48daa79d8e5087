//! Network namespaces: finding one by inode and running code inside it.
//!
//! Interface names, sysctls and the socket tables are per network namespace, and a process can
//! only see its own. So portwatch keeps a handle (an open /proc/PID/ns/net) per namespace it
//! meets, and runs lookups on a short-lived thread that has joined it: `setns(CLONE_NEWNET)`
//! changes only the calling thread.
//!
//! What is read inside a namespace lives next to this: its sysctls ([`sysctls`]) and which
//! addresses its kernel takes as local ([`probe`]).

use std::{
    collections::HashMap,
    fs::File,
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt as _, MetadataExt},
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use log::debug;

use crate::sockets::SocketView;

pub mod probe;
pub mod sysctls;

/// Namespace handles kept open at most; each pins its namespace in memory.
const MAX_HANDLES: usize = 256;
/// Interface names remembered at most (namespaces and interfaces come and go).
const MAX_IFNAMES: usize = 4096;

pub struct Namespaces {
    /// portwatch's own namespace, where no thread switch is needed.
    own: u32,
    handles: HashMap<u32, File>,
    ifnames: HashMap<(u32, u32), Option<String>>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            own: current(),
            handles: HashMap::new(),
            ifnames: HashMap::new(),
        }
    }
}

/// Inode of the calling thread's network namespace.
pub fn current() -> u32 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// Set once opening a namespace failed for want of file descriptors (EMFILE, ENFILE): then a
/// namespace that cannot be entered is not "gone", and the error says so.
static OUT_OF_FILES: AtomicBool = AtomicBool::new(false);

/// Whether opening a namespace has failed for want of file descriptors.
pub fn ran_out_of_files() -> bool {
    OUT_OF_FILES.load(Ordering::Relaxed)
}

/// Opens a namespace file for a handle, noting when the open-files limit was the reason it
/// failed.
fn open_handle(path: &Path) -> Option<File> {
    match File::open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            if e.raw_os_error().is_some_and(crate::limits::is_out_of_files) {
                OUT_OF_FILES.store(true, Ordering::Relaxed);
            }
            None
        }
    }
}

fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

impl Namespaces {
    /// Remembers namespace `ino` if thread `tid` of process `pid` is in it. Call this as early
    /// as possible after an event: short-lived processes take their /proc entry with them.
    /// The thread's own entry comes first: a thread can unshare or join a namespace alone.
    pub fn note(&mut self, ino: u32, pid: u32, tid: u32) {
        if ino == 0 || ino == self.own || self.handles.contains_key(&ino) {
            return;
        }
        for path in [
            format!("/proc/{pid}/task/{tid}/ns/net"),
            format!("/proc/{pid}/ns/net"),
        ] {
            if inode_of(Path::new(&path)) == Some(ino)
                && let Some(f) = open_handle(Path::new(&path))
            {
                self.insert(ino, f);
                return;
            }
        }
    }

    fn insert(&mut self, ino: u32, f: File) {
        if self.handles.len() >= MAX_HANDLES {
            self.handles.clear();
        }
        self.handles.insert(ino, f);
    }

    /// A handle on namespace `ino`: remembered, or found under /run/netns or in any process.
    pub fn handle(&mut self, ino: u32) -> Option<&File> {
        if !self.handles.contains_key(&ino) {
            let found = find_namespace(ino)?;
            self.insert(ino, found);
        }
        self.handles.get(&ino)
    }

    /// Closes the handle on namespace `ino` and forgets its interface names.
    pub fn forget(&mut self, ino: u32) {
        self.handles.remove(&ino);
        self.ifnames.retain(|(n, _), _| *n != ino);
    }

    /// Runs `f` inside network namespace `ino` (directly when it is ours).
    pub fn run_in<R: Send>(&mut self, ino: u32, f: impl FnOnce() -> R + Send) -> Option<R> {
        if ino == 0 || ino == self.own {
            return Some(f());
        }
        let fd = self.handle(ino)?.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    debug!(
                        "setns into netns {ino}: {}",
                        std::io::Error::last_os_error()
                    );
                    return None;
                }
                Some(f())
            })
            .join()
            .ok()
            .flatten()
        })
    }

    /// Every network namespace visible from here: ours, the named ones (`ip netns`), and
    /// those of all processes. Keeps a handle on each.
    pub fn discover(&mut self) -> Vec<u32> {
        let mut found = vec![self.own];
        let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.extend(crate::procfs::pids().map(|p| format!("/proc/{p}/ns/net").into()));
        for p in paths {
            let Some(ino) = inode_of(&p) else { continue };
            if found.contains(&ino) {
                continue;
            }
            if !self.handles.contains_key(&ino)
                && let Some(f) = open_handle(&p)
            {
                self.insert(ino, f);
            }
            found.push(ino);
        }
        found
    }

    /// Keeps `handle` (from [`open_path`]) as the handle on namespace `ino`.
    pub fn remember(&mut self, ino: u32, handle: File) {
        if !self.handles.contains_key(&ino) {
            self.insert(ino, handle);
        }
    }

    /// The index of interface `name` in namespace `ino`.
    pub fn ifindex(&mut self, ino: u32, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        let idx = self.run_in(ino, move || unsafe { libc::if_nametoindex(c.as_ptr()) })?;
        (idx != 0).then_some(idx)
    }

    /// The name of interface `ifindex` in namespace `ino`.
    pub fn ifname(&mut self, ino: u32, ifindex: u32) -> Option<String> {
        if let Some(cached) = self.ifnames.get(&(ino, ifindex)) {
            return cached.clone();
        }
        let name = self.run_in(ino, || if_indextoname(ifindex)).flatten();
        if self.ifnames.len() >= MAX_IFNAMES {
            self.ifnames.clear();
        }
        self.ifnames.insert((ino, ifindex), name.clone());
        name
    }

    /// Fills in the name of the interface `socket` is bound to (SO_BINDTODEVICE), looked up
    /// in the socket's own namespace: the one way every socket portwatch shows gets it.
    pub fn name_device(&mut self, socket: &mut SocketView) {
        if socket.options.bound_dev_if != 0 {
            socket.options.device = self.ifname(socket.netns, socket.options.bound_dev_if);
        }
    }
}

/// Why a path given as a network namespace cannot be used as one.
#[derive(Debug, thiserror::Error)]
pub enum NetnsPathError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace ({what}); give /run/netns/NAME or /proc/PID/ns/net")]
    NotNetns { path: String, what: String },
}

/// `ioctl(NS_GET_NSTYPE)`: the CLONE_NEW* type of a namespace file (linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens `path` and checks that it is a network namespace: returns its inode and an open
/// handle. It is opened without blocking (a FIFO would otherwise wait for a writer forever),
/// and the kernel is asked what it is (a regular file or another kind of namespace is not
/// one, whatever its name).
pub fn open_path(path: &Path) -> Result<(u32, File), NetnsPathError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| NetnsPathError::Open {
            path: shown.clone(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| NetnsPathError::Open {
        path: shown.clone(),
        source,
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument; on a file that is not a namespace it fails.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype == libc::CLONE_NEWNET {
        return Ok((meta.ino() as u32, file));
    }
    let ft = meta.file_type();
    let what = if nstype > 0 {
        "another kind of namespace".to_string()
    } else if ft.is_fifo() {
        "a FIFO".to_string()
    } else if ft.is_dir() {
        "a directory".to_string()
    } else if ft.is_file() {
        "a regular file".to_string()
    } else {
        "not a namespace file".to_string()
    };
    Err(NetnsPathError::NotNetns { path: shown, what })
}

fn if_indextoname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Looks for namespace `ino` among `ip netns` names, then among all processes and threads.
fn find_namespace(ino: u32) -> Option<File> {
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            if inode_of(&entry.path()) == Some(ino) {
                return open_handle(&entry.path());
            }
        }
    }
    for pid in crate::procfs::pids() {
        let path = format!("/proc/{pid}/ns/net");
        if inode_of(Path::new(&path)) == Some(ino) {
            return open_handle(Path::new(&path));
        }
    }
    for pid in crate::procfs::pids() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("ns/net");
            if inode_of(&path) == Some(ino) {
                return open_handle(&path);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A private scratch directory under the system's temp dir, removed at the end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pw-netns-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_network_namespace_opens() {
        let (ino, _f) = open_path(Path::new("/proc/self/ns/net")).expect("our own netns");
        assert_eq!(ino, current());
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let dir = Scratch::new("file");
        let path = dir.0.join("blue");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(b"x"))
            .expect("file");
        let err = open_path(&path).expect_err("a regular file");
        assert!(
            err.to_string()
                .contains("is not a network namespace (a regular file)"),
            "{err}"
        );
    }

    /// Before: opening a FIFO waited for a writer forever.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = Scratch::new("fifo");
        let path = dir.0.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = open_path(&path).expect_err("a FIFO");
        assert!(err.to_string().contains("(a FIFO)"), "{err}");
    }

    #[test]
    fn another_kind_of_namespace_is_refused() {
        let err = open_path(Path::new("/proc/self/ns/mnt")).expect_err("a mount namespace");
        assert!(
            err.to_string().contains("another kind of namespace"),
            "{err}"
        );
    }
}
