//! Servers not written here (busybox httpd, python's http.server) hold the port; portwatch
//! must name them. They are the closest thing to what users run, and they set their socket
//! options their own way. In the `Gone` mode the server is killed (SIGKILL) right after the
//! asker's bind.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    expect::{fields_owned, named},
    holding::{Holding, Seen},
};
use crate::scenarios::{
    Ctx, Scenario, holder::Holder, netns::Netns, portwatch::Portwatch, sock::SockSpec,
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

pub(super) fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    v.extend(twice!(
        "explain_real_server_busybox_httpd",
        serving(
            busybox_httpd_cmd,
            SockSpec::tcp("127.0.0.1:8080"),
            "reuseaddr-vs-listen"
        )
    ));
    v.extend(
        twice!(
            "explain_real_server_python_http",
            serving(
                || Ok(python_http("127.0.0.1")),
                SockSpec::tcp("127.0.0.1:8080"),
                "reuseaddr-vs-listen"
            )
        )
        .map(Scenario::host_only),
    );
    // The brief's example with a real server: python's [::] socket is dual-stack.
    v.extend(
        twice!(
            "explain_real_server_python_dual_stack",
            serving(
                || Ok(python_http("::")),
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
                "dual-stack-covers-ipv4"
            )
        )
        .map(Scenario::host_only),
    );
    v
}

/// `python3 -m http.server 8080 --bind ADDR`.
pub(super) fn python_http(addr: &'static str) -> Vec<&'static str> {
    vec!["python3", "-m", "http.server", "8080", "--bind", addr]
}

/// A [`real_server`] as a scenario body: the server's command line comes from `argv` when
/// the scenario runs (it may have to look for the program).
fn serving(
    argv: impl Fn() -> Result<Vec<&'static str>> + Send + Sync + 'static,
    asked: SockSpec,
    rule: &'static str,
) -> impl Fn(&Ctx, &Portwatch, &Netns, Holding) -> Result<Seen> + Send + Sync + 'static {
    move |cx, pw, ns, holding| real_server(cx, pw, ns, holding, &argv()?, asked.clone(), rule)
}

fn busybox_httpd_cmd() -> Result<Vec<&'static str>> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("busybox not found")?;
    Ok(vec![
        busybox,
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:8080",
        "-h",
        "/",
    ])
}

/// A server program running in a scenario's namespace; killed when dropped.
pub struct Server {
    child: Child,
    pub pid: u32,
    /// As the kernel reports it, read once the server listens.
    pub comm: String,
}

impl Server {
    /// Starts `argv` in `ns` and waits until portwatch saw it listen.
    pub fn start(pw: &Portwatch, ns: &Netns, argv: &[&str]) -> Result<Server> {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ns.enter_on_spawn(&mut cmd)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        let pid = child.id();
        let mut server = Server {
            child,
            pid,
            comm: String::new(),
        };
        pw.wait_for(ns, &format!("the server (pid {pid}) listening"), |e| {
            e.iter()
                .any(|e| e.kind() == "listen" && e.pid() == Some(u64::from(pid)))
        })?;
        server.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?
            .trim()
            .to_string();
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server not written here holds the port; portwatch must name it. Both servers set
/// SO_REUSEADDR, as most servers do, and listen: the rule is that SO_REUSEADDR cannot help
/// against a listener.
fn real_server(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
    argv: &[&str],
    asked: SockSpec,
    rule: &str,
) -> Result<Seen> {
    let server = Server::start(pw, ns, argv)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let after = holding.prepare_programs(cx, &[server.pid])?;
    let b = after.call(&mut a, |a| a.bind_fails(&asked, EADDRINUSE))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    let mut want = vec![
        ("explain.rule".to_string(), json!(rule)),
        (
            "explain.holders.0.options.reuseaddr".to_string(),
            json!(true),
        ),
    ];
    want.extend(named(
        "explain.holders.0",
        holding,
        server.pid,
        &server.comm,
    ));
    fields_owned(&ev, &want)?;
    Ok(Seen {
        ev,
        varying: vec![(server.pid.into(), "<holder>"), (a.pid.into(), "<caller>")],
    })
}
