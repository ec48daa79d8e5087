//! `portwatch why`'s human output: recorded failures, which come as the JSON objects
//! `trace --json` wrote (from a tracer's record or a log file), shown in `trace`'s columns
//! (TIME PID COMM CALL PROTO ADDRESS RESULT DETAILS, then the explanation and the fix), without
//! color. Names from other processes are made safe as everywhere else.

use std::{fmt::Write as _, net::IpAddr};

use serde_json::Value;

use super::{HEADER, terminal::safe, time_of_day};
use crate::{
    address::endpoint,
    sockets::{Family, Options},
    workload::Workload,
};

/// The column header, as `trace` prints it.
pub fn header() -> String {
    format!(
        "{:<15} {:>7} {:<15} {:<6} {:<5} {:<27} {:<13} {}",
        HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6], HEADER[7]
    )
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
    let result = ev["errno"].as_str().unwrap_or("ok");
    let mut details = Vec::new();
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
    let mut out = format!(
        "{:<15} {:>7} {:<15} {:<6} {:<5} {:<27} {:<13} {}",
        time_of_day(unix_ns),
        ev["pid"].as_u64().unwrap_or(0),
        safe(s("comm")),
        safe(s("type")),
        proto,
        address,
        safe(result),
        safe(&details.join(" ")),
    )
    .trim_end()
    .to_string();
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
}
