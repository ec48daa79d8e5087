//! Sockets as scenarios describe them: protocol, address, port and the options that decide
//! whether two sockets may share a port.
//!
//! A [`SockSpec`] is plain data (serde), so the runner and its holder processes create sockets
//! from the same description with the same code.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{fs::MetadataExt, net::UnixDatagram},
    },
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// As portwatch's JSON names it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Options set before bind. `None`/`false` leaves the kernel default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Opts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// IPV6_V6ONLY; only for IPv6 sockets. `None` keeps the default (net.ipv6.bindv6only).
    pub v6only: Option<bool>,
    pub freebind: bool,
    pub transparent: bool,
    pub bind_address_no_port: bool,
    /// SO_BINDTODEVICE interface name.
    pub bind_device: Option<String>,
}

/// One socket to create and bind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockSpec {
    pub proto: Proto,
    /// Where to bind; its family is the socket's family.
    pub addr: SocketAddr,
    #[serde(default)]
    pub opts: Opts,
    /// listen() after a successful bind (TCP).
    #[serde(default)]
    pub listen: bool,
}

impl SockSpec {
    /// `SockSpec::tcp("127.0.0.1:8080")`; panics on a malformed literal (test code).
    pub fn tcp(addr: &str) -> Self {
        Self::new(Proto::Tcp, addr)
    }

    pub fn udp(addr: &str) -> Self {
        Self::new(Proto::Udp, addr)
    }

    fn new(proto: Proto, addr: &str) -> Self {
        SockSpec {
            proto,
            addr: addr
                .parse()
                .unwrap_or_else(|e| panic!("bad socket address {addr:?}: {e}")),
            opts: Opts::default(),
            listen: false,
        }
    }

    pub fn with(mut self, f: impl FnOnce(&mut Opts)) -> Self {
        f(&mut self.opts);
        self
    }

    pub fn listening(mut self) -> Self {
        self.listen = true;
        self
    }

    pub fn ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

/// An open socket created from a spec.
pub struct Sock {
    pub socket: Socket,
    pub spec: SockSpec,
}

impl Sock {
    /// socket() plus every option in the spec; no bind yet.
    pub fn open(spec: &SockSpec) -> io::Result<Sock> {
        let domain = if spec.ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let (ty, proto) = match spec.proto {
            Proto::Tcp => (Type::STREAM, Protocol::TCP),
            Proto::Udp => (Type::DGRAM, Protocol::UDP),
        };
        let socket = Socket::new(domain, ty, Some(proto))?;
        let o = &spec.opts;
        if o.reuseaddr {
            socket.set_reuse_address(true)?;
        }
        if o.reuseport {
            socket.set_reuse_port(true)?;
        }
        if let Some(v) = o.v6only {
            socket.set_only_v6(v)?;
        }
        if o.freebind {
            if spec.ipv6() {
                socket.set_freebind_v6(true)?;
            } else {
                socket.set_freebind_v4(true)?;
            }
        }
        if o.transparent {
            if spec.ipv6() {
                socket.set_ip_transparent_v6(true)?;
            } else {
                socket.set_ip_transparent_v4(true)?;
            }
        }
        if o.bind_address_no_port {
            set_int_opt(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        }
        if let Some(dev) = &o.bind_device {
            socket.bind_device(Some(dev.as_bytes()))?;
        }
        Ok(Sock {
            socket,
            spec: spec.clone(),
        })
    }

    /// bind() to the spec's address.
    pub fn bind(&self) -> io::Result<()> {
        self.bind_to(self.spec.addr)
    }

    pub fn bind_to(&self, addr: SocketAddr) -> io::Result<()> {
        self.socket.bind(&SockAddr::from(addr))
    }

    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        self.socket.listen(backlog)
    }

    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.socket.connect(&SockAddr::from(addr))
    }

    /// getsockname(): what the kernel actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The socket's inode, which portwatch reports as `sock_ino`.
    pub fn ino(&self) -> io::Result<u64> {
        // stat() follows the fd's magic link to the socket inode ("socket:[ino]").
        Ok(std::fs::metadata(format!("/proc/self/fd/{}", self.fd()))?.ino())
    }
}

/// Opens, binds and (if the spec says so) listens: the common case in one call. Returns the
/// socket even when bind fails, with the error, so a scenario can assert on both.
pub fn open_and_bind(spec: &SockSpec) -> io::Result<(Sock, io::Result<()>)> {
    let s = Sock::open(spec)?;
    let mut r = s.bind();
    if r.is_ok() && spec.listen {
        r = s.listen(128);
    }
    Ok((s, r))
}

/// What an errno means, for messages: "success" for 0, else the system's text.
pub fn errno_text(errno: i32) -> String {
    if errno == 0 {
        "success".into()
    } else {
        io::Error::from_raw_os_error(errno).to_string()
    }
}

/// Set-up check: a bind of `spec` that had to fail with `want` returned `got`.
pub fn expect_errno(spec: &SockSpec, got: i32, want: i32) -> anyhow::Result<()> {
    anyhow::ensure!(
        got == want,
        "set-up: {} bind to {} should fail with {}, got {}",
        spec.proto.name(),
        spec.addr,
        errno_text(want),
        errno_text(got)
    );
    Ok(())
}

/// errno of an I/O result (0 on success), for messages and comparisons.
pub fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn set_int_opt(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the fd is open; the value pointer and length describe one c_int.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `127.0.0.1:8080` → `("127.0.0.1", 8080)`, the shape of portwatch's address objects.
pub fn addr_parts(a: SocketAddr) -> (String, u16) {
    let ip: IpAddr = a.ip();
    (ip.to_string(), a.port())
}

/// A socket whose only reference is an SCM_RIGHTS message nobody received: sent from one end
/// of a unix socket pair to the other and then closed by its sender. The socket stays open
/// (and bound) as long as this value keeps the pair; no process has it in its fd table.
pub struct InFlight {
    _pair: (UnixDatagram, UnixDatagram),
}

impl InFlight {
    /// Sends `s` in flight and closes this process's fd for it.
    pub fn send(s: Sock) -> io::Result<InFlight> {
        let (tx, rx) = UnixDatagram::pair()?;
        let fd: RawFd = s.fd();
        let mut data = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, room for one header with one fd, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the fd.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
        // SAFETY: a valid socket and a msghdr whose pointers live until the call returns.
        if unsafe { libc::sendmsg(tx.as_raw_fd(), &msg, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(s);
        Ok(InFlight { _pair: (tx, rx) })
    }
}
