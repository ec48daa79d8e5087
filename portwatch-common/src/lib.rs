//! Types shared by the kernel programs and the CLI. Everything here is `#[repr(C)]` plain data:
//! the kernel side writes these bytes into maps and the ring buffer, and user space reads them
//! back with the same layout.
//!
//! It is the whole contract: every record, every name one side looks up in the other (maps,
//! programs, globals), every bit and how numbers are packed where the kernel side passes them
//! between its functions ([`pack`]). A `const` assertion pins the size of every record, so a
//! field added on one side only fails the build.
#![cfg_attr(not(test), no_std)]

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// Address families as the kernel numbers them.
pub const AF_UNSPEC: u16 = 0;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// What produced a record in the ring buffer. Every record starts with this byte.
pub mod record {
    /// A bind() attempt: [`crate::BindEvent`].
    pub const BIND: u8 = 1;
    /// A listen() call: [`crate::BindEvent`] too, since it carries the same socket facts.
    pub const LISTEN: u8 = 2;
    /// Another socket on the call's port, as the kernel had it at the instant of the call:
    /// [`crate::HolderRecord`]. Holders come just before the bind or listen event of the same
    /// thread, which says how many were sent ([`crate::BindEvent::holders`]).
    pub const HOLDER: u8 = 3;
    /// A connect() that failed for want of a local port: [`crate::BindEvent`], with the
    /// destination in the `req_*` fields and the local address (if any) in `bound_*`.
    pub const CONNECT: u8 = 4;
}

/// The errno values both sides compare results with (as the kernel numbers them on every
/// architecture portwatch builds for: `asm-generic/errno-base.h` and `errno.h`).
pub mod errno {
    pub const EBADF: i32 = 9;
    /// UDP: autobind found no free local port.
    pub const EAGAIN: i32 = 11;
    pub const EFAULT: i32 = 14;
    pub const ENOTSOCK: i32 = 88;
    /// The local address/port is taken (TCP connect(): rare, the kernel mostly says
    /// EADDRNOTAVAIL).
    pub const EADDRINUSE: i32 = 98;
    /// TCP connect(): no local port free toward this destination, the 4-tuple exists, or the
    /// source address is not local.
    pub const EADDRNOTAVAIL: i32 = 99;
}

/// The errnos a connect() is traced for: the ones about the local port. Every other result
/// (success, EINPROGRESS, ECONNREFUSED...) is dropped in the kernel right after the return value
/// is read, so tracing connect() costs next to nothing.
pub mod connect_errno {
    use crate::errno::{EADDRINUSE, EADDRNOTAVAIL, EAGAIN};

    /// Whether a connect() return value is one portwatch traces.
    #[inline(always)]
    pub const fn traced(ret: i32) -> bool {
        ret == -EADDRNOTAVAIL || ret == -EADDRINUSE || ret == -EAGAIN
    }
}

/// An fexit program and the kernel function it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FexitTarget {
    /// The program's name in the object.
    pub prog: &'static str,
    /// The kernel function.
    pub func: &'static str,
    /// How many parameters the program assumes `func` takes. An fexit program reads the
    /// return value from the context slot right after the parameters (the kernel side reads
    /// slot `params`), so where a kernel's `func` takes a different number, the program would
    /// take a parameter for the result: the loader checks it against the kernel's BTF.
    pub params: usize,
}

/// Names of the programs in the kernel object. aya names a program after its function, so the
/// kernel side's functions carry exactly these names (a unit test of `portwatch` finds each
/// one in the built object); user space finds programs only through these.
pub mod programs {
    use crate::FexitTarget;

    /// The tracepoints' category: `syscalls/sys_exit_*`.
    pub const TRACEPOINT_CATEGORY: &str = "syscalls";
    /// Tracepoint backend: one program per syscall, at its exit.
    pub const SYS_EXIT_BIND: &str = "sys_exit_bind";
    pub const SYS_EXIT_LISTEN: &str = "sys_exit_listen";
    /// Attached only when connect() is traced.
    pub const SYS_EXIT_CONNECT: &str = "sys_exit_connect";

    /// `int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len)`.
    pub const FEXIT_INET_BIND: FexitTarget = FexitTarget {
        prog: "fexit_inet_bind",
        func: "inet_bind",
        params: 3,
    };
    /// `inet6_bind`: the same shape.
    pub const FEXIT_INET6_BIND: FexitTarget = FexitTarget {
        prog: "fexit_inet6_bind",
        func: "inet6_bind",
        params: 3,
    };
    /// `int inet_listen(struct socket *sock, int backlog)`.
    pub const FEXIT_INET_LISTEN: FexitTarget = FexitTarget {
        prog: "fexit_inet_listen",
        func: "inet_listen",
        params: 2,
    };
    /// `bool inet_bind_conflict(sk, sk2, uid, relax, reuseport_cb_ok, reuseport_ok)`.
    pub const FEXIT_INET_BIND_CONFLICT: FexitTarget = FexitTarget {
        prog: "fexit_inet_bind_conflict",
        func: "inet_bind_conflict",
        params: 6,
    };
    /// `int inet_stream_connect(sock, uaddr, addr_len, flags)`: TCP (and every SOCK_STREAM
    /// inet socket), IPv4 and IPv6. Attached only when connect() is traced.
    pub const FEXIT_INET_STREAM_CONNECT: FexitTarget = FexitTarget {
        prog: "fexit_inet_stream_connect",
        func: "inet_stream_connect",
        params: 4,
    };
    /// `inet_dgram_connect`: the same shape, for UDP.
    pub const FEXIT_INET_DGRAM_CONNECT: FexitTarget = FexitTarget {
        prog: "fexit_inet_dgram_connect",
        func: "inet_dgram_connect",
        params: 4,
    };

    /// The socket table iterators (iter/tcp, iter/udp) and the task-file one.
    pub const ITER_TCP: &str = "iter_tcp";
    pub const ITER_UDP: &str = "iter_udp";
    pub const ITER_TASK_FILE: &str = "iter_task_file";

    /// How much of a program's name the kernel keeps (BPF_OBJ_NAME_LEN, 16, less the NUL):
    /// what bpftool shows.
    pub const KERNEL_NAME_LEN: usize = 15;

    /// `name` as the kernel keeps it ([`KERNEL_NAME_LEN`]). Names are ASCII.
    pub fn kernel_name(name: &str) -> &str {
        &name[..name.len().min(KERNEL_NAME_LEN)]
    }
}

/// Names of the kernel side's read-only globals, which user space fills in before load. The
/// kernel side's statics carry exactly these names (`#[unsafe(no_mangle)]`).
pub mod globals {
    /// The [`crate::KernelLayout`].
    pub const LAYOUT: &str = "LAYOUT";
    /// The [`crate::Settings`].
    pub const SETTINGS: &str = "SETTINGS";
}

/// Whether two names are the same: for `const` assertions that a name the kernel side must
/// spell as a literal (an attribute's argument) is the contract's.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Bits in [`BindEvent::walk`]: how the kernel side looked for the port's other owners.
pub mod walk {
    /// The port's bucket in the kernel's bind table (TCP) or UDP hash was walked at the call.
    pub const DONE: u8 = 1 << 0;
    /// More owners than the kernel side sends, or a longer chain than it follows: the holder
    /// list is incomplete.
    pub const CUT: u8 = 1 << 1;
    /// The table could not be reached (unreadable memory, a protocol without one).
    pub const NO_TABLE: u8 = 1 << 2;
    /// Holder records were dropped because the ring buffer was full.
    pub const LOST: u8 = 1 << 3;
    /// A successful bind on a port the caller chose: the other protocol's owners of the same
    /// number (TCP next to UDP) were read at the call too, in full, and sent with the call's
    /// own. Without it, user space reads them after the fact, when they may be gone.
    pub const OTHER_SPACE: u8 = 1 << 4;
}

/// Bits in [`HolderRecord::flags`].
pub mod holder {
    /// A full socket: `uid` and `ino` are read (TIME_WAIT and request socks have neither).
    pub const FULL: u8 = 1 << 0;
    /// A full socket whose `struct socket` has no file: opened by the kernel itself (a tunnel,
    /// a kernel service), so no process can own it.
    pub const NO_FILE: u8 = 1 << 1;
    /// A full socket with no `struct socket` at all: orphaned (its process closed it; the
    /// kernel finishes the connection).
    pub const ORPHAN: u8 = 1 << 2;
    /// Reported by the kernel's own conflict check (fexit on `inet_bind_conflict`): this is
    /// the very socket the kernel compared and found in the way.
    pub const CONFLICT_CHECK: u8 = 1 << 3;
}

/// How many holders the kernel side sends with one event, at most.
pub const MAX_HOLDERS: u8 = 8;

/// Which kernel hooks fill the events. The kernel side writes the `u8` value into
/// [`BindEvent::backend`]; user space names it with [`Backend::name`] everywhere (flags, JSON,
/// messages), so the two forms cannot drift apart.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The syscall tracepoints: work on every kernel with syscall tracepoints, including those
    /// that refuse trampolines.
    Tracepoint = 1,
    /// fexit on the kernel's inet bind/listen functions: every bind path (io_uring too).
    Fexit = 2,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Fexit, Backend::Tracepoint];

    /// The stable name, as `--backend` takes it and JSON prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Tracepoint => "tracepoint",
            Backend::Fexit => "fexit",
        }
    }

    pub fn from_raw(v: u8) -> Option<Backend> {
        match v {
            1 => Some(Backend::Tracepoint),
            2 => Some(Backend::Fexit),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of the maps both sides use. The kernel side's `#[map]` statics carry exactly these
/// names (aya names a map after its static); user space opens maps only through these.
pub mod maps {
    /// The ring buffer of records ([`crate::record`]).
    pub const EVENTS: &str = "EVENTS";
    /// The `--port` set as a bitmap of [`crate::PORT_WORDS`] u64 words.
    pub const PORT_BITS: &str = "PORT_BITS";
    /// Per-CPU counters of events dropped in the kernel, indexed by [`crate::lost`].
    pub const LOST: &str = "LOST";
    /// `[0]`: which sockets the socket-table and task-file iterators dump, an
    /// [`crate::IterFilter`].
    pub const ITER_FILTER: &str = "ITER_FILTER";
    /// The peer ports an [`crate::IterFilter`] with `peer_ports` keeps, as a bitmap of
    /// [`crate::PORT_WORDS`] u64 words.
    pub const ITER_PEER_PORTS: &str = "ITER_PEER_PORTS";
}

/// Indices into the [`maps::LOST`] counters.
pub mod lost {
    /// The ring buffer was full.
    pub const RINGBUF: u32 = 0;
    /// How many counters there are.
    pub const COUNT: u32 = 1;
}

/// Size of the [`maps::EVENTS`] ring buffer, 4 MiB: tens of thousands of events, far more than
/// pile up between two polls of the reader at the bind rates BENCHMARKS.md measures.
pub const RING_BYTES: u32 = 1 << 22;

/// Words of the [`maps::PORT_BITS`] and [`maps::ITER_PEER_PORTS`] bitmaps: one bit per port.
pub const PORT_WORDS: u32 = 65536 / 64;

/// Where a port sits in the [`maps::PORT_BITS`] bitmap: bit `port % 64` of word `port / 64`.
/// User space sets the bits, the kernel side tests them.
pub mod port_bits {
    /// The word that holds `port`'s bit.
    #[inline(always)]
    pub const fn word(port: u16) -> u32 {
        (port >> 6) as u32
    }

    /// `port`'s bit in its word.
    #[inline(always)]
    pub const fn bit(port: u16) -> u64 {
        1u64 << (port & 63)
    }
}

/// How the kernel side packs several numbers into one `u64` where it passes them between its
/// own functions: a BPF function takes at most five arguments and returns one number, and a
/// global one takes plain numbers only. Written once here, with host tests, so the packing and
/// the unpacking cannot drift apart. Nothing packed here crosses to user space.
pub mod pack {
    /// A holder walk's result: how many holders it found (or sent), and its [`crate::walk`]
    /// bits.
    #[inline(always)]
    pub const fn walk_result(count: u8, walk: u8) -> u64 {
        count as u64 | (walk as u64) << 8
    }

    /// The count of a [`walk_result`].
    #[inline(always)]
    pub const fn walk_count(result: u64) -> u8 {
        result as u8
    }

    /// The [`crate::walk`] bits of a [`walk_result`].
    #[inline(always)]
    pub const fn walk_bits(result: u64) -> u8 {
        (result >> 8) as u8
    }

    /// A call's return value and fd.
    #[inline(always)]
    pub const fn ret_fd(ret: i32, fd: i32) -> u64 {
        ret as u32 as u64 | (fd as u32 as u64) << 32
    }

    /// The return value of a [`ret_fd`].
    #[inline(always)]
    pub const fn ret(ret_fd: u64) -> i32 {
        ret_fd as u32 as i32
    }

    /// The fd of a [`ret_fd`].
    #[inline(always)]
    pub const fn fd(ret_fd: u64) -> i32 {
        (ret_fd >> 32) as u32 as i32
    }

    /// An event's [`crate::record`] tag, its [`crate::Backend`] value, the [`walk_result`] of
    /// its holders and its socket's network namespace (0 when unknown).
    #[inline(always)]
    pub const fn meta(record: u8, backend: u8, walked: u64, netns: u32) -> u64 {
        record as u64 | (backend as u64) << 8 | (walked & 0xffff) << 16 | (netns as u64) << 32
    }

    /// The record tag of a [`meta`].
    #[inline(always)]
    pub const fn meta_record(meta: u64) -> u8 {
        meta as u8
    }

    /// The backend value of a [`meta`].
    #[inline(always)]
    pub const fn meta_backend(meta: u64) -> u8 {
        (meta >> 8) as u8
    }

    /// The [`walk_result`] of a [`meta`].
    #[inline(always)]
    pub const fn meta_walked(meta: u64) -> u64 {
        (meta >> 16) & 0xffff
    }

    /// The network namespace of a [`meta`].
    #[inline(always)]
    pub const fn meta_netns(meta: u64) -> u32 {
        (meta >> 32) as u32
    }

    /// A socket's protocol, type and `sk_uid`.
    #[inline(always)]
    pub const fn body(protocol: u16, sock_type: u16, uid: u32) -> u64 {
        protocol as u64 | (sock_type as u64) << 16 | (uid as u64) << 32
    }

    /// The protocol of a [`body`].
    #[inline(always)]
    pub const fn body_protocol(body: u64) -> u16 {
        body as u16
    }

    /// The socket type of a [`body`].
    #[inline(always)]
    pub const fn body_sock_type(body: u64) -> u16 {
        (body >> 16) as u16
    }

    /// The `sk_uid` of a [`body`].
    #[inline(always)]
    pub const fn body_uid(body: u64) -> u32 {
        (body >> 32) as u32
    }
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    /// A request sock: a half-open connection, not a socket that holds a port.
    pub const NEW_SYN_RECV: u8 = 12;
}

/// IP protocol numbers.
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// Socket option bits in [`BindEvent::options`] and [`SockRecord::options`].
pub mod opt {
    pub const REUSEADDR: u16 = 1 << 0;
    pub const REUSEPORT: u16 = 1 << 1;
    pub const V6ONLY: u16 = 1 << 2;
    pub const FREEBIND: u16 = 1 << 3;
    pub const TRANSPARENT: u16 = 1 << 4;
    pub const BIND_ADDRESS_NO_PORT: u16 = 1 << 5;
}

/// Bits in [`BindEvent::flags`]: what the kernel side could not read. User space reports these
/// instead of showing a zero that looks like data.
pub mod flags {
    /// The sockaddr passed by the caller could not be read.
    pub const NO_REQUEST: u8 = 1 << 0;
    /// The socket behind the fd could not be reached (closed by another thread, not a socket).
    pub const NO_SOCKET: u8 = 1 << 1;
    /// The socket has no file: the kernel opened it for itself (a VXLAN or Geneve device's
    /// UDP port, WireGuard's, the NFS client's), and the task is the one that made it do so
    /// (e.g. `ip link set vxlan0 up`). Only the fexit backend sees such binds.
    pub const KERNEL_SOCKET: u8 = 1 << 2;
}

/// Where one field of a kernel struct lives, as found in the running kernel's BTF.
///
/// Plain fields and bitfields are read the same way: `size` bytes at `offset`, then shifted
/// right by `shift` and masked to `bits` bits (no mask when `bits` is 0). That one shape covers
/// the 6.1 bitfields (`inet_sock.freebind`) and the 6.6+ `inet_flags` word alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    /// 1, 2, 4 or 8; 0 means the running kernel has no such field and reads yield 0.
    pub size: u8,
    pub shift: u8,
    pub bits: u8,
    pub _pad: u8,
}

impl Field {
    pub const fn plain(offset: u32, size: u8) -> Self {
        Self {
            offset,
            size,
            shift: 0,
            bits: 0,
            _pad: 0,
        }
    }
}

/// Field locations the kernel programs need, resolved from BTF by user space at load time and
/// handed to the programs as a read-only global. Nothing here is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelLayout {
    // task → fd table → file → socket → sock
    pub task_files: Field,
    pub files_fdt: Field,
    pub fdt_max_fds: Field,
    pub fdt_fd: Field,
    pub file_private_data: Field,
    pub inode_ino: Field,
    pub socket_sk: Field,
    /// `socket_alloc.vfs_inode`: where a socket's inode sits after it. Only the offset counts.
    pub socket_inode: Field,
    // struct sock_common / struct sock
    pub sk_family: Field,
    pub sk_state: Field,
    pub sk_reuse: Field,
    pub sk_reuseport: Field,
    pub sk_ipv6only: Field,
    pub sk_bound_dev_if: Field,
    pub sk_num: Field,
    pub sk_rcv_saddr: Field,
    /// `skc_v6_rcv_saddr`: 16 bytes at this offset (size is 0 without IPv6).
    pub sk_v6_rcv_saddr: Field,
    pub sk_daddr: Field,
    pub sk_v6_daddr: Field,
    pub sk_dport: Field,
    pub sk_net: Field,
    pub net_inum: Field,
    pub sk_socket: Field,
    pub sk_protocol: Field,
    pub sk_type: Field,
    pub sk_uid: Field,
    // struct inet_sock
    pub inet_freebind: Field,
    pub inet_transparent: Field,
    pub inet_bind_address_no_port: Field,
    // struct inet_timewait_sock
    pub tw_timer_expires: Field,
    pub tw_substate: Field,
    // the saved user registers (`struct pt_regs`): the syscall's arguments at its exit
    pub regs_di: Field,
    pub regs_si: Field,
    pub regs_dx: Field,
    pub regs_orig_ax: Field,
    // who owns a port: the kernel's bind table (TCP) and UDP hash
    /// `socket.file`: null for a socket the kernel opened for itself.
    pub socket_file: Field,
    // task_file iterator: is this file a socket, and whose
    pub file_inode: Field,
    pub inode_mode: Field,
    pub task_tgid: Field,
    /// `task_struct.comm`: 16 bytes at this offset.
    pub task_comm: Field,
    /// `task_struct.pid`: the thread id.
    pub task_pid: Field,
    /// `sock_common.skc_bind_node`: links a socket (TIME_WAIT too) into its bind bucket.
    pub sk_bind_node: Field,
    /// `sock_common.skc_node`: links a UDP socket into its hash slot.
    pub sk_node: Field,
    pub sk_prot: Field,
    pub net_hash_mix: Field,
    /// `net.ipv4.tcp_death_row.hashinfo`.
    pub net_tcp_hashinfo: Field,
    /// `net.ipv4.udp_table` (6.2+; size 0 before, see `proto_udp_table`).
    pub net_udp_table: Field,
    /// `proto.h.udp_table`: where kernels before 6.2 keep the UDP table.
    pub proto_udp_table: Field,
    pub hashinfo_bhash: Field,
    pub hashinfo_bhash_size: Field,
    /// `sizeof(struct inet_bind_hashbucket)`, in `offset`; and `chain` in it.
    pub bhash_bucket_size: Field,
    pub bhash_bucket_chain: Field,
    pub tb_net: Field,
    pub tb_port: Field,
    pub tb_node: Field,
    /// `inet_bind_bucket.owners` (before 6.8) or, from 6.8, `.bhash2` (a list of bind2 buckets,
    /// each with its owners): see `tb_has_bhash2`.
    pub tb_owners: Field,
    pub tb2_bhash_node: Field,
    pub tb2_owners: Field,
    /// 1 in `offset` when sockets hang off bind2 buckets (6.8+), 0 when off the bind bucket.
    pub tb_has_bhash2: Field,
    pub icsk_bind_hash: Field,
    /// `inet_connection_sock.icsk_bind2_hash` (6.1+; size 0 before).
    pub icsk_bind2_hash: Field,
    pub udp_table_hash: Field,
    pub udp_table_mask: Field,
    /// `sizeof(struct udp_hslot)`, in `offset`.
    pub udp_hslot_size: Field,
}

/// One bind(), listen() or failed connect() as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BindEvent {
    /// [`record::BIND`], [`record::LISTEN`] or [`record::CONNECT`].
    pub record: u8,
    /// A [`Backend`] as its `u8` value.
    pub backend: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// `skc_state` after the call (TCP_CLOSE = 7, TCP_LISTEN = 10).
    pub state: u8,
    /// Address family of the sockaddr the caller passed (bind only).
    pub req_family: u16,
    /// Port the caller asked for, host order.
    pub req_port: u16,
    /// Address the caller asked for: 4 bytes for IPv4, 16 for IPv6.
    pub req_addr: [u8; 16],
    pub req_scope_id: u32,
    /// Return value of the syscall or kernel function (0 or -errno).
    pub ret: i32,
    /// Boot-time clock, nanoseconds.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Inode of the socket, as `ss -e` and /proc/PID/fd show it.
    pub sock_ino: u64,
    pub pid: u32,
    pub tid: u32,
    /// Real uid of the calling task.
    pub uid: u32,
    /// `sk_uid`: the uid SO_REUSEPORT compares.
    pub sk_uid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub bound_dev_if: u32,
    /// The fd passed to bind()/listen(); -1 where the hook does not see it (fexit).
    pub fd: i32,
    /// Socket family (AF_INET or AF_INET6).
    pub family: u16,
    pub protocol: u16,
    pub sock_type: u16,
    /// Local port after the call, host order (the ephemeral port for port 0).
    pub bound_port: u16,
    /// Local address after the call.
    pub bound_addr: [u8; 16],
    /// [`opt`] bits.
    pub options: u16,
    /// Raw `skc_reuse` (1 = SO_REUSEADDR, 2 = forced by the kernel).
    pub reuse: u8,
    /// [`walk`] bits: whether and how the port's other owners were read at the call.
    pub walk: u8,
    pub comm: [u8; COMM_LEN],
    /// How many [`HolderRecord`]s were sent just before this event.
    pub holders: u8,
    pub _pad: [u8; 7],
}

/// A socket on a port as the kernel has it: another owner of a call's port, read at the instant
/// of the call (`tid` says whose), or one socket from the iter/tcp and iter/udp table dumps
/// (`tid` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HolderRecord {
    /// [`record::HOLDER`].
    pub record: u8,
    pub state: u8,
    pub family: u16,
    /// The thread whose call this holder belongs to.
    pub tid: u32,
    pub protocol: u16,
    pub port: u16,
    /// Peer port, host order (connected sockets).
    pub dport: u16,
    /// [`opt`] bits (only those in `sock_common` when not [`holder::FULL`]).
    pub options: u16,
    pub bound_dev_if: u32,
    /// `sk_uid`; only with [`holder::FULL`].
    pub uid: u32,
    pub netns: u32,
    /// [`holder`] bits.
    pub flags: u8,
    /// Raw `skc_reuse`.
    pub reuse: u8,
    /// For a TIME_WAIT sock: the state it stands for (`tw_substate`: TIME_WAIT, or FIN_WAIT2
    /// for a closed socket whose peer has not closed yet). 0 otherwise.
    pub substate: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
    pub daddr: [u8; 16],
    /// Socket inode; only with [`holder::FULL`] and a `struct socket`.
    pub ino: u64,
    /// For TIME_WAIT: when the kernel drops it, in jiffies.
    pub tw_expires: u64,
    /// The kernel's jiffies when this record was written.
    pub jiffies_now: u64,
}

/// One open socket file of a process, from the iter/task_file program: who holds which
/// socket, read from the kernel's own fd tables (no fd is duplicated, no /proc walked).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskFileRecord {
    /// The process (thread group) holding the file.
    pub tgid: u32,
    pub fd: u32,
    pub comm: [u8; COMM_LEN],
    /// The socket, as a holder record (`tid` 0).
    pub sock: HolderRecord,
}

/// Settings user space writes once, before load, into the kernel side's read-only global
/// `SETTINGS`. The verifier sees them as constants and drops the branches a setting turns off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Only this process (tgid); 0 = all.
    pub filter_pid: u32,
    /// portwatch's own tgid: its probe binds must not trace themselves (a feedback loop).
    pub self_pid: u32,
    /// Wake the reader only once this much data waits; below it, user space polls on a timer.
    /// On some VMs a wakeup per event costs more than everything else here together.
    pub wakeup_bytes: u64,
    /// Offset of `ret` in the `syscalls/sys_exit_*` tracepoint records (from tracefs).
    pub tp_exit_ret: u32,
    /// This architecture's syscall numbers: the exit programs check `orig_ax` against them
    /// before they trust the saved registers.
    pub nr_bind: u32,
    pub nr_listen: u32,
    pub nr_connect: u32,
    /// 1 = keep only calls whose requested or bound port is set in [`maps::PORT_BITS`].
    pub filter_ports: u8,
    /// 1 = keep only calls that failed.
    pub filter_failed: u8,
    pub _pad: [u8; 6],
    /// Address of the kernel's `udp_table`, from /proc/kallsyms, on kernels that keep no UDP
    /// table per namespace (before 6.2): how a TCP socket's program finds the UDP owners of its
    /// port. 0 where it is not needed or could not be read; the UDP side is then not read.
    pub udp_table: u64,
}

impl Settings {
    /// Where `ret` sits in a `sys_exit_*` record on every kernel so far (after the common
    /// header and the syscall number): used when tracefs was not read (fexit, `who`).
    pub const TP_EXIT_RET_DEFAULT: u32 = 16;

    /// What the object holds before user space writes its settings: no filter.
    pub const UNSET: Settings = Settings {
        filter_pid: 0,
        self_pid: 0,
        wakeup_bytes: 0,
        tp_exit_ret: Settings::TP_EXIT_RET_DEFAULT,
        nr_bind: 0,
        nr_listen: 0,
        nr_connect: 0,
        filter_ports: 0,
        filter_failed: 0,
        _pad: [0; 6],
        udp_table: 0,
    };
}

// The records' sizes, as both sides lay them out: a field added, removed or resized on one
// side only fails the build here.
const _: () = assert!(core::mem::size_of::<Field>() == 8);
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 64 * core::mem::size_of::<Field>());
const _: () = assert!(core::mem::size_of::<BindEvent>() == 136);
const _: () = assert!(core::mem::size_of::<HolderRecord>() == 88);
const _: () = assert!(core::mem::size_of::<TaskFileRecord>() == 112);
const _: () = assert!(core::mem::size_of::<Settings>() == 48);
const _: () = assert!(core::mem::size_of::<IterFilter>() == 12);

/// Which sockets the iterators dump: the one entry of [`maps::ITER_FILTER`], written by user
/// space before each read. Checked in the kernel on the head of `sock_common`, which the
/// programs read anyway, before anything is described or copied: counting the connections
/// toward one destination on a host with 100k sockets then copies those connections, not the
/// whole table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IterFilter {
    /// Only sockets whose local port is in `port_lo..=port_hi`.
    pub port_lo: u16,
    pub port_hi: u16,
    /// 1 = a socket with a peer is dumped only when its peer port is set in
    /// [`maps::ITER_PEER_PORTS`]; sockets without a peer (bound, listening: connect() takes
    /// their ports toward no destination) are always dumped.
    pub peer_ports: u8,
    pub _pad: [u8; 3],
    /// The task-file iterator only (the table iterators see one namespace anyway): sockets of
    /// this network namespace (its inode); 0 = of every namespace.
    pub netns: u32,
}

impl IterFilter {
    /// Every socket.
    pub const ALL: IterFilter = IterFilter {
        port_lo: 0,
        port_hi: u16::MAX,
        peer_ports: 0,
        _pad: [0; 3],
        netns: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] and made of integers and integer arrays only.
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::Field {}
    unsafe impl aya::Pod for super::HolderRecord {}
    unsafe impl aya::Pod for super::TaskFileRecord {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::IterFilter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_one_bit_each() {
        assert_eq!((port_bits::word(0), port_bits::bit(0)), (0, 1));
        assert_eq!((port_bits::word(63), port_bits::bit(63)), (0, 1 << 63));
        assert_eq!((port_bits::word(64), port_bits::bit(64)), (1, 1));
        assert_eq!(
            (port_bits::word(8080), port_bits::bit(8080)),
            (126, 1 << 16)
        );
        assert_eq!(port_bits::word(u16::MAX), PORT_WORDS - 1);
        // Every port has its own (word, bit).
        let mut seen = [0u64; PORT_WORDS as usize];
        for port in 0..=u16::MAX {
            let w = &mut seen[port_bits::word(port) as usize];
            assert_eq!(*w & port_bits::bit(port), 0, "port {port}");
            *w |= port_bits::bit(port);
        }
        assert!(seen.iter().all(|&w| w == u64::MAX));
    }

    #[test]
    fn packed_numbers_unpack_to_themselves() {
        for (ret, fd) in [(0, 3), (-98, -1), (i32::MIN, i32::MAX), (-1, 0)] {
            let v = pack::ret_fd(ret, fd);
            assert_eq!((pack::ret(v), pack::fd(v)), (ret, fd));
        }
        let walked = pack::walk_result(MAX_HOLDERS, walk::DONE | walk::CUT | walk::LOST);
        assert_eq!(pack::walk_count(walked), MAX_HOLDERS);
        assert_eq!(pack::walk_bits(walked), walk::DONE | walk::CUT | walk::LOST);
        let meta = pack::meta(record::CONNECT, Backend::Fexit as u8, walked, 0xf000_0001);
        assert_eq!(pack::meta_record(meta), record::CONNECT);
        assert_eq!(pack::meta_backend(meta), Backend::Fexit as u8);
        assert_eq!(pack::meta_walked(meta), walked);
        assert_eq!(pack::meta_netns(meta), 0xf000_0001);
        let body = pack::body(IPPROTO_UDP, 2, u32::MAX);
        assert_eq!(pack::body_protocol(body), IPPROTO_UDP);
        assert_eq!(pack::body_sock_type(body), 2);
        assert_eq!(pack::body_uid(body), u32::MAX);
    }

    #[test]
    fn program_names_as_the_kernel_keeps_them() {
        assert_eq!(
            programs::kernel_name(programs::FEXIT_INET6_BIND.prog),
            "fexit_inet6_bin"
        );
        assert_eq!(
            programs::kernel_name(programs::SYS_EXIT_BIND),
            "sys_exit_bind"
        );
    }

    #[test]
    fn names_compare_whole() {
        assert!(same_name(globals::LAYOUT, "LAYOUT"));
        assert!(!same_name("LAYOUT", "LAYOUTS"));
        assert!(!same_name("inet_bind", "inet6bind"));
    }

    #[test]
    fn only_local_port_errnos_of_connect_are_traced() {
        assert!(connect_errno::traced(-errno::EADDRNOTAVAIL));
        assert!(connect_errno::traced(-errno::EAGAIN));
        assert!(!connect_errno::traced(0));
        assert!(!connect_errno::traced(-111)); // ECONNREFUSED
        assert!(!connect_errno::traced(-115)); // EINPROGRESS
    }
}
