//! The exposition for a fixed sequence of events, byte for byte: what Prometheus scrapes.

use portwatch_common::Backend;

use super::*;
use crate::{
    event::Requested,
    explain::{self, Rule, Verdict},
};

fn call(call: Call, proto: Proto, addr: &str, port: u16, ret: i32) -> Event {
    let socket = explain::tests::sock(proto, addr, port);
    Event {
        backend: Some(Backend::Tracepoint),
        uid: 1000,
        cgroup_id: 77,
        fd: Some(3),
        requested: (call == Call::Bind).then_some(Requested {
            sa_family: socket.family.af(),
            addr: socket.addr,
            port,
            scope_id: 0,
            scope_name: None,
        }),
        ret,
        socket: Some(socket),
        ..Event::imagined(call, 4242, "server")
    }
}

fn verdict(rule: Rule) -> Verdict {
    Verdict {
        ok: rule.id().starts_with("ok"),
        rule,
        message: String::new(),
        details: vec![],
        fix: None,
        holders: vec![],
        shares_with: vec![],
        other_netns: vec![],
    }
}

/// Feeds the sequence the live scenario also produces, plus the odd cases: a failure on a port
/// not given with --port (no port series), an errno portwatch has no name for (`other`), a
/// call with no explanation (`none`), and lost events.
fn fed() -> Metrics {
    let m = Metrics::new(Backend::Tracepoint, &[8080, 9090]);
    let tcp = Proto::Tcp;
    m.record(
        &call(Call::Bind, tcp, "0.0.0.0", 8080, 0),
        Some(&verdict(Rule::OkPortFree)),
    );
    m.record(
        &call(Call::Listen, tcp, "0.0.0.0", 8080, 0),
        Some(&verdict(Rule::OkListen)),
    );
    for _ in 0..2 {
        m.record(
            &call(Call::Bind, tcp, "127.0.0.1", 8080, -libc::EADDRINUSE),
            Some(&verdict(Rule::WildcardCoversSpecific)),
        );
    }
    m.record(
        &call(Call::Bind, Proto::Udp, "::", 9090, -libc::EADDRINUSE),
        Some(&verdict(Rule::SameAddress)),
    );
    m.record(
        &call(Call::Bind, tcp, "127.0.0.1", 7070, -libc::EADDRINUSE),
        Some(&verdict(Rule::SameAddress)),
    );
    m.record(&call(Call::Bind, tcp, "127.0.0.1", 8080, -4000), None);
    m.lost(3);
    m
}

const GOLDEN: &str = r#"# HELP portwatch_calls bind(), listen() and failed connect() calls seen (each attempt of a repeated connect()), by call, protocol, family and result (ok or the errno name).
# TYPE portwatch_calls counter
portwatch_calls_total{call="bind",protocol="tcp",family="ipv4",result="EADDRINUSE"} 3
portwatch_calls_total{call="bind",protocol="tcp",family="ipv4",result="ok"} 1
portwatch_calls_total{call="bind",protocol="tcp",family="ipv4",result="other"} 1
portwatch_calls_total{call="bind",protocol="udp",family="ipv6",result="EADDRINUSE"} 1
portwatch_calls_total{call="listen",protocol="tcp",family="ipv4",result="ok"} 1
# HELP portwatch_explanations Calls explained, by the id of the kernel rule that decided the result (none: no explanation).
# TYPE portwatch_explanations counter
portwatch_explanations_total{rule="ok-port-free"} 1
portwatch_explanations_total{rule="ok-listen"} 1
portwatch_explanations_total{rule="wildcard-covers-specific"} 2
portwatch_explanations_total{rule="same-address"} 2
portwatch_explanations_total{rule="none"} 1
# HELP portwatch_port_failures Failed calls on the ports given with --port, by port, protocol, errno and rule.
# TYPE portwatch_port_failures counter
portwatch_port_failures_total{port="8080",protocol="tcp",errno="EADDRINUSE",rule="wildcard-covers-specific"} 2
portwatch_port_failures_total{port="9090",protocol="udp",errno="EADDRINUSE",rule="same-address"} 1
portwatch_port_failures_total{port="8080",protocol="tcp",errno="other",rule="none"} 1
# HELP portwatch_lost_events Events the kernel side dropped (ring buffer full or no room for a pending call).
# TYPE portwatch_lost_events counter
portwatch_lost_events_total 3
# HELP portwatch_build_info Always 1: the portwatch version and the backend tracing runs on.
# TYPE portwatch_build_info gauge
portwatch_build_info{version="0.1.0",backend="tracepoint"} 1
# EOF
"#;

#[test]
fn exposition_of_a_fixed_sequence() {
    let om = fed().encode().unwrap();
    // Families come out in registration order, series within a family in hash order: compare
    // each family's lines as a set, and the order of the families as written.
    let got = sorted_series(&om);
    let want = sorted_series(GOLDEN);
    assert_eq!(got, want, "\n{om}");
    assert!(om.ends_with("# EOF\n"));
}

/// Each family's descriptor lines in place, its samples sorted.
fn sorted_series(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut samples: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort();
            out.append(&mut samples);
            out.push(line.to_string());
        } else {
            samples.push(line.to_string());
        }
    }
    samples.sort();
    out.append(&mut samples);
    out
}

/// The 0.0.4 text renames counter descriptors to their samples' names and drops `# EOF`;
/// samples and everything else stay as prometheus-client wrote them.
#[test]
fn prometheus_text_names_counter_families_as_their_samples() {
    let om = fed().encode().unwrap();
    let text = prometheus_text(&om);
    assert!(text.contains("# HELP portwatch_calls_total bind()"));
    assert!(text.contains("# TYPE portwatch_calls_total counter\n"));
    assert!(
        text.contains(
            "# TYPE portwatch_lost_events_total counter\nportwatch_lost_events_total 3\n"
        )
    );
    assert!(text.contains("# TYPE portwatch_build_info gauge\n"));
    assert!(!text.contains("# EOF"));
    let samples = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    assert_eq!(samples(&om), samples(&text));
}

/// Label values stay within the bounded sets the README lists.
#[test]
fn labels_are_bounded() {
    let m = Metrics::new(Backend::Fexit, &[]);
    for port in 1..200u16 {
        m.record(
            &call(
                Call::Bind,
                Proto::Other(port),
                "10.0.0.1",
                port,
                -(i32::from(port) + 200),
            ),
            None,
        );
    }
    let om = m.encode().unwrap();
    assert!(
        !om.contains("portwatch_port_failures_total{"),
        "no --port, no port series"
    );
    let calls = om
        .lines()
        .filter(|l| l.starts_with("portwatch_calls_total"))
        .count();
    assert_eq!(calls, 1, "{om}");
    assert!(!om.contains("10.0.0.1") && !om.contains("4242") && !om.contains("server"));
}
