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

/// A socket the demo made in its own process.
pub struct Sock {
    pub fd: OwnedFd,
}

impl Sock {
    pub fn listen(&self) -> CallResult {
        raw_listen(self.fd.as_raw_fd())
    }
}

/// What opening a [`Spec`] did: the socket (when socket() worked), and the result of the
/// call that decided: bind, or listen when bind worked and the spec listens.
pub struct Opened {
    pub sock: Option<Sock>,
    pub call: Call,
    pub result: CallResult,
}

/// Makes `spec` in this process, in the calling thread's network namespace.
pub fn open(spec: &Spec) -> Opened {
    let raw = RawSpec::of(spec);
    let fd = match raw_socket(&raw) {
        Ok(fd) => fd,
        Err(e) => {
            return Opened {
                sock: None,
                call: Call::Bind,
                result: Err(e),
            };
        }
    };
    // SAFETY: fd was just returned by socket() and is owned by nothing else.
    let sock = Sock {
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
    };
    let mut call = Call::Bind;
    let mut result = raw_bind(fd, &raw);
    if result.is_ok() && spec.listen {
        call = Call::Listen;
        result = raw_listen(fd);
    }
    Opened {
        sock: Some(sock),
        call,
        result,
    }
}

/// A forked process holding one socket (and accepting connections on it, so that they are
/// established on its side) until it is killed.
pub struct Child {
    pub pid: i32,
    pub result: CallResult,
    pub call: Call,
}

impl Child {
    /// Forks a child that makes `spec` as `uid` (None: ours) and keeps it.
    pub fn spawn(spec: &Spec, uid: Option<u32>) -> io::Result<Child> {
        let raw = RawSpec::of(spec);
        let mut fds = [0; 2];
        // SAFETY: a pipe for the child's report.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (rd, wr) = (fds[0], fds[1]);
        // SAFETY: the child runs only raw syscalls on values prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = io::Error::last_os_error();
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
            return Err(e);
        }
        if pid == 0 {
            unsafe { libc::close(rd) };
            child_main(&raw, uid, wr);
        }
        unsafe { libc::close(wr) };
        // SAFETY: rd is ours.
        let rd = unsafe { OwnedFd::from_raw_fd(rd) };
        let mut report = [0u8; 5];
        let mut got = 0;
        while got < report.len() {
            let n = unsafe {
                libc::read(
                    rd.as_raw_fd(),
                    report[got..].as_mut_ptr() as *mut libc::c_void,
                    report.len() - got,
                )
            };
            if n < 0 && errno_now() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        let mut child = Child {
            pid,
            result: Err(libc::EIO),
            call: Call::Bind,
        };
        if got < report.len() {
            child.kill();
            return Err(io::Error::other("the holder process died before reporting"));
        }
        child.call = if report[0] == 1 {
            Call::Listen
        } else {
            Call::Bind
        };
        let e = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        child.result = if e == 0 { Ok(()) } else { Err(e) };
        Ok(child)
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
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child: become `uid`, make the socket, report (call, errno), then accept forever.
fn child_main(r: &RawSpec, uid: Option<u32>, report: RawFd) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The demo's signal handler is not for the child.
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    let send = |call: u8, e: i32| {
        let b = e.to_ne_bytes();
        let msg = [call, b[0], b[1], b[2], b[3]];
        unsafe { libc::write(report, msg.as_ptr() as *const libc::c_void, msg.len()) };
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
    unsafe { libc::close(report) };
    loop {
        if res.is_ok() && r.listen {
            // Accepted connections stay open until the process dies; the byte written tells
            // the client that the connection was accepted.
            let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
            if c >= 0 {
                unsafe { libc::write(c, b"x".as_ptr() as *const libc::c_void, 1) };
            }
        } else {
            unsafe { libc::pause() };
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

/// Accepts every connection already queued on a listening socket, without blocking.
pub fn accept_all(sock: &Sock) -> usize {
    let mut n = 0;
    loop {
        let mut pfd = libc::pollfd {
            fd: sock.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            return n;
        }
        let fd = unsafe {
            libc::accept4(
                sock.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return n;
        }
        unsafe { libc::close(fd) };
        n += 1;
    }
}
