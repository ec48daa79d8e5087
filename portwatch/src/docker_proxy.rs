//! docker-proxy: the userland proxy dockerd starts for each published port. It holds the host
//! port and forwards to a container's address; its arguments say which. Pure: reading the
//! arguments and finding the container is done in [`crate::facts`].

use std::net::IpAddr;

use crate::{address::endpoint, workload::Workload};

/// What a docker-proxy forwards: `-proto tcp -host-ip 0.0.0.0 -host-port 8080
/// -container-ip 172.17.0.2 -container-port 80`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerProxy {
    pub proto: String,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// A docker-proxy and what was found behind its container address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub proxy: DockerProxy,
    /// The network namespace that has the container address now; None: none has it.
    pub container_netns: Option<u32>,
    /// The workload of a process in that namespace (the container), when one was found.
    pub container: Option<Workload>,
}

/// The comm of dockerd's userland proxy.
pub const COMM: &str = "docker-proxy";

impl DockerProxy {
    /// Reads docker-proxy's arguments (Go flags: `-name value` or `-name=value`, one or two
    /// dashes). None when the ones that say where it forwards are missing.
    pub fn parse(args: &[String]) -> Option<Self> {
        let value = |name: &str| -> Option<&str> {
            args.iter().enumerate().find_map(|(i, a)| {
                let flag = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
                match flag.split_once('=') {
                    Some((n, v)) if n == name => Some(v),
                    None if flag == name => args.get(i + 1).map(String::as_str),
                    _ => None,
                }
            })
        };
        Some(DockerProxy {
            proto: value("proto").unwrap_or("tcp").to_string(),
            host_ip: value("host-ip").and_then(|v| v.parse().ok()),
            host_port: value("host-port")?.parse().ok()?,
            container_ip: value("container-ip")?.parse().ok()?,
            container_port: value("container-port")?.parse().ok()?,
        })
    }

    /// `172.17.0.2:80`.
    pub fn target(&self) -> String {
        endpoint(self.container_ip, self.container_port)
    }
}

impl Forward {
    /// One sentence about where the proxy forwards, and whether that container is there.
    pub fn sentence(&self, pid: u32) -> String {
        let p = &self.proxy;
        let host = endpoint(p.host_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), p.host_port);
        match (self.container_netns, &self.container) {
            (Some(_), Some(w)) if !w.is_root() => format!(
                "pid {pid} (docker-proxy) publishes {} {host} for the container at {} ({})",
                p.proto,
                p.target(),
                w.label()
            ),
            (Some(n), _) => format!(
                "pid {pid} (docker-proxy) publishes {} {host} for the container at {} (netns {n})",
                p.proto,
                p.target()
            ),
            (None, _) => format!(
                "pid {pid} (docker-proxy) publishes {} {host} for a container at {}, but no \
                 network namespace has that address now: the container is gone and this proxy \
                 is a stale holder (restart dockerd, or stop pid {pid})",
                p.proto,
                p.target()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn reads_docker_proxy_arguments() {
        let p = DockerProxy::parse(&args(
            "/usr/bin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 \
             -container-ip 172.17.0.2 -container-port 80 -use-listen-fd",
        ))
        .unwrap();
        assert_eq!(p.proto, "tcp");
        assert_eq!(p.host_port, 8080);
        assert_eq!(p.target(), "172.17.0.2:80");
        let p = DockerProxy::parse(&args(
            "docker-proxy --proto=udp --host-ip=:: --host-port=53 --container-ip=fd00::2 \
             --container-port=5353",
        ))
        .unwrap();
        assert_eq!(p.proto, "udp");
        assert_eq!(p.target(), "[fd00::2]:5353");
        assert_eq!(
            DockerProxy::parse(&args("docker-proxy -host-port 80")),
            None
        );
    }

    #[test]
    fn a_proxy_without_its_container_is_stale() {
        let f = Forward {
            proxy: DockerProxy::parse(&args(
                "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip \
                 172.17.0.2 -container-port 80",
            ))
            .unwrap(),
            container_netns: None,
            container: None,
        };
        let s = f.sentence(7);
        assert!(
            s.contains("172.17.0.2:80") && s.contains("stale holder"),
            "{s}"
        );
    }
}
