//! One row per rule: an event and its facts in, the rule id and the words a user reads out.
//! No kernel needed; the live scenarios check the same rules against real kernels.

use std::net::IpAddr;

use super::*;
use crate::{
    event::{Call, Requested},
    facts::Sysctls,
    sockets::{Family, Options, Owner, Proto},
};

/// A closed socket on `addr:port` (uid 1000, netns 7); other tests build on it too.
pub(crate) fn sock(proto: Proto, addr: &str, port: u16) -> SocketView {
    let addr: IpAddr = addr.parse().unwrap();
    SocketView {
        family: if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        proto,
        addr,
        port,
        state: State::CLOSE,
        options: Options::default(),
        uid: Some(1000),
        netns: 7,
        ino: 0,
        peer: None,
        tw_left_ms: None,
    }
}

/// A bind of `addr:port` that returned `ret`, on a socket with `opts`.
fn bind(proto: Proto, addr: &str, port: u16, ret: i32, opts: Options) -> Event {
    let mut s = sock(proto, addr, if ret == 0 { port } else { 0 });
    s.options = opts;
    s.ino = 1;
    if ret != 0 {
        s.addr = if s.family == Family::Ipv4 {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
    }
    Event {
        uid: 1000,
        fd: Some(3),
        requested: Some(Requested {
            sa_family: s.family.af(),
            addr: addr.parse().unwrap(),
            port,
            scope_id: 0,
            scope_name: None,
        }),
        ret,
        socket: Some(s),
        ..Event::imagined(Call::Bind, 42, "server")
    }
}

fn holder(s: SocketView, pid: u32) -> Holder {
    Holder {
        status: OwnerStatus::Live,
        socket: s,
        owners: vec![Owner {
            pid,
            comm: "java".into(),
            fd: 5,
            workload: None,
            forward: None,
        }],
        source: Source::SocketTable,
    }
}

fn listening(mut s: SocketView) -> SocketView {
    s.state = State::LISTEN;
    s
}

fn with(mut s: SocketView, f: impl FnOnce(&mut Options)) -> SocketView {
    f(&mut s.options);
    s
}

fn opts(f: impl FnOnce(&mut Options)) -> Options {
    let mut o = Options::default();
    f(&mut o);
    o
}

fn facts(holders: Vec<Holder>) -> Facts {
    Facts {
        holders: Some(holders),
        sysctls: Sysctls {
            ip_local_port_range: Some((32768, 60999)),
            ip_unprivileged_port_start: Some(1024),
            ip_nonlocal_bind: Some(false),
            ipv6_ip_nonlocal_bind: Some(false),
            bindv6only: Some(false),
            ip_autobind_reuse: Some(false),
            ip_local_reserved_ports: Some(String::new()),
            tcp_tw_reuse: Some(2),
        },
        ..Facts::default()
    }
}

const EADDRINUSE: i32 = -libc::EADDRINUSE;

fn check(ev: &Event, f: &Facts, rule: Rule, words: &[&str]) -> Verdict {
    let v = explain(ev, f).expect("a verdict");
    assert_eq!(v.rule, rule, "message: {}", v.message);
    for w in words {
        assert!(v.message.contains(w), "{:?} not in {:?}", w, v.message);
    }
    v
}

#[test]
fn the_brief_example_dual_stack_covers_ipv4() {
    let ev = bind(Proto::Tcp, "0.0.0.0", 8080, EADDRINUSE, Options::default());
    let h = holder(listening(sock(Proto::Tcp, "::", 8080)), 812);
    let v = check(
        &ev,
        &facts(vec![h]),
        Rule::DualStackCoversIpv4,
        &[
            "EADDRINUSE: pid 812 (java) holds [::]:8080 dual-stack (IPV6_V6ONLY=0",
            "which covers 0.0.0.0:8080",
        ],
    );
    assert!(v.fix.unwrap().contains("IPV6_V6ONLY=1"));
    assert_eq!(v.holders[0].holder.owners[0].pid, 812);
}

#[test]
fn a_dual_stack_holder_leads_even_when_it_listens_with_reuseaddr() {
    // Java and python's http.server set SO_REUSEADDR on their listeners.
    let ev = bind(
        Proto::Tcp,
        "0.0.0.0",
        8080,
        EADDRINUSE,
        opts(|o| o.reuseaddr = true),
    );
    let h = holder(
        with(listening(sock(Proto::Tcp, "::", 8080)), |o| {
            o.reuseaddr = true
        }),
        812,
    );
    let v = check(
        &ev,
        &facts(vec![h]),
        Rule::DualStackCoversIpv4,
        &[
            "which covers 0.0.0.0:8080",
            "never lets a socket bind next to a listening one",
        ],
    );
    assert!(v.fix.unwrap().contains("IPV6_V6ONLY=1"));
}

#[test]
fn conflicts() {
    let o = Options::default;
    let ra = || opts(|o| o.reuseaddr = true);
    let rows: Vec<(Rule, Event, Vec<Holder>, &[&str])> = vec![
        (
            Rule::SameAddress,
            bind(Proto::Tcp, "127.0.0.1", 80, EADDRINUSE, o()),
            vec![holder(listening(sock(Proto::Tcp, "127.0.0.1", 80)), 9)],
            &["holds 127.0.0.1:80 (listening)", "exactly the address"],
        ),
        (
            Rule::WildcardCoversSpecific,
            bind(Proto::Tcp, "127.0.0.1", 80, EADDRINUSE, o()),
            vec![holder(listening(sock(Proto::Tcp, "0.0.0.0", 80)), 9)],
            &["wildcard address covers 127.0.0.1:80"],
        ),
        (
            Rule::SpecificBlocksWildcard,
            bind(Proto::Tcp, "0.0.0.0", 80, EADDRINUSE, o()),
            vec![holder(sock(Proto::Tcp, "10.0.0.1", 80), 9)],
            &[
                "holds 10.0.0.1:80 (bound, not listening)",
                "wildcard 0.0.0.0:80 would cover",
            ],
        ),
        (
            Rule::Ipv4BlocksDualStack,
            bind(Proto::Tcp, "::", 80, EADDRINUSE, o()),
            vec![holder(listening(sock(Proto::Tcp, "0.0.0.0", 80)), 9)],
            &["dual-stack (IPV6_V6ONLY=0), so it would take IPv4 too"],
        ),
        (
            Rule::V4Mapped,
            bind(Proto::Tcp, "::ffff:127.0.0.1", 80, EADDRINUSE, o()),
            vec![holder(sock(Proto::Tcp, "127.0.0.1", 80), 9)],
            &["IPv4-mapped"],
        ),
        (
            Rule::ReuseaddrNeedsBoth,
            bind(Proto::Tcp, "0.0.0.0", 80, EADDRINUSE, ra()),
            vec![holder(sock(Proto::Tcp, "0.0.0.0", 80), 9)],
            &[
                "only when both set it",
                "the socket of pid 9 (java) doesn't",
            ],
        ),
        (
            Rule::ReuseaddrVsListen,
            bind(Proto::Tcp, "0.0.0.0", 80, EADDRINUSE, ra()),
            vec![holder(
                with(listening(sock(Proto::Tcp, "0.0.0.0", 80)), |o| {
                    o.reuseaddr = true
                }),
                9,
            )],
            &["never lets a socket bind next to a listening one"],
        ),
        (
            Rule::ReuseaddrNeedsBoth,
            bind(Proto::Udp, "0.0.0.0", 53, EADDRINUSE, o()),
            vec![holder(
                with(sock(Proto::Udp, "0.0.0.0", 53), |o| o.reuseaddr = true),
                9,
            )],
            &["for UDP, SO_REUSEADDR on both sockets lets them share even the same address"],
        ),
        (
            Rule::ReuseportNeedsBoth,
            bind(
                Proto::Tcp,
                "0.0.0.0",
                80,
                EADDRINUSE,
                opts(|o| o.reuseport = true),
            ),
            vec![holder(listening(sock(Proto::Tcp, "0.0.0.0", 80)), 9)],
            &["SO_REUSEPORT shares a port only when every socket on it sets it"],
        ),
        (
            Rule::ReuseportUidMismatch,
            bind(
                Proto::Tcp,
                "0.0.0.0",
                80,
                EADDRINUSE,
                opts(|o| o.reuseport = true),
            ),
            vec![holder(
                {
                    let mut s = with(listening(sock(Proto::Tcp, "0.0.0.0", 80)), |o| {
                        o.reuseport = true
                    });
                    s.uid = Some(0);
                    s
                },
                9,
            )],
            &["as uid 0, and this socket is uid 1000"],
        ),
        (
            Rule::BindtodeviceUnbound,
            bind(
                Proto::Tcp,
                "0.0.0.0",
                80,
                EADDRINUSE,
                opts(|o| {
                    o.bound_dev_if = 2;
                    o.device = Some("eth0".into());
                }),
            ),
            vec![holder(listening(sock(Proto::Tcp, "0.0.0.0", 80)), 9)],
            &["this socket is bound to device eth0", "covers every device"],
        ),
    ];
    for (rule, ev, holders, words) in rows {
        check(&ev, &facts(holders), rule, words);
    }
}

#[test]
fn time_wait_depends_on_the_old_socket_too() {
    let mut tw = sock(Proto::Tcp, "127.0.0.1", 9000);
    tw.state = State::TIME_WAIT;
    tw.uid = None;
    tw.tw_left_ms = Some(42_000);
    tw.peer = Some(("127.0.0.1".parse().unwrap(), 51000));
    let h = Holder {
        status: OwnerStatus::Live,
        socket: tw.clone(),
        owners: vec![],
        source: Source::SocketTable,
    };
    let new_with_reuse = bind(
        Proto::Tcp,
        "127.0.0.1",
        9000,
        EADDRINUSE,
        opts(|o| o.reuseaddr = true),
    );
    let v = check(
        &new_with_reuse,
        &facts(vec![h.clone()]),
        Rule::TimeWait,
        &[
            "TIME_WAIT for 42 s more",
            "the old socket didn't",
            "127.0.0.1:51000",
        ],
    );
    assert!(v.fix.unwrap().contains("wait 42 s"));

    let mut old_had_it = h.clone();
    old_had_it.socket.options.reuseaddr = true;
    let new_without = bind(
        Proto::Tcp,
        "127.0.0.1",
        9000,
        EADDRINUSE,
        Options::default(),
    );
    check(
        &new_without,
        &facts(vec![old_had_it.clone()]),
        Rule::TimeWait,
        &["this socket doesn't set SO_REUSEADDR"],
    );

    let ok = bind(
        Proto::Tcp,
        "127.0.0.1",
        9000,
        0,
        opts(|o| o.reuseaddr = true),
    );
    check(
        &ok,
        &facts(vec![old_had_it]),
        Rule::OkTimeWaitReuse,
        &["TIME_WAIT"],
    );
}

#[test]
fn listen_time_conflict() {
    let mut ev = bind(
        Proto::Tcp,
        "0.0.0.0",
        80,
        EADDRINUSE,
        opts(|o| o.reuseaddr = true),
    );
    ev.call = Call::Listen;
    ev.requested = None;
    let s = ev.socket.as_mut().unwrap();
    s.port = 80;
    let h = holder(
        with(listening(sock(Proto::Tcp, "0.0.0.0", 80)), |o| {
            o.reuseaddr = true
        }),
        9,
    );
    check(
        &ev,
        &facts(vec![h]),
        Rule::ListenConflict,
        &["EADDRINUSE at listen()", "only one of them may listen"],
    );
}

#[test]
fn successes_say_why_they_could_share() {
    let o = Options::default;
    let rows: Vec<(Rule, Event, Vec<Holder>, &str)> = vec![
        (
            Rule::OkSeparatePortSpaces,
            bind(Proto::Udp, "0.0.0.0", 80, 0, o()),
            vec![holder(listening(sock(Proto::Tcp, "0.0.0.0", 80)), 9)],
            "UDP and TCP have separate port spaces",
        ),
        (
            Rule::OkDifferentAddresses,
            bind(Proto::Tcp, "127.0.0.2", 80, 0, o()),
            vec![holder(sock(Proto::Tcp, "127.0.0.1", 80), 9)],
            "different specific addresses may share a port",
        ),
        (
            Rule::OkV6only,
            bind(Proto::Tcp, "0.0.0.0", 80, 0, o()),
            vec![holder(
                with(listening(sock(Proto::Tcp, "::", 80)), |o| o.v6only = true),
                9,
            )],
            "IPv6-only",
        ),
        (
            Rule::OkReuseport,
            bind(Proto::Tcp, "0.0.0.0", 80, 0, opts(|o| o.reuseport = true)),
            vec![holder(
                with(listening(sock(Proto::Tcp, "0.0.0.0", 80)), |o| {
                    o.reuseport = true
                }),
                9,
            )],
            "both set SO_REUSEPORT as uid 1000",
        ),
        (
            Rule::OkReuseaddr,
            bind(Proto::Tcp, "0.0.0.0", 80, 0, opts(|o| o.reuseaddr = true)),
            vec![holder(
                with(sock(Proto::Tcp, "0.0.0.0", 80), |o| o.reuseaddr = true),
                9,
            )],
            "both set SO_REUSEADDR",
        ),
        (
            Rule::OkUdpReuseaddr,
            bind(Proto::Udp, "0.0.0.0", 53, 0, opts(|o| o.reuseaddr = true)),
            vec![holder(
                with(sock(Proto::Udp, "0.0.0.0", 53), |o| o.reuseaddr = true),
                9,
            )],
            "for UDP allows even the same address",
        ),
        (
            Rule::OkDifferentDevices,
            bind(Proto::Tcp, "0.0.0.0", 80, 0, opts(|o| o.bound_dev_if = 3)),
            vec![holder(
                with(sock(Proto::Tcp, "0.0.0.0", 80), |o| o.bound_dev_if = 2),
                9,
            )],
            "different devices",
        ),
        (
            Rule::OkPortFree,
            bind(Proto::Tcp, "0.0.0.0", 80, 0, o()),
            vec![],
            "nothing else holds tcp port 80",
        ),
    ];
    for (rule, ev, holders, words) in rows {
        check(&ev, &facts(holders), rule, &[words]);
    }
    // Another namespace never conflicts.
    let ev = bind(Proto::Tcp, "0.0.0.0", 80, 0, o());
    let mut f = facts(vec![]);
    let mut elsewhere = sock(Proto::Tcp, "0.0.0.0", 80);
    elsewhere.netns = 99;
    f.other_netns = vec![holder(listening(elsewhere.clone()), 9)];
    let v = check(&ev, &f, Rule::OkDifferentNetns, &["network namespace 99"]);
    // Listed on their own: another namespace's socket shares nothing with the call.
    assert!(v.shares_with.is_empty(), "{:?}", v.shares_with);
    assert_eq!(v.other_netns.len(), 1);
    assert_eq!(v.other_netns[0].holder.socket.netns, 99);
    // When a socket of the caller's namespace shares the port, other namespaces' sockets are
    // not the point, and are listed nowhere.
    let mut f = facts(vec![holder(
        with(listening(sock(Proto::Tcp, "0.0.0.0", 80)), |o| {
            o.reuseport = true
        }),
        9,
    )]);
    f.other_netns = vec![holder(listening(elsewhere.clone()), 10)];
    let shared = bind(Proto::Tcp, "0.0.0.0", 80, 0, opts(|o| o.reuseport = true));
    let v = check(&shared, &f, Rule::OkReuseport, &[]);
    assert!(v.other_netns.is_empty(), "{:?}", v.other_netns);
    assert!(
        v.shares_with.iter().all(|i| i.holder.socket.netns == 7),
        "{:?}",
        v.shares_with
    );
    // Nor does another namespace's socket in the holders list count (it cannot conflict).
    let mut f = facts(vec![holder(listening(elsewhere), 11)]);
    f.other_netns = vec![];
    let v = check(&ev, &f, Rule::OkPortFree, &[]);
    assert!(v.shares_with.is_empty());
    // bindv6only=1 as the namespace default.
    let mut f = facts(vec![holder(
        with(listening(sock(Proto::Tcp, "::", 80)), |o| o.v6only = true),
        9,
    )]);
    f.sysctls.bindv6only = Some(true);
    check(&ev, &f, Rule::OkV6onlyByDefault, &["net.ipv6.bindv6only=1"]);
}

#[test]
fn autobind_reuse_shares_a_full_range() {
    let mut ev = bind(Proto::Tcp, "127.0.0.1", 0, 0, opts(|o| o.reuseaddr = true));
    ev.socket.as_mut().unwrap().port = 41000;
    let mut f = facts(vec![holder(
        with(sock(Proto::Tcp, "127.0.0.1", 41000), |o| o.reuseaddr = true),
        9,
    )]);
    f.sysctls.ip_autobind_reuse = Some(true);
    check(
        &ev,
        &f,
        Rule::OkAutobindReuse,
        &["ip_autobind_reuse=1", "pid 9"],
    );
}

#[test]
fn port_zero() {
    let mut ev = bind(Proto::Tcp, "127.0.0.1", 0, 0, Options::default());
    ev.socket.as_mut().unwrap().port = 41234;
    check(
        &ev,
        &facts(vec![]),
        Rule::OkEphemeral,
        &["picked port 41234", "32768–60999"],
    );

    let failed = bind(Proto::Tcp, "127.0.0.1", 0, EADDRINUSE, Options::default());
    let mut f = facts(vec![]);
    f.sysctls.ip_local_port_range = Some((40000, 40009));
    f.ephemeral_ports_in_use = Some(10);
    let v = check(
        &failed,
        &f,
        Rule::EphemeralExhausted,
        &["40000–40009", "10 of its 10 ports"],
    );
    assert!(v.details.iter().any(|d| d.contains("ip_autobind_reuse=0")));

    let mut listen = failed.clone();
    listen.call = Call::Listen;
    listen.requested = None;
    check(
        &listen,
        &f,
        Rule::ListenEphemeralExhausted,
        &["never bound"],
    );
}

#[test]
fn other_errors() {
    let o = Options::default;
    let mut f = facts(vec![]);
    f.cap_net_bind_service = Some(false);
    let v = check(
        &bind(Proto::Tcp, "0.0.0.0", 80, -libc::EACCES, o()),
        &f,
        Rule::PrivilegedPort,
        &[
            "port 80 is below net.ipv4.ip_unprivileged_port_start (1024)",
            "lacks CAP_NET_BIND_SERVICE",
        ],
    );
    assert!(v.fix.unwrap().contains("setcap"));
    check(
        &bind(Proto::Tcp, "0.0.0.0", 8080, -libc::EACCES, o()),
        &f,
        Rule::EaccesLsm,
        &["security module"],
    );

    f.local_addrs = Some(vec!["127.0.0.1".parse().unwrap()]);
    check(
        &bind(Proto::Tcp, "192.0.2.1", 80, -libc::EADDRNOTAVAIL, o()),
        &f,
        Rule::AddressNotLocal,
        &["192.0.2.1 is not an address", "IP_FREEBIND"],
    );

    let mut already = bind(Proto::Tcp, "127.0.0.1", 80, -libc::EINVAL, o());
    already.socket.as_mut().unwrap().port = 5555;
    check(
        &already,
        &f,
        Rule::AlreadyBound,
        &["already bound to 0.0.0.0:5555"],
    );
    check(
        &bind(
            Proto::Tcp,
            "::ffff:1.2.3.4",
            80,
            -libc::EINVAL,
            opts(|o| o.v6only = true),
        ),
        &f,
        Rule::V4MappedOnV6only,
        &["IPv6-only"],
    );
    check(
        &bind(Proto::Tcp, "ff02::1", 80, -libc::EINVAL, o()),
        &f,
        Rule::MulticastOnTcp,
        &["multicast"],
    );
    check(
        &bind(Proto::Tcp, "fe80::1", 80, -libc::EINVAL, o()),
        &f,
        Rule::LinkLocalNeedsScope,
        &["link-local"],
    );
    check(
        &bind(Proto::Tcp, "0.0.0.0", 80, -libc::EPERM, o()),
        &f,
        Rule::BpfOrLsmDenied,
        &["not a port conflict"],
    );
    check(
        &bind(Proto::Tcp, "0.0.0.0", 80, -libc::EAFNOSUPPORT, o()),
        &f,
        Rule::FamilyMismatch,
        &["does not match"],
    );
}

#[test]
fn never_guesses_a_holder() {
    let ev = bind(Proto::Tcp, "0.0.0.0", 80, EADDRINUSE, Options::default());
    check(
        &ev,
        &facts(vec![]),
        Rule::HolderNotFound,
        &["did not find the socket in its way"],
    );
    let mut f = facts(vec![]);
    f.holders = None;
    f.holders_unavailable = Some("iterators could not load".into());
    check(
        &ev,
        &f,
        Rule::HolderNotFound,
        &["could not look up", "iterators could not load"],
    );
    // A socket that does not conflict is not blamed.
    let udp = holder(sock(Proto::Udp, "0.0.0.0", 80), 9);
    let v = check(&ev, &facts(vec![udp]), Rule::HolderNotFound, &[]);
    assert!(v.holders.is_empty());
}

#[test]
fn the_kernels_own_report_leads() {
    let ev = bind(Proto::Tcp, "0.0.0.0", 80, EADDRINUSE, Options::default());
    let table = holder(sock(Proto::Tcp, "10.0.0.1", 80), 1);
    let mut kernel = holder(listening(sock(Proto::Tcp, "10.0.0.2", 80)), 2);
    kernel.source = Source::KernelConflictCheck;
    let v = check(
        &ev,
        &facts(vec![table, kernel]),
        Rule::SpecificBlocksWildcard,
        &["pid 2"],
    );
    assert!(
        v.details
            .iter()
            .any(|d| d.contains("kernel's own conflict check"))
    );
}

/// A raw ICMP socket bound to 0.0.0.0: the kernel keeps the protocol (1) where a port would
/// be. Before, this was "the kernel picked port 1 from ip_local_port_range".
#[test]
fn raw_sockets_are_left_out_of_port_rules() {
    for ret in [0, -libc::EADDRINUSE] {
        let mut ev = bind(Proto::Raw(1), "0.0.0.0", 0, ret, Options::default());
        if let Some(s) = ev.socket.as_mut() {
            s.port = 1;
        }
        assert!(explain(&ev, &Facts::default()).is_none(), "ret {ret}");
    }
}

#[test]
fn ipv6_loopback_and_ipv4_loopback_are_just_different_addresses() {
    // Issue 8: "[::1]:6379 is IPv6-only, so it does not clash with 127.0.0.1:6379" gave the
    // wrong reason: the two never overlap, v6-only or not.
    let ev = bind(Proto::Tcp, "::1", 6379, 0, Options::default());
    let h = holder(listening(sock(Proto::Tcp, "127.0.0.1", 6379)), 9);
    let v = check(
        &ev,
        &facts(vec![h]),
        Rule::OkDifferentAddresses,
        &["different specific addresses"],
    );
    assert!(!v.message.contains("IPv6-only"), "{}", v.message);
}

#[test]
fn a_device_on_one_side_only_is_named_when_another_rule_leads() {
    let ev = bind(
        Proto::Tcp,
        "0.0.0.0",
        8080,
        EADDRINUSE,
        opts(|o| {
            o.reuseaddr = true;
            o.bound_dev_if = 1;
        }),
    );
    let h = holder(
        with(listening(sock(Proto::Tcp, "0.0.0.0", 8080)), |o| {
            o.reuseaddr = true
        }),
        9,
    );
    let v = check(&ev, &facts(vec![h]), Rule::ReuseaddrVsListen, &[]);
    assert!(
        v.details
            .iter()
            .any(|d| d.contains("a socket bound to no device covers every device")),
        "{:?}",
        v.details
    );
}

#[test]
fn a_process_blocked_by_its_own_socket_is_told_so() {
    // nginx reloading from 127.0.0.1:8080 to *:8080: the master itself holds the old socket.
    let ev = bind(Proto::Tcp, "0.0.0.0", 8080, EADDRINUSE, Options::default());
    let h = holder(listening(sock(Proto::Tcp, "127.0.0.1", 8080)), 42);
    let v = check(&ev, &facts(vec![h]), Rule::SpecificBlocksWildcard, &[]);
    assert!(
        v.details
            .iter()
            .any(|d| d.contains("is itself among the holders")),
        "{:?}",
        v.details
    );
    let fix = v.fix.unwrap_or_default();
    assert!(!fix.contains("stop pid"), "{fix}");
    assert!(
        fix.contains("reuse the socket the process already holds"),
        "{fix}"
    );
}

#[test]
fn a_process_blocked_by_its_own_socket_since_closed_is_still_told_so() {
    // The process bound 127.0.0.1:8080, then 0.0.0.0:8080 (refused), then closed the first
    // socket (or exited) before portwatch looked: it was still its own socket in the way.
    let ev = bind(Proto::Tcp, "0.0.0.0", 8080, EADDRINUSE, Options::default());
    let mut h = holder(sock(Proto::Tcp, "127.0.0.1", 8080), 42);
    let bound_by = h.owners.remove(0);
    h.status = OwnerStatus::Closed { bound_by };
    let v = check(&ev, &facts(vec![h]), Rule::SpecificBlocksWildcard, &[]);
    assert!(
        v.details.iter().any(|d| d.contains(
            "pid 42 (server) is itself among the holders: this process already held \
             127.0.0.1:8080 when it called bind(); it has closed that socket or exited since"
        )),
        "{:?}",
        v.details
    );
    let fix = v.fix.unwrap_or_default();
    assert!(!fix.contains("stop pid"), "{fix}");
    assert!(fix.contains("the program took the port twice"), "{fix}");
    // Another process's closed socket is not "itself".
    let mut other = holder(sock(Proto::Tcp, "127.0.0.1", 8080), 43);
    let bound_by = other.owners.remove(0);
    other.status = OwnerStatus::Closed { bound_by };
    let v = check(&ev, &facts(vec![other]), Rule::SpecificBlocksWildcard, &[]);
    assert!(
        !v.details.iter().any(|d| d.contains("itself")),
        "{:?}",
        v.details
    );
}

#[test]
fn outbound_connection_took_the_port() {
    let mut conn = sock(Proto::Tcp, "10.0.0.5", 40000);
    conn.state = State::ESTABLISHED;
    conn.peer = Some(("10.0.0.9".parse().unwrap(), 5432));
    let ev = bind(Proto::Tcp, "0.0.0.0", 40000, EADDRINUSE, Options::default());
    let v = check(
        &ev,
        &facts(vec![holder(conn.clone(), 77)]),
        Rule::OutboundTookPort,
        &[
            "local port of a connection of pid 77 (java)",
            "10.0.0.9:5432",
            "32768–60999",
        ],
    );
    assert!(
        v.fix
            .as_deref()
            .unwrap()
            .contains("ip_local_reserved_ports=40000")
    );
    assert_eq!(v.holders[0].rule, Rule::OutboundTookPort);
    // Outside the range it is an ordinary clash.
    let mut low = conn.clone();
    low.port = 8080;
    let ev = bind(Proto::Tcp, "0.0.0.0", 8080, EADDRINUSE, Options::default());
    check(
        &ev,
        &facts(vec![holder(low, 77)]),
        Rule::SpecificBlocksWildcard,
        &[],
    );
    // A listener on the port: the connection may be one it accepted; no claim.
    let ev = bind(Proto::Tcp, "0.0.0.0", 40000, EADDRINUSE, Options::default());
    let v = explain(
        &ev,
        &facts(vec![
            holder(conn, 77),
            holder(listening(sock(Proto::Tcp, "10.0.0.5", 40000)), 78),
        ]),
    )
    .unwrap();
    assert_ne!(v.rule, Rule::OutboundTookPort);
}

#[test]
fn server_in_the_ephemeral_range_gets_a_note() {
    let ev = bind(Proto::Tcp, "0.0.0.0", 40000, 0, Options::default());
    let v = explain(&ev, &facts(vec![])).unwrap();
    assert!(
        v.details
            .iter()
            .any(|d| d.contains("ephemeral range") && d.contains("ip_local_reserved_ports=40000")),
        "{:?}",
        v.details
    );
    let mut f = facts(vec![]);
    f.sysctls.ip_local_reserved_ports = Some("40000".into());
    assert!(explain(&ev, &f).unwrap().details.is_empty());
    let ev = bind(Proto::Tcp, "0.0.0.0", 8080, 0, Options::default());
    assert!(explain(&ev, &facts(vec![])).unwrap().details.is_empty());
}

#[test]
fn a_restarted_servers_time_wait_is_not_called_outbound() {
    // The old server accepted a connection from an ephemeral port and was killed: its side
    // sits in TIME_WAIT on the server's port, with no listener left. Not an outgoing one.
    let mut tw = sock(Proto::Tcp, "127.0.0.1", 47310);
    tw.state = State::TIME_WAIT;
    tw.uid = None;
    tw.peer = Some(("127.0.0.1".parse().unwrap(), 51000));
    let ev = bind(
        Proto::Tcp,
        "127.0.0.1",
        47310,
        EADDRINUSE,
        Options::default(),
    );
    let h = Holder {
        status: OwnerStatus::NoProcess,
        socket: tw,
        owners: vec![],
        source: Source::KernelAtCall,
    };
    let v = explain(&ev, &facts(vec![h])).expect("a verdict");
    assert_eq!(v.rule, Rule::TimeWait, "{}", v.message);
}
