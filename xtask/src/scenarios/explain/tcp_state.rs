//! Connections left behind by a server that closed first, made on the calling (scenario)
//! thread, in its namespace: the sockets that hold a port with no process owning them.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Result, ensure};

use crate::scenarios::{
    eventually,
    sock::{Sock, SockSpec},
};

/// /proc/net/tcp's state numbers.
const FIN_WAIT2: &str = "05";
const TIME_WAIT: &str = "06";

/// A server on `addr` (with SO_REUSEADDR if `reuse`) accepts one connection and closes it
/// first, then closes its listener: the connection sits in TIME_WAIT on `addr`, with the
/// listener's SO_REUSEADDR, for a minute. Returns once /proc shows it.
pub(super) fn leave_time_wait(addr: &str, reuse: bool) -> Result<()> {
    {
        let (_listener, conn, client) = accepted(addr, reuse)?;
        drop(conn); // the server closes first: its side will be the TIME_WAIT one
        let mut buf = [0u8; 1];
        client.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = (&client).read(&mut buf); // wait for the server's FIN
        drop(client);
    }
    wait_for_state(addr, TIME_WAIT, "TIME_WAIT")
}

/// A server on `addr` accepts one connection, closes it and its listener, but the peer never
/// closes: the server's side waits in FIN_WAIT2. Linux keeps such an orphan as a timewait
/// socket whose *sub*state is FIN_WAIT2 (/proc shows 05), for tcp_fin_timeout. Returns the
/// peer, which must stay open as long as the holder is needed.
pub(super) fn leave_fin_wait2(addr: &str) -> Result<TcpStream> {
    let (listener, conn, client) = accepted(addr, false)?;
    drop(conn);
    drop(listener);
    wait_for_state(addr, FIN_WAIT2, "FIN_WAIT2")?;
    Ok(client)
}

/// A listener on `addr`, an accepted connection and its client.
fn accepted(addr: &str, reuse: bool) -> Result<(TcpListener, TcpStream, TcpStream)> {
    let srv = Sock::open(&SockSpec::tcp(addr).with(|o| o.reuseaddr = reuse))?;
    srv.bind()?;
    srv.listen(16)?;
    let listener: TcpListener = srv.socket.into();
    let client = TcpStream::connect(addr)?;
    let (conn, _) = listener.accept()?;
    Ok((listener, conn, client))
}

/// Waits until this thread's namespace has a TCP socket on `addr` (IPv4) in `state`.
fn wait_for_state(addr: &str, state: &str, name: &str) -> Result<()> {
    let SocketAddr::V4(a) = addr.parse()? else {
        anyhow::bail!("{addr}: only IPv4 addresses are looked up in /proc/net/tcp");
    };
    // /proc/net/tcp writes the address as the hex of its 32-bit value in host order.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    );
    let seen = eventually(Duration::from_secs(10), || {
        let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        Ok(tcp.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&state)
        }))
    })?;
    ensure!(seen, "set-up: no {name} connection on {addr} appeared");
    Ok(())
}
