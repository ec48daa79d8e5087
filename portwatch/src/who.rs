//! `portwatch who PORT`: every socket holding a port right now, in every network namespace
//! portwatch can see, bound-only and TIME_WAIT included; and, with `--addr`, whether a bind
//! would succeed now and why, by the same rules `trace` explains with.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::MetadataExt,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    cli::WhoArgs,
    event::{Call, Event, Requested},
    explain::{self, Facts, Holder, HolderReport, Source, Verdict},
    facts::FactFinder,
    loader,
    netns::{self, Namespaces},
    sockets::{Family, Options, Proto, SocketView, State},
};

#[derive(Serialize)]
struct JsonWho<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    port: u16,
    namespaces: usize,
    holders: Vec<HolderReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction: Option<JsonPrediction<'a>>,
}

#[derive(Serialize)]
struct JsonPrediction<'a> {
    would_succeed: bool,
    protocol: String,
    addr: String,
    port: u16,
    netns: u32,
    uid: u32,
    verdict: &'a Verdict,
}

pub fn run(args: WhoArgs) -> Result<()> {
    loader::check_privileges("who")?;
    let kernel = loader::kernel_info()?;
    let mut ebpf = loader::load_for_tables(&kernel)?;
    let mut ns = Namespaces::default();
    let mut finder = FactFinder::new(Ok(()));
    let namespaces = ns.discover();
    let mut holders: Vec<Holder> = Vec::new();
    let mut failures = Vec::new();
    for &n in &namespaces {
        match finder.holders(&mut ebpf, &mut ns, n, Some(args.port)) {
            Ok(h) => holders.extend(h),
            Err(e) => failures.push(format!("netns {n}: {e}")),
        }
    }
    if holders.is_empty() && !failures.is_empty() && failures.len() == namespaces.len() {
        bail!("could not read any socket table: {}", failures.join("; "));
    }
    holders.sort_by_key(|h| (h.socket.netns, h.socket.proto.name(), h.socket.state.0));

    let prediction = match args.addr {
        Some(addr) => Some(predict(&args, addr, &mut ebpf, &mut ns, &mut finder)?),
        None => None,
    };

    let mut out = io::stdout().lock();
    if args.json {
        let obj = JsonWho {
            kind: "who",
            port: args.port,
            namespaces: namespaces.len(),
            holders: holders
                .iter()
                .map(|h| HolderReport::new(h, None, None))
                .collect(),
            prediction: prediction.as_ref().map(|(ev, v)| {
                let s = ev.socket.as_ref().expect("built with a socket");
                JsonPrediction {
                    would_succeed: v.ok,
                    protocol: s.proto.name(),
                    addr: ev
                        .requested
                        .as_ref()
                        .map(|r| r.addr.to_string())
                        .unwrap_or_default(),
                    port: args.port,
                    netns: s.netns,
                    uid: s.uid.unwrap_or(0),
                    verdict: v,
                }
            }),
        };
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, args.port, namespaces.len(), &holders)?;
        if let Some((ev, v)) = &prediction {
            print_prediction(&mut out, ev, v)?;
        }
    }
    for f in failures {
        eprintln!("portwatch: warning: {f}");
    }
    Ok(())
}

fn print_table(
    out: &mut impl io::Write,
    port: u16,
    namespaces: usize,
    holders: &[Holder],
) -> io::Result<()> {
    let own = netns::current();
    if holders.is_empty() {
        writeln!(
            out,
            "Nothing holds port {port} (TCP or UDP) in the {namespaces} network namespace(s) \
             portwatch can see."
        )?;
        return Ok(());
    }
    let used: std::collections::HashSet<u32> = holders.iter().map(|h| h.socket.netns).collect();
    writeln!(
        out,
        "port {port}: {} socket(s) in {} of the {namespaces} network namespaces portwatch can \
         see (its own is {own})",
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
            "{:<11} {:<6} {:<28} {:<13} {:<28} {:>5}  {owner}{note}",
            s.netns,
            s.proto_family(),
            s.endpoint(),
            state,
            opts,
            s.uid.map_or("-".to_string(), |u| u.to_string()),
        )?;
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

fn print_prediction(out: &mut impl io::Write, ev: &Event, v: &Verdict) -> io::Result<()> {
    let s = ev.socket.as_ref().expect("built with a socket");
    let r = ev.requested.as_ref().expect("built with a request");
    writeln!(
        out,
        "\nbind({} {}) as uid {} in netns {}: {}",
        s.proto_family(),
        crate::sockets::endpoint(r.addr, r.port),
        s.uid.unwrap_or(0),
        s.netns,
        if v.ok { "would succeed" } else { "would fail" }
    )?;
    writeln!(out, "  {}", v.message)?;
    for d in &v.details {
        writeln!(out, "  {d}")?;
    }
    if let Some(fix) = &v.fix {
        writeln!(out, "  fix: {fix}")?;
    }
    Ok(())
}

/// Builds the bind described on the command line and runs the rules on it.
fn predict(
    args: &WhoArgs,
    addr: IpAddr,
    ebpf: &mut aya::Ebpf,
    ns: &mut Namespaces,
    finder: &mut FactFinder,
) -> Result<(Event, Verdict)> {
    let target = match &args.netns {
        Some(p) => std::fs::metadata(p)
            .with_context(|| format!("--netns {}", p.display()))?
            .ino() as u32,
        None => netns::current(),
    };
    if let Some(p) = &args.netns {
        ns.remember_path(target, p);
    }
    let (sysctls, local_addrs) = finder.netns_facts(ns, target);
    let family = if addr.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let bound_dev_if = match &args.device {
        Some(d) => ns
            .ifindex(target, d)
            .with_context(|| format!("no interface {d} in netns {target}"))?,
        None => 0,
    };
    let uid = args.uid.unwrap_or_else(|| unsafe { libc::getuid() });
    let v6only = family == Family::Ipv6 && (args.v6only || sysctls.bindv6only == Some(true));
    let options = Options {
        reuseaddr: args.reuseaddr,
        reuse_raw: u8::from(args.reuseaddr),
        reuseport: args.reuseport,
        v6only,
        bound_dev_if,
        device: args.device.clone(),
        ..Options::default()
    };
    let proto = if args.udp { Proto::Udp } else { Proto::Tcp };
    let socket = SocketView {
        family,
        proto,
        addr: if family == Family::Ipv4 {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        },
        port: 0,
        state: State::CLOSE,
        options,
        uid: Some(uid),
        netns: target,
        ino: 0,
        peer: None,
        tw_left_ms: None,
    };
    let ev = Event {
        call: Call::Bind,
        backend: "prediction",
        boot_ns: 0,
        pid: std::process::id(),
        tid: 0,
        uid,
        comm: "portwatch".into(),
        cgroup_id: 0,
        fd: None,
        requested: Some(Requested {
            sa_family: if family == Family::Ipv4 { 2 } else { 10 },
            addr,
            port: args.port,
            scope_id: 0,
        }),
        ret: 0,
        socket: Some(socket),
        kernel_holders: vec![],
        walk: None,
        holders_sent: 0,
    };
    let holders = finder
        .holders(ebpf, ns, target, Some(args.port))
        .map_err(|e| anyhow::anyhow!("reading the socket tables of netns {target}: {e}"))?;
    let facts = Facts {
        holders: Some(holders),
        sysctls,
        local_addrs,
        addr_is_local: crate::facts::address_is_local(ns, target, addr),
        // Root may bind privileged ports; anyone else is assumed to lack the capability.
        cap_net_bind_service: Some(uid == 0),
        ..Facts::default()
    };
    let v = explain::predict(&ev, &facts).context("nothing to predict")?;
    let mut ev = ev;
    ev.ret = if v.ok { 0 } else { -1 };
    Ok((ev, v))
}
