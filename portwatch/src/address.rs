//! How portwatch writes an address and a port, the way a user types them. Its own module so
//! that the pure vocabularies ([`crate::sockets`], [`crate::docker_proxy`]) share one
//! definition without importing each other.

use std::net::IpAddr;

/// `0.0.0.0:8080`, `[::]:8080`: IPv6 in brackets, as `bind` addresses are written.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80), "[::]:80");
    }
}
