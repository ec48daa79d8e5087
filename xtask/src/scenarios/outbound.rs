//! Scenario for rule `outbound-took-port` (issue 13): a real outgoing connection, from a real
//! client process, is given the one port of a narrow ephemeral range, and a server's bind to
//! that port then fails.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::{
    Ctx, Scenario, check,
    holder::Holder,
    netns::{self, Netns},
    portwatch::Portwatch,
    sock::SockSpec,
};

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::shared("outbound_connection_took_the_port", outbound).host_only()]
}

/// Kills the client when the scenario ends, however it ends.
struct Client(std::process::Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn outbound(_cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40000")?;
    let mut db = Holder::spawn(ns, "pw-db")?;
    db.bind_ok(&SockSpec::tcp("127.0.0.1:9000").listening())?;

    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import socket,sys,time\n\
         s=socket.create_connection(('127.0.0.1',9000))\n\
         print(s.getsockname()[1],flush=True)\n\
         time.sleep(60)",
    ])
    .stdout(Stdio::piped());
    ns.enter_on_spawn(&mut cmd)?;
    let mut client = Client(cmd.spawn().context("running python3 as the client")?);
    let mut line = String::new();
    BufReader::new(client.0.stdout.take().context("client stdout")?).read_line(&mut line)?;
    ensure!(
        line.trim() == "40000",
        "the client's local port should be 40000, the whole ephemeral range; it is {line:?}"
    );

    let mut server = Holder::spawn(ns, "pw-server")?;
    let b = server.bind_fails(&SockSpec::tcp("0.0.0.0:40000"), libc::EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", server.pid, b.ino)?;
    check::fields(
        &ev,
        &[
            ("explain.rule", json!("outbound-took-port")),
            ("explain.holders.0.rule", json!("outbound-took-port")),
            ("explain.holders.0.state", json!("ESTABLISHED")),
            ("explain.holders.0.port", json!(40000)),
            ("explain.holders.0.peer", json!("127.0.0.1:9000")),
            ("explain.holders.0.owners.0.pid", json!(client.0.id())),
            ("explain.holders.0.owners.0.comm", json!("python3")),
        ],
    )?;
    let message = ev.0["explain"]["message"].as_str().unwrap_or_default();
    let fix = ev.0["explain"]["fix"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&format!("pid {} (python3)", client.0.id()))
            && message.contains("to 127.0.0.1:9000")
            && message.contains("40000–40000"),
        "the sentence should name the client, its peer and the range: {message}"
    );
    ensure!(
        fix.contains("net.ipv4.ip_local_reserved_ports=40000"),
        "the fix should reserve the port: {fix}"
    );

    // A server that binds inside the range gets the note.
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40010")?;
    let ok = server.bind_ok(&SockSpec::tcp("0.0.0.0:40005"))?;
    let ev = pw.wait_call(ns, "bind", server.pid, ok.ino)?;
    let details = ev.0["explain"]["details"].to_string();
    ensure!(
        details.contains("ephemeral range") && details.contains("ip_local_reserved_ports=40005"),
        "a bind inside the range should carry the note: {details}"
    );
    Ok(())
}
