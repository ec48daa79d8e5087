//! BPF programs that can refuse a bind: cgroup `bind4`/`bind6` (and post-bind) programs on
//! the caller's cgroup. EPERM from bind() is never a port conflict; naming the program that
//! said no saves a long search. Also where cgroup v2 is mounted and which cgroup an id or a
//! process is, for naming workloads ([`Workloads`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStringExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    sockets::Holder,
    workload::{self, Kind, Workload},
};

/// Directories looked at, at most, to find a cgroup by id.
const MAX_DIRS: usize = 20_000;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// BPF_CGROUP_INET4_BIND, BPF_CGROUP_INET6_BIND, BPF_CGROUP_INET4_POST_BIND,
/// BPF_CGROUP_INET6_POST_BIND.
const BIND_ATTACH_TYPES: [(u32, &str); 4] = [
    (8, "bind4"),
    (9, "bind6"),
    (12, "post_bind4"),
    (13, "post_bind6"),
];

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    v2_mount(&mountinfo)
}

/// The mount point of the first cgroup2 line of a mountinfo text. In mountinfo the fifth
/// field is the mount point and the file system type follows the ` - ` separator.
fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(unescape))
            .flatten()
    })
}

/// Mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The cgroup v2 directory whose id (its inode number) is `id`.
fn path_of(id: u64) -> Option<PathBuf> {
    let root = cgroup2_root()?;
    let mut found = None;
    walk(&root, |dir, ino| {
        if ino == id {
            found = Some(dir.to_path_buf());
            return false;
        }
        true
    });
    found
}

/// Visits the v2 tree under `root` breadth first, at most [`MAX_DIRS`] directories, with each
/// directory's inode (its cgroup id); stops when `visit` returns false.
fn walk(root: &Path, mut visit: impl FnMut(&Path, u64) -> bool) {
    let mut queue = VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DIRS {
            return;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if !visit(&dir, meta.ino()) {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            queue.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// The cgroup v2 path of a process ("/system.slice/nginx.service"), from the `0::` line of
/// /proc/PID/cgroup. None when the process is gone or has no v2 line.
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The workload of a process, now. None when it is gone.
pub fn workload_of_pid(pid: u32) -> Option<Workload> {
    path_of_pid(pid).map(|p| named(Workload::parse(&p)))
}

/// Names the workload of every owner of `holders` (each pid read once).
pub fn name_owners<'a>(holders: impl IntoIterator<Item = &'a mut Holder>) {
    let mut known: HashMap<u32, Option<Workload>> = HashMap::new();
    for h in holders {
        for o in &mut h.owners {
            o.workload = known
                .entry(o.pid)
                .or_insert_with(|| workload_of_pid(o.pid))
                .clone();
        }
    }
}

/// How many cgroup ids [`Workloads`] remembers. Past that, the oldest half is forgotten.
const MAX_NAMED: usize = 8192;

/// Names cgroups: id → path (walking the v2 tree once, again on an id it does not know), path
/// → [`Workload`]. An id keeps its name after its cgroup is removed: the event that carries
/// it happened while it existed.
#[derive(Default)]
pub struct Workloads {
    /// Cgroup id → path relative to the v2 mount, in the order they were learned.
    paths: HashMap<u64, String>,
    /// Cgroup id → what its path says, once an event asked (pods' names read once).
    named: HashMap<u64, Arc<Workload>>,
    order: VecDeque<u64>,
    /// Ids a walk did not find. Cgroup ids are never reused and an event's cgroup existed
    /// when the event was made, so one that a walk after it did not find is gone for good.
    missing: HashSet<u64>,
}

impl Workloads {
    /// The workload of cgroup `id` (an event's `cgroup_id`). None for 0 or an id not found.
    pub fn of_id(&mut self, id: u64) -> Option<Arc<Workload>> {
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id) && !self.missing.contains(&id) {
            self.rewalk();
            if !self.paths.contains_key(&id) {
                self.missing.insert(id);
            }
        }
        if let Some(w) = self.named.get(&id) {
            return Some(w.clone());
        }
        let w = Arc::new(named(Workload::parse(self.paths.get(&id)?)));
        self.named.insert(id, w.clone());
        Some(w)
    }

    fn rewalk(&mut self) {
        let Some(root) = cgroup2_root() else { return };
        if self.missing.len() > MAX_NAMED {
            self.missing.clear();
        }
        let mut learned = Vec::new();
        walk(&root, |dir, ino| {
            let rel = dir.strip_prefix(&root).unwrap_or(dir);
            learned.push((ino, format!("/{}", rel.display())));
            true
        });
        for (ino, path) in learned {
            if self.paths.insert(ino, path).is_none() {
                self.order.push_back(ino);
            }
        }
        if self.paths.len() > MAX_NAMED {
            for ino in self.order.drain(..MAX_NAMED / 2) {
                self.paths.remove(&ino);
                self.named.remove(&ino);
            }
        }
    }
}

/// Adds the pod's names from the node's kubelet log directories, when it is a pod.
fn named(mut w: Workload) -> Workload {
    if let Some(Kind::Kubernetes {
        pod_uid,
        container_id,
        names,
        ..
    }) = &mut w.kind
    {
        let list = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        };
        *names = workload::pod_names(
            pod_uid,
            container_id.as_deref(),
            &list(POD_LOGS),
            &list(CONTAINER_LOGS),
        );
    }
    w
}

/// Where the kubelet keeps a directory per pod (`<ns>_<pod>_<uid>`) and a link per container
/// (`<pod>_<ns>_<container>-<id>.log`).
const POD_LOGS: &str = "/var/log/pods";
const CONTAINER_LOGS: &str = "/var/log/containers";

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The ids of the programs in effect on the cgroup open as `fd` for `attach_type`.
fn query(fd: i32, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: fd as u32,
        attach_type,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut attr,
            size_of::<QueryAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Says once per run that a cgroup's bind programs could not be listed (typically EPERM:
/// BPF_PROG_QUERY needs CAP_NET_ADMIN), so an explanation that names none is not read as
/// "there are none". Through `log`, which prints warnings on stderr: this module is below
/// [`crate::output`] and must not import it.
fn warn_unlisted(path: &Path, step: &str, e: &std::io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::warn!(
            "could not list the BPF bind programs on cgroup {} ({step}: {e}); EPERM \
             explanations will not name them",
            path.display()
        );
    }
}

/// "bind4 program 42 (deny_bind) on /sys/fs/cgroup/app": the bind programs in effect for
/// cgroup `id`.
pub fn bind_programs(id: u64) -> Vec<String> {
    if id == 0 {
        return vec![];
    }
    let Some(path) = path_of(id) else {
        return vec![];
    };
    let dir = match File::open(&path) {
        Ok(dir) => dir,
        // The cgroup went away since it was found: nothing to list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![],
        Err(e) => {
            warn_unlisted(&path, "opening it", &e);
            return vec![];
        }
    };
    let mut out = Vec::new();
    for (attach_type, what) in BIND_ATTACH_TYPES {
        // A partial list would be read as the whole one: none unless every query answered.
        let ids = match query(dir.as_raw_fd(), attach_type) {
            Ok(ids) => ids,
            Err(e) => {
                warn_unlisted(&path, "BPF_PROG_QUERY", &e);
                return vec![];
            }
        };
        for prog in ids {
            let name = aya::programs::loaded_programs()
                .flatten()
                .find(|p| p.id() == prog)
                .and_then(|p| p.name_as_str().map(str::to_string))
                .unwrap_or_default();
            out.push(format!(
                "{what} program {prog}{} (in effect for {})",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                },
                path.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(v2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            v2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn names_our_own_cgroup_by_id() {
        // Every machine this project tests on mounts cgroup v2 (unified or hybrid), so a
        // missing mount is a failure here, not a skip.
        let root = cgroup2_root().expect("no cgroup v2 mount in /proc/self/mountinfo");
        let mine =
            path_of_pid(std::process::id()).expect("no cgroup v2 line (0::) in /proc/self/cgroup");
        let dir = root.join(mine.trim_start_matches('/'));
        let id = std::fs::metadata(&dir).unwrap().ino();
        let mut w = Workloads::default();
        assert_eq!(w.of_id(id).map(|w| w.path.clone()), Some(mine));
        assert_eq!(w.of_id(0), None);
    }
}
