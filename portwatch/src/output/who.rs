//! `who`'s renderer: the table of sockets on a port and the predicted bind, for people or as
//! one JSON object ([`super::json::JsonWho`]).

use std::{
    collections::HashSet,
    io::{self, Write},
};

use super::{
    json::{self, JsonWho},
    terminal::safe,
};
use crate::{
    address::endpoint,
    explain,
    prediction::Prediction,
    sockets::{Holder, Source},
};

/// What `who` found: every socket on `port` in the `namespaces` it could see.
pub struct WhoReport<'a> {
    pub port: u16,
    pub namespaces: usize,
    /// portwatch's own network namespace (named in the table's heading).
    pub own_netns: u32,
    pub holders: &'a [Holder],
    pub prediction: Option<&'a Prediction>,
    /// Why the list may be incomplete (bound-only sockets of processes portwatch cannot see).
    pub blind: Option<&'static str>,
}

/// Writes the report: one JSON object, or the table and the prediction for people.
pub fn write(out: &mut impl Write, report: &WhoReport, json: bool) -> io::Result<()> {
    if json {
        let obj = JsonWho::new(
            report.port,
            report.namespaces,
            report.holders,
            report.prediction,
            report.blind,
        );
        json::write_line(out, &obj)?;
    } else {
        table(out, report)?;
        if let Some(p) = report.prediction {
            prediction(out, p)?;
        }
    }
    out.flush()
}

fn table(out: &mut impl Write, report: &WhoReport) -> io::Result<()> {
    let WhoReport {
        port,
        namespaces,
        own_netns,
        holders,
        ..
    } = *report;
    if holders.is_empty() {
        match report.blind {
            None => writeln!(
                out,
                "Nothing holds port {port} (TCP or UDP) in the {namespaces} network namespace(s) \
                 portwatch can see."
            )?,
            Some(why) => writeln!(
                out,
                "No socket on port {port} that portwatch can see in the {namespaces} network \
                 namespace(s) it can see; {why}."
            )?,
        }
        return Ok(());
    }
    let used: HashSet<u32> = holders.iter().map(|h| h.socket.netns).collect();
    writeln!(
        out,
        "port {port}: {} socket(s) in {} of the {namespaces} network namespaces portwatch can \
         see (its own is {own_netns})",
        holders.len(),
        used.len()
    )?;
    writeln!(
        out,
        "{:<11} {:<6} {:<28} {:<13} {:<28} {:>5}  OWNER",
        "NETNS", "PROTO", "ADDRESS", "STATE", "OPTIONS", "UID"
    )?;
    let mut bound_only = 0;
    for h in holders {
        let s = &h.socket;
        let mut state = s.state_name().to_string();
        if let Some(ms) = s.tw_left_ms {
            state = format!("{state} {}s", ms / 1000);
        }
        let mut opts = s.options.words(s.family).join(",");
        if opts.is_empty() {
            opts = "-".into();
        }
        let owner = if h.owners.is_empty() {
            if s.state.is_time_wait() {
                "(none: TIME_WAIT)".to_string()
            } else {
                "(no process)".to_string()
            }
        } else {
            explain::who(h)
        };
        let note = if h.source == Source::FdTable {
            bound_only += 1;
            "  *"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<11} {:<6} {:<28} {:<13} {:<28} {:>5}  {}{note}",
            s.netns,
            s.proto_family(),
            s.endpoint(),
            state,
            safe(&opts),
            s.uid.map_or("-".to_string(), |u| u.to_string()),
            safe(&owner),
        )?;
        for o in &h.owners {
            if let Some(f) = &o.forward {
                writeln!(out, "{:<11} ↳ {}", "", safe(&f.sentence(o.pid)))?;
            }
        }
    }
    if let Some(why) = report.blind {
        writeln!(out, "This list may be incomplete: {why}.")?;
    }
    if bound_only > 0 {
        writeln!(
            out,
            "* bound but not listening: in no socket table, so `ss -tan` and lsof do not show it; \
             it still holds the port."
        )?;
    }
    Ok(())
}

fn prediction(out: &mut impl Write, p: &Prediction) -> io::Result<()> {
    let v = &p.verdict;
    writeln!(
        out,
        "\nbind({} {}) as uid {} in netns {}: {}",
        p.socket.proto_family(),
        endpoint(p.addr, p.port),
        p.socket.uid.unwrap_or(0),
        p.socket.netns,
        match p.would_succeed() {
            Some(true) => "would succeed",
            Some(false) => "would fail",
            None => "cannot tell",
        }
    )?;
    if let Some(why) = p.cannot_tell.filter(|_| p.would_succeed().is_none()) {
        // The rules' "ok" would claim more than was seen: say only what is known.
        writeln!(
            out,
            "  portwatch found nothing in the way, but it cannot promise success: {why}."
        )?;
        return Ok(());
    }
    writeln!(out, "  {}", safe(&v.message))?;
    for d in &v.details {
        writeln!(out, "  {}", safe(d))?;
    }
    if let Some(fix) = &v.fix {
        writeln!(out, "  fix: {}", safe(fix))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::sockets::{Family, Options, Owner, OwnerStatus, Proto, SocketView, State};

    /// A holder whose process named itself with escape sequences and a newline, bound to an
    /// interface whose name holds a bell: the table shows them escaped, on one line.
    #[test]
    fn hostile_names_reach_the_table_escaped() {
        let holder = Holder {
            socket: SocketView {
                family: Family::Ipv4,
                proto: Proto::Tcp,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 8080,
                state: State::LISTEN,
                options: Options {
                    bound_dev_if: 2,
                    device: Some("eth\x07x".into()),
                    ..Options::default()
                },
                uid: Some(0),
                netns: 1,
                ino: 7,
                peer: None,
                tw_left_ms: None,
            },
            owners: vec![Owner {
                pid: 42,
                comm: "\x1b[31mRED\x1b]0;pwn\x07\nFORGED".into(),
                fd: 3,
                workload: None,
                forward: None,
            }],
            source: Source::SocketTable,
            status: OwnerStatus::Live,
        };
        let holders = [holder];
        let report = WhoReport {
            port: 8080,
            namespaces: 1,
            own_netns: 1,
            holders: &holders,
            prediction: None,
            blind: None,
        };
        let mut out = Vec::new();
        write(&mut out, &report, false).expect("write to a Vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains(['\x1b', '\x07']), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");
        assert!(
            text.contains(r"(\x1b[31mRED\x1b]0;pwn\x07\nFORGED)") && text.contains(r"dev=eth\x07x"),
            "{text}"
        );
    }
}
