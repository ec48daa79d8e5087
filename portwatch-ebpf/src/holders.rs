//! The port's other owners, read from the kernel's own tables at the instant of the call.
//!
//! Why here and not in user space: by the time user space reads the socket tables, the holder
//! of a failed bind may have closed its socket or exited (a restart, a test that starts and
//! stops servers in milliseconds). The kernel decided against the sockets that were in these
//! lists when the call ran; reading the same lists at the call's exit sees what it saw.
//!
//! - TCP: the port's bucket in the bind hash (`inet_hashinfo.bhash`). Its sockets, TIME_WAIT
//!   and bound-but-not-listening ones included, hang off the bind bucket (before 6.8) or off
//!   the bind2 buckets it lists (6.8+), always through `skc_bind_node`.
//! - UDP: the port's slot in the UDP hash, through `skc_node`.
//!
//! A successful bind on a port the caller chose also reads the other protocol's owners of the
//! number ([`how::OTHER_SPACE`]): that TCP and UDP have separate port spaces is what explains
//! such a success, and it must survive the other socket closing right after.
//!
//! The walk is bounded ([`MAX_STEPS`] list nodes, [`MAX_HOLDERS`] records), and says when it
//! was cut. Each holder goes out as its own [`HolderRecord`], just before the call's event.
//!
//! Stack: the kernel adds up the frames of every call chain (program → walk → step → send)
//! against one 512-byte limit, and 6.1 counts `bpf_loop` callbacks in it. So the walk's state
//! lives in a per-CPU map, not on the stack, the steps read fields one at a time, and the
//! holders are sent after the loop, from the walk's own small frame.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_jiffies64, bpf_loop},
    },
    macros::map,
    maps::PerCpuArray,
};
use portwatch_common::{
    HolderRecord, IPPROTO_TCP, IPPROTO_UDP, MAX_HOLDERS, holder, lost, pack, record, walk,
};

use crate::{
    EVENTS, SETTINGS, count_lost,
    kernel::{self, LAYOUT, Sock, global, read_field, read_u64},
    wakeup_flag,
};

/// List nodes followed per call, at most: bind buckets, bind2 buckets and sockets together.
/// A port shared by more sockets than this is reported as cut.
const MAX_STEPS: u32 = 24;

/// What a walk sent.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sent {
    count: u8,
    /// [`walk`] bits.
    walk: u8,
}

impl Sent {
    const NONE: Sent = Sent { count: 0, walk: 0 };
    const NO_TABLE: Sent = Sent {
        count: 0,
        walk: walk::NO_TABLE,
    };
}

/// What one walk carries from step to step, and the sockets it found.
#[repr(C)]
pub struct Walk {
    /// The thread walking: a walk on this CPU that finds another thread's state here (one
    /// preempted mid-walk) reports itself as cut rather than trust it.
    tid: u64,
    /// The calling socket, skipped.
    me: u64,
    net: u64,
    port: u64,
    /// Sockets hang off bind2 buckets (6.8+), not off the bind bucket.
    bhash2: u64,
    /// 1 when only the first bind bucket is to be looked at (the caller's own).
    single: u64,
    /// The cursors: the next bind bucket, bind2 bucket and socket list node; 0 when done.
    tb_node: u64,
    tb2_node: u64,
    owner: u64,
    /// Found so far, and whether more were seen than fit.
    n: u64,
    cut: u64,
    /// Where the other port space's owners start in `found` ([`how::OTHER_SPACE`]).
    split: u64,
    /// What [`portwatch_send_found`] sends the found sockets as: kept here rather than on
    /// its stack (see there).
    send_protocol: u64,
    send_netns: u64,
    send_tid: u64,
    found: [u64; MAX_HOLDERS as usize],
}

/// One [`Walk`] per CPU: a program runs to its end on the CPU it started on.
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// How a walk starts and what it covers: [`portwatch_walk_port`]'s `how` bits.
pub mod how {
    /// The call's own port space from the socket's own bind bucket (it is bound); without
    /// this bit the port is hashed to find its bucket.
    pub const OWN_BUCKET: u64 = 1 << 0;
    /// Then the other protocol's port space too (UDP for a TCP socket, TCP for a UDP one).
    pub const OTHER_SPACE: u64 = 1 << 1;
}

const BPF_LOOP_STOP: i64 = 1;
const BPF_LOOP_GO_ON: i64 = 0;

/// Finds the sockets other than `sk` (a `struct sock *`) that hold `port` for `protocol` in
/// `sk`'s namespace (`net`, its `struct net *`, which the caller has read already), into
/// this CPU's [`WALK`] state; [`portwatch_send_found`] sends them.
/// `how` holds [`how`] bits. With [`how::OTHER_SPACE`], the other protocol's owners of the
/// port follow the call's own in the found list, and [`walk::OTHER_SPACE`] says they are
/// complete; a cut or failed walk of the other space is dropped whole, so that user space
/// reads that side after the fact, as it does without this. Returns a [`Sent`] packed as a [`pack::walk_result`].
///
/// Both spaces in one call, not two: the caller's stack frame then stays as it was, and 6.1
/// adds it to the frames of the send below it against one 512-byte limit.
///
/// A global BPF function: the verifier checks it once, not once per state of its caller.
/// Arguments are plain numbers, as global functions need.
// SAFETY: the name is portwatch's own and unique in the object; the loader links the call to
// it by that name.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portwatch_walk_port(
    sk: u64,
    protocol: u64,
    port: u64,
    how: u64,
    net: u64,
) -> u64 {
    let sent = walk_port(sk, protocol as u16, port as u16, how, net);
    pack::walk_result(sent.count, sent.walk)
}

/// The protocol whose port space is separate from `protocol`'s; 0 for any other.
#[inline(always)]
fn other_protocol(protocol: u16) -> u16 {
    match protocol {
        IPPROTO_TCP => IPPROTO_UDP,
        IPPROTO_UDP => IPPROTO_TCP,
        _ => 0,
    }
}

#[inline(always)]
fn walk_port(sk: u64, protocol: u16, port: u16, how: u64, net: u64) -> Sent {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return Sent::NO_TABLE;
    };
    // SAFETY: `w` is this CPU's slot of WALK, valid and aligned as long as the map exists.
    // The steps reach the same slot through [`state`] only inside `bpf_loop` below, while this
    // reference is not used; that helper call is opaque to the compiler, and the slot escaped
    // through the map lookup, so no field of it is kept in a register across the call.
    let w = unsafe { &mut *w };
    let tid = bpf_get_current_pid_tgid();
    w.tid = tid;
    w.me = sk;
    w.net = net;
    w.port = u64::from(port);
    w.n = 0;
    w.split = u64::from(MAX_HOLDERS);
    let mut sent = walk_space(w, protocol, how & how::OWN_BUCKET != 0, false);
    if sent.walk & walk::DONE == 0 || how & how::OTHER_SPACE == 0 {
        return sent;
    }
    let other = other_protocol(protocol);
    if other == 0 {
        return sent;
    }
    w.split = w.n;
    let theirs = walk_space(w, other, false, true);
    // Another thread's walk ran on this CPU meanwhile: the state is not ours to trust.
    if w.tid != tid {
        return Sent {
            count: 0,
            walk: walk::DONE | walk::CUT,
        };
    }
    if theirs.walk == walk::DONE {
        sent.walk |= walk::OTHER_SPACE;
        sent.count = w.n as u8;
    } else {
        w.n = w.split;
    }
    sent
}

/// Walks `protocol`'s owners of the walk's port into `w`, after what it holds. `own_bucket`:
/// start from the socket's own bind bucket; `other_space`: the socket is not of `protocol`.
#[inline(always)]
fn walk_space(w: &mut Walk, protocol: u16, own_bucket: bool, other_space: bool) -> Sent {
    let tid = w.tid;
    let (sk, net, port) = (w.me, w.net, w.port as u16);
    w.bhash2 = 0;
    w.single = 0;
    w.tb_node = 0;
    w.tb2_node = 0;
    w.owner = 0;
    w.cut = 0;
    let step: extern "C" fn(u64, *mut c_void) -> i64 = if protocol == IPPROTO_TCP {
        let Some(first) = tcp_start(w, sk, net, port, own_bucket) else {
            return Sent::NO_TABLE;
        };
        w.tb_node = first;
        tcp_step
    } else if protocol == IPPROTO_UDP {
        let Some(first) = udp_start(sk, net, port, other_space) else {
            return Sent::NO_TABLE;
        };
        w.owner = first;
        udp_step
    } else {
        return Sent::NONE;
    };
    if w.tb_node != 0 || w.owner != 0 {
        // SAFETY: `step` has the callback signature bpf_loop calls (index, context) and
        // ignores the context, so a null one is fine; the verifier checks the callback and
        // bounds the loop at MAX_STEPS.
        unsafe { bpf_loop(MAX_STEPS, step as *mut c_void, core::ptr::null_mut(), 0) };
    }
    let mut sent = Sent {
        count: 0,
        walk: walk::DONE,
    };
    // Another thread's walk ran on this CPU meanwhile (this one was preempted): its state is
    // not ours to trust.
    if w.tid != tid {
        return Sent {
            count: 0,
            walk: walk::DONE | walk::CUT,
        };
    }
    if w.owner != 0 || w.tb2_node != 0 || w.tb_node != 0 || w.cut != 0 {
        sent.walk |= walk::CUT;
    }
    sent.count = w.n as u8;
    sent
}

/// [`portwatch_send_found`] for a walk about a port in network namespace `netns`, as records
/// of the current thread; skipped (a global function call and a map lookup) when the walk
/// found nobody, as most successful binds' walks do.
#[inline(always)]
pub fn send_found(protocol: u16, netns: u32, walked: u64) -> u64 {
    if pack::walk_count(walked) == 0 {
        return walked;
    }
    portwatch_send_found(
        u64::from(protocol),
        u64::from(netns),
        bpf_get_current_pid_tgid(),
        walked,
    )
}

/// Sends the holders the last walk on this CPU found, as records of thread `tid`, and returns
/// the walk result with its count corrected and LOST added for records the ring had no room
/// for.
///
/// Called by the program after [`portwatch_walk_port`] returned, not from inside it: the
/// send's frame then adds to the program's alone, not to the walk's as well (6.1 adds up the
/// whole chain, `bpf_loop` callbacks included). A global function, checked once.
///
/// Its frame must stay within 32 bytes: 6.1 rounds each frame of the chain program → here →
/// [`portwatch_send_holder`] up to 32 and refuses more than 512 in all. So the loop keeps
/// only four numbers live across the send (the callee-saved registers): the walk's slot, the
/// index, the end and the result so far; the rest is read from the slot. A host unit test
/// (`loader/stack_limit.rs` in the CLI crate) fails when a chain passes the limit.
// SAFETY: a unique name of portwatch's own, as for portwatch_walk_port.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portwatch_send_found(protocol: u64, netns: u64, tid: u64, walked: u64) -> u64 {
    // (A walk that found nobody never gets here: see [`send_found`].)
    let Some(w) = state() else {
        return pack::walk_result(0, pack::walk_bits(walked));
    };
    w.send_protocol = protocol;
    w.send_netns = netns;
    w.send_tid = tid;
    let found = u64::from(pack::walk_count(walked));
    let end = if w.n < found { w.n } else { found };
    // The result so far, as a [`pack::walk_result`]: its count starts at 0 and goes up by one
    // per record sent.
    let mut result = pack::walk_result(0, pack::walk_bits(walked));
    let mut i = 0;
    while i < MAX_HOLDERS as usize {
        if (i as u64) >= end {
            break;
        }
        // The other port space's owners follow the call's own ([`how::OTHER_SPACE`]).
        let proto = if (i as u64) < w.split {
            w.send_protocol as u16
        } else {
            other_protocol(w.send_protocol as u16)
        };
        if send(w.found[i], proto, w.send_netns as u32, w.send_tid as u32, 0) {
            result += 1;
        } else {
            result |= pack::walk_result(0, walk::LOST);
        }
        i += 1;
    }
    result
}

/// The value of an `hlist` field read as a pointer: the first node of a head, or a node's
/// next. `hlist_nulls` lists end in an odd marker instead of null; both end the walk.
#[inline(always)]
fn node(v: u64) -> u64 {
    if v & 1 != 0 { 0 } else { v }
}

#[inline(always)]
fn offset(f: &'static portwatch_common::Field) -> u64 {
    u64::from(global(f).offset)
}

/// The state of the walk on this CPU, for a step.
#[inline(always)]
fn state() -> Option<&'static mut Walk> {
    // SAFETY: this CPU's slot of WALK, valid as long as the map. One step runs at a time, and
    // each is called by bpf_loop while walk_port's own reference to the slot is not in use.
    WALK.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

#[inline(always)]
fn found(w: &mut Walk, sk: u64) {
    if w.n < u64::from(MAX_HOLDERS) {
        w.found[(w.n as usize) % MAX_HOLDERS as usize] = sk;
        w.n += 1;
    } else {
        w.cut = 1;
    }
}

/// The first bind bucket node to look at: the socket's own bucket, or the head of the port's
/// hash chain. None when the table cannot be reached.
#[inline(always)]
fn tcp_start(w: &mut Walk, me: u64, net: u64, port: u16, own_bucket: bool) -> Option<u64> {
    w.bhash2 = u64::from(global(&LAYOUT.tb_has_bhash2).offset != 0);
    if own_bucket {
        // The bind and bind2 bucket pointers sit side by side: one read for both.
        let buckets =
            kernel::Window::<3>::around(me, &[&LAYOUT.icsk_bind_hash, &LAYOUT.icsk_bind2_hash]);
        let own = buckets.field(&LAYOUT.icsk_bind_hash);
        if own != 0 {
            if alone_in_bucket(
                me,
                own,
                buckets.field(&LAYOUT.icsk_bind2_hash),
                w.bhash2 != 0,
            ) {
                return Some(0);
            }
            // Only our own bucket: the chain may hold other ports' buckets, which we skip
            // anyway.
            w.single = 1;
            return Some(own + offset(&LAYOUT.tb_node));
        }
    }
    let hashinfo = read_field(net, &LAYOUT.net_tcp_hashinfo);
    let bhash = read_field(hashinfo, &LAYOUT.hashinfo_bhash);
    let size = read_field(hashinfo, &LAYOUT.hashinfo_bhash_size);
    if bhash == 0 || size == 0 {
        return None;
    }
    let mix = read_field(net, &LAYOUT.net_hash_mix);
    let slot = (u64::from(port) + mix) & (size - 1);
    let bucket = bhash + slot * offset(&LAYOUT.bhash_bucket_size);
    Some(node(read_u64(bucket + offset(&LAYOUT.bhash_bucket_chain))))
}

/// Whether a bound socket is the only one on its port, told from the list links around it
/// without walking: it is the first and last owner of its bucket (before 6.8), or of its bind2
/// bucket, which is itself the first and last of its bind bucket (6.8+). This is the common
/// case of a successful bind, and costs two or three reads instead of a walk's eight. `tb` and
/// `tb2` are the socket's bind and bind2 buckets.
#[inline(always)]
fn alone_in_bucket(me: u64, tb: u64, tb2: u64, bhash2: bool) -> bool {
    // `hlist_node { next, pprev }`: last when `next` is null, first when `pprev` points at the
    // list head itself.
    let links = |n: u64| kernel::probe_kernel::<[u64; 2]>(n).unwrap_or([1, 0]);
    let [next, pprev] = links(me + offset(&LAYOUT.sk_bind_node));
    if next != 0 {
        return false;
    }
    if !bhash2 {
        return pprev == tb + offset(&LAYOUT.tb_owners);
    }
    if tb2 == 0 || pprev != tb2 + offset(&LAYOUT.tb2_owners) {
        return false;
    }
    let [next2, pprev2] = links(tb2 + offset(&LAYOUT.tb2_bhash_node));
    next2 == 0 && pprev2 == tb + offset(&LAYOUT.tb_owners)
}

/// One node of the TCP walk: a socket, else a bind2 bucket, else a bind bucket.
extern "C" fn tcp_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = state() else {
        return BPF_LOOP_STOP;
    };
    if w.owner != 0 {
        let other = w.owner - offset(&LAYOUT.sk_bind_node);
        w.owner = node(read_u64(w.owner));
        if other != w.me {
            found(w, other);
        }
        return BPF_LOOP_GO_ON;
    }
    if w.tb2_node != 0 {
        let tb2 = w.tb2_node - offset(&LAYOUT.tb2_bhash_node);
        w.owner = node(read_field(tb2, &LAYOUT.tb2_owners));
        w.tb2_node = node(read_field(tb2, &LAYOUT.tb2_bhash_node));
        return BPF_LOOP_GO_ON;
    }
    if w.tb_node != 0 {
        let tb = w.tb_node - offset(&LAYOUT.tb_node);
        if read_field(tb, &LAYOUT.tb_net) == w.net && read_field(tb, &LAYOUT.tb_port) == w.port {
            let first = node(read_field(tb, &LAYOUT.tb_owners));
            if w.bhash2 != 0 {
                w.tb2_node = first;
            } else {
                w.owner = first;
            }
        }
        // A port has one bucket per namespace (and per VRF): keep to the chain for VRFs.
        w.tb_node = if w.single != 0 {
            0
        } else {
            node(read_field(tb, &LAYOUT.tb_node))
        };
        return BPF_LOOP_GO_ON;
    }
    BPF_LOOP_STOP
}

/// The first socket of the port's UDP hash slot. None when the table cannot be reached.
/// `other_space`: `me` is not a UDP socket, so its protocol does not lead to the UDP table.
#[inline(always)]
fn udp_start(me: u64, net: u64, port: u16, other_space: bool) -> Option<u64> {
    let table = if global(&LAYOUT.net_udp_table).size != 0 {
        read_field(net, &LAYOUT.net_udp_table)
    } else if other_space {
        global(&SETTINGS.udp_table)
    } else {
        let prot = read_field(me, &LAYOUT.sk_prot);
        read_field(prot, &LAYOUT.proto_udp_table)
    };
    if table == 0 {
        return None;
    }
    // The slots and the mask, in one read (they are 16 or 24 bytes apart).
    let t = kernel::Window::<5>::around(table, &[&LAYOUT.udp_table_hash, &LAYOUT.udp_table_mask]);
    let hash = t.field(&LAYOUT.udp_table_hash);
    if hash == 0 {
        return None;
    }
    let mix = read_field(net, &LAYOUT.net_hash_mix);
    let slot = (u64::from(port) + mix) & t.field(&LAYOUT.udp_table_mask);
    // `udp_hslot.head` opens the slot.
    Some(node(read_u64(hash + slot * offset(&LAYOUT.udp_hslot_size))))
}

/// One socket of the UDP slot. The slot holds every port that hashes to it, from every
/// namespace.
extern "C" fn udp_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = state() else {
        return BPF_LOOP_STOP;
    };
    if w.owner == 0 {
        return BPF_LOOP_STOP;
    }
    let other = w.owner - offset(&LAYOUT.sk_node);
    w.owner = node(read_u64(w.owner));
    if other != w.me
        && read_field(other, &LAYOUT.sk_num) == w.port
        && read_field(other, &LAYOUT.sk_net) == w.net
    {
        found(w, other);
    }
    BPF_LOOP_GO_ON
}

/// Sends one holder record for `sk` (any sock: full, TIME_WAIT or request). `netns` is the
/// caller's: every socket a walk finds lives there.
#[inline(always)]
pub fn send(sk: u64, protocol: u16, netns: u32, tid: u32, extra: u8) -> bool {
    portwatch_send_holder(
        sk,
        u64::from(protocol),
        u64::from(netns),
        u64::from(tid),
        u64::from(extra),
    ) != 0
}

/// [`send`] as a global BPF function: the verifier checks a global function once, on its own,
/// instead of once for every state of every caller (a walk calls it from each of its steps).
/// That is what keeps loading fast. Its arguments are plain numbers, as global functions need.
// SAFETY: a unique name of portwatch's own, as for portwatch_walk_port.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portwatch_send_holder(
    sk: u64,
    protocol: u64,
    netns: u64,
    tid: u64,
    extra: u64,
) -> u64 {
    let Some(mut entry) = EVENTS.reserve::<HolderRecord>(0) else {
        count_lost(lost::RINGBUF);
        return 0;
    };
    // SAFETY: the reservation is a whole HolderRecord of ring memory, ours until submitted.
    unsafe {
        describe(
            entry.as_mut_ptr(),
            &Sock::from_sk(sk),
            protocol as u16,
            netns as u32,
            tid as u32,
            extra as u8,
        )
    };
    entry.submit(wakeup_flag());
    1
}

/// Fills `out` with what a holder record says about `s`. Shared by the walk and the socket
/// table iterators, so a socket reads the same whichever found it.
///
/// # Safety
///
/// `out` must point to a [`HolderRecord`] that is valid for writes and used by nothing else
/// during the call (a ring-buffer reservation, or a record on the caller's stack). It is a
/// raw pointer, not `&mut`, because a reservation is written in place, field by field.
#[inline(always)]
pub unsafe fn describe(
    out: *mut HolderRecord,
    s: &Sock,
    protocol: u16,
    netns: u32,
    tid: u32,
    extra: u8,
) {
    let family = s.family();
    let full = s.is_full();
    // SAFETY: `out` is valid for writes and ours alone (the caller's contract above);
    // bpf_jiffies64 has no preconditions.
    unsafe {
        (*out).record = record::HOLDER;
        (*out).state = s.state();
        (*out).family = family;
        (*out).tid = tid;
        (*out).protocol = protocol;
        (*out).port = s.num();
        (*out).dport = s.dport();
        (*out).bound_dev_if = s.bound_dev_if();
        (*out).netns = netns;
        (*out).reuse = s.reuse();
        (*out).substate = s.substate();
        (*out)._pad = 0;
        (*out).addr = s.rcv_saddr(family);
        (*out).daddr = s.daddr(family);
        (*out).jiffies_now = bpf_jiffies64();
        if full {
            let socket = s.socket();
            let mut flags = holder::FULL | extra;
            if socket == 0 {
                flags |= holder::ORPHAN;
            } else if read_field(socket, &LAYOUT.socket_file) == 0 {
                flags |= holder::NO_FILE;
            }
            (*out).flags = flags;
            (*out).options = s.options();
            (*out).uid = s.body().uid;
            (*out).ino = s.ino_of(socket);
            (*out).tw_expires = 0;
        } else {
            (*out).flags = extra;
            (*out).options = s.common_options();
            (*out).uid = 0;
            (*out).ino = 0;
            (*out).tw_expires = s.tw_expires();
        }
    }
}
