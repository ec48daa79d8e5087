//! The HTTP side of `--metrics`: `GET /metrics` and `GET /healthz`, one request per
//! connection, on the trace loop's own runtime. Small on purpose: a scraper asks one thing
//! every few seconds; anything else gets a 404 or a 400 and the connection closes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use log::debug;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Metrics;

/// The most a request head may take; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// A client that has not sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` now (so a taken port is an error at start, not later) and serves it in the
/// background for as long as the runtime runs.
pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: listening on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, &metrics).await {
                            debug!("metrics client {peer}: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of fds, say: back off instead of spinning.
                    debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

async fn serve(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = respond(&head, metrics);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The whole response to one request head.
fn respond(head: &str, metrics: &Metrics) -> Vec<u8> {
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next().unwrap_or_default(), request.next());
    let Some(target) = target.filter(|_| method == "GET" || method == "HEAD") else {
        return reply(
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            true,
        );
    };
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let with_body = method == "GET";
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => match metrics.encode() {
            Ok(om) if accept.contains("application/openmetrics-text") => {
                reply("200 OK", OPENMETRICS, om, with_body)
            }
            Ok(om) => reply(
                "200 OK",
                PROMETHEUS_TEXT,
                super::prometheus_text(&om),
                with_body,
            ),
            Err(_) => reply(
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".into(),
                with_body,
            ),
        },
        "/healthz" => reply("200 OK", "text/plain", "ok\n".into(), with_body),
        _ => reply(
            "404 Not Found",
            "text/plain",
            "not found\n".into(),
            with_body,
        ),
    }
}

fn reply(status: &str, content_type: &str, body: String, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
