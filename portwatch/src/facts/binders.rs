//! Who bound each socket portwatch saw bound, by socket inode: names the owner of a holder
//! that has been closed since (or that the kernel holds for itself), where no process holds
//! it any more.

use std::{collections::HashMap, sync::Arc};

use portwatch_common::holder;

use crate::sockets::{Owner, OwnerStatus, SocketView};

/// Who bound the sockets portwatch saw bound, by socket inode. Bounded: the oldest are
/// forgotten first, so a week of churn holds no more than an hour of it.
#[derive(Default)]
pub(super) struct Binders {
    by_ino: HashMap<u64, Binder, std::hash::BuildHasherDefault<InoHasher>>,
    order: std::collections::VecDeque<u64>,
}

/// Socket inodes are kernel-assigned counters, not attacker-chosen keys: a multiply spreads
/// them well enough, at a fraction of SipHash's cost (the record sees every successful bind).
#[derive(Default)]
struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Who bound one socket, kept small: the record holds tens of thousands of them. The
/// workload is shared with every other bind from the same cgroup.
pub(super) struct Binder {
    pub(super) pid: u32,
    pub(super) fd: i32,
    pub(super) comm: Box<str>,
    pub(super) workload: Option<Arc<crate::workload::Workload>>,
}

impl Binder {
    fn owner(&self) -> Owner {
        Owner {
            pid: self.pid,
            comm: self.comm.to_string(),
            fd: self.fd,
            workload: self.workload.as_deref().cloned(),
            forward: None,
        }
    }
}

impl Binders {
    /// Sockets remembered at most (~60 bytes each, with the map's own).
    const MAX: usize = 1 << 15;

    pub(super) fn note(&mut self, ino: u64, binder: Binder) {
        if self.by_ino.insert(ino, binder).is_none() {
            self.order.push_back(ino);
            if self.order.len() > Self::MAX
                && let Some(old) = self.order.pop_front()
            {
                self.by_ino.remove(&old);
            }
        }
    }

    /// What is known of the owner of `s`, held now by `owners`; `flags` are the kernel side's
    /// [`portwatch_common::holder`] bits (0 when the socket came from elsewhere).
    /// `sees_all`: every process's sockets could be seen
    /// ([`super::FactFinder::sees_every_socket`]), so an owner that is not found is not merely
    /// hidden.
    pub(super) fn status(
        &self,
        s: &SocketView,
        owners: &[Owner],
        flags: u8,
        sees_all: bool,
    ) -> OwnerStatus {
        if !owners.is_empty() {
            OwnerStatus::Live
        } else if flags & holder::NO_FILE != 0 {
            OwnerStatus::InKernel {
                bound_by: self.by_ino.get(&s.ino).map(Binder::owner),
            }
        } else if flags & holder::ORPHAN != 0 || s.state.is_time_wait() || s.ino == 0 {
            OwnerStatus::NoProcess
        } else if let Some(b) = self.by_ino.get(&s.ino) {
            OwnerStatus::Closed {
                bound_by: b.owner(),
            }
        } else if sees_all {
            OwnerStatus::Unknown {
                why: "no process holds it now: it was closed after the call, or its only \
                      reference is in flight in a unix-socket message (SCM_RIGHTS)",
            }
        } else {
            OwnerStatus::Unknown {
                why: "portwatch cannot see every process's files: the kernel's task-file \
                      iterator is not available, so run it as root, or with CAP_SYS_PTRACE and \
                      CAP_DAC_READ_SEARCH",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        explain::tests::sock,
        sockets::{Proto, State},
    };

    fn binder(pid: u32) -> Binder {
        Binder {
            pid,
            fd: 3,
            comm: "server".into(),
            workload: None,
        }
    }

    /// A bound TCP socket with inode `ino`.
    fn socket(ino: u64) -> SocketView {
        let mut s = sock(Proto::Tcp, "0.0.0.0", 8080);
        s.ino = ino;
        s
    }

    fn bound_by(status: OwnerStatus) -> Option<u32> {
        match status {
            OwnerStatus::Closed { bound_by } => Some(bound_by.pid),
            OwnerStatus::InKernel { bound_by } => bound_by.map(|o| o.pid),
            _ => None,
        }
    }

    #[test]
    fn a_closed_socket_is_named_after_its_binder() {
        let mut b = Binders::default();
        b.note(11, binder(100));
        let status = b.status(&socket(11), &[], 0, true);
        assert_eq!(status.name(), "closed");
        let OwnerStatus::Closed { bound_by } = status else {
            unreachable!()
        };
        assert_eq!((bound_by.pid, bound_by.fd), (100, 3));
        assert_eq!(bound_by.comm, "server");
        // Another inode was never seen bound.
        assert_eq!(b.status(&socket(12), &[], 0, true).name(), "unknown");
    }

    #[test]
    fn a_live_owner_wins_over_the_record() {
        let mut b = Binders::default();
        b.note(11, binder(100));
        let holder = binder(200).owner();
        assert_eq!(b.status(&socket(11), &[holder], 0, true), OwnerStatus::Live);
    }

    #[test]
    fn sockets_no_process_can_hold_are_not_called_closed() {
        let mut b = Binders::default();
        b.note(11, binder(100));
        // The kernel's own socket: named "in-kernel", with the task that made it bind.
        let in_kernel = b.status(&socket(11), &[], holder::NO_FILE, true);
        assert_eq!(in_kernel.name(), "in-kernel");
        assert_eq!(bound_by(in_kernel), Some(100));
        assert_eq!(
            b.status(&socket(12), &[], holder::NO_FILE, true),
            OwnerStatus::InKernel { bound_by: None }
        );
        // Orphaned, TIME_WAIT, or without an inode: no process by nature, whoever bound it.
        assert_eq!(
            b.status(&socket(11), &[], holder::ORPHAN, true),
            OwnerStatus::NoProcess
        );
        let mut tw = socket(11);
        tw.state = State::TIME_WAIT;
        assert_eq!(b.status(&tw, &[], 0, true), OwnerStatus::NoProcess);
        assert_eq!(b.status(&socket(0), &[], 0, true), OwnerStatus::NoProcess);
    }

    #[test]
    fn an_unknown_owner_says_whether_portwatch_could_see_every_process() {
        let b = Binders::default();
        let why = |sees_all| match b.status(&socket(12), &[], 0, sees_all) {
            OwnerStatus::Unknown { why } => why,
            other => panic!("{other:?}"),
        };
        assert!(
            why(true).starts_with("no process holds it now"),
            "{}",
            why(true)
        );
        assert!(why(false).contains("CAP_SYS_PTRACE"), "{}", why(false));
    }

    #[test]
    fn the_oldest_binders_are_forgotten_first() {
        let mut b = Binders::default();
        for ino in 1..=Binders::MAX as u64 {
            b.note(ino, binder(ino as u32));
        }
        // Full: noting the first again replaces it in place and evicts nothing.
        b.note(1, binder(7));
        assert_eq!(b.by_ino.len(), Binders::MAX);
        assert_eq!(bound_by(b.status(&socket(1), &[], 0, true)), Some(7));
        // One more socket: the oldest one (inode 1) goes, the second oldest stays.
        b.note(Binders::MAX as u64 + 1, binder(0));
        assert_eq!(b.by_ino.len(), Binders::MAX);
        assert_eq!(b.status(&socket(1), &[], 0, true).name(), "unknown");
        assert_eq!(bound_by(b.status(&socket(2), &[], 0, true)), Some(2));
        assert_eq!(
            bound_by(b.status(&socket(Binders::MAX as u64 + 1), &[], 0, true)),
            Some(0)
        );
    }
}
