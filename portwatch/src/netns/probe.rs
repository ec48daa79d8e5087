//! What the kernel of one network namespace takes as a local address: its interfaces'
//! addresses (`getifaddrs`), and a probe bind that runs bind()'s own address check. Both run
//! on a thread inside the namespace ([`Namespaces::run_in`]).

use std::net::IpAddr;

use super::Namespaces;

/// Whether the kernel of namespace `netns` takes `addr` as a local address: a bind to port 0
/// with IP_BIND_ADDRESS_NO_PORT, which runs bind()'s own address check and takes no port.
pub fn address_is_local(
    ns: &mut Namespaces,
    netns: u32,
    addr: IpAddr,
    scope_id: u32,
) -> Option<bool> {
    ns.run_in(netns, move || {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                raw,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let rc = match addr {
            IpAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr = u32::from(a).to_be();
                unsafe { libc::bind(raw, (&raw const sin).cast(), size_of_val(&sin) as u32) }
            }
            IpAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_addr.s6_addr = a.octets();
                // A link-local address is local to one interface: without it the kernel
                // answers EINVAL, which says nothing about the address.
                sin6.sin6_scope_id = scope_id;
                unsafe { libc::bind(raw, (&raw const sin6).cast(), size_of_val(&sin6) as u32) }
            }
        };
        let err = std::io::Error::last_os_error().raw_os_error();
        Some(rc == 0 || err != Some(libc::EADDRNOTAVAIL))
    })
    .flatten()
}

/// Addresses of the interfaces in the namespace this thread is in.
pub fn local_addrs() -> Option<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a list getifaddrs built; freed below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}
