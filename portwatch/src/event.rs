//! Turns the raw records from the ring buffer into typed values.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use portwatch_common::{
    AF_INET, AF_INET6, AF_UNSPEC, Backend, BindEvent, HolderRecord, flags, holder, record,
};

use crate::{
    sockets::{Family, Options, Proto, SocketView, State},
    workload::Workload,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Bind,
    Listen,
    /// A connect() that failed for want of a local port (only those are traced).
    Connect,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Bind => "bind",
            Call::Listen => "listen",
            Call::Connect => "connect",
        }
    }

    /// Whether the call passes an address: bind()'s to take, connect()'s to reach.
    pub fn has_address(self) -> bool {
        matches!(self, Call::Bind | Call::Connect)
    }
}

/// The address and port as the caller passed them: for connect(), the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// `sa_family` as passed (AF_UNSPEC is accepted for 0.0.0.0 on IPv4 sockets).
    pub sa_family: u16,
    pub addr: IpAddr,
    pub port: u16,
    pub scope_id: u32,
    /// The interface `scope_id` names, looked up in the socket's namespace (not by the kernel
    /// side: `trace` fills it in).
    pub scope_name: Option<String>,
}

/// One bind() or listen(), decoded.
#[derive(Clone, Debug)]
pub struct Event {
    pub call: Call,
    /// The backend that saw the call; None for a call portwatch only imagines (`who --addr`),
    /// or for a backend byte this build does not know (JSON says null rather than guess).
    pub backend: Option<Backend>,
    /// Nanoseconds since boot (CLOCK_BOOTTIME).
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// What `cgroup_id` names (unit, container, pod), filled in by the trace; None when it
    /// was not looked up or not found.
    pub workload: Option<Arc<Workload>>,
    pub fd: Option<i32>,
    /// What was asked for (bind: the address to take; connect: the destination; None for
    /// listen or when it could not be read).
    pub requested: Option<Requested>,
    /// 0 or -errno.
    pub ret: i32,
    /// The socket after the call: bound address and port, options, state, netns, uid.
    pub socket: Option<SocketView>,
    /// The port's other owners as the kernel had them at the call (see [`KernelHolder`]).
    pub kernel_holders: Vec<KernelHolder>,
    /// [`portwatch_common::walk`] bits: whether the kernel side read the port's owners at the
    /// call, and whether that list is whole. None for calls that did not come from the kernel.
    pub walk: Option<u8>,
    /// How many holder records the kernel side sent with this call.
    pub holders_sent: u8,
    /// The socket is the kernel's own (no file): the kernel bound it for itself, and `pid`
    /// and `comm` are the task that made it do so (fexit only; see
    /// [`portwatch_common::flags::KERNEL_SOCKET`]).
    pub kernel_socket: bool,
    /// How many times the call was made, this one included: more than 1 when the same failed
    /// connect() came again and again and the trace folded the repeats into this event (see
    /// [`Event::repeats`]).
    pub attempts: u32,
}

/// How long after a failed connect() the same failure still counts as its repeat
/// ([`Event::repeats`]). io_uring's retries of one request come within milliseconds.
pub const REPEAT_SPAN_NS: u64 = 1_000_000_000;

impl Event {
    /// A call by `pid` (`comm`) that did not come from the kernel side: the bind `who --addr`
    /// imagines, and the tests' calls. Nothing is known of it yet (no request, no socket, no
    /// holders, result 0): fill in what is.
    pub fn imagined(call: Call, pid: u32, comm: &str) -> Self {
        Event {
            call,
            backend: None,
            boot_ns: 0,
            pid,
            tid: pid,
            uid: 0,
            comm: comm.into(),
            cgroup_id: 0,
            workload: None,
            fd: None,
            requested: None,
            ret: 0,
            socket: None,
            kernel_holders: vec![],
            walk: None,
            holders_sent: 0,
            kernel_socket: false,
            attempts: 1,
        }
    }

    pub fn ok(&self) -> bool {
        self.ret >= 0
    }

    pub fn errno(&self) -> Option<i32> {
        (self.ret < 0).then_some(-self.ret)
    }

    /// The port this call is about: the one asked for (a connect()'s destination), else the
    /// one bound.
    pub fn port(&self) -> u16 {
        match (&self.requested, &self.socket) {
            (Some(r), _) if r.port != 0 => r.port,
            (_, Some(s)) => s.port,
            _ => 0,
        }
    }

    pub fn netns(&self) -> Option<u32> {
        self.socket.as_ref().map(|s| s.netns).filter(|&n| n != 0)
    }

    /// What a repeat of this call shares with it ([`Event::repeats`]): the process and the
    /// socket inode. None for a call that cannot have repeats: anything but a failed connect()
    /// on a socket with an inode.
    pub fn repeat_key(&self) -> Option<(u32, u64)> {
        let ino = self.socket.as_ref().map_or(0, |s| s.ino);
        (self.call == Call::Connect && !self.ok() && ino != 0).then_some((self.pid, ino))
    }

    /// Whether this call is `first` made again: a failed connect() of the same process on the
    /// same socket (a real one, with an inode) to the same destination, failing the same way
    /// with the same holders at the call, within [`REPEAT_SPAN_NS`] of `first`.
    ///
    /// Why: io_uring takes a UDP connect()'s EAGAIN for "not ready yet", polls the socket,
    /// finds it writable and calls the kernel's connect again, dozens or hundreds of times,
    /// before it completes the one request with EAGAIN. Each attempt is a real call that the
    /// fexit backend sees, and shown one by one they bury the explanation under identical
    /// lines. Some attempts run on one of io_uring's worker threads (`iou-wrk-PID`) rather
    /// than the submitting thread, hence the same process, not the same thread. Only connect()
    /// is folded: it is the call the kernel repeats by itself.
    pub fn repeats(&self, first: &Event) -> bool {
        let same_socket = match (&self.socket, &first.socket) {
            (Some(a), Some(b)) => a.ino != 0 && a == b,
            _ => false,
        };
        self.call == Call::Connect
            && first.call == Call::Connect
            && !self.ok()
            && self.ret == first.ret
            && (self.pid, self.backend) == (first.pid, first.backend)
            && self.boot_ns >= first.boot_ns
            && self.boot_ns - first.boot_ns <= REPEAT_SPAN_NS
            && self.requested == first.requested
            && same_socket
            && (self.walk, self.holders_sent) == (first.walk, first.holders_sent)
            && self.kernel_holders.len() == first.kernel_holders.len()
            && self
                .kernel_holders
                .iter()
                .zip(&first.kernel_holders)
                .all(|(a, b)| a.same_socket(b))
    }
}

/// A socket the kernel side reported on a port.
#[derive(Clone, Debug)]
pub struct KernelHolder {
    pub socket: SocketView,
    /// [`holder`] bits: full socket, no file (in-kernel), orphan, from the conflict check.
    pub flags: u8,
}

impl KernelHolder {
    /// The same socket, as the kernel described it, in the same state: only a TIME_WAIT
    /// socket's time left may differ (it is worked out when each record is read).
    pub fn same_socket(&self, other: &KernelHolder) -> bool {
        self.flags == other.flags
            && SocketView {
                tw_left_ms: other.socket.tw_left_ms,
                ..self.socket.clone()
            } == other.socket
    }

    /// Named by the kernel's own conflict check (fexit), not by the walk of the port's owners.
    pub fn is_conflict_check(&self) -> bool {
        self.flags & holder::CONFLICT_CHECK != 0
    }
}

/// A decoded ring buffer record.
pub enum Record {
    Call(Event),
    /// Another owner of the port of the next call of thread `tid`, as it was at that call.
    Holder {
        tid: u32,
        holder: KernelHolder,
    },
}

pub fn decode(bytes: &[u8]) -> Option<Record> {
    match *bytes.first()? {
        record::BIND | record::LISTEN | record::CONNECT
            if bytes.len() >= size_of::<BindEvent>() =>
        {
            // SAFETY: length checked; BindEvent is plain integers, any bit pattern is valid.
            let raw: BindEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(Record::Call(decode_call(&raw)))
        }
        record::HOLDER if bytes.len() >= size_of::<HolderRecord>() => {
            // SAFETY: as above.
            let raw: HolderRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(Record::Holder {
                tid: raw.tid,
                holder: decode_holder(&raw, monotonic_ns()),
            })
        }
        _ => None,
    }
}

pub fn ip_from(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn decode_call(raw: &BindEvent) -> Event {
    let call = match raw.record {
        record::LISTEN => Call::Listen,
        record::CONNECT => Call::Connect,
        _ => Call::Bind,
    };
    let requested = (call.has_address() && raw.flags & flags::NO_REQUEST == 0).then(|| {
        // AF_UNSPEC is only accepted on IPv4 sockets, and means 0.0.0.0.
        let fam = if raw.req_family == AF_UNSPEC {
            AF_INET
        } else {
            raw.req_family
        };
        Requested {
            sa_family: raw.req_family,
            addr: ip_from(fam, &raw.req_addr),
            port: raw.req_port,
            scope_id: raw.req_scope_id,
            scope_name: None,
        }
    });
    let socket = (raw.flags & flags::NO_SOCKET == 0).then(|| SocketView {
        family: Family::from_af(raw.family),
        proto: Proto::from_raw(raw.protocol, raw.sock_type),
        addr: ip_from(raw.family, &raw.bound_addr),
        port: raw.bound_port,
        state: State::from_raw(raw.state, raw.protocol),
        options: Options::from_bits(raw.options, raw.reuse, raw.bound_dev_if),
        uid: Some(raw.sk_uid),
        netns: raw.netns,
        ino: raw.sock_ino,
        peer: None,
        tw_left_ms: None,
    });
    Event {
        call,
        backend: Backend::from_raw(raw.backend),
        boot_ns: raw.ts_ns,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        comm: comm_str(&raw.comm),
        cgroup_id: raw.cgroup_id,
        workload: None,
        fd: (raw.fd >= 0).then_some(raw.fd),
        requested,
        ret: raw.ret,
        socket,
        kernel_holders: Vec::new(),
        walk: Some(raw.walk),
        holders_sent: raw.holders,
        kernel_socket: raw.flags & flags::KERNEL_SOCKET != 0,
        attempts: 1,
    }
}

/// One [`HolderRecord`], from the ring buffer or a socket table dump. `mono_ns` is the
/// monotonic clock when it was read, which converts TIME_WAIT expiry jiffies to time.
pub fn decode_holder(r: &HolderRecord, mono_ns: u64) -> KernelHolder {
    let state = State::with_substate(r.state, r.substate);
    let tw_left_ms = (state.is_time_wait() && r.tw_expires != 0)
        .then(|| hz(r.jiffies_now, mono_ns))
        .flatten()
        .map(|hz| r.tw_expires.saturating_sub(r.jiffies_now) * 1000 / hz);
    let peer_addr = ip_from(r.family, &r.daddr);
    let connected = r.dport != 0;
    let full = r.flags & holder::FULL != 0;
    KernelHolder {
        socket: SocketView {
            family: Family::from_af(r.family),
            proto: Proto::from_raw(r.protocol, 0),
            addr: ip_from(r.family, &r.addr),
            port: r.port,
            state,
            options: Options::from_bits(r.options, r.reuse, r.bound_dev_if),
            // TIME_WAIT and request socks keep no uid.
            uid: full.then_some(r.uid),
            netns: r.netns,
            ino: r.ino,
            peer: connected.then_some((peer_addr, r.dport)),
            tw_left_ms,
        },
        flags: r.flags,
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's tick rate (CONFIG_HZ), which converts TIME_WAIT expiry jiffies to time.
///
/// No interface reports it, but the kernel starts `jiffies_64` at INITIAL_JIFFIES =
/// 2^32 − 300·HZ so that the 32-bit counter wraps five minutes after boot. So
/// `jiffies − 2^32 = HZ · (uptime − 300 s)`: the HZ that fits best among the values Kconfig
/// allows is the answer. Too close to the five-minute mark the candidates can't be told apart,
/// and the time left is then not shown.
pub fn hz(jiffies: u64, mono_ns: u64) -> Option<u64> {
    const CANDIDATES: [u64; 4] = [100, 250, 300, 1000];
    let ticks = jiffies as i128 - (1i128 << 32);
    let secs = mono_ns as f64 / 1e9 - 300.0;
    if secs.abs() < 10.0 {
        return None;
    }
    let (best, err) = CANDIDATES
        .iter()
        .map(|&hz| (hz, (ticks as f64 - hz as f64 * secs).abs()))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    // Accept only a clear fit: within 2% of the elapsed time in ticks.
    (err <= 0.02 * best as f64 * secs.abs()).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hz_from_initial_jiffies() {
        let boot = |hz: u64, uptime_s: f64| {
            (((1u64 << 32) as f64 - 300.0 * hz as f64) + hz as f64 * uptime_s) as u64
        };
        for hz_true in [100, 250, 300, 1000] {
            let j = boot(hz_true, 4000.0);
            assert_eq!(hz(j, 4_000_000_000_000), Some(hz_true));
            let j = boot(hz_true, 20.0);
            assert_eq!(hz(j, 20_000_000_000), Some(hz_true));
        }
        // Too close to the wrap point to tell.
        assert_eq!(hz(boot(250, 301.0), 301_000_000_000), None);
    }

    /// A UDP connect() of thread 42 on socket inode 7 to 127.0.0.1:54 that failed with EAGAIN
    /// at `boot_ns`, with one holder the kernel reported.
    fn eagain(boot_ns: u64) -> Event {
        let mut s = crate::explain::tests::sock(Proto::Udp, "0.0.0.0", 0);
        s.ino = 7;
        let mut holder = crate::explain::tests::sock(Proto::Udp, "127.0.0.1", 40000);
        holder.ino = 9;
        Event {
            boot_ns,
            requested: Some(Requested {
                sa_family: AF_INET,
                addr: "127.0.0.1".parse().unwrap(),
                port: 54,
                scope_id: 0,
                scope_name: None,
            }),
            ret: -libc::EAGAIN,
            socket: Some(s),
            kernel_holders: vec![KernelHolder {
                socket: holder,
                flags: holder::FULL,
            }],
            ..Event::imagined(Call::Connect, 42, "client")
        }
    }

    #[test]
    fn a_failed_connect_made_again_is_a_repeat() {
        let first = eagain(1_000);
        assert!(eagain(2_000).repeats(&first));
        assert!(eagain(1_000 + REPEAT_SPAN_NS).repeats(&first));
        // io_uring makes some attempts from a worker thread of the same process.
        let mut worker = eagain(2_000);
        (worker.tid, worker.comm) = (99, "iou-wrk-42".into());
        assert!(worker.repeats(&first));
        // A TIME_WAIT holder's time left is worked out per record: it may differ.
        let mut tw = first.clone();
        tw.kernel_holders[0].socket.tw_left_ms = Some(100);
        let mut later = eagain(2_000);
        later.kernel_holders[0].socket.tw_left_ms = Some(90);
        assert!(later.repeats(&tw));
    }

    #[test]
    fn only_a_failed_connect_on_a_socket_with_an_inode_can_have_repeats() {
        assert_eq!(eagain(1_000).repeat_key(), Some((42, 7)));
        let mut ok = eagain(1_000);
        ok.ret = 0;
        let mut bind = eagain(1_000);
        bind.call = Call::Bind;
        let mut no_ino = eagain(1_000);
        no_ino.socket.as_mut().unwrap().ino = 0;
        for e in [ok, bind, no_ino] {
            assert_eq!(e.repeat_key(), None);
        }
    }

    #[test]
    fn anything_else_is_not_a_repeat() {
        let first = eagain(1_000);
        type Change = fn(&mut Event);
        let differs: [(&str, Change); 10] = [
            ("too late", |e| e.boot_ns += REPEAT_SPAN_NS + 1),
            ("earlier", |e| e.boot_ns = 0),
            ("another errno", |e| e.ret = -libc::EADDRNOTAVAIL),
            ("a success", |e| e.ret = 0),
            ("another process", |e| e.pid = 43),
            ("another socket", |e| e.socket.as_mut().unwrap().ino = 8),
            ("another destination", |e| {
                e.requested.as_mut().unwrap().port = 55
            }),
            ("another holder", |e| {
                e.kernel_holders[0].socket.port = 40001
            }),
            ("a holder fewer", |e| e.kernel_holders.clear()),
            ("a bind", |e| e.call = Call::Bind),
        ];
        for (what, change) in differs {
            let mut e = eagain(2_000);
            change(&mut e);
            assert!(!e.repeats(&first), "{what}");
        }
        // Without a socket inode, two calls cannot be told to be on the same socket.
        let mut no_ino = first.clone();
        no_ino.socket.as_mut().unwrap().ino = 0;
        let mut again = eagain(2_000);
        again.socket.as_mut().unwrap().ino = 0;
        assert!(!again.repeats(&no_ino));
    }
}
