//! `portwatch ports`: how full the ephemeral port range is in each network namespace, toward
//! each busy TCP destination (connect() shares a local port between destinations, so a range
//! runs out per destination) and for UDP (not shared), with the processes holding the ports.
//! What to look at before connect() starts failing with "Cannot assign requested address".

use std::io;

use anyhow::{Context as _, Result, bail};

use crate::{
    cli::PortsArgs,
    facts::{FactFinder, ports::NetnsPorts},
    loader,
    netns::Namespaces,
    output::{self, ports::PortsReport},
    settings,
};

/// How many processes are named per destination.
const OWNERS_EACH: usize = 3;

pub fn run(args: PortsArgs) -> Result<()> {
    let only = args.netns.as_deref().map(settings::netns_arg).transpose()?;
    loader::check_privileges("ports")?;
    let kernel = loader::kernel_info()?;
    let mut ebpf = loader::load_for_tables(&kernel)?;
    let mut ns = Namespaces::default();
    let mut finder = FactFinder::new(Ok(()));
    let namespaces = match only {
        Some(n) => vec![n],
        None => ns.discover(),
    };
    let mut found: Vec<NetnsPorts> = Vec::new();
    let mut unreadable: Vec<(u32, String)> = Vec::new();
    let mut idle = 0;
    for &n in &namespaces {
        match finder.netns_ports(&mut ebpf, &mut ns, n, usize::from(args.top), OWNERS_EACH) {
            Ok(p)
                if only.is_none()
                    && p.tcp.is_empty()
                    && p.udp.used == 0
                    && p.tcp_space.used == 0 =>
            {
                idle += 1
            }
            Ok(p) => found.push(p),
            Err(why) => unreadable.push((n, why)),
        }
    }
    if found.is_empty() && idle == 0 && !unreadable.is_empty() {
        let lines: Vec<String> = unreadable
            .iter()
            .map(|(n, why)| format!("netns {n}: {why}"))
            .collect();
        bail!("could not read any namespace's ports: {}", lines.join("; "));
    }
    // Fullest first: the namespace to look at leads.
    found.sort_by(|a, b| {
        let worst = |p: &NetnsPorts| {
            p.worst_ratio(crate::sockets::Proto::Tcp)
                .unwrap_or(0.0)
                .max(p.worst_ratio(crate::sockets::Proto::Udp).unwrap_or(0.0))
        };
        worst(b).total_cmp(&worst(a))
    });
    let report = PortsReport {
        found: &found,
        idle,
        unreadable: &unreadable,
    };
    output::ports::write(&mut io::stdout().lock(), &report, args.json)
        .context("writing to stdout")?;
    for (n, why) in &unreadable {
        output::status(format_args!(
            "portwatch: warning: netns {n}: {}",
            output::terminal::safe(why)
        ));
    }
    Ok(())
}
