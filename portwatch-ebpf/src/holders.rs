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
//! The walk is bounded ([`MAX_STEPS`] list nodes, [`MAX_HOLDERS`] records), and says when it
//! was cut. Each holder goes out as its own [`HolderRecord`], just before the call's event.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_jiffies64, bpf_loop},
};
use portwatch_common::{
    HolderRecord, IPPROTO_TCP, IPPROTO_UDP, MAX_HOLDERS, holder, lost, record, walk,
};

use crate::{
    EVENTS, count_lost,
    kernel::{LAYOUT, Sock, Window, global, read_field, read_u64},
    wakeup_flag,
};

/// List nodes followed per call, at most: bind buckets, bind2 buckets and sockets together.
/// A port shared by more sockets than this is reported as cut.
const MAX_STEPS: u32 = 24;

/// What a walk sent.
#[repr(C)]
struct Sent {
    count: u8,
    /// [`walk`] bits.
    walk: u8,
}

impl Sent {
    const NONE: Sent = Sent { count: 0, walk: 0 };
}

/// Sends the sockets other than `sk` (a `struct sock *`) that hold `port` in `sk`'s namespace
/// and port space. `own_bucket`: the socket is bound (a success), so its bind bucket is known
/// without hashing. Returns a [`Sent`] packed as `count | walk << 8`.
///
/// A global BPF function: it gets a stack frame of its own (the walk's windows would not fit
/// in the 512 bytes the fexit programs share with the event they build), and the verifier
/// checks it once, not once per state of its caller. Arguments are plain numbers.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portwatch_walk_port(
    sk: u64,
    protocol: u64,
    port: u64,
    netns: u64,
    tid_own: u64,
) -> u64 {
    let (protocol, port, netns) = (protocol as u16, port as u16, netns as u32);
    let sk = Sock::from_sk(sk);
    let tid = tid_own as u32;
    let own_bucket = tid_own >> 32 != 0;
    let sent = if protocol == IPPROTO_TCP {
        walk_tcp(&sk, port, netns, tid, own_bucket)
    } else if protocol == IPPROTO_UDP {
        walk_udp(&sk, port, netns, tid)
    } else {
        Sent::NONE
    };
    u64::from(sent.count) | u64::from(sent.walk) << 8
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

/// What one walk carries from step to step. It lives on the caller's stack; `bpf_loop` hands
/// each step a pointer to it.
#[repr(C)]
struct Walk {
    /// The calling socket, skipped.
    me: u64,
    net: u64,
    port: u64,
    netns: u32,
    tid: u32,
    protocol: u16,
    /// Sockets hang off bind2 buckets (6.8+), not off the bind bucket.
    bhash2: u16,
    /// 1 when only the first bind bucket is to be looked at (the caller's own).
    single: u32,
    /// The cursors: the next bind bucket, bind2 bucket and socket list node; 0 when done.
    tb_node: u64,
    tb2_node: u64,
    owner: u64,
    sent: Sent,
}

const BPF_LOOP_STOP: i64 = 1;
const BPF_LOOP_GO_ON: i64 = 0;

/// Runs `step` up to [`MAX_STEPS`] times over `w`. `bpf_loop` has the verifier check one step,
/// not every unrolled path through the whole walk: that is what keeps loading fast.
#[inline(always)]
fn run(w: &mut Walk, step: extern "C" fn(u64, *mut c_void) -> i64) {
    unsafe {
        bpf_loop(
            MAX_STEPS,
            step as *mut c_void,
            (w as *mut Walk).cast::<c_void>(),
            0,
        )
    };
    if w.owner != 0 || w.tb2_node != 0 || w.tb_node != 0 {
        w.sent.walk |= walk::CUT;
    }
}

#[inline(always)]
fn walk_tcp(sk: &Sock, port: u16, netns: u32, tid: u32, own_bucket: bool) -> Sent {
    let net = sk.net();
    // The first bind bucket to look at: the socket's own, or the head of the port's hash chain.
    let own = if own_bucket {
        read_field(sk.sk, &LAYOUT.icsk_bind_hash)
    } else {
        0
    };
    let tb_node = if own != 0 {
        own + offset(&LAYOUT.tb_node)
    } else {
        let hashinfo = read_field(net, &LAYOUT.net_tcp_hashinfo);
        let h = Window::<5>::around(
            hashinfo,
            &[&LAYOUT.hashinfo_bhash, &LAYOUT.hashinfo_bhash_size],
        );
        let bhash = h.field(&LAYOUT.hashinfo_bhash);
        let size = h.field(&LAYOUT.hashinfo_bhash_size);
        if bhash == 0 || size == 0 {
            return Sent {
                count: 0,
                walk: walk::NO_TABLE,
            };
        }
        let mix = read_field(net, &LAYOUT.net_hash_mix);
        let slot = (u64::from(port) + mix) & (size - 1);
        let bucket = bhash + slot * offset(&LAYOUT.bhash_bucket_size);
        node(read_u64(bucket + offset(&LAYOUT.bhash_bucket_chain)))
    };
    let mut w = Walk {
        me: sk.sk,
        net,
        port: u64::from(port),
        netns,
        tid,
        protocol: IPPROTO_TCP,
        bhash2: u16::from(global(&LAYOUT.tb_has_bhash2).offset != 0),
        single: u32::from(own != 0),
        tb_node,
        tb2_node: 0,
        owner: 0,
        sent: Sent {
            count: 0,
            walk: walk::DONE,
        },
    };
    run(&mut w, tcp_step);
    w.sent
}

/// One node of the TCP walk: a socket, else a bind2 bucket, else a bind bucket.
extern "C" fn tcp_step(_i: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    if w.owner != 0 {
        let other = w.owner - offset(&LAYOUT.sk_bind_node);
        w.owner = node(read_u64(w.owner));
        if other != w.me {
            add(w, other);
        }
        return BPF_LOOP_GO_ON;
    }
    if w.tb2_node != 0 {
        let tb2 = w.tb2_node - offset(&LAYOUT.tb2_bhash_node);
        let b = Window::<4>::around(tb2, &[&LAYOUT.tb2_bhash_node, &LAYOUT.tb2_owners]);
        w.owner = node(b.field(&LAYOUT.tb2_owners));
        w.tb2_node = node(b.field(&LAYOUT.tb2_bhash_node));
        return BPF_LOOP_GO_ON;
    }
    if w.tb_node != 0 {
        let tb = w.tb_node - offset(&LAYOUT.tb_node);
        let b = Window::<10>::around(
            tb,
            &[
                &LAYOUT.tb_net,
                &LAYOUT.tb_port,
                &LAYOUT.tb_node,
                &LAYOUT.tb_owners,
            ],
        );
        if b.field(&LAYOUT.tb_net) == w.net && b.field(&LAYOUT.tb_port) == w.port {
            let first = node(b.field(&LAYOUT.tb_owners));
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
            node(b.field(&LAYOUT.tb_node))
        };
        return BPF_LOOP_GO_ON;
    }
    BPF_LOOP_STOP
}

#[inline(always)]
fn walk_udp(sk: &Sock, port: u16, netns: u32, tid: u32) -> Sent {
    let net = sk.net();
    let table = if global(&LAYOUT.net_udp_table).size != 0 {
        read_field(net, &LAYOUT.net_udp_table)
    } else {
        let prot = read_field(sk.sk, &LAYOUT.sk_prot);
        read_field(prot, &LAYOUT.proto_udp_table)
    };
    let t = Window::<4>::around(table, &[&LAYOUT.udp_table_hash, &LAYOUT.udp_table_mask]);
    let hash = t.field(&LAYOUT.udp_table_hash);
    if hash == 0 {
        return Sent {
            count: 0,
            walk: walk::NO_TABLE,
        };
    }
    let mix = read_field(net, &LAYOUT.net_hash_mix);
    let slot = (u64::from(port) + mix) & t.field(&LAYOUT.udp_table_mask);
    let mut w = Walk {
        me: sk.sk,
        net,
        port: u64::from(port),
        netns,
        tid,
        protocol: IPPROTO_UDP,
        bhash2: 0,
        single: 0,
        tb_node: 0,
        tb2_node: 0,
        // `udp_hslot.head` opens the slot.
        owner: node(read_u64(hash + slot * offset(&LAYOUT.udp_hslot_size))),
        sent: Sent {
            count: 0,
            walk: walk::DONE,
        },
    };
    run(&mut w, udp_step);
    w.sent
}

/// One socket of the UDP slot. The slot holds every port that hashes to it, from every
/// namespace.
extern "C" fn udp_step(_i: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    if w.owner == 0 {
        return BPF_LOOP_STOP;
    }
    let other = w.owner - offset(&LAYOUT.sk_node);
    w.owner = node(read_u64(w.owner));
    if other != w.me {
        let o = Sock::from_sk(other);
        if u64::from(o.num()) == w.port && o.net() == w.net {
            add(w, other);
        }
    }
    BPF_LOOP_GO_ON
}

#[inline(always)]
fn add(w: &mut Walk, sk: u64) {
    if w.sent.count >= MAX_HOLDERS {
        w.sent.walk |= walk::CUT;
    } else if send(sk, w.protocol, w.netns, w.tid, 0) {
        w.sent.count += 1;
    } else {
        w.sent.walk |= walk::LOST;
    }
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
    describe(
        entry.as_mut_ptr(),
        &Sock::from_sk(sk),
        protocol as u16,
        netns as u32,
        tid as u32,
        extra as u8,
    );
    entry.submit(wakeup_flag());
    1
}

/// Fills `out` with what a holder record says about `s`. Shared by the walk and the socket
/// table iterators, so a socket reads the same whichever found it.
#[inline(always)]
pub fn describe(out: *mut HolderRecord, s: &Sock, protocol: u16, netns: u32, tid: u32, extra: u8) {
    let family = s.family();
    let full = s.is_full();
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
