//! Network namespaces: finding one by inode and running code inside it.
//!
//! Interface names, sysctls and the socket tables are per network namespace, and a process can
//! only see its own. So portwatch keeps a handle (an open /proc/PID/ns/net) per namespace it
//! meets, and runs lookups on a short-lived thread that has joined it: `setns(CLONE_NEWNET)`
//! changes only the calling thread.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use log::debug;

/// Namespace handles kept open at most; each pins its namespace in memory.
const MAX_HANDLES: usize = 256;

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
                && let Ok(f) = File::open(&path)
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
                && let Ok(f) = File::open(&p)
            {
                self.insert(ino, f);
            }
            found.push(ino);
        }
        found
    }

    /// Keeps a handle on the namespace at `path` (a /run/netns name or /proc/PID/ns/net).
    pub fn remember_path(&mut self, ino: u32, path: &Path) {
        if !self.handles.contains_key(&ino)
            && let Ok(f) = File::open(path)
        {
            self.insert(ino, f);
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
        self.ifnames.insert((ino, ifindex), name.clone());
        name
    }
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
                return File::open(entry.path()).ok();
            }
        }
    }
    for pid in crate::procfs::pids() {
        let path = format!("/proc/{pid}/ns/net");
        if inode_of(Path::new(&path)) == Some(ino) {
            return File::open(path).ok();
        }
    }
    for pid in crate::procfs::pids() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("ns/net");
            if inode_of(&path) == Some(ino) {
                return File::open(path).ok();
            }
        }
    }
    None
}
