//! `portwatch who PORT`: every socket holding a port right now, in every network namespace
//! portwatch can see, bound-only and TIME_WAIT included; and, with `--addr`, whether a bind
//! would succeed now and why, by the same rules `trace` explains with.

use std::{collections::BTreeMap, io, net::IpAddr};

use anyhow::{Context as _, Result, bail};

use crate::{
    cli::{ScopedAddr, WhoArgs},
    event::{Call, Event, Requested},
    explain,
    facts::{self, FactFinder, Facts},
    loader,
    netns::{self, Namespaces},
    output::{self, who::WhoReport},
    prediction::Prediction,
    sockets::{Family, Holder, Options, Proto, SocketView, State},
};

pub fn run(args: WhoArgs) -> Result<()> {
    loader::check_privileges("who")?;
    let kernel = loader::kernel_info()?;
    let mut ebpf = loader::load_for_tables(&kernel)?;
    let mut ns = Namespaces::default();
    let mut finder = FactFinder::new(Ok(()));
    let namespaces = ns.discover();
    let mut holders: Vec<Holder> = Vec::new();
    let mut failures = Failures::default();
    for &n in &namespaces {
        match finder.holders(&mut ebpf, &mut ns, n, Some(args.port)) {
            Ok(h) => holders.extend(h),
            Err(e) => failures.add(n, e.to_string()),
        }
    }
    if holders.is_empty() && failures.count == namespaces.len() && failures.count > 0 {
        bail!(
            "could not read any socket table: {}",
            failures.lines().join("; ")
        );
    }
    finder.enrich(&mut ns, &mut holders);
    holders.sort_by_key(|h| (h.socket.netns, h.socket.proto.name(), h.socket.state.0));

    // Bound-but-not-listening sockets are found only through the processes' fd tables.
    let blind = (!finder.sees_every_socket(&mut ebpf, Some(args.port))).then_some(BLIND);
    let prediction = match &args.addr {
        Some(addr) => Some(predict(
            &args,
            addr,
            &mut ebpf,
            &mut ns,
            &mut finder,
            blind,
        )?),
        None => None,
    };

    let report = WhoReport {
        port: args.port,
        namespaces: namespaces.len(),
        own_netns: netns::current(),
        holders: &holders,
        prediction: prediction.as_ref(),
        blind,
    };
    output::who::write(&mut io::stdout().lock(), &report, args.json)
        .context("writing to stdout")?;
    for f in failures.lines() {
        output::status(format_args!(
            "portwatch: warning: {}",
            output::terminal::safe(&f)
        ));
    }
    Ok(())
}

/// fe80::/10, the addresses whose scope names an interface.
fn link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// Namespaces whose tables could not be read, grouped by reason: one cause shared by hundreds
/// of namespaces (the open-files limit) is one line, not hundreds.
#[derive(Default)]
struct Failures {
    by_reason: BTreeMap<String, Vec<u32>>,
    count: usize,
}

impl Failures {
    fn add(&mut self, netns: u32, reason: String) {
        self.by_reason.entry(reason).or_default().push(netns);
        self.count += 1;
    }

    /// "netns 4026531840: reason", or "3 namespaces (4026531840, ...): reason".
    fn lines(&self) -> Vec<String> {
        self.by_reason
            .iter()
            .map(|(reason, ns)| match ns.as_slice() {
                [one] => format!("netns {one}: {reason}"),
                many => {
                    let shown: Vec<String> = many.iter().take(3).map(u32::to_string).collect();
                    let more = if many.len() > 3 { ", ..." } else { "" };
                    format!(
                        "{} namespaces ({}{more}): {reason}",
                        many.len(),
                        shown.join(", ")
                    )
                }
            })
            .collect()
    }
}

/// Builds the bind described on the command line and runs the rules on it.
fn predict(
    args: &WhoArgs,
    asked: &ScopedAddr,
    ebpf: &mut aya::Ebpf,
    ns: &mut Namespaces,
    finder: &mut FactFinder,
    blind: Option<&'static str>,
) -> Result<Prediction> {
    let target = match &args.netns {
        Some(p) => {
            let (ino, handle) = netns::open_path(p).context("--netns")?;
            ns.remember(ino, handle);
            ino
        }
        None => netns::current(),
    };
    let addr = asked.addr;
    let (sysctls, local_addrs) = finder.netns_facts(ns, target);
    let family = Family::of(addr);
    let mut interface = |name: &str| {
        name.parse::<u32>()
            .ok()
            .or_else(|| ns.ifindex(target, name))
            .with_context(|| format!("no interface {name} in netns {target}"))
    };
    let device_index = args.device.as_deref().map(&mut interface).transpose()?;
    // The kernel takes sin6_scope_id only for a link-local address, and binds the socket to
    // that interface; it refuses one that differs from SO_BINDTODEVICE.
    let scope_id = match &asked.scope {
        Some(s) if link_local(addr) => interface(s)?,
        _ => 0,
    };
    if scope_id != 0 && device_index.is_some_and(|d| d != scope_id) {
        bail!(
            "--addr {addr}%{} and --device {} are different interfaces: the kernel refuses \
             such a bind (EINVAL)",
            asked.scope.as_deref().unwrap_or_default(),
            args.device.as_deref().unwrap_or_default()
        );
    }
    let bound_dev_if = device_index.unwrap_or(scope_id);
    let device = match &args.device {
        Some(d) => Some(d.clone()),
        None if bound_dev_if != 0 => ns.ifname(target, bound_dev_if),
        None => None,
    };
    let uid = args.uid.unwrap_or_else(|| unsafe { libc::getuid() });
    let v6only = family == Family::Ipv6 && (args.v6only || sysctls.bindv6only == Some(true));
    let options = Options {
        reuseaddr: args.reuseaddr,
        reuse_raw: u8::from(args.reuseaddr),
        reuseport: args.reuseport,
        v6only,
        bound_dev_if,
        device,
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
        tid: 0,
        uid,
        requested: Some(Requested {
            sa_family: family.af(),
            addr,
            port: args.port,
            scope_id,
            scope_name: (scope_id != 0)
                .then(|| socket.options.device.clone())
                .flatten(),
        }),
        socket: Some(socket.clone()),
        ..Event::imagined(Call::Bind, std::process::id(), "portwatch")
    };
    let mut holders = finder
        .holders(ebpf, ns, target, Some(args.port))
        .with_context(|| format!("reading the socket tables of netns {target}"))?;
    finder.enrich(ns, &mut holders);
    let facts = Facts {
        socket_units: facts::enrich::socket_units_for(&holders, args.port),
        holders: Some(holders),
        sysctls,
        local_addrs,
        addr_is_local: facts::address_is_local(ns, target, addr, scope_id),
        // Root may bind privileged ports; anyone else is assumed to lack the capability.
        cap_net_bind_service: Some(uid == 0),
        ..Facts::default()
    };
    let verdict = explain::predict(&ev, &facts).context("nothing to predict")?;
    Ok(Prediction {
        socket,
        addr,
        port: args.port,
        verdict,
        cannot_tell: blind,
    })
}

/// What portwatch cannot see without the task-file iterator and without the capabilities to
/// read every process's fd table.
const BLIND: &str = "the kernel's task-file iterator is not available, and without \
                     CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH portwatch cannot read other \
                     processes' open files, so a socket that is bound but not listening (in no \
                     socket table) may hold the port unseen";

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 namespaces failing for one reason make one line.
    #[test]
    fn one_reason_shared_by_many_namespaces_is_one_line() {
        let mut f = Failures::default();
        for n in 0..300 {
            f.add(4_026_531_840 + n, "too many open files (EMFILE)".into());
        }
        f.add(7, "network namespace 7 is gone or cannot be entered".into());
        let lines = f.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| l
            == "300 namespaces (4026531840, 4026531841, 4026531842, ...): too many open files (EMFILE)"));
        assert_eq!(f.count, 301);
    }
}
