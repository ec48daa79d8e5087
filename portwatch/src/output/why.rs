//! `portwatch why`'s human output: recorded failures, which come as the JSON objects
//! `trace --json` wrote (from a tracer's record or a log file), shown in `trace`'s columns
//! (TIME PID COMM CALL PROTO ADDRESS RESULT DETAILS, then the explanation and the fix), without
//! color. Names from other processes are made safe as everywhere else.

use std::{fmt::Write as _, net::IpAddr};

use serde_json::Value;

use super::{Columns, attempts_detail, terminal::safe, time_of_day};
use crate::{
    address::endpoint,
    sockets::{Family, Options},
    workload::Workload,
};

/// The column header, as `trace` prints it.
pub fn header() -> String {
    Columns::HEADER.line()
}

fn addr_port(v: &Value) -> Option<String> {
    let addr: IpAddr = v["addr"].as_str()?.parse().ok()?;
    Some(endpoint(addr, u16::try_from(v["port"].as_u64()?).ok()?))
}

/// One recorded event (`unix_ns`: its time) as `trace` in namespace `own_netns` shows it: the line, the explanation
/// under it, the details and the fix.
pub fn event(ev: &Value, unix_ns: i128, own_netns: u32) -> String {
    let s = |k: &str| ev[k].as_str().unwrap_or("?");
    let family = match ev["family"].as_str() {
        Some("ipv6") => Family::Ipv6,
        _ => Family::Ipv4,
    };
    let proto = match (ev["protocol"].as_str(), ev["family"].as_str()) {
        (Some(p), Some(f)) => format!("{p}{}", if f == "ipv6" { "6" } else { "4" }),
        _ => "?".into(),
    };
    let address = addr_port(&ev["requested"])
        .or_else(|| addr_port(&ev["bound"]))
        .unwrap_or_else(|| "?".into());
    let result = safe(ev["errno"].as_str().unwrap_or("ok"));
    let mut details = Vec::new();
    // The same words, in the same order, as trace's line.
    let bound = addr_port(&ev["bound"]);
    let asked_zero = ev["type"] == "bind" && ev["requested"]["port"] == 0;
    if ev["ok"] == true
        && asked_zero
        && let Some(port) = ev["bound"]["port"].as_u64()
    {
        details.push(format!("got port {port}"));
    }
    if ev["kernel_socket"] == true {
        details.push("in-kernel socket".to_string());
    }
    details.extend(ev["attempts"].as_u64().and_then(attempts_detail));
    if ev["type"] == "connect"
        && let Some(from) = &bound
    {
        details.push(format!("from {from}"));
    }
    let o = &ev["options"];
    if o.is_object() {
        let flag = |k: &str| o[k].as_bool().unwrap_or(false);
        let options = Options {
            reuseaddr: flag("reuseaddr"),
            reuseport: flag("reuseport"),
            v6only: flag("v6only"),
            freebind: flag("freebind"),
            transparent: flag("transparent"),
            bind_address_no_port: flag("bind_address_no_port"),
            bound_dev_if: o["bound_ifindex"].as_u64().unwrap_or(0) as u32,
            device: o["bound_device"].as_str().map(str::to_string),
            ..Options::default()
        };
        details.extend(options.words(family));
    }
    if let Some(n) = ev["netns"].as_u64().filter(|&n| n != u64::from(own_netns)) {
        details.push(format!("netns {n}"));
    }
    if let Some(cg) = ev["workload"]["cgroup"].as_str() {
        let w = Workload::parse(cg);
        if !w.is_root() {
            details.push(w.label());
        }
    }
    let mut out = Columns {
        time: &time_of_day(unix_ns),
        pid: &ev["pid"].as_u64().unwrap_or(0).to_string(),
        comm: &safe(s("comm")),
        call: &safe(s("type")),
        proto: &proto,
        address: &address,
        result: &result,
        result_len: result.chars().count(),
        details: &safe(&details.join(" ")),
    }
    .line();
    out.push('\n');
    let x = &ev["explain"];
    if let Some(m) = x["message"].as_str() {
        let _ = writeln!(out, "    ↳ {}", safe(m));
        for d in x["details"].as_array().into_iter().flatten() {
            if let Some(d) = d.as_str() {
                let _ = writeln!(out, "      {}", safe(d));
            }
        }
        if let Some(fix) = x["fix"].as_str() {
            let _ = writeln!(out, "      fix: {}", safe(fix));
        }
    } else {
        out.push_str("    ↳ (no explanation was recorded)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_a_recorded_failure_in_traces_columns() {
        let ev: Value = serde_json::from_str(
            r#"{"type":"bind","time":"2026-11-30T04:58:08.638794Z","pid":15611,"comm":"py\u001b[2Jthon3","netns":null,
            "workload":{"cgroup":"/system.slice/web.service","kind":"systemd","unit":"web.service"},
            "family":"ipv4","protocol":"tcp","requested":{"addr":"0.0.0.0","port":8080,"scope_id":0},
            "bound":null,"ok":false,"errno":"EADDRINUSE",
            "options":{"reuseaddr":true,"reuseport":false,"v6only":null,"freebind":false,"transparent":false,"bind_address_no_port":false,"bound_device":null,"bound_ifindex":0},
            "explain":{"rule":"dual-stack-covers-ipv4","message":"EADDRINUSE: pid 15569 (python3) holds [::]:8080","fix":"set IPV6_V6ONLY=1"}}"#,
        )
        .unwrap();
        let text = event(&ev, 0, 1);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            &cols[1..],
            [
                "15611",
                r"py\x1b[2Jthon3",
                "bind",
                "tcp4",
                "0.0.0.0:8080",
                "EADDRINUSE",
                "reuseaddr",
                "web.service"
            ]
        );
        assert_eq!(
            lines[1],
            "    ↳ EADDRINUSE: pid 15569 (python3) holds [::]:8080"
        );
        assert_eq!(lines[2], "      fix: set IPV6_V6ONLY=1");
    }

    #[test]
    fn a_recorded_connect_lines_up_under_the_header_with_traces_details() {
        let ev: Value = serde_json::from_str(
            r#"{"type":"connect","pid":13822,"comm":"python3","netns":7,
            "family":"ipv4","protocol":"tcp","requested":{"addr":"127.0.0.1","port":5432,"scope_id":0},
            "bound":{"addr":"127.0.0.1","port":40001},"ok":false,"errno":"EADDRNOTAVAIL",
            "kernel_socket":false,"attempts":3,"explain":{"message":"m"}}"#,
        )
        .unwrap();
        let text = event(&ev, 0, 1);
        let line = text.lines().next().unwrap();
        let head = header();
        for (name, cell) in [
            ("CALL", "connect tcp4"),
            ("PROTO", "tcp4"),
            ("ADDRESS", "127.0.0.1:5432"),
            ("RESULT", "EADDRNOTAVAIL"),
            ("DETAILS", "3 attempts from 127.0.0.1:40001 netns 7"),
        ] {
            assert_eq!(head.find(name), line.find(cell), "{name}\n{head}\n{line}");
        }
    }
}
