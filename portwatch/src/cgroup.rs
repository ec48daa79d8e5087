//! BPF programs that can refuse a bind: cgroup `bind4`/`bind6` (and post-bind) programs on
//! the caller's cgroup. EPERM from bind() is never a port conflict; naming the program that
//! said no saves a long search.

use std::{
    collections::VecDeque,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
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
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup v2 directory whose id (its inode number) is `id`.
fn path_of(id: u64) -> Option<PathBuf> {
    let mut queue = VecDeque::from([cgroup2_root()?]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DIRS {
            return None;
        }
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
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
    None
}

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

fn query(fd: i32, attach_type: u32) -> Vec<u32> {
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
        return vec![];
    }
    ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec()
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
    let Ok(dir) = File::open(&path) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (attach_type, what) in BIND_ATTACH_TYPES {
        for prog in query(dir.as_raw_fd(), attach_type) {
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
