//! Looking at another process's socket directly: duplicate its fd with pidfd_getfd(2) (Linux
//! 5.6+, needs ptrace rights over the process) and ask the socket with getsockname and
//! getsockopt.
//!
//! This is how portwatch finds TCP sockets that are bound but not listening. They sit only in
//! the kernel's bind hash, which no iterator walks and which ss (before 6.8) and lsof don't
//! show, yet they hold the port as firmly as a listener. The answers come from the kernel, for
//! the exact socket, on any kernel version.

use std::{
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::sockets::{Family, Options, Proto, SocketView, State};

const SO_BINDTOIFINDEX: libc::c_int = 62;
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// What one socket fd is, as far as holding ports goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inspected {
    /// Not an IPv4/IPv6 TCP or UDP socket: never relevant (and never will be).
    Irrelevant,
    /// An inet socket with no local port yet. It may bind later.
    Unbound {
        netns: u32,
    },
    Bound(SocketView),
}

/// Duplicates fd `fd` of process `pid` and inspects it. None when that is not possible (the
/// process or fd is gone, or ptrace rights are missing).
pub fn inspect(pid: u32, fd: i32) -> Option<Inspected> {
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: a new fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: as above.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    Some(inspect_fd(dup.as_raw_fd()))
}

fn int_opt(fd: i32, level: libc::c_int, name: libc::c_int) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
    (rc == 0).then_some(v)
}

fn netns_of(fd: i32) -> u32 {
    let ns = unsafe { libc::ioctl(fd, SIOCGSKNS as _) };
    if ns < 0 {
        return 0;
    }
    // SAFETY: ioctl returned a new fd.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    let mut st: libc::stat = unsafe { zeroed() };
    if unsafe { libc::fstat(ns.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    st.st_ino as u32
}

fn inspect_fd(fd: i32) -> Inspected {
    let Some(domain) = int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) else {
        return Inspected::Irrelevant;
    };
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Inspected::Irrelevant;
    }
    let protocol = int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let sock_type = int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(0);
    let proto = Proto::from_raw(protocol as u16, sock_type as u16);
    if !matches!(
        proto,
        Proto::Tcp | Proto::Udp | Proto::UdpLite | Proto::Mptcp
    ) {
        return Inspected::Irrelevant;
    }
    let netns = netns_of(fd);
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, (&raw mut ss).cast(), &mut len) } != 0 {
        return Inspected::Unbound { netns };
    }
    let (addr, port) = match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const ss).cast()) };
            (
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            )
        }
        _ => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const ss).cast()) };
            (
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            )
        }
    };
    if port == 0 {
        return Inspected::Unbound { netns };
    }
    let family = if domain == libc::AF_INET6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    let on = |level, name| int_opt(fd, level, name).is_some_and(|v| v != 0);
    let (ip_level, freebind, transparent) = if family == Family::Ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            libc::IPV6_TRANSPARENT,
        )
    } else {
        (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_TRANSPARENT)
    };
    let reuse = int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0);
    let options = Options {
        reuseaddr: reuse != 0,
        reuse_raw: u8::from(reuse != 0),
        reuseport: on(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        v6only: family == Family::Ipv6 && on(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        freebind: on(ip_level, freebind) || on(libc::IPPROTO_IP, libc::IP_FREEBIND),
        transparent: on(ip_level, transparent),
        bind_address_no_port: on(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT),
        bound_dev_if: int_opt(fd, libc::SOL_SOCKET, SO_BINDTOIFINDEX).unwrap_or(0) as u32,
        device: None,
    };
    let state = if proto == Proto::Tcp {
        tcp_state(fd).unwrap_or(State::CLOSE)
    } else {
        State::CLOSE
    };
    let mut st: libc::stat = unsafe { zeroed() };
    let (uid, ino) = if unsafe { libc::fstat(fd, &mut st) } == 0 {
        (Some(st.st_uid), st.st_ino)
    } else {
        (None, 0)
    };
    Inspected::Bound(SocketView {
        family,
        proto,
        addr,
        port,
        state,
        options,
        uid,
        netns,
        ino,
        peer: None,
        tw_left_ms: None,
    })
}

/// `tcpi_state`, the first byte of struct tcp_info.
fn tcp_state(fd: i32) -> Option<State> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len > 0).then(|| State(info[0]))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// A TCP socket that is bound but not listening, inspected through our own pid: the kind
    /// of holder ss and lsof miss.
    #[test]
    fn sees_a_bound_only_tcp_socket() {
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(sock >= 0);
        let owned = unsafe { OwnedFd::from_raw_fd(sock) };
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let mut sin: libc::sockaddr_in = unsafe { zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let rc = unsafe {
            libc::bind(
                sock,
                (&raw const sin).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(rc, 0);
        let Some(Inspected::Bound(v)) = inspect(std::process::id(), owned.as_raw_fd()) else {
            panic!("not seen as bound");
        };
        assert_eq!(v.proto, Proto::Tcp);
        assert_eq!(v.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(v.port, 0);
        assert_eq!(v.state, State::CLOSE);
        assert!(v.options.reuseaddr);
        assert_ne!(v.netns, 0);
    }
}
