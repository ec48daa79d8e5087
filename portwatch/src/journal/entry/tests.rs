//! The entry a failed call makes, from a real verdict of the explain engine: what
//! `journalctl -o verbose` would show, field by field.

use std::sync::Arc;

use super::*;
use crate::{
    event::{Call, Requested},
    explain::{explain, tests::sock},
    facts::{Facts, Sysctls},
    journal::native::valid_name,
    sockets::{Holder, Owner, OwnerStatus, Proto, Source, State},
    workload::Workload,
};

/// nginx.service's pid 812 fails to bind 0.0.0.0:80: apache2.service's pid 640 listens on it.
fn failure(comm: &str, cgroup: &str) -> (Event, Verdict) {
    let mut s = sock(Proto::Tcp, "0.0.0.0", 0);
    s.ino = 1;
    let ev = Event {
        cgroup_id: 77,
        workload: Some(Arc::new(Workload::parse(cgroup))),
        fd: Some(6),
        requested: Some(Requested {
            sa_family: libc::AF_INET as u16,
            addr: "0.0.0.0".parse().unwrap(),
            port: 80,
            scope_id: 0,
            scope_name: None,
        }),
        ret: -libc::EADDRINUSE,
        socket: Some(s),
        ..Event::imagined(Call::Bind, 812, comm)
    };
    let mut held = sock(Proto::Tcp, "0.0.0.0", 80);
    held.state = State::LISTEN;
    let holder = Holder {
        socket: held,
        owners: vec![Owner {
            pid: 640,
            comm: "apache2".into(),
            fd: 4,
            workload: Some(Workload::parse("/system.slice/apache2.service")),
            forward: None,
        }],
        source: Source::SocketTable,
        status: OwnerStatus::Live,
    };
    let facts = Facts {
        holders: Some(vec![holder]),
        sysctls: Sysctls {
            ip_local_port_range: Some((32768, 60999)),
            ip_unprivileged_port_start: Some(1024),
            ..Sysctls::default()
        },
        ..Facts::default()
    };
    let v = explain(&ev, &facts).expect("a verdict");
    (ev, v)
}

fn text(f: &Fields, name: &str) -> Option<String> {
    f.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn a_failed_bind_names_who_failed_the_holder_and_the_unit() {
    let (ev, v) = failure("nginx", "/system.slice/nginx.service");
    let f = fields(&ev, Some(&v), None, true);
    let msg = text(&f, "MESSAGE").unwrap();
    let (first, fix) = msg.split_once('\n').expect("the fix on a second line");
    assert!(
        first.starts_with(
            "nginx.service (pid 812, nginx): EADDRINUSE on bind tcp4 0.0.0.0:80: pid 640 (apache2"
        ),
        "{first}"
    );
    assert!(fix.starts_with("fix: "), "{fix}");
    for (name, want) in [
        ("PRIORITY", "3"),
        ("SYSLOG_IDENTIFIER", "portwatch"),
        ("MESSAGE_ID", FAILED),
        ("PORTWATCH_CALL", "bind"),
        ("PORTWATCH_PROTOCOL", "tcp"),
        ("PORTWATCH_FAMILY", "ipv4"),
        ("PORTWATCH_ADDRESS", "0.0.0.0"),
        ("PORTWATCH_PORT", "80"),
        ("PORTWATCH_ERRNO", "EADDRINUSE"),
        ("PORTWATCH_RULE", v.rule.id()),
        ("PORTWATCH_HOLDER_PIDS", "640"),
        ("PORTWATCH_HOLDER_UNITS", "apache2.service"),
        ("PORTWATCH_PID", "812"),
        ("PORTWATCH_COMM", "nginx"),
        ("OBJECT_PID", "812"),
        ("OBJECT_SYSTEMD_UNIT", "nginx.service"),
        ("OBJECT_SYSTEMD_CGROUP", "/system.slice/nginx.service"),
    ] {
        assert_eq!(text(&f, name).as_deref(), Some(want), "{name}");
    }
    assert_eq!(
        text(&f, "PORTWATCH_FIX").as_deref(),
        v.fix.as_deref(),
        "the fix has a field of its own"
    );
    assert_eq!(f.get("PORTWATCH_REPEATS"), None);
    for (name, _) in &f.0 {
        assert!(valid_name(name), "{name}");
    }
}

/// A process named with an escape sequence and a forged field: MESSAGE shows it escaped on
/// one line; PORTWATCH_COMM carries it as data (length-prefixed on the wire).
#[test]
fn foreign_names_stay_data() {
    let comm = "\x1b[31mx\nOBJECT_SYSTEMD_UNIT=sshd.service";
    let (ev, v) = failure(comm, "/system.slice/a.service");
    let f = fields(&ev, Some(&v), None, false);
    let msg = text(&f, "MESSAGE").unwrap();
    let first = msg.lines().next().unwrap();
    assert!(
        first.contains(r"(pid 812, \x1b[31mx\nOBJECT_SYSTEMD_UNIT=sshd.service)"),
        "{first}"
    );
    assert!(!first.chars().any(char::is_control), "{first:?}");
    assert_eq!(
        msg.lines().count(),
        2,
        "the message and the fix, no forged line"
    );
    assert_eq!(f.get("PORTWATCH_COMM"), Some(comm.as_bytes()));
    let units: Vec<_> =
        f.0.iter()
            .filter(|(n, _)| *n == "OBJECT_SYSTEMD_UNIT")
            .collect();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].1, b"a.service");
    assert_eq!(f.get("OBJECT_PID"), None, "not allowed by the caller");
}

/// A cgroup named like another unit, made inside a delegated subtree, is filed under the
/// unit that owns the subtree; a user unit under its manager, as journald would.
#[test]
fn attribution_follows_systemds_rule_not_the_innermost_name() {
    let (ev, v) = failure("x", "/system.slice/app.service/payload/sshd.service");
    let f = fields(&ev, Some(&v), None, false);
    assert_eq!(
        text(&f, "OBJECT_SYSTEMD_UNIT").as_deref(),
        Some("app.service")
    );
    let (ev, v) = failure(
        "x",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service",
    );
    let f = fields(&ev, Some(&v), None, false);
    assert_eq!(
        text(&f, "OBJECT_SYSTEMD_UNIT").as_deref(),
        Some("user@1000.service")
    );
    assert_eq!(
        text(&f, "OBJECT_SYSTEMD_USER_UNIT").as_deref(),
        Some("sshd.service")
    );
    assert_eq!(
        text(&f, "OBJECT_SYSTEMD_OWNER_UID").as_deref(),
        Some("1000")
    );
    let (ev, v) = failure("x", "/");
    let f = fields(&ev, Some(&v), None, false);
    assert_eq!(f.get("OBJECT_SYSTEMD_UNIT"), None);
    assert!(
        text(&f, "MESSAGE")
            .unwrap()
            .starts_with("pid 812 (x): EADDRINUSE")
    );
}

#[test]
fn a_repeat_line_says_how_many_and_over_what_time() {
    let (ev, v) = failure("nginx", "/system.slice/nginx.service");
    let f = fields(
        &ev,
        Some(&v),
        Some(Repeats {
            count: 57,
            secs: 10,
        }),
        false,
    );
    let msg = text(&f, "MESSAGE").unwrap();
    assert!(
        msg.lines()
            .next()
            .unwrap()
            .ends_with("(repeated 57 more times in the last 10 s; repeats are coalesced)"),
        "{msg}"
    );
    assert_eq!(text(&f, "PORTWATCH_REPEATS").as_deref(), Some("57"));
    assert_eq!(text(&f, "MESSAGE_ID").as_deref(), Some(REPEATED));
}

#[test]
fn a_call_made_again_and_again_says_how_many_times() {
    let (mut ev, v) = failure("nginx", "/system.slice/nginx.service");
    let f = fields(&ev, Some(&v), None, true);
    assert_eq!(text(&f, "PORTWATCH_ATTEMPTS"), None);
    ev.attempts = 52;
    let f = fields(&ev, Some(&v), None, true);
    let msg = text(&f, "MESSAGE").unwrap();
    assert!(
        msg.starts_with(
            "nginx.service (pid 812, nginx): EADDRINUSE on bind tcp4 0.0.0.0:80 (52 attempts): "
        ),
        "{msg}"
    );
    assert_eq!(text(&f, "PORTWATCH_ATTEMPTS").as_deref(), Some("52"));
}
