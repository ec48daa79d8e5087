//! Socket table iterators (iter/tcp, iter/udp): every socket the kernel hashes on a port, in the
//! network namespace of the process that reads the iterator, and (iter/task_file) every socket a
//! process holds. Each read dumps only what user space's filter keeps ([`IterFilter`]: one port,
//! the ephemeral range, connections toward some peer ports), decided on the head of
//! `sock_common` before anything else is read, so a question about a few sockets on a host with
//! 100k of them does not copy them all.
//!
//! These are how the tracepoint backend finds holders, and how `portwatch who` sees TIME_WAIT
//! sockets with their SO_REUSEADDR bit (which no ss option shows). They cannot see TCP sockets
//! that are bound but not listening: those live only in the bind hash, and user space finds
//! them through the processes' fd tables.
//!
//! aya-ebpf has no `#[iter]` macro, so the section name and context layout are spelled out.

use core::mem::offset_of;

use aya_ebpf::{helpers::generated::bpf_seq_write, macros::map, maps::Array};
use portwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, HolderRecord, IPPROTO_TCP, IPPROTO_UDP, IterFilter, PORT_WORDS,
    TaskFileRecord, tcp_state,
};

use crate::{
    holders::describe,
    kernel::{LAYOUT, Sock, global, port_bit, probe_kernel, read_field},
};

/// [0]: which sockets to dump. Set by user space before each read.
#[map]
static ITER_FILTER: Array<IterFilter> = Array::with_max_entries(1, 0);

/// The peer ports [`IterFilter::peer_ports`] keeps, as a port bitmap ([`port_bit`]). Set by
/// user space before a read that uses it.
#[map]
static ITER_PEER_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// The filter of this read; None (dump nothing) if the map cannot be read.
#[inline(always)]
fn filter() -> Option<&'static IterFilter> {
    ITER_FILTER.get(0)
}

/// Whether `f` keeps a socket on local port `port` whose peer port is `dport` (0: no peer).
#[inline(always)]
fn keeps(f: &IterFilter, port: u16, dport: u16) -> bool {
    port >= f.port_lo
        && port <= f.port_hi
        && (f.peer_ports == 0 || dport == 0 || port_bit(&ITER_PEER_PORTS, dport))
}

/// `struct bpf_iter_meta`: only `seq` is used.
#[repr(C)]
pub struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp` and `struct bpf_iter__udp` share this prefix.
#[repr(C)]
pub struct IterCtx {
    meta: *const IterMeta,
    sk: *const u8,
    uid: u32,
}

/// `struct bpf_iter__task_file`.
#[repr(C)]
pub struct TaskFileCtx {
    meta: *const IterMeta,
    task: *const u8,
    fd: u32,
    file: *const u8,
}

// The kernel's layouts of these contexts (`struct bpf_iter__tcp`, `__udp`, `__task_file` on
// x86-64): the verifier checks each context load against them by offset.
const _: () = assert!(offset_of!(IterCtx, sk) == 8);
const _: () = assert!(offset_of!(TaskFileCtx, task) == 8);
const _: () = assert!(offset_of!(TaskFileCtx, fd) == 16);
const _: () = assert!(offset_of!(TaskFileCtx, file) == 24);

const S_IFMT: u64 = 0o170000;
const S_IFSOCK: u64 = 0o140000;

/// Every open file of every process: the TCP and UDP sockets among them that the filter keeps
/// ([`ITER_FILTER`]), each with its holder. This is how portwatch names a socket's owners without
/// reading /proc or duplicating anyone's fd, and finds sockets that are bound but not
/// listening (in no socket table).
// SAFETY (both attributes): a unique name of portwatch's own, in the section that makes the
// loader treat it as a task_file iterator, whose context is `TaskFileCtx`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn iter_task_file(ctx: *const TaskFileCtx) -> i32 {
    task_file(ctx);
    0
}

#[inline(always)]
fn task_file(ctx: *const TaskFileCtx) {
    // Every field is a direct load from the context, as declared in `TaskFileCtx`: the
    // verifier checks each against `struct bpf_iter__task_file` (`task` and `file` may be
    // null, checked below). The pointers are then used as plain numbers, for probe reads.
    // SAFETY: `ctx` is the context the kernel passes an iter/task_file program, valid for the
    // run; its `meta` is never null, nor is `meta->seq`.
    let meta = unsafe { core::ptr::read_volatile(&raw const (*ctx).meta) };
    let seq = unsafe { core::ptr::read_volatile(&raw const (*meta).seq) };
    // SAFETY: as above: fields of the context the kernel passed.
    let (task, fd, file) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).task) as u64,
            core::ptr::read_volatile(&raw const (*ctx).fd),
            core::ptr::read_volatile(&raw const (*ctx).file) as u64,
        )
    };
    if file == 0 || task == 0 {
        return;
    }
    let inode = read_field(file, &LAYOUT.file_inode);
    if read_field(inode, &LAYOUT.inode_mode) & S_IFMT != S_IFSOCK {
        return;
    }
    let socket = read_field(file, &LAYOUT.file_private_data);
    let Some(sock) = Sock::from_socket(socket) else {
        return;
    };
    let family = sock.family();
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let Some(f) = filter() else {
        return;
    };
    if !keeps(f, sock.num(), sock.dport()) {
        return;
    }
    let protocol = sock.body().protocol;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return;
    }
    let netns = sock.netns();
    if f.netns != 0 && netns != f.netns {
        return;
    }
    let mut rec = TaskFileRecord {
        tgid: read_field(task, &LAYOUT.task_tgid) as u32,
        fd,
        ..TaskFileRecord::default()
    };
    let comm = global(&LAYOUT.task_comm);
    if comm.size != 0
        && let Some(c) = probe_kernel::<[u8; COMM_LEN]>(task + u64::from(comm.offset))
    {
        rec.comm = c;
    }
    // SAFETY: `rec.sock` is a HolderRecord on this stack frame, used by nothing else.
    unsafe { describe(&raw mut rec.sock, &sock, protocol, netns, 0, 0) };
    // SAFETY: `seq` is the iterator's own seq_file (above), and `rec` is that many readable
    // bytes on this stack frame.
    unsafe {
        bpf_seq_write(
            seq,
            (&raw const rec).cast(),
            core::mem::size_of::<TaskFileRecord>() as u32,
        );
    }
}

// SAFETY (both attributes): a unique name in the section that makes it an iter/tcp program,
// whose context starts as `IterCtx`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn iter_tcp(ctx: *const IterCtx) -> i32 {
    dump(ctx, IPPROTO_TCP);
    0
}

// SAFETY (both attributes): as for iter_tcp, for iter/udp.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn iter_udp(ctx: *const IterCtx) -> i32 {
    dump(ctx, IPPROTO_UDP);
    0
}

#[inline(always)]
fn dump(ctx: *const IterCtx, protocol: u16) {
    // The verifier wants `meta` and `seq` as direct, BTF-typed loads; `sk` is one too, then
    // used as a plain number so that offsets can be added to it for probe reads.
    // SAFETY: `ctx` is the context the kernel passes an iter/tcp or iter/udp program, valid
    // for the run; its `meta` and `meta->seq` are never null (`sk` may be: checked below).
    let meta = unsafe { core::ptr::read_volatile(&raw const (*ctx).meta) };
    let seq = unsafe { core::ptr::read_volatile(&raw const (*meta).seq) };
    // SAFETY: as above: a field of the context the kernel passed.
    let sk = unsafe { core::ptr::read_volatile(&raw const (*ctx).sk) } as u64;
    if sk == 0 {
        return;
    }
    let sock = Sock::from_sk(sk);
    let Some(f) = filter() else {
        return;
    };
    if !keeps(f, sock.num(), sock.dport()) {
        return;
    }
    if sock.state() == tcp_state::NEW_SYN_RECV {
        return; // a half-open connection request, not a socket holding the port
    }
    let mut rec = HolderRecord::default();
    // SAFETY: `rec` is a HolderRecord on this stack frame, used by nothing else.
    unsafe { describe(&raw mut rec, &sock, protocol, sock.netns(), 0, 0) };
    // SAFETY: as in task_file: the iterator's own seq_file, and `rec`'s bytes on this stack.
    unsafe {
        bpf_seq_write(
            seq,
            (&raw const rec).cast(),
            core::mem::size_of::<HolderRecord>() as u32,
        );
    }
}
