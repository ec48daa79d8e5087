//! `trace --metrics`: counters for Prometheus, kept while tracing and served by [`server`].
//!
//! The exposition comes from `prometheus-client` (OpenMetrics text). Every label has a bounded
//! set of values, so a node agent that runs for months exports a fixed number of series: call
//! and protocol names, errno names (unknown errnos become `other`), rule ids from
//! [`Rule::ALL`], and ports only when they were given with `--port`. Never a pid, an address,
//! a cgroup or a comm.

pub mod server;

use std::{
    collections::BTreeSet,
    sync::{Mutex, atomic::AtomicU64},
};

use portwatch_common::Backend;
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    errno,
    event::{Call, Event},
    explain::Verdict,
    sockets::Proto,
};

/// The `rule` label of a call portwatch could not explain (no socket, no request to read).
const NO_RULE: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    protocol: &'static str,
    family: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: u16,
    protocol: &'static str,
    errno: &'static str,
    rule: &'static str,
}

/// One watched network namespace's port space. `netns` is the namespace's inode: bounded by
/// the namespaces portwatch watches (at most [`MAX_RANGE_NETNS`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RangeLabels {
    netns: String,
    protocol: &'static str,
}

/// How many namespaces the ephemeral-range gauge covers, at most.
pub const MAX_RANGE_NETNS: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    backend: &'static str,
}

/// The counters, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    explanations: Family<RuleLabels, Counter>,
    port_failures: Family<PortLabels, Counter>,
    lost: Counter<u64, AtomicU64>,
    ephemeral_ratio: Family<RangeLabels, Gauge<f64, AtomicU64>>,
    /// The namespaces `ephemeral_ratio` has series for.
    ephemeral_netns: Mutex<BTreeSet<u32>>,
    /// The ports `--port` named: the only ports that become label values.
    ports: BTreeSet<u16>,
}

impl Metrics {
    pub fn new(backend: Backend, ports: &[u16]) -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "portwatch_calls",
            "bind(), listen() and failed connect() calls seen (each attempt of a repeated connect()), by call, protocol, family and result (ok or the errno name)",
            calls.clone(),
        );
        let explanations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "portwatch_explanations",
            "Calls explained, by the id of the kernel rule that decided the result (none: no explanation)",
            explanations.clone(),
        );
        let port_failures = Family::<PortLabels, Counter>::default();
        registry.register(
            "portwatch_port_failures",
            "Failed calls on the ports given with --port, by port, protocol, errno and rule",
            port_failures.clone(),
        );
        let lost = Counter::<u64, AtomicU64>::default();
        registry.register(
            "portwatch_lost_events",
            "Events the kernel side dropped (ring buffer full or no room for a pending call)",
            lost.clone(),
        );
        let ephemeral_ratio = Family::<RangeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "portwatch_ephemeral_ports_used_ratio",
            "Worst share of the usable ephemeral ports (ip_local_port_range less \
             ip_local_reserved_ports) in use, per watched network namespace: tcp, toward its \
             busiest destination (connections to it and bound sockets: connect() fails with \
             EADDRNOTAVAIL at 1); udp, in all (a UDP connect() or sendto() on an unbound socket \
             fails with EAGAIN at 1)",
            ephemeral_ratio.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                backend: backend.name(),
            })
            .set(1);
        registry.register(
            "portwatch_build_info",
            "Always 1: the portwatch version and the backend tracing runs on",
            build,
        );
        Metrics {
            registry,
            calls,
            explanations,
            port_failures,
            lost,
            ephemeral_ratio,
            ephemeral_netns: Mutex::default(),
            ports: ports.iter().copied().collect(),
        }
    }

    /// Counts one event's calls (each attempt of a folded repeat: [`Event::attempts`]), as it
    /// was explained.
    pub fn record(&self, ev: &Event, verdict: Option<&Verdict>) {
        let calls = u64::from(ev.attempts);
        let sock = ev.socket.as_ref();
        let protocol = sock.map_or("unknown", |s| protocol_name(s.proto));
        let result = ev.errno().map_or("ok", errno_label);
        self.calls
            .get_or_create(&CallLabels {
                call: ev.call.as_str(),
                protocol,
                family: sock.map_or("unknown", |s| s.family.name()),
                result,
            })
            .inc_by(calls);
        let rule = verdict.map_or(NO_RULE, |v| v.rule.id());
        self.explanations
            .get_or_create(&RuleLabels { rule })
            .inc_by(calls);
        if ev.ok() {
            return;
        }
        let port = match ev.call {
            Call::Bind | Call::Connect => ev.requested.as_ref().map(|r| r.port),
            Call::Listen => sock.map(|s| s.port),
        };
        if let Some(port) = port.filter(|p| self.ports.contains(p)) {
            self.port_failures
                .get_or_create(&PortLabels {
                    port,
                    protocol,
                    errno: result,
                    rule,
                })
                .inc_by(calls);
        }
    }

    /// Sets the ephemeral-range gauge of namespace `netns` and protocol `proto`.
    pub fn set_ephemeral_ratio(&self, netns: u32, proto: Proto, ratio: f64) {
        self.ephemeral_ratio
            .get_or_create(&RangeLabels {
                netns: netns.to_string(),
                protocol: protocol_name(proto),
            })
            .set(ratio);
        if let Ok(mut seen) = self.ephemeral_netns.lock() {
            seen.insert(netns);
        }
    }

    /// Drops the ephemeral-range series of namespaces not in `watched` (gone, or no longer
    /// readable): a gauge that is not measured is not shown.
    pub fn retain_ephemeral_netns(&self, watched: &[u32]) {
        let Ok(mut seen) = self.ephemeral_netns.lock() else {
            return;
        };
        for &netns in seen.iter() {
            if !watched.contains(&netns) {
                for protocol in ["tcp", "udp"] {
                    self.ephemeral_ratio.remove(&RangeLabels {
                        netns: netns.to_string(),
                        protocol,
                    });
                }
            }
        }
        seen.retain(|n| watched.contains(n));
    }

    /// Adds events the kernel side reported lost since the last call.
    pub fn lost(&self, new: u64) {
        self.lost.inc_by(new);
    }

    /// The exposition, OpenMetrics text as `prometheus-client` writes it.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The same exposition for clients that only read Prometheus' text format 0.0.4 (promtool
/// 2.x, older scrapers, curl users). The samples are prometheus-client's, unchanged; only
/// what differs between the two formats changes: a counter's HELP and TYPE lines name the
/// family as its samples are named (`x_total`, where OpenMetrics says `x`), and there is no
/// `# EOF` line.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match descriptor {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Protocol label values: the protocols portwatch names, anything else `other`.
fn protocol_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::UdpLite => "udplite",
        Proto::Mptcp => "mptcp",
        Proto::Sctp => "sctp",
        Proto::Raw(_) => "raw",
        Proto::Other(_) => "other",
    }
}

/// Errno label values: the names [`errno::name`] knows, anything else `other`, so a strange
/// return value cannot mint new series.
fn errno_label(e: i32) -> &'static str {
    errno::known_name(e).unwrap_or("other")
}

#[cfg(test)]
mod tests;
