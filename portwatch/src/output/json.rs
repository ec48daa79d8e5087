//! Every JSON wire type portwatch writes, and nothing else: what `trace --json` prints (one
//! object per line: `bind`/`listen`/`connect`, `lost`, `summary`), what `who --json` prints
//! (one `who` object) and what `ports --json` prints (one `ports` object). The README's JSON section describes these types; field names and order here are
//! the schema. Each type borrows from the value it shows and is built just before it is written.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use super::{Clock, Summary, rfc3339};
use crate::{
    address::endpoint,
    errno,
    event::Event,
    explain::{Involved, Verdict},
    facts::{port_use::PortOwner, ports::NetnsPorts},
    prediction::Prediction,
    sockets::{Family, Holder, Owner, OwnerStatus, Proto, SocketView},
    workload::{Kind, Workload},
};

/// Writes `value` as one line of JSON.
pub fn write_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    // serde_json writes a line in dozens of small pieces; into a Vec they cost next to
    // nothing, while each one through the output's `Write` (an enum over stdout and the
    // rotating file) cost a dispatch and a copy: a sixth of trace's CPU under load. One line,
    // one write.
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        serde_json::to_writer(&mut *line, value)?;
        line.push(b'\n');
        let result = out.write_all(line);
        // Keep the buffer from growing for good after one very long line.
        if line.capacity() > 1 << 20 {
            *line = Vec::new();
        }
        result
    })
}

/// One bind(), listen() or failed connect() and its explanation (`"type": "bind"`,
/// `"listen"` or `"connect"`; a connect's `requested` is its destination).
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    backend: Option<&'static str>,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: &'a str,
    netns: Option<u32>,
    cgroup_id: u64,
    /// What the cgroup is: null when it was not found.
    workload: Option<JsonWorkload<'a>>,
    fd: Option<i32>,
    family: Option<&'static str>,
    protocol: Option<String>,
    requested: Option<JsonRequested>,
    bound: Option<JsonAddr>,
    ok: bool,
    result: i32,
    errno: Option<String>,
    state: Option<&'static str>,
    sock_ino: Option<u64>,
    sk_uid: Option<u32>,
    options: Option<JsonOptions>,
    /// The kernel's own socket (no file): the kernel bound it for itself, at the request of
    /// `pid`/`comm` (e.g. `ip link set vxlan0 up`).
    kernel_socket: bool,
    /// How many times the call was made: more than 1 for a failed connect() repeated on the
    /// same socket with nothing else in between (io_uring retries), folded into one event.
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<JsonVerdict<'a>>,
}

impl<'a> JsonEvent<'a> {
    pub fn new(ev: &'a Event, verdict: Option<&'a Verdict>, clock: &Clock) -> Self {
        let sock = ev.socket.as_ref();
        JsonEvent {
            kind: ev.call.as_str(),
            time: rfc3339(clock.unix_ns(ev.boot_ns)),
            backend: ev.backend.map(|b| b.name()),
            pid: ev.pid,
            tid: ev.tid,
            uid: ev.uid,
            comm: &ev.comm,
            netns: ev.netns(),
            cgroup_id: ev.cgroup_id,
            workload: ev.workload.as_deref().map(JsonWorkload::of),
            fd: ev.fd,
            family: sock.map(|s| s.family.name()),
            protocol: sock.map(|s| s.proto.name()),
            requested: ev.requested.as_ref().map(|r| JsonRequested {
                addr: r.addr.to_string(),
                port: r.port,
                scope_id: r.scope_id,
            }),
            bound: sock.filter(|s| s.port != 0).map(|s| JsonAddr {
                addr: s.addr.to_string(),
                port: s.port,
            }),
            ok: ev.ok(),
            result: ev.ret,
            errno: ev.errno().map(errno::name),
            state: sock.map(SocketView::state_name),
            sock_ino: sock.map(|s| s.ino),
            sk_uid: sock.and_then(|s| s.uid),
            options: sock.map(JsonOptions::of),
            kernel_socket: ev.kernel_socket,
            attempts: ev.attempts,
            explain: verdict.map(JsonVerdict::of),
        }
    }
}

#[derive(Serialize)]
struct JsonAddr {
    addr: String,
    port: u16,
}

#[derive(Serialize)]
struct JsonRequested {
    addr: String,
    port: u16,
    scope_id: u32,
}

/// The options that decide whether sockets may share a port.
#[derive(Serialize)]
struct JsonOptions {
    reuseaddr: bool,
    reuseport: bool,
    /// null for IPv4 sockets, where it does not apply.
    v6only: Option<bool>,
    freebind: bool,
    transparent: bool,
    bind_address_no_port: bool,
    bound_device: Option<String>,
    bound_ifindex: u32,
}

impl JsonOptions {
    fn of(s: &SocketView) -> Self {
        let o = &s.options;
        JsonOptions {
            reuseaddr: o.reuseaddr,
            reuseport: o.reuseport,
            v6only: (s.family == Family::Ipv6).then_some(o.v6only),
            freebind: o.freebind,
            transparent: o.transparent,
            bind_address_no_port: o.bind_address_no_port,
            bound_device: (o.bound_dev_if != 0).then(|| o.device_name()),
            bound_ifindex: o.bound_dev_if,
        }
    }
}

/// An explanation (`explain` in an event, `verdict` in a prediction).
#[derive(Serialize)]
struct JsonVerdict<'a> {
    /// Stable id of the deciding rule (listed in the README).
    rule: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    details: &'a [String],
    fix: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    holders: Vec<JsonHolder<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shares_with: Vec<JsonHolder<'a>>,
    /// `ok-different-netns`: the sockets on the port in other network namespaces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    other_netns: Vec<JsonHolder<'a>>,
}

impl<'a> JsonVerdict<'a> {
    fn of(v: &'a Verdict) -> Self {
        let involved = |list: &'a [Involved]| {
            list.iter()
                .map(|i| JsonHolder::of(&i.holder, Some(i)))
                .collect()
        };
        JsonVerdict {
            rule: v.rule.id(),
            message: &v.message,
            details: &v.details,
            fix: v.fix.as_deref(),
            holders: involved(&v.holders),
            shares_with: involved(&v.shares_with),
            other_netns: involved(&v.other_netns),
        }
    }
}

fn is_empty(list: &&[String]) -> bool {
    list.is_empty()
}

/// A socket on the port, its owners, and (in an explanation) how it relates to the call.
#[derive(Serialize)]
struct JsonHolder<'a> {
    protocol: String,
    family: &'static str,
    addr: String,
    port: u16,
    state: &'static str,
    options: JsonOptions,
    uid: Option<u32>,
    netns: u32,
    sock_ino: Option<u64>,
    owners: Vec<JsonOwner<'a>>,
    /// For TIME_WAIT: milliseconds until the kernel drops it.
    time_wait_left_ms: Option<u64>,
    peer: Option<String>,
    source: &'static str,
    /// `live`, `in-kernel`, `no-process`, `closed` or `unknown` (see the README).
    owner_status: &'static str,
    /// For `closed`: the process portwatch saw bind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    bound_by: Option<JsonOwner<'a>>,
    /// The rule relating this socket to the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
}

impl<'a> JsonHolder<'a> {
    fn of(h: &'a Holder, involved: Option<&'a Involved>) -> Self {
        let s = &h.socket;
        JsonHolder {
            protocol: s.proto.name(),
            family: s.family.name(),
            addr: s.addr.to_string(),
            port: s.port,
            state: s.state_name(),
            options: JsonOptions::of(s),
            uid: s.uid,
            netns: s.netns,
            sock_ino: (s.ino != 0).then_some(s.ino),
            owners: h.owners.iter().map(JsonOwner::of).collect(),
            time_wait_left_ms: s.tw_left_ms,
            peer: s.peer.map(|(a, p)| endpoint(a, p)),
            source: h.source.name(),
            owner_status: h.status.name(),
            bound_by: match &h.status {
                OwnerStatus::Closed { bound_by } => Some(JsonOwner::of(bound_by)),
                OwnerStatus::InKernel { bound_by } => bound_by.as_ref().map(JsonOwner::of),
                _ => None,
            },
            rule: involved.map(|i| i.rule.id()),
            why: involved.map(|i| i.why.as_str()),
        }
    }
}

#[derive(Serialize)]
struct JsonOwner<'a> {
    pid: u32,
    comm: &'a str,
    /// null when not known: the fexit backend sees a socket, not an fd, so a `bound_by` it
    /// saw bind has none.
    fd: Option<i32>,
    /// The process's cgroup and what it is; null when not read (the process is gone).
    workload: Option<JsonWorkload<'a>>,
    /// For a docker-proxy: where it forwards (left out for other processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_proxy: Option<JsonForward<'a>>,
}

/// A docker-proxy's target, and the container found there.
#[derive(Serialize)]
struct JsonForward<'a> {
    proto: &'a str,
    host_ip: Option<String>,
    host_port: u16,
    container_ip: String,
    container_port: u16,
    /// The network namespace that has `container_ip` now; null: none (a stale proxy).
    container_netns: Option<u32>,
    /// The workload of a process in that namespace, when one was found.
    container: Option<JsonWorkload<'a>>,
}

impl<'a> JsonOwner<'a> {
    fn of(o: &'a Owner) -> Self {
        JsonOwner {
            pid: o.pid,
            comm: &o.comm,
            fd: (o.fd >= 0).then_some(o.fd),
            workload: o.workload.as_ref().map(JsonWorkload::of),
            docker_proxy: o.forward.as_deref().map(|f| JsonForward {
                proto: &f.proxy.proto,
                host_ip: f.proxy.host_ip.map(|a| a.to_string()),
                host_port: f.proxy.host_port,
                container_ip: f.proxy.container_ip.to_string(),
                container_port: f.proxy.container_port,
                container_netns: f.container_netns,
                container: f.container.as_ref().map(JsonWorkload::of),
            }),
        }
    }
}

/// A cgroup and what its path says runs there. Keys that do not apply are left out; ids are
/// whole (64 hex digits).
#[derive(Serialize, Default)]
struct JsonWorkload<'a> {
    /// The cgroup v2 path.
    cgroup: &'a str,
    /// `systemd`, `docker`, `podman`, `kubernetes`, `lxc`; null when the path has no known shape.
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    /// The user manager's uid: systemd user units, rootless Podman.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_name: Option<&'a str>,
    /// An LXC container's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> JsonWorkload<'a> {
    fn of(w: &'a Workload) -> Self {
        let base = JsonWorkload {
            cgroup: &w.path,
            kind: w.kind.as_ref().map(Kind::name),
            ..JsonWorkload::default()
        };
        match &w.kind {
            None => base,
            Some(Kind::Systemd { unit, user }) => JsonWorkload {
                unit: Some(unit),
                user_uid: *user,
                ..base
            },
            Some(Kind::Docker { id }) => JsonWorkload {
                container_id: Some(id),
                ..base
            },
            Some(Kind::Podman { id, user }) => JsonWorkload {
                container_id: Some(id),
                user_uid: *user,
                ..base
            },
            Some(Kind::Lxc { name }) => JsonWorkload {
                name: Some(name),
                ..base
            },
            Some(Kind::Kubernetes {
                pod_uid,
                qos,
                runtime,
                container_id,
                names,
            }) => JsonWorkload {
                pod_uid: Some(pod_uid),
                qos: Some(qos.name()),
                runtime: *runtime,
                container_id: container_id.as_deref(),
                pod_namespace: names.as_ref().map(|n| n.namespace.as_str()),
                pod_name: names.as_ref().map(|n| n.pod.as_str()),
                container_name: names.as_ref().and_then(|n| n.container.as_deref()),
                ..base
            },
        }
    }
}

/// Events the kernel dropped (`"type": "lost"`). The keys come in this order (type last) for
/// the output to stay as it has been.
#[derive(Serialize)]
pub struct JsonLost {
    lost: u64,
    total_lost: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl JsonLost {
    pub fn new(lost: u64, total_lost: u64) -> Self {
        JsonLost {
            lost,
            total_lost,
            kind: "lost",
        }
    }
}

/// The closing summary of a trace (`"type": "summary"`).
#[derive(Serialize)]
pub struct JsonSummary<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    backend: &'static str,
    events: u64,
    binds: u64,
    listens: u64,
    /// Failed connect()s traced (those for want of a local port).
    connects: u64,
    failed: u64,
    by_errno: &'a BTreeMap<String, u64>,
    lost: u64,
    /// Events waiting in the ring buffer when portwatch was stopped, dropped unexplained.
    unexplained_at_exit: u64,
    seconds: f64,
}

impl<'a> From<&'a Summary> for JsonSummary<'a> {
    fn from(s: &'a Summary) -> Self {
        JsonSummary {
            kind: "summary",
            backend: s.backend.name(),
            events: s.events,
            binds: s.binds,
            listens: s.listens,
            connects: s.connects,
            failed: s.by_errno.values().sum(),
            by_errno: &s.by_errno,
            lost: s.lost,
            unexplained_at_exit: s.unexplained_at_exit,
            seconds: (s.seconds * 1000.0).round() / 1000.0,
        }
    }
}

/// `who --json`: everything on the port, and the prediction if one was asked for.
#[derive(Serialize)]
pub struct JsonWho<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    port: u16,
    namespaces: usize,
    holders: Vec<JsonHolder<'a>>,
    /// Why `holders` may be incomplete (null when portwatch could see every process's files).
    incomplete_because: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction: Option<JsonPrediction<'a>>,
}

impl<'a> JsonWho<'a> {
    pub fn new(
        port: u16,
        namespaces: usize,
        holders: &'a [Holder],
        prediction: Option<&'a Prediction>,
        blind: Option<&'static str>,
    ) -> Self {
        JsonWho {
            kind: "who",
            port,
            namespaces,
            holders: holders.iter().map(|h| JsonHolder::of(h, None)).collect(),
            incomplete_because: blind,
            prediction: prediction.map(JsonPrediction::of),
        }
    }
}

#[derive(Serialize)]
struct JsonPrediction<'a> {
    /// null: portwatch cannot tell (see `cannot_tell_because`).
    would_succeed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cannot_tell_because: Option<&'static str>,
    protocol: String,
    addr: String,
    port: u16,
    netns: u32,
    uid: u32,
    /// The rules' verdict; left out when portwatch cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<JsonVerdict<'a>>,
}

impl<'a> JsonPrediction<'a> {
    fn of(p: &'a Prediction) -> Self {
        JsonPrediction {
            would_succeed: p.would_succeed(),
            cannot_tell_because: p.cannot_tell.filter(|_| p.would_succeed().is_none()),
            protocol: p.socket.proto.name(),
            addr: p.addr.to_string(),
            port: p.port,
            netns: p.socket.netns,
            uid: p.socket.uid.unwrap_or(0),
            verdict: p.would_succeed().map(|_| JsonVerdict::of(&p.verdict)),
        }
    }
}

/// One experiment of `portwatch demo --json`: what was asked, the sockets made (with each
/// call's observed result), the reported call's result, and portwatch's rule and explanation
/// of its traced event.
#[derive(Serialize)]
pub struct JsonDemo<'a> {
    pub experiment: &'a str,
    pub question: &'a str,
    pub sockets: &'a [String],
    /// `ok` or the errno name, as the syscall returned it.
    pub result: String,
    /// The rule id of portwatch's verdict on the traced call (null: no traced event).
    pub rule: Option<&'static str>,
    pub explanation: Option<String>,
    /// The explanation's further sentences and its fix, as the human output shows them.
    pub details: &'a [String],
    pub fix: Option<&'a str>,
    /// What else the experiment saw (how connections were spread, sysctl values).
    pub observations: &'a [String],
    /// Where Linux differs from the BSD behaviour most write-ups describe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bsd: Option<&'a str>,
    /// Why the experiment could not finish, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// `--quiz`: the reader's prediction that the call succeeds, and whether it was right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
}

/// The first line a tracer sends to `portwatch why` (`"type": "record"`): what its record of
/// recent failures holds. The failures follow, one `trace --json` object per line.
#[derive(Serialize, serde::Deserialize, Debug)]
pub struct JsonRecord {
    #[serde(rename = "type")]
    pub kind: String,
    /// The tracer's pid.
    pub pid: u32,
    /// When the tracer started (RFC 3339, UTC): with nothing dropped, the record goes back
    /// to there.
    pub started: String,
    /// Failures kept, and dropped (oldest first) to stay within the caps.
    pub kept: usize,
    pub dropped: u64,
    pub max_failures: usize,
    pub max_bytes: usize,
}

impl JsonRecord {
    pub fn new(
        pid: u32,
        started: String,
        kept: usize,
        dropped: u64,
        max_failures: usize,
        max_bytes: usize,
    ) -> Self {
        JsonRecord {
            kind: "record".into(),
            pid,
            started,
            kept,
            dropped,
            max_failures,
            max_bytes,
        }
    }
}

/// `portwatch ports --json`: how full the ephemeral range is, per network namespace.
#[derive(Serialize)]
pub struct JsonPorts<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    namespaces: Vec<JsonNetnsPorts<'a>>,
    /// Namespaces whose numbers could not be read, and why.
    unreadable: Vec<JsonUnreadable<'a>>,
}

#[derive(Serialize)]
struct JsonNetnsPorts<'a> {
    netns: u32,
    range: JsonRange,
    tcp: JsonTcpPorts<'a>,
    udp: JsonUdpPorts<'a>,
}

#[derive(Serialize)]
struct JsonRange {
    lo: u16,
    hi: u16,
    size: u32,
    reserved: u32,
    usable: u32,
}

#[derive(Serialize)]
struct JsonTcpPorts<'a> {
    /// Ports connect() cannot take toward the busiest destination / usable ports.
    worst_ratio: Option<f64>,
    /// Range ports held by bound or listening sockets: blocked toward every destination.
    held_by_binds: u32,
    destinations: Vec<JsonDest<'a>>,
}

#[derive(Serialize)]
struct JsonDest<'a> {
    addr: String,
    port: u16,
    /// Range ports with a connection to this destination.
    connections: u32,
    /// Of those, ports held only by TIME_WAIT connections.
    time_wait: u32,
    /// Ports connect() cannot take toward it (connections and binds).
    blocked: u32,
    free: u32,
    ratio: Option<f64>,
    owners: Vec<JsonPortOwner<'a>>,
}

#[derive(Serialize)]
struct JsonUdpPorts<'a> {
    used: u32,
    free: u32,
    ratio: Option<f64>,
    owners: Vec<JsonPortOwner<'a>>,
}

#[derive(Serialize)]
struct JsonPortOwner<'a> {
    pid: u32,
    comm: &'a str,
    workload: Option<JsonWorkload<'a>>,
    /// Ports (connections, for a TCP destination) this process holds.
    count: u32,
}

#[derive(Serialize)]
struct JsonUnreadable<'a> {
    netns: u32,
    why: &'a str,
}

fn ratio(n: u32, of: u32) -> Option<f64> {
    (of > 0).then(|| (f64::from(n) / f64::from(of) * 1e4).round() / 1e4)
}

fn port_owners(owners: &[PortOwner]) -> Vec<JsonPortOwner<'_>> {
    owners
        .iter()
        .map(|o| JsonPortOwner {
            pid: o.pid,
            comm: &o.comm,
            workload: o.workload.as_ref().map(JsonWorkload::of),
            count: o.count,
        })
        .collect()
}

impl<'a> JsonPorts<'a> {
    pub fn new(found: &'a [NetnsPorts], unreadable: &'a [(u32, String)]) -> Self {
        JsonPorts {
            kind: "ports",
            namespaces: found
                .iter()
                .map(|n| {
                    let usable = n.range.usable();
                    JsonNetnsPorts {
                        netns: n.netns,
                        range: JsonRange {
                            lo: n.range.lo,
                            hi: n.range.hi,
                            size: n.range.size(),
                            reserved: n.range.reserved,
                            usable,
                        },
                        tcp: JsonTcpPorts {
                            worst_ratio: n.worst_ratio(Proto::Tcp),
                            held_by_binds: n.tcp_space.by_binds,
                            destinations: n
                                .tcp
                                .iter()
                                .map(|d| JsonDest {
                                    addr: d.dest.0.to_string(),
                                    port: d.dest.1,
                                    connections: d.to_dest,
                                    time_wait: d.to_dest_time_wait,
                                    blocked: d.blocked,
                                    free: d.free(),
                                    ratio: ratio(d.blocked, usable),
                                    owners: port_owners(&d.owners),
                                })
                                .collect(),
                        },
                        udp: JsonUdpPorts {
                            used: n.udp.used,
                            free: usable.saturating_sub(n.udp.used),
                            ratio: ratio(n.udp.used, usable),
                            owners: port_owners(&n.udp_owners),
                        },
                    }
                })
                .collect(),
            unreadable: unreadable
                .iter()
                .map(|(netns, why)| JsonUnreadable { netns: *netns, why })
                .collect(),
        }
    }
}
