//! Processes from /proc: their names and the sockets they hold.

use std::collections::HashMap;

use crate::sockets::Owner;

/// Every process id in /proc.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Whether process (or thread) `pid` exists now.
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// A process's arguments, argv[0] first (empty when it is gone or a kernel thread).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of a process's network namespace.
pub fn netns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Whether `pid` has capability number `cap` in its effective set (None: process gone).
pub fn has_cap(pid: u32, cap: u32) -> Option<bool> {
    effective_caps(pid).map(|eff| eff & (1 << cap) != 0)
}

/// The effective capability set of process `pid` (`self` for this one), as a bit mask by
/// capability number. None when the process is gone or its status has no `CapEff:` line.
pub fn effective_caps(pid: impl std::fmt::Display) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    cap_eff(&status)
}

/// The `CapEff:` line of a `/proc/PID/status` text, parsed.
fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Socket inode → the processes (and fds) that hold it, for every process on the machine.
///
/// This is the same walk `ss -p` and `lsof` do. It is the only way to name the owner of a
/// socket, and it also finds sockets that appear in no kernel table portwatch can iterate
/// (bound but not listening).
pub fn socket_owners() -> HashMap<u64, Vec<Owner>> {
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
    for pid in pids() {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut name: Option<String> = None;
        for entry in dir.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let Some(ino) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let comm = name
                .get_or_insert_with(|| comm(pid).unwrap_or_default())
                .clone();
            owners.entry(ino).or_default().push(Owner {
                pid,
                comm,
                fd,
                workload: None,
                forward: None,
            });
        }
    }
    owners
}

/// Parses "socket:[12345]".
fn socket_inode(link: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// Whether portwatch can read every process's fd table: as root, or with CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH. Without, an owner that is not found may just be hidden.
pub fn sees_all_processes() -> bool {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    const CAP_SYS_PTRACE: u32 = 19;
    let pid = std::process::id();
    has_cap(pid, CAP_SYS_PTRACE) == Some(true) && has_cap(pid, CAP_DAC_READ_SEARCH) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"anon_inode:[eventfd]"), None);
    }

    #[test]
    fn reads_the_effective_capability_set() {
        let status = "Name:\tportwatch\nCapInh:\t0000000000000000\n\
                      CapEff:\t000001c000000400\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(0x1c0_0000_0400));
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert!(effective_caps("self").is_some());
    }

    #[test]
    fn finds_our_own_socket() {
        use std::os::unix::fs::MetadataExt;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&sock)
        ))
        .unwrap()
        .ino();
        let owners = socket_owners();
        let mine = owners.get(&ino).expect("our socket is listed");
        assert_eq!(mine[0].pid, std::process::id());
    }
}
