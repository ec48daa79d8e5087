//! `trace --metrics` (issue 11): real conflicts in a fresh namespace, scraped by a real
//! Prometheus (Debian's 2.42, started by hand on loopback), and the counts read back through
//! its HTTP API with PromQL. `promtool check metrics` must accept what a plain client gets.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context, Result, ensure};

use super::{
    Ctx, Scenario, eventually,
    holder::Holder,
    netns::{self, Netns},
    portwatch::Portwatch,
    prometheus::{self, Prometheus},
    sock::SockSpec,
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::alone("metrics_scraped_by_prometheus", scraped_by_prometheus).host_only(),
        Scenario::alone("metrics_ephemeral_ports_used_ratio", ephemeral_ratio),
    ]
}

/// Where portwatch said it serves metrics.
fn metrics_addr(pw: &Portwatch) -> Result<SocketAddr> {
    pw.stderr()
        .iter()
        .find_map(|l| l.strip_prefix("portwatch: metrics at http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .context("no \"metrics at\" line on stderr")?
        .parse()
        .context("the metrics address")
}

/// A PromQL result as label value → count.
fn by(results: &[(serde_json::Value, f64)], label: &str) -> BTreeMap<String, f64> {
    results
        .iter()
        .map(|(m, v)| (m[label].as_str().unwrap_or("").to_string(), *v))
        .collect()
}

fn scraped_by_prometheus(cx: &Ctx, ns: &Netns) -> Result<()> {
    let pw = Portwatch::start(
        &cx.pw,
        &[
            "--port",
            "47100",
            "--port",
            "47101",
            "--metrics",
            "127.0.0.1:0",
        ],
    )?;
    let addr = metrics_addr(&pw)?;
    let mut holder = Holder::spawn(ns, "pw-met-hold")?;
    let mut client = Holder::spawn(ns, "pw-met-client")?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47100").listening())?;
    client.bind_fails(&SockSpec::tcp("127.0.0.1:47100"), EADDRINUSE)?;
    client.bind_fails(&SockSpec::tcp("127.0.0.1:47100"), EADDRINUSE)?;
    holder.bind_ok(&SockSpec::udp("127.0.0.1:47101"))?;
    let last = client.bind_fails(&SockSpec::udp("127.0.0.1:47101"), EADDRINUSE)?;
    pw.wait_call(ns, "bind", client.pid, last.ino)?;

    // portwatch serves on the root namespace's loopback; this thread is in the scenario's.
    cx.pw.root_ns.run(|| scrape(cx, addr))?;
    holder.exit()?;
    client.exit()?;
    pw.stop()?;
    Ok(())
}

/// Checks the exposition, then has Prometheus scrape it and reads the counts back.
fn scrape(cx: &Ctx, addr: SocketAddr) -> Result<()> {
    let text = prometheus::http_get(addr, "/metrics", "")?;
    let complaints = prometheus::promtool_check_metrics(&text)?;
    ensure!(
        complaints.is_empty(),
        "promtool check metrics: {complaints}\n{text}"
    );
    let om = prometheus::http_get(addr, "/metrics", "application/openmetrics-text")?;
    ensure!(om.ends_with("# EOF\n"), "OpenMetrics without # EOF:\n{om}");
    ensure!(
        prometheus::http_get(addr, "/healthz", "")? == "ok\n",
        "/healthz"
    );

    let prom = Prometheus::start(addr)?;
    let want_rule = BTreeMap::from([
        ("same-address".to_string(), 1.0),
        ("wildcard-covers-specific".to_string(), 2.0),
    ]);
    let want_port = BTreeMap::from([("47100".to_string(), 2.0), ("47101".to_string(), 1.0)]);
    let want_explained = BTreeMap::from([
        ("ok-listen".to_string(), 1.0),
        ("ok-port-free".to_string(), 2.0),
        ("same-address".to_string(), 1.0),
        ("wildcard-covers-specific".to_string(), 2.0),
    ]);
    let q_rule = "sum by (rule) (portwatch_port_failures_total{job=\"portwatch\"})";
    let q_port = "sum by (port) (portwatch_port_failures_total{job=\"portwatch\"})";
    let q_explained = "sum by (rule) (portwatch_explanations_total{job=\"portwatch\"})";
    let mut seen = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    // Until Prometheus listens, a query fails: that is "not yet", remembered for the report.
    let mut last_error = String::new();
    let scraped = eventually(cx.pw.timeout(30.0), || {
        let mut ask = |q: &str, label: &str| match prom.query(q) {
            Ok(r) => Some(by(&r, label)),
            Err(e) => {
                last_error = format!("{e:#}");
                None
            }
        };
        let (Some(r), Some(p), Some(e)) = (
            ask(q_rule, "rule"),
            ask(q_port, "port"),
            ask(q_explained, "rule"),
        ) else {
            return Ok(false);
        };
        seen = (r, p, e);
        Ok(seen.0 == want_rule && seen.1 == want_port && seen.2 == want_explained)
    })?;
    ensure!(
        scraped,
        "Prometheus did not return the expected counts within {:?}\n  by rule: {:?}\n  \
         by port: {:?}\n  explained: {:?}\n  last query error: {last_error}\n  \
         prometheus log:\n{}",
        cx.pw.timeout(30.0),
        seen.0,
        seen.1,
        seen.2,
        prom.log()
    );
    let inuse = prom.query(
        "sum(portwatch_calls_total{job=\"portwatch\",call=\"bind\",result=\"EADDRINUSE\"})",
    )?;
    ensure!(
        inuse.first().map(|r| r.1) == Some(3.0),
        "EADDRINUSE binds by PromQL: {inuse:?}"
    );
    Ok(())
}

/// The gauge `portwatch_ephemeral_ports_used_ratio` (issue 17): in a namespace whose range has
/// 4 ports, a client holding 3 connections to one server makes tcp 0.75 (another
/// destination's connection does not count toward it), one connected UDP socket makes udp
/// 0.25. The sockets exist before portwatch starts, so its first measurement sees them.
fn ephemeral_ratio(cx: &Ctx, ns: &Netns) -> Result<()> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40003")?;
    let mut server = Holder::spawn(ns, "pw-server")?;
    server.bind_ok(&SockSpec::tcp("127.0.0.1:9999").listening())?;
    server.bind_ok(&SockSpec::tcp("127.0.0.1:9998").listening())?;
    let mut client = Holder::spawn(ns, "pw-client")?;
    let tcp = SockSpec::tcp("0.0.0.0:0");
    for _ in 0..3 {
        client.connect_ok(&tcp, false, "127.0.0.1:9999")?;
    }
    client.connect_ok(&tcp, false, "127.0.0.1:9998")?;
    client.connect_ok(&SockSpec::udp("0.0.0.0:0"), false, "127.0.0.1:53")?;
    let pw = Portwatch::start(&cx.pw, &["--netns", &ns.path(), "--metrics", "127.0.0.1:0"])?;
    let addr = metrics_addr(&pw)?;
    let series = |proto: &str| {
        format!(
            "portwatch_ephemeral_ports_used_ratio{{netns=\"{}\",protocol=\"{proto}\"}} ",
            ns.inode()
        )
    };
    let mut text = String::new();
    let seen = eventually(cx.pw.timeout(15.0), || {
        text = cx
            .pw
            .root_ns
            .run(|| prometheus::http_get(addr, "/metrics", ""))?;
        Ok(text.contains(&series("tcp")))
    })?;
    ensure!(seen, "no tcp gauge for netns {}:\n{text}", ns.inode());
    let value = |proto: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&series(proto)))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    ensure!(
        value("tcp") == Some(0.75) && value("udp") == Some(0.25),
        "want tcp 0.75 and udp 0.25 for netns {}, got tcp {:?}, udp {:?}:\n{text}",
        ns.inode(),
        value("tcp"),
        value("udp")
    );
    // Only the watched namespace (--netns) has series.
    let others = text
        .lines()
        .filter(|l| l.starts_with("portwatch_ephemeral_ports_used_ratio{"))
        .filter(|l| !l.contains(&format!("netns=\"{}\"", ns.inode())))
        .count();
    ensure!(others == 0, "series of unwatched namespaces:\n{text}");
    client.exit()?;
    server.exit()?;
    pw.stop()?;
    Ok(())
}
