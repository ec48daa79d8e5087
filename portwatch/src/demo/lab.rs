//! The demo's laboratory: a scratch network namespace, the real sockets made in it, and the
//! child processes that hold sockets as another process or another user.
//!
//! Nothing here outlives the process by design: the namespace exists only through open file
//! handles (it has no name under /run/netns), so the kernel deletes it, and the TIME_WAIT
//! connections and sysctl values in it, once portwatch's handles and sockets are gone, even
//! if portwatch is killed. Children die with portwatch (PR_SET_PDEATHSIG) and are killed and
//! reaped at the end of each experiment.

use std::{
    fs::File,
    io, mem,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use crate::{errno, event::Call, sockets::Proto};

/// Set by SIGINT or SIGTERM: the demo stops after the call in progress and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM (without SA_RESTART, so a blocked read returns EINTR).
pub fn catch_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic.
        let mut sa: libc::sigaction = unsafe { mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as usize;
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The result of one socket call: Ok, or the errno.
pub type CallResult = Result<(), i32>;

pub fn result_name(r: CallResult) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => errno::name(e),
    }
}

/// One socket as an experiment describes it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// IPV6_V6ONLY as set explicitly; None leaves net.ipv6.bindv6only's default.
    pub v6only: Option<bool>,
    pub listen: bool,
}

impl Spec {
    pub fn tcp(addr: &str, port: u16) -> Self {
        Spec::new(Proto::Tcp, addr, port)
    }
    pub fn udp(addr: &str, port: u16) -> Self {
        Spec::new(Proto::Udp, addr, port)
    }
    fn new(proto: Proto, addr: &str, port: u16) -> Self {
        let ip: std::net::IpAddr = addr
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        Spec {
            proto,
            addr: SocketAddr::new(ip, port),
            reuseaddr: false,
            reuseport: false,
            v6only: None,
            listen: false,
        }
    }
    pub fn reuseaddr(mut self) -> Self {
        self.reuseaddr = true;
        self
    }
    pub fn reuseport(mut self) -> Self {
        self.reuseport = true;
        self
    }
    pub fn v6only(mut self, on: bool) -> Self {
        self.v6only = Some(on);
        self
    }
    pub fn listening(mut self) -> Self {
        self.listen = true;
        self
    }

    /// `TCP [::]:47104 IPV6_V6ONLY=0 SO_REUSEADDR, listening`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.proto.name(), self.addr);
        if let Some(v) = self.v6only {
            s.push_str(&format!(" IPV6_V6ONLY={}", u8::from(v)));
        }
        if self.reuseaddr {
            s.push_str(" SO_REUSEADDR");
        }
        if self.reuseport {
            s.push_str(" SO_REUSEPORT");
        }
        if self.listen {
            s.push_str(", listening");
        }
        s
    }
}

/// The raw form of a [`Spec`], computed before a fork so that the child allocates nothing.
#[derive(Clone, Copy)]
struct RawSpec {
    family: libc::c_int,
    ty: libc::c_int,
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    reuseaddr: bool,
    reuseport: bool,
    v6only: Option<bool>,
    listen: bool,
}

impl RawSpec {
    fn of(spec: &Spec) -> Self {
        let (storage, len) = sockaddr(spec.addr);
        RawSpec {
            family: if spec.addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            },
            ty: match spec.proto {
                Proto::Udp => libc::SOCK_DGRAM,
                _ => libc::SOCK_STREAM,
            },
            storage,
            len,
            reuseaddr: spec.reuseaddr,
            reuseport: spec.reuseport,
            v6only: spec.v6only,
            listen: spec.listen,
        }
    }
}

pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn errno_now() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn set_flag(fd: RawFd, level: libc::c_int, opt: libc::c_int, on: bool) -> CallResult {
    let v: libc::c_int = on.into();
    // SAFETY: a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(errno_now()) }
}

/// A socket with its options set, not yet bound. Only raw syscalls: a forked child runs it.
fn raw_socket(r: &RawSpec) -> Result<RawFd, i32> {
    // SAFETY: plain syscalls on values we own.
    let fd = unsafe { libc::socket(r.family, r.ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno_now());
    }
    let opts = (|| {
        if r.reuseaddr {
            set_flag(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, true)?;
        }
        if r.reuseport {
            set_flag(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, true)?;
        }
        if let Some(v) = r.v6only {
            set_flag(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v)?;
        }
        Ok(())
    })();
    match opts {
        Ok(()) => Ok(fd),
        Err(e) => {
            unsafe { libc::close(fd) };
            Err(e)
        }
    }
}

fn raw_bind(fd: RawFd, r: &RawSpec) -> CallResult {
    // SAFETY: storage holds a sockaddr of `len` bytes.
    let ret = unsafe { libc::bind(fd, &r.storage as *const _ as *const libc::sockaddr, r.len) };
    if ret == 0 { Ok(()) } else { Err(errno_now()) }
}

fn raw_listen(fd: RawFd) -> CallResult {
    if unsafe { libc::listen(fd, 128) } == 0 {
        Ok(())
    } else {
        Err(errno_now())
    }
}

/// A forked process that holds one socket, as a server of an experiment, until it is killed:
/// each server of a lesson about two programs is a program of its own, with a name of its own
/// (its comm, which portwatch's explanations name). It accepts connections on its socket once
/// it listens, and keeps them open, so that they are established on its side; it takes orders
/// (listen, count what you accepted) on a socket pair.
pub struct Child {
    pub pid: i32,
    pub result: CallResult,
    pub call: Call,
    /// The parent's end of the order channel.
    orders: Option<OwnedFd>,
}

/// Orders to a [`Child`]: one byte each, answered on the same channel.
const ORDER_LISTEN: u8 = b'L';
const ORDER_COUNT: u8 = b'N';
/// Connections a child keeps open at most (the demo makes 20).
const MAX_ACCEPTED: usize = 64;

impl Child {
    /// Forks a child named `name` (at most 15 bytes) that makes `spec` as `uid` (None: ours)
    /// and keeps it.
    pub fn spawn(spec: &Spec, uid: Option<u32>, name: &str) -> io::Result<Child> {
        let raw = RawSpec::of(spec);
        let mut comm = [0u8; 16];
        for (d, s) in comm.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let mut fds = [0; 2];
        // SAFETY: a socket pair for the child's reports and the parent's orders.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both ends are ours.
        let (parent, child) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child runs only raw syscalls on values prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            unsafe { libc::close(parent.as_raw_fd()) };
            child_main(&raw, uid, &comm, child.as_raw_fd());
        }
        drop(child);
        let mut c = Child {
            pid,
            result: Err(libc::EIO),
            call: Call::Bind,
            orders: Some(parent),
        };
        let Some((call, e)) = c.report() else {
            c.kill();
            return Err(io::Error::other("the server process died before reporting"));
        };
        c.call = if call == 1 { Call::Listen } else { Call::Bind };
        c.result = if e == 0 { Ok(()) } else { Err(e) };
        Ok(c)
    }

    /// Reads the child's 5-byte answer: (call, errno); None when it died.
    fn report(&self) -> Option<(u8, i32)> {
        let fd = self.orders.as_ref()?.as_raw_fd();
        let mut b = [0u8; 5];
        read_full(fd, &mut b).then(|| (b[0], i32::from_ne_bytes([b[1], b[2], b[3], b[4]])))
    }

    fn order(&self, what: u8) -> Option<(u8, i32)> {
        let fd = self.orders.as_ref()?.as_raw_fd();
        // SAFETY: one byte from a live buffer.
        if unsafe { libc::write(fd, (&raw const what).cast(), 1) } != 1 {
            return None;
        }
        self.report()
    }

    /// Has the child listen() on its socket; the call's result.
    pub fn listen(&self) -> CallResult {
        match self.order(ORDER_LISTEN) {
            Some((_, 0)) => Ok(()),
            Some((_, e)) => Err(e),
            None => Err(libc::EIO),
        }
    }

    /// How many connections the child accepted so far (after accepting what is queued).
    pub fn accepted(&self) -> Option<u32> {
        self.order(ORDER_COUNT).map(|(_, n)| n as u32)
    }

    /// Kills the child and reaps it: its sockets are closed when this returns.
    pub fn kill(&mut self) {
        if self.pid > 0 {
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            self.pid = 0;
        }
        self.orders = None;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads exactly `buf.len()` bytes (false: end of file or an error other than EINTR).
fn read_full(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the rest of a live buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && errno_now() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// The child: take its name, become `uid`, make the socket, report (call, errno), then serve
/// orders and accept connections until it is killed or the parent goes.
fn child_main(r: &RawSpec, uid: Option<u32>, comm: &[u8; 16], orders: RawFd) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The tracer's programs, links and maps are not the server's to keep: a child that
        // held them would keep them loaded after portwatch exits, until it is reaped.
        let order_fd = orders as libc::c_uint;
        if order_fd > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, order_fd - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, order_fd + 1, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
        // The demo's signal handler is not for the child.
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    let send = |call: u8, e: i32| {
        let b = e.to_ne_bytes();
        let msg = [call, b[0], b[1], b[2], b[3]];
        unsafe { libc::write(orders, msg.as_ptr() as *const libc::c_void, msg.len()) };
    };
    if let Some(u) = uid
        && unsafe { libc::setresgid(u, u, u) != 0 || libc::setresuid(u, u, u) != 0 }
    {
        send(0, errno_now());
        unsafe { libc::_exit(1) };
    }
    let fd = match raw_socket(r) {
        Ok(fd) => fd,
        Err(e) => {
            send(0, e);
            unsafe { libc::_exit(1) };
        }
    };
    let mut call = 0u8;
    let mut res = raw_bind(fd, r);
    if res.is_ok() && r.listen {
        call = 1;
        res = raw_listen(fd);
    }
    send(call, res.err().unwrap_or(0));
    let mut listening = res.is_ok() && r.listen;
    // Accepted connections stay open until the process dies; the byte written tells the
    // client that the connection was accepted.
    let mut accepted = [-1i32; MAX_ACCEPTED];
    let mut count = 0u32;
    let accept_one = |accepted: &mut [i32; MAX_ACCEPTED], count: &mut u32| -> bool {
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK,
            )
        };
        if c < 0 {
            return false;
        }
        unsafe { libc::write(c, b"x".as_ptr() as *const libc::c_void, 1) };
        match accepted.get_mut(*count as usize) {
            Some(slot) => *slot = c,
            None => unsafe {
                libc::close(c);
            },
        }
        *count += 1;
        true
    };
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: orders,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if listening { 2 } else { 1 };
        if unsafe { libc::poll(pfds.as_mut_ptr(), n, -1) } < 0 {
            continue;
        }
        if listening && pfds[1].revents & libc::POLLIN != 0 {
            accept_one(&mut accepted, &mut count);
        }
        if pfds[0].revents != 0 {
            let mut order = 0u8;
            if unsafe { libc::read(orders, (&raw mut order).cast(), 1) } != 1 {
                unsafe { libc::_exit(0) };
            }
            match order {
                ORDER_LISTEN => {
                    let res = raw_listen(fd);
                    listening |= res.is_ok();
                    send(1, res.err().unwrap_or(0));
                }
                ORDER_COUNT => {
                    if listening {
                        let mut pfd = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        while unsafe { libc::poll(&mut pfd, 1, 0) } > 0
                            && accept_one(&mut accepted, &mut count)
                        {}
                    }
                    send(0, count as i32);
                }
                _ => send(0, libc::EINVAL),
            }
        }
    }
}

/// A network namespace made by the demo, alive while this handle (and any socket in it) is.
pub struct Scratch {
    /// Keeps the namespace alive; dropping it (with its sockets closed) deletes it.
    _handle: File,
    pub inode: u32,
}

/// Moves the calling thread into a new network namespace with `lo` up.
pub fn new_netns() -> io::Result<Scratch> {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let handle = File::open("/proc/thread-self/ns/net")?;
    lo_up()?;
    Ok(Scratch {
        inode: crate::netns::current(),
        _handle: handle,
    })
}

/// Moves the calling thread into the namespace behind `handle`.
pub fn enter(handle: &File) -> io::Result<()> {
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the loopback interface up: 127.0.0.0/8 and ::1 become local.
fn lo_up() -> io::Result<()> {
    // SAFETY: a throwaway socket for the interface ioctls, and a zeroed ifreq.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv6/bindv6only`).
pub fn set_sysctl(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{name}"), value)
}

pub fn read_sysctl(name: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{name}"))?
        .trim()
        .to_string())
}

/// Connects a TCP client to `addr` (blocking), in this thread's namespace.
pub fn connect(addr: SocketAddr) -> Result<OwnedFd, i32> {
    let raw = RawSpec::of(&Spec {
        proto: Proto::Tcp,
        addr,
        reuseaddr: false,
        reuseport: false,
        v6only: None,
        listen: false,
    });
    let fd = raw_socket(&raw)?;
    // SAFETY: fd was just returned by socket().
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let r = unsafe {
        libc::connect(
            fd,
            &raw.storage as *const _ as *const libc::sockaddr,
            raw.len,
        )
    };
    if r != 0 {
        return Err(errno_now());
    }
    Ok(owned)
}

/// Reads from `fd` until `want` bytes came or the peer closed it (true), or `ms` ms passed
/// without data (false). `want` 0: read until end of file.
pub fn read_until(fd: &OwnedFd, want: usize, ms: i32) -> bool {
    let mut got = 0;
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return false;
        }
        let mut b = [0u8; 16];
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, b.len()) };
        if n <= 0 {
            return n == 0;
        }
        got += n as usize;
        if want > 0 && got >= want {
            return true;
        }
    }
}
