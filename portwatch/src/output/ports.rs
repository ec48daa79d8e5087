//! `ports`' renderer: how full the ephemeral range is per namespace, toward each busy TCP
//! destination and for UDP, for people or as one JSON object ([`super::json::JsonPorts`]).

use std::io::{self, Write};

use super::{
    json::{self, JsonPorts},
    terminal::safe,
};
use crate::{
    address::endpoint,
    facts::{port_use::PortOwner, ports::NetnsPorts},
};

/// What `portwatch ports` found.
pub struct PortsReport<'a> {
    /// Namespaces with something in their range (all of them with `--netns`).
    pub found: &'a [NetnsPorts],
    /// Namespaces whose range holds nothing, not shown one by one.
    pub idle: usize,
    pub unreadable: &'a [(u32, String)],
}

pub fn write(out: &mut impl Write, r: &PortsReport, as_json: bool) -> io::Result<()> {
    if as_json {
        return json::write_line(out, &JsonPorts::new(r.found, r.unreadable));
    }
    for n in r.found {
        let range = n.range;
        let usable = range.usable();
        writeln!(
            out,
            "netns {}: net.ipv4.ip_local_port_range {}–{} ({} ports, {} reserved, {usable} usable)",
            n.netns,
            range.lo,
            range.hi,
            range.size(),
            range.reserved
        )?;
        writeln!(
            out,
            "  {:<5} {:<28} {:>7} {:>6} {:>6} {:>9}  HELD BY",
            "PROTO", "DESTINATION", "IN USE", "FREE", "USED", "TIME_WAIT"
        )?;
        for d in &n.tcp {
            writeln!(
                out,
                "  {:<5} {:<28} {:>7} {:>6} {:>6} {:>9}  {}",
                "tcp",
                endpoint(d.dest.0, d.dest.1),
                d.blocked,
                d.free(),
                percent(d.blocked, usable),
                d.to_dest_time_wait,
                safe(&PortOwner::list(&d.owners))
            )?;
        }
        if n.tcp.is_empty() {
            writeln!(
                out,
                "  {:<5} {:<28} {:>7} {:>6} {:>6} {:>9}  -",
                "tcp",
                "(no connection in range)",
                n.tcp_space.by_binds,
                usable.saturating_sub(n.tcp_space.by_binds),
                percent(n.tcp_space.by_binds, usable),
                0
            )?;
        }
        writeln!(
            out,
            "  {:<5} {:<28} {:>7} {:>6} {:>6} {:>9}  {}",
            "udp",
            "(any: not shared)",
            n.udp.used,
            usable.saturating_sub(n.udp.used),
            percent(n.udp.used, usable),
            "-",
            safe(&PortOwner::list(&n.udp_owners))
        )?;
        if n.tcp_space.by_binds > 0 {
            writeln!(
                out,
                "  tcp: {} range ports are held by bound or listening sockets, which connect() \
                 never takes (counted in IN USE toward every destination)",
                n.tcp_space.by_binds
            )?;
        }
    }
    if r.idle > 0 {
        writeln!(
            out,
            "{} other network namespace(s): no port of their range in use",
            r.idle
        )?;
    }
    if r.found.is_empty() && r.idle == 0 && r.unreadable.is_empty() {
        writeln!(out, "no network namespace found")?;
    }
    writeln!(
        out,
        "IN USE: ports connect() cannot take toward that destination (its connections, TIME_WAIT \
         included, and bound sockets); connect() fails with EADDRNOTAVAIL at 100%. UDP ports are \
         not shared: a UDP connect() or sendto() on an unbound socket fails with EAGAIN at 100%."
    )
}

fn percent(n: u32, of: u32) -> String {
    if of == 0 {
        return "-".to_string();
    }
    format!("{:.0}%", f64::from(n) * 100.0 / f64::from(of))
}
