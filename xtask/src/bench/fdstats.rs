//! A process's BPF programs and their run statistics, from /proc/PID/fdinfo: what the VM's
//! BPF run-time pass reads (the guest has no bpftool). With kernel.bpf_stats_enabled=1 each
//! program's fdinfo counts its runs (`run_cnt`) and the time they took (`run_time_ns`).

use std::{collections::BTreeMap, fs};

use serde::{Deserialize, Serialize};

/// One program as its holder's fdinfo shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgStat {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The programs whose fds `pid` holds, by id.
pub fn programs_of(pid: i32) -> BTreeMap<u32, ProgStat> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let is_prog =
            fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        let Some(id) = field("prog_id") else { continue };
        let id = id as u32;
        out.entry(id).or_insert_with(|| ProgStat {
            id,
            name: name_of(id).unwrap_or_else(|| format!("prog {id}")),
            run_time_ns: field("run_time_ns").unwrap_or(0),
            run_cnt: field("run_cnt").unwrap_or(0),
        });
    }
    out
}

/// A program's name (16 bytes at offset 64 of `struct bpf_prog_info`), by its id.
fn name_of(id: u32) -> Option<String> {
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&id.to_le_bytes());
    // SAFETY: a zeroed bpf_attr of its full length.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 80];
    let mut get = [0u8; 16];
    get[..4].copy_from_slice(&(fd as u32).to_le_bytes());
    get[4..8].copy_from_slice(&(info.len() as u32).to_le_bytes());
    get[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    // SAFETY: `get` points at `info`, writable for the length it gives; `fd` is ours.
    let r = unsafe {
        let r = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            get.as_mut_ptr(),
            get.len(),
        );
        libc::close(fd as i32);
        r
    };
    if r < 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Run time and runs of each program between two readings, for programs that ran.
pub fn delta(before: &BTreeMap<u32, ProgStat>, after: &BTreeMap<u32, ProgStat>) -> Vec<ProgStat> {
    after
        .values()
        .filter_map(|a| {
            let (t0, n0) = before
                .get(&a.id)
                .map_or((0, 0), |b| (b.run_time_ns, b.run_cnt));
            let n = a.run_cnt.saturating_sub(n0);
            (n > 0).then(|| ProgStat {
                id: a.id,
                name: a.name.clone(),
                run_time_ns: a.run_time_ns.saturating_sub(t0),
                run_cnt: n,
            })
        })
        .collect()
}
