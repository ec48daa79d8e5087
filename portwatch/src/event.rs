//! Turns the raw records from the ring buffer into typed values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwatch_common::{
    AF_INET, AF_INET6, AF_UNSPEC, Backend, BindEvent, ConflictEvent, flags, opt, record,
};

use crate::sockets::{Family, Options, Proto, SocketView, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Bind,
    Listen,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Bind => "bind",
            Call::Listen => "listen",
        }
    }
}

/// The address and port as the caller passed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// `sa_family` as passed (AF_UNSPEC is accepted for 0.0.0.0 on IPv4 sockets).
    pub sa_family: u16,
    pub addr: IpAddr,
    pub port: u16,
    pub scope_id: u32,
}

/// One bind() or listen(), decoded.
#[derive(Clone, Debug)]
pub struct Event {
    pub call: Call,
    pub backend: &'static str,
    /// Nanoseconds since boot (CLOCK_BOOTTIME).
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub fd: Option<i32>,
    /// What was asked for (bind only; None when it could not be read).
    pub requested: Option<Requested>,
    /// 0 or -errno.
    pub ret: i32,
    /// The socket after the call: bound address and port, options, state, netns, uid.
    pub socket: Option<SocketView>,
    /// Holders the kernel's conflict check reported (fexit backend only).
    pub kernel_conflicts: Vec<SocketView>,
}

impl Event {
    pub fn ok(&self) -> bool {
        self.ret >= 0
    }

    pub fn errno(&self) -> Option<i32> {
        (self.ret < 0).then_some(-self.ret)
    }

    /// The port this call is about: the one asked for, else the one bound.
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
}

/// A decoded ring buffer record.
pub enum Record {
    Call(Event),
    Conflict { tid: u32, holder: SocketView },
}

pub fn decode(bytes: &[u8]) -> Option<Record> {
    match *bytes.first()? {
        record::BIND | record::LISTEN if bytes.len() >= size_of::<BindEvent>() => {
            // SAFETY: length checked; BindEvent is plain integers, any bit pattern is valid.
            let raw: BindEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(Record::Call(decode_call(&raw)))
        }
        record::CONFLICT if bytes.len() >= size_of::<ConflictEvent>() => {
            // SAFETY: as above.
            let raw: ConflictEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(Record::Conflict {
                tid: raw.tid,
                holder: decode_conflict(&raw),
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
    let call = if raw.record == record::LISTEN {
        Call::Listen
    } else {
        Call::Bind
    };
    let requested = (call == Call::Bind && raw.flags & flags::NO_REQUEST == 0).then(|| {
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
        backend: Backend::from_raw(raw.backend)
            .unwrap_or(Backend::Tracepoint)
            .name(),
        boot_ns: raw.ts_ns,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        comm: comm_str(&raw.comm),
        cgroup_id: raw.cgroup_id,
        fd: (raw.fd >= 0).then_some(raw.fd),
        requested,
        ret: raw.ret,
        socket,
        kernel_conflicts: Vec::new(),
    }
}

fn decode_conflict(raw: &ConflictEvent) -> SocketView {
    const IPPROTO_TCP: u16 = 6;
    let full = raw.ino != 0;
    SocketView {
        family: Family::from_af(raw.family),
        // inet_bind_conflict is TCP's (inet_connection_sock) check.
        proto: Proto::Tcp,
        addr: ip_from(raw.family, &raw.addr),
        port: raw.port,
        state: State::from_raw(raw.state, IPPROTO_TCP),
        options: Options::from_bits(
            raw.options,
            u8::from(raw.options & opt::REUSEADDR != 0),
            raw.bound_dev_if,
        ),
        uid: full.then_some(raw.uid),
        netns: raw.netns,
        ino: raw.ino,
        peer: None,
        tw_left_ms: None,
    }
}
