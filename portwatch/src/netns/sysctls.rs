//! The sysctls that change bind()'s and connect()'s rules, read per network namespace (each
//! namespace has its own `net.ipv4.*`): run [`read`] on a thread inside the namespace.

/// The namespace's settings that change the rules. Read, never assumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub ip_local_port_range: Option<(u16, u16)>,
    pub ip_unprivileged_port_start: Option<u32>,
    pub ip_nonlocal_bind: Option<bool>,
    pub ipv6_ip_nonlocal_bind: Option<bool>,
    pub bindv6only: Option<bool>,
    pub ip_autobind_reuse: Option<bool>,
    /// As the kernel prints it: "8080,9000-9010" (empty when none).
    pub ip_local_reserved_ports: Option<String>,
    /// net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only (the default).
    pub tcp_tw_reuse: Option<u8>,
}

impl Sysctls {
    /// Whether `port` lies in the ephemeral range, from which the kernel picks the local port
    /// of outgoing connections (and of bind to port 0).
    pub fn in_ephemeral_range(&self, port: u16) -> bool {
        self.ip_local_port_range
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Whether `port` is in net.ipv4.ip_local_reserved_ports (None: not read).
    pub fn reserved(&self, port: u16) -> Option<bool> {
        let list = self.ip_local_reserved_ports.as_deref()?;
        Some(list.split(',').filter(|s| !s.trim().is_empty()).any(|r| {
            let r = r.trim();
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            match (lo.parse::<u16>(), hi.parse::<u16>()) {
                (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
                _ => false,
            }
        }))
    }
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_bool(path: &str) -> Option<bool> {
    sysctl(path)
        .and_then(|v| v.parse::<u32>().ok())
        .map(|v| v != 0)
}

/// The sysctls that change bind()'s rules, for the namespace this thread is in.
pub fn read() -> Sysctls {
    let range = sysctl("net/ipv4/ip_local_port_range").and_then(|v| {
        let mut it = v.split_whitespace().map(|x| x.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    Sysctls {
        ip_local_port_range: range,
        ip_unprivileged_port_start: sysctl("net/ipv4/ip_unprivileged_port_start")
            .and_then(|v| v.parse().ok()),
        ip_nonlocal_bind: sysctl_bool("net/ipv4/ip_nonlocal_bind"),
        ipv6_ip_nonlocal_bind: sysctl_bool("net/ipv6/ip_nonlocal_bind"),
        bindv6only: sysctl_bool("net/ipv6/bindv6only"),
        ip_autobind_reuse: sysctl_bool("net/ipv4/ip_autobind_reuse"),
        ip_local_reserved_ports: sysctl("net/ipv4/ip_local_reserved_ports"),
        tcp_tw_reuse: sysctl("net/ipv4/tcp_tw_reuse").and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::Sysctls;

    #[test]
    fn reads_reserved_port_lists() {
        let s = |list: &str| Sysctls {
            ip_local_reserved_ports: Some(list.into()),
            ip_local_port_range: Some((32768, 60999)),
            ..Sysctls::default()
        };
        assert_eq!(s("8080,40000-40010").reserved(40005), Some(true));
        assert_eq!(s("8080,40000-40010").reserved(8080), Some(true));
        assert_eq!(s("8080,40000-40010").reserved(40011), Some(false));
        assert_eq!(s("").reserved(40000), Some(false));
        assert_eq!(Sysctls::default().reserved(1), None);
        assert!(s("").in_ephemeral_range(32768));
        assert!(!s("").in_ephemeral_range(8080));
    }
}
