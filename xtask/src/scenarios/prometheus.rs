//! Debian's Prometheus (2.42), unpacked into `target/prometheus/` and started by hand on
//! loopback with a temporary TSDB: the scraper the `--metrics` scenario checks against.
//!
//! Not installed as a package and never started as a service: `apt-get download` plus
//! `dpkg-deb -x`, once; later runs find the binaries and touch no network.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cmd;

/// The unpacked package's root (`usr/bin/prometheus`, `usr/bin/promtool` below it).
fn root() -> PathBuf {
    cmd::target_dir().join("prometheus")
}

/// `target/prometheus/usr/bin/NAME`, fetching the package the first time.
pub fn binary(name: &str) -> Result<PathBuf> {
    let root = root();
    let bin = root.join("usr/bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    let download = root.join("deb");
    std::fs::create_dir_all(&download)?;
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(&download),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    ensure!(bin.exists(), "{} is not in {}", name, deb.display());
    Ok(bin)
}

/// A Prometheus server scraping one target every second. Killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Result<Prometheus> {
        let exe = binary("prometheus")?;
        let dir = std::env::temp_dir().join(format!("portwatch-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: portwatch\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )?;
        // A free loopback port: taken from the kernel, then handed to Prometheus.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(exe)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus { child, addr, dir })
    }

    /// Prometheus' own log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// An instant query through the HTTP API: each result's labels and value.
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let body = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
            "",
        )?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!("query {promql}: {body}");
        }
        let mut out = Vec::new();
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no value in {r}"))?;
            out.push((r["metric"].clone(), value));
        }
        Ok(out)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.0 GET with an optional Accept header; the body of a 200, else an error.
pub fn http_get(addr: SocketAddr, path: &str, accept: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let accept = if accept.is_empty() {
        String::new()
    } else {
        format!("Accept: {accept}\r\n")
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    Ok(body.to_string())
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on `text`: its complaints, empty when it accepts.
pub fn promtool_check_metrics(text: &str) -> Result<String> {
    let mut child = Command::new(binary("promtool")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        String::new()
    } else {
        format!("{} ({})", said.trim(), out.status)
    })
}
