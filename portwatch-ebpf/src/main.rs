//! portwatch's kernel side: every bind() and listen() on the machine, with the socket's facts,
//! written to one ring buffer.
//!
//! Two backends fill the same [`BindEvent`]:
//! - tracepoint: `syscalls/sys_exit_{bind,listen}`. Works on every kernel with syscall
//!   tracepoints, including those that refuse trampolines. The arguments come from the
//!   caller's saved registers, the socket from the fd.
//! - fexit: `inet_bind`, `inet6_bind`, `inet_listen`. Sees every bind path (io_uring too) and gets
//!   arguments and result in one call. Plus `inet_bind_conflict`, which names the exact socket
//!   the kernel found in the way.
//!
//! Either way, a call that failed with EADDRINUSE or succeeded on a port sends the port's other
//! owners first, read from the kernel's own tables at that instant ([`holders`]).
//!
//! Kernel struct layouts are not compiled in: user space resolves them from the running kernel's
//! BTF and writes them into [`LAYOUT`] before loading (aya emits no CO-RE relocations for Rust).
#![no_std]
#![no_main]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod holders;
mod iter;
mod kernel;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::{fexit, map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{FExitContext, TracePointContext},
};
use kernel::{LAYOUT, Sock, global, probe_kernel, probe_user, read_field, tp_arg};
use portwatch_common::{
    AF_INET, AF_INET6, AF_UNSPEC, Backend, BindEvent, COMM_LEN, IPPROTO_TCP, IPPROTO_UDP,
    PORT_WORDS, RING_BYTES, Settings, connect_errno,
    errno::{EADDRINUSE, EADDRNOTAVAIL, EAGAIN, EBADF, EFAULT, ENOTSOCK},
    flags, globals, lost, maps, pack, programs, record, same_name,
};

// ---- configuration written by user space before load (read-only, so the verifier sees
// ---- constants and drops the branches a setting turns off)

/// Filters, syscall numbers and tracepoint offsets: see [`Settings`].
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings::UNSET;
const _: () = assert!(same_name(stringify!(SETTINGS), globals::SETTINGS));

// ---- maps

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
const _: () = assert!(same_name(stringify!(EVENTS), maps::EVENTS));

/// The `--port` set as a bitmap ([`kernel::port_bit`]): a filtered-out bind costs a few
/// instructions, not a hash probe.
#[map]
static PORT_BITS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
const _: () = assert!(same_name(stringify!(PORT_BITS), maps::PORT_BITS));

/// Events dropped in the kernel, indexed by [`lost`].
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);
const _: () = assert!(same_name(stringify!(LOST), maps::LOST));

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The address the caller asked for, as it was passed (never what the kernel left behind).
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    family: u16,
    port: u16,
    scope_id: u32,
    addr: [u8; 16],
    ok: u8,
}

impl Request {
    const NONE: Request = Request {
        family: 0,
        port: 0,
        scope_id: 0,
        addr: [0; 16],
        ok: 0,
    };
}

// ---- shared helpers

#[inline(always)]
pub(crate) fn count_lost(which: u32) {
    if let Some(p) = LOST.get_ptr_mut(which) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn pid_wanted() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let want = global(&SETTINGS.filter_pid);
    tgid != global(&SETTINGS.self_pid) && (want == 0 || tgid == want)
}

#[inline(always)]
fn port_in_filter(port: u16) -> bool {
    kernel::port_bit(&PORT_BITS, port)
}

/// Decodes a sockaddr_in / sockaddr_in6 from raw bytes (network order as in memory).
#[inline(always)]
fn decode_sockaddr(raw: &[u8; 28], len: usize) -> Request {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut req = Request {
        family,
        port,
        ..Request::NONE
    };
    if family == AF_INET6 && len >= 24 {
        let mut i = 0;
        while i < 16 {
            req.addr[i] = raw[8 + i];
            i += 1;
        }
        if len >= 28 {
            req.scope_id = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
        }
        req.ok = 1;
    } else if len >= 8 {
        req.addr[0] = raw[4];
        req.addr[1] = raw[5];
        req.addr[2] = raw[6];
        req.addr[3] = raw[7];
        req.ok = 1;
    }
    req
}

/// Reads the caller's sockaddr. `user` says which address space `ptr` is in.
#[inline(always)]
fn read_request(ptr: u64, addrlen: u64, user: bool) -> Request {
    match read_head(ptr, user) {
        Some(head) => {
            let mut req = Request::NONE;
            complete_request(&mut req, &head, ptr, addrlen, u64::from(user));
            req
        }
        None => Request::NONE,
    }
}

/// The first 16 bytes of a sockaddr: family and port, and all of a sockaddr_in. Read apart
/// from the rest because a sockaddr_in may end at a page boundary, and because they are all
/// the port filter needs.
#[inline(always)]
fn read_head(ptr: u64, user: bool) -> Option<[u8; 16]> {
    if user {
        probe_user(ptr)
    } else {
        probe_kernel(ptr)
    }
}

/// The request from its first 16 bytes, reading the rest of a sockaddr_in6, into `out`.
///
/// Not inlined: its buffers then sit in a frame of their own instead of in the calling
/// program's, which the holder walk's frame is added to (one 512-byte limit per call chain).
#[inline(never)]
fn complete_request(out: &mut Request, head: &[u8; 16], ptr: u64, addrlen: u64, user: u64) {
    let user = user != 0;
    let mut raw = [0u8; 28];
    let mut i = 0;
    while i < 16 {
        raw[i] = head[i];
        i += 1;
    }
    let mut len = 16usize;
    if u16::from_ne_bytes([head[0], head[1]]) == AF_INET6 && addrlen >= 24 {
        let tail: Option<[u8; 12]> = if user {
            probe_user(ptr + 16)
        } else {
            probe_kernel(ptr + 16)
        };
        if let Some(tail) = tail {
            let mut j = 0;
            while j < 12 {
                raw[16 + j] = tail[j];
                j += 1;
            }
            len = if addrlen >= 28 { 28 } else { 24 };
        } else {
            len = 8;
        }
    }
    if addrlen < 8 {
        len = 0;
    }
    *out = decode_sockaddr(&raw, len);
}

/// Fills and submits one event for socket `sock` (a `struct socket *`), or drops it when the
/// socket is not AF_INET/AF_INET6 or the port filter says no. When the call failed with
/// EADDRINUSE, or succeeded on a port, the port's other owners are read first and sent just
/// before the event ([`holders::walk_port`]): that is the evidence, taken at the instant of the
/// call, before anyone can close or exit.
#[inline(always)]
fn emit(rec: u8, backend: Backend, req: &Request, fd: i32, sock: u64, ret: i32) {
    let sk = Sock::from_socket(sock);
    let (family, bound_port) = match &sk {
        Some(sk) => (sk.family(), sk.num()),
        None => (0, 0),
    };
    if sk.is_some() && family != AF_INET && family != AF_INET6 {
        return;
    }
    if sk.is_none() && rec == record::LISTEN {
        return;
    }
    if global(&SETTINGS.filter_ports) != 0 {
        let asked =
            rec != record::LISTEN && req.ok != 0 && req.port != 0 && port_in_filter(req.port);
        // A connect() is matched by its destination port only.
        if !asked && (rec == record::CONNECT || !(bound_port != 0 && port_in_filter(bound_port))) {
            return;
        }
    }
    let mut sent = 0u32;
    let mut netns = 0u32;
    let mut body = kernel::SockBody {
        protocol: 0,
        sock_type: 0,
        uid: 0,
    };
    if let Some(sk) = &sk {
        body = sk.body();
        // EAGAIN is about the local port only for UDP (autobind found none free).
        if rec == record::CONNECT && ret == -EAGAIN && body.protocol != IPPROTO_UDP {
            return;
        }
        // Read once for the walk and the event.
        let net = sk.net();
        netns = kernel::netns_of(net);
        // The port the call is about: as asked for a failed bind, as bound otherwise. A connect
        // that failed on a socket bound to a fixed port: that port's owners, among them the
        // connection that has the same 4-tuple.
        let port = if ret == 0 {
            bound_port
        } else if ret == -EADDRINUSE && rec == record::BIND && req.ok != 0 {
            req.port
        } else if (ret == -EADDRINUSE && rec == record::LISTEN)
            || (ret == -EADDRNOTAVAIL && rec == record::CONNECT)
        {
            bound_port
        } else {
            0
        };
        if port != 0 {
            let protocol = u64::from(body.protocol);
            // The socket sits in its own bind bucket after a successful call, and after a
            // failed connect() on a socket bound to that port.
            let mut how = if ret == 0 || rec == record::CONNECT {
                holders::how::OWN_BUCKET
            } else {
                0
            };
            // A port the caller chose (not one the kernel picked, which shares nothing on
            // purpose): the other protocol's owners of it explain the success too.
            if ret == 0 && rec == record::BIND && req.ok != 0 && req.port != 0 {
                how |= holders::how::OTHER_SPACE;
            }
            let walked = holders::portwatch_walk_port(sk.sk, protocol, u64::from(port), how, net);
            sent = holders::send_found(body.protocol, netns, walked) as u32;
        }
    }
    let sk_ptr = match &sk {
        Some(sk) => sk as *const Sock,
        None => core::ptr::null(),
    };
    write_event(
        req,
        sk_ptr,
        pack::ret_fd(ret, fd),
        pack::meta(rec, backend as u8, u64::from(sent), netns),
        pack::body(body.protocol, body.sock_type, body.uid),
    );
}

/// Reserves, fills and submits the event of one call, after its holders went out.
///
/// Not inlined, so that its windows and buffers sit in a stack frame of its own: the kernel
/// adds up the frames of a call chain against one 512-byte limit (6.1 counts the holder walk's
/// frame on top of the caller's), and this keeps both chains under it. `sk` is null when the
/// socket could not be reached; the numbers are packed because a BPF function takes at most
/// five arguments: [`pack::ret_fd`], [`pack::meta`] (with the holder walk's result and the
/// namespace) and [`pack::body`].
#[inline(never)]
fn write_event(req: &Request, sk: *const Sock, ret_fd: u64, meta: u64, body: u64) {
    let Some(mut entry) = EVENTS.reserve::<BindEvent>(0) else {
        count_lost(lost::RINGBUF);
        return;
    };
    let rec = pack::meta_record(meta);
    let walked = pack::meta_walked(meta);
    let e = entry.as_mut_ptr();
    let caller = kernel::caller();
    let sk = unsafe { sk.as_ref() };
    unsafe {
        (*e).record = rec;
        (*e).backend = pack::meta_backend(meta);
        (*e).flags = if req.ok == 0 && rec != record::LISTEN {
            flags::NO_REQUEST
        } else {
            0
        };
        (*e).req_family = req.family;
        (*e).req_port = req.port;
        (*e).req_addr = req.addr;
        (*e).req_scope_id = req.scope_id;
        (*e).ret = pack::ret(ret_fd);
        (*e).ts_ns = bpf_ktime_get_boot_ns();
        (*e).cgroup_id = bpf_get_current_cgroup_id();
        (*e).pid = caller.pid;
        (*e).tid = caller.tid;
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).fd = pack::fd(ret_fd);
        // As two words: the field is 8-aligned in the event (checked below) and in the ring,
        // and a copy typed as bytes would go byte by byte (the array's alignment is 1).
        let comm = (*e).comm.as_mut_ptr().cast::<u64>();
        comm.write(caller.comm[0]);
        comm.add(1).write(caller.comm[1]);
        (*e).walk = pack::walk_bits(walked);
        (*e).holders = pack::walk_count(walked);
        (*e)._pad = [0; 7];
        match sk {
            Some(sk) => {
                let family = sk.family();
                (*e).state = sk.state();
                (*e).family = family;
                (*e).bound_port = sk.num();
                (*e).bound_addr = sk.rcv_saddr(family);
                (*e).protocol = pack::body_protocol(body);
                (*e).sock_type = pack::body_sock_type(body);
                (*e).sk_uid = pack::body_uid(body);
                (*e).netns = pack::meta_netns(meta);
                (*e).bound_dev_if = sk.bound_dev_if();
                (*e).reuse = sk.reuse();
                (*e).options = sk.options();
                let socket = sk.socket();
                (*e).sock_ino = sk.ino_of(socket);
                // A socket without a file is the kernel's own (the syscall backend only ever
                // sees sockets behind an fd, so it need not look).
                if pack::meta_backend(meta) == Backend::Fexit as u8
                    && socket != 0
                    && read_field(socket, &LAYOUT.socket_file) == 0
                {
                    (*e).flags |= flags::KERNEL_SOCKET;
                }
            }
            None => {
                (*e).flags |= flags::NO_SOCKET;
                (*e).state = 0;
                (*e).family = req.family;
                (*e).bound_port = 0;
                (*e).bound_addr = [0; 16];
                (*e).protocol = 0;
                (*e).sock_type = 0;
                (*e).sk_uid = 0;
                (*e).netns = 0;
                (*e).bound_dev_if = 0;
                (*e).reuse = 0;
                (*e).options = 0;
                (*e).sock_ino = 0;
            }
        }
    }
    entry.submit(wakeup_flag());
}

const _: () = assert!(core::mem::offset_of!(BindEvent, comm) % 8 == 0 && COMM_LEN == 16);

#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= global(&SETTINGS.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// ---- tracepoint backend: one program at each syscall's exit, which reads the request from
// ---- the caller's saved registers (no enter program, no map to carry it across)

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, record::BIND);
    0
}
const _: () = assert!(same_name(
    stringify!(sys_exit_bind),
    programs::SYS_EXIT_BIND
));

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, record::LISTEN);
    0
}
const _: () = assert!(same_name(
    stringify!(sys_exit_listen),
    programs::SYS_EXIT_LISTEN
));

/// A failed connect(). Everything but the errnos about the local port is dropped right after
/// the return value is read, before any helper runs: connect() is frequent.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, record::CONNECT);
    0
}
const _: () = assert!(same_name(
    stringify!(sys_exit_connect),
    programs::SYS_EXIT_CONNECT
));

#[inline(always)]
fn on_exit(ctx: &TracePointContext, rec: u8) {
    let ret = tp_arg(ctx, global(&SETTINGS.tp_exit_ret)) as i64 as i32;
    // connect(): only the errnos about the local port go on.
    if rec == record::CONNECT && !connect_errno::traced(ret) {
        return;
    }
    if !pid_wanted() {
        return;
    }
    if global(&SETTINGS.filter_failed) != 0 && ret >= 0 {
        return;
    }
    let nr = if rec == record::BIND {
        global(&SETTINGS.nr_bind)
    } else if rec == record::LISTEN {
        global(&SETTINGS.nr_listen)
    } else {
        global(&SETTINGS.nr_connect)
    };
    let Some(args) = kernel::syscall_args(nr) else {
        return;
    };
    let mut req = Request::NONE;
    if rec != record::LISTEN {
        let (uaddr, addrlen) = (args.si, args.dx);
        let head = read_head(uaddr, true);
        if let Some(head) = head
            && addrlen >= 8
        {
            let family = u16::from_ne_bytes([head[0], head[1]]);
            // AF_UNIX, AF_NETLINK, AF_PACKET...: not ours; AF_UNSPEC disconnects a connect().
            let unspec_ok = rec == record::BIND && family == AF_UNSPEC;
            if family != AF_INET && family != AF_INET6 && !unspec_ok {
                return;
            }
            // With a port filter most calls stop here, before anything else is read.
            // Port 0 binds stay: the port the kernel picked is on the socket.
            let port = u16::from_be_bytes([head[2], head[3]]);
            let any = port == 0 && rec == record::BIND;
            if global(&SETTINGS.filter_ports) != 0 && !any && !port_in_filter(port) {
                return;
            }
            complete_request(&mut req, &head, uaddr, addrlen, 1);
        } else if rec == record::CONNECT {
            return;
        }
    }
    let fd = args.di as i64;
    // These mean the fd was not a socket we could look at.
    let sock = if ret == -EBADF || ret == -ENOTSOCK || ret == -EFAULT {
        0
    } else {
        kernel::socket_of_fd(fd)
    };
    if sock == 0 && ret == -EBADF {
        return;
    }
    // A successful call whose fd is gone (closed or replaced by another thread since) still
    // goes out, flagged NO_SOCKET, and user space says so.
    emit(rec, Backend::Tracepoint, &req, fd as i32, sock, ret);
}

// ---- fexit backend

#[fexit(function = "inet_bind")]
pub fn fexit_inet_bind(ctx: FExitContext) -> i32 {
    fexit_bind(&ctx);
    0
}
const _: () = assert!(
    same_name(stringify!(fexit_inet_bind), programs::FEXIT_INET_BIND.prog)
        && same_name("inet_bind", programs::FEXIT_INET_BIND.func)
);

#[fexit(function = "inet6_bind")]
pub fn fexit_inet6_bind(ctx: FExitContext) -> i32 {
    fexit_bind(&ctx);
    0
}
const _: () = assert!(
    same_name(
        stringify!(fexit_inet6_bind),
        programs::FEXIT_INET6_BIND.prog
    ) && same_name("inet6_bind", programs::FEXIT_INET6_BIND.func)
);

/// `int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len)`, and the same
/// shape for inet6_bind. The sockaddr was already copied into kernel memory.
#[inline(always)]
fn fexit_bind(ctx: &FExitContext) {
    if !pid_wanted() {
        return;
    }
    // The three arguments and the return value, in one read.
    let [sock, uaddr, addrlen, ret] = kernel::fexit_args::<4>(ctx);
    const _: () = assert!(programs::FEXIT_INET_BIND.params == 3);
    const _: () = assert!(programs::FEXIT_INET6_BIND.params == 3);
    let (addrlen, ret) = (addrlen as i32, ret as i32);
    if global(&SETTINGS.filter_failed) != 0 && ret >= 0 {
        return;
    }
    let req = read_request(uaddr, if addrlen < 0 { 0 } else { addrlen as u64 }, false);
    emit(record::BIND, Backend::Fexit, &req, -1, sock, ret);
}

#[fexit(function = "inet_stream_connect")]
pub fn fexit_inet_stream_connect(ctx: FExitContext) -> i32 {
    fexit_connect(&ctx);
    0
}
const _: () = assert!(
    same_name(
        stringify!(fexit_inet_stream_connect),
        programs::FEXIT_INET_STREAM_CONNECT.prog
    ) && same_name(
        "inet_stream_connect",
        programs::FEXIT_INET_STREAM_CONNECT.func
    )
);

#[fexit(function = "inet_dgram_connect")]
pub fn fexit_inet_dgram_connect(ctx: FExitContext) -> i32 {
    fexit_connect(&ctx);
    0
}
const _: () = assert!(
    same_name(
        stringify!(fexit_inet_dgram_connect),
        programs::FEXIT_INET_DGRAM_CONNECT.prog
    ) && same_name(
        "inet_dgram_connect",
        programs::FEXIT_INET_DGRAM_CONNECT.func
    )
);

/// `int inet_stream_connect(struct socket *sock, struct sockaddr *uaddr, int addr_len, int
/// flags)`, and the same shape for inet_dgram_connect: every connect path (io_uring too).
/// Only the errnos about the local port go on; the rest stop at the return value.
#[inline(always)]
fn fexit_connect(ctx: &FExitContext) {
    let ret = kernel::fexit_arg(ctx, programs::FEXIT_INET_STREAM_CONNECT.params as u64) as i32;
    if !connect_errno::traced(ret) || !pid_wanted() {
        return;
    }
    let sock = kernel::fexit_arg(ctx, 0);
    let uaddr = kernel::fexit_arg(ctx, 1);
    let addrlen = kernel::fexit_arg(ctx, 2) as i32;
    let req = read_request(uaddr, if addrlen < 0 { 0 } else { addrlen as u64 }, false);
    if req.ok == 0 || (req.family != AF_INET && req.family != AF_INET6) {
        return;
    }
    emit(record::CONNECT, Backend::Fexit, &req, -1, sock, ret);
}

/// `int inet_listen(struct socket *sock, int backlog)`.
#[fexit(function = "inet_listen")]
pub fn fexit_inet_listen(ctx: FExitContext) -> i32 {
    if !pid_wanted() {
        return 0;
    }
    // The socket, the backlog and the return value, in one read.
    let [sock, _, ret] = kernel::fexit_args::<3>(&ctx);
    const _: () = assert!(programs::FEXIT_INET_LISTEN.params == 2);
    let ret = ret as i32;
    if global(&SETTINGS.filter_failed) != 0 && ret >= 0 {
        return 0;
    }
    emit(
        record::LISTEN,
        Backend::Fexit,
        &Request::NONE,
        -1,
        sock,
        ret,
    );
    0
}
const _: () = assert!(
    same_name(
        stringify!(fexit_inet_listen),
        programs::FEXIT_INET_LISTEN.prog
    ) && same_name("inet_listen", programs::FEXIT_INET_LISTEN.func)
);

/// `bool inet_bind_conflict(const struct sock *sk, struct sock *sk2, kuid_t uid, bool relax,
/// bool reuseport_cb_ok, bool reuseport_ok)`: true means sk2 is in the way of sk. This is the
/// kernel's own verdict, so the holder it names is exact, TIME_WAIT and bound-only sockets
/// included.
#[fexit(function = "inet_bind_conflict")]
pub fn fexit_inet_bind_conflict(ctx: FExitContext) -> i32 {
    if !pid_wanted() {
        return 0;
    }
    if kernel::fexit_arg(&ctx, programs::FEXIT_INET_BIND_CONFLICT.params as u64) & 0xff == 0 {
        return 0;
    }
    let sk = kernel::fexit_arg(&ctx, 0);
    let sk2 = kernel::fexit_arg(&ctx, 1);
    let netns = Sock::from_sk(sk).netns();
    let tid = bpf_get_current_pid_tgid() as u32;
    holders::send(
        sk2,
        IPPROTO_TCP,
        netns,
        tid,
        portwatch_common::holder::CONFLICT_CHECK,
    );
    0
}
const _: () = assert!(
    same_name(
        stringify!(fexit_inet_bind_conflict),
        programs::FEXIT_INET_BIND_CONFLICT.prog
    ) && same_name(
        "inet_bind_conflict",
        programs::FEXIT_INET_BIND_CONFLICT.func
    )
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
