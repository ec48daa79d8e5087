//! bind(), listen() and connect() through io_uring (`IORING_OP_BIND`, `IORING_OP_LISTEN`, Linux
//! 6.11+; `IORING_OP_CONNECT`, 5.5+), with the raw system calls: no bind, listen or connect
//! system call is made, which is the point.
//! One ring per call (setup, the three mmaps, one SQE, `io_uring_enter` waiting for its
//! CQE), small enough to read: it runs in the holder processes, in the VMs too.

use std::{io, net::SocketAddr, os::fd::RawFd, ptr};

use socket2::SockAddr;

const IORING_OP_CONNECT: u8 = 16;
const IORING_OP_BIND: u8 = 56;
const IORING_OP_LISTEN: u8 = 57;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;

/// `struct io_sqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_cqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params`.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// `struct io_uring_sqe`, the fields bind, listen and connect use.
#[repr(C)]
#[derive(Default)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    /// `off` / `addr2`: the address length for BIND and CONNECT.
    off: u64,
    addr: u64,
    /// The backlog for LISTEN.
    len: u32,
    op_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    addr3: u64,
    pad: u64,
}

/// `struct io_uring_cqe`.
#[repr(C)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

/// A mapping, unmapped on drop.
struct Map(*mut u8, usize);

impl Map {
    fn new(fd: RawFd, len: usize, offset: i64) -> io::Result<Map> {
        // SAFETY: a shared mapping of the ring fd, at an offset the kernel defines.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map(p.cast(), len))
    }
    fn at<T>(&self, off: u32) -> *mut T {
        // SAFETY: offsets come from the kernel's io_uring_params, inside the mapping.
        unsafe { self.0.add(off as usize).cast() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// A completion's result as the system call's would be: 0, or the errno.
fn completed(res: i32) -> io::Result<()> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(())
    }
}

/// Submits one SQE on a new ring and waits for its completion: the call's result (0 or
/// -errno), as the kernel completed it.
fn submit_one(sqe: Sqe) -> io::Result<i32> {
    let mut p = Params::default();
    // SAFETY: io_uring_setup(entries, params) fills `p`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &raw mut p) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = fd as RawFd;
    let result = (|| {
        let sq = Map::new(
            fd,
            p.sq_off.array as usize + p.sq_entries as usize * 4,
            IORING_OFF_SQ_RING,
        )?;
        let cq = Map::new(
            fd,
            p.cq_off.cqes as usize + p.cq_entries as usize * size_of::<Cqe>(),
            IORING_OFF_CQ_RING,
        )?;
        let sqes = Map::new(
            fd,
            p.sq_entries as usize * size_of::<Sqe>(),
            IORING_OFF_SQES,
        )?;
        // SAFETY: the ring's fields at the kernel's offsets; the kernel reads the SQ tail
        // (written last, with release ordering) only after the entry and the array slot.
        unsafe {
            let tail = sq.at::<u32>(p.sq_off.tail);
            let mask = *sq.at::<u32>(p.sq_off.ring_mask);
            let t = ptr::read_volatile(tail);
            let idx = t & mask;
            ptr::write(sqes.at::<Sqe>(idx * size_of::<Sqe>() as u32), sqe);
            ptr::write_volatile(sq.at::<u32>(p.sq_off.array + idx * 4), idx);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            ptr::write_volatile(tail, t.wrapping_add(1));
        }
        // SAFETY: io_uring_enter(fd, to_submit, min_complete, flags, sig, sigsz).
        let n = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                1u32,
                1u32,
                IORING_ENTER_GETEVENTS,
                ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: the CQ head and tail, and the entry at the head.
        unsafe {
            let head = cq.at::<u32>(p.cq_off.head);
            let h = ptr::read_volatile(head);
            if ptr::read_volatile(cq.at::<u32>(p.cq_off.tail)) == h {
                return Err(io::Error::other("io_uring: no completion"));
            }
            let mask = *cq.at::<u32>(p.cq_off.ring_mask);
            let cqe = ptr::read(cq.at::<Cqe>(p.cq_off.cqes + (h & mask) * size_of::<Cqe>() as u32));
            ptr::write_volatile(head, h.wrapping_add(1));
            Ok(cqe.res)
        }
    })();
    // SAFETY: our ring fd.
    unsafe { libc::close(fd) };
    result
}

/// bind(fd, addr) as IORING_OP_BIND: Ok, or the errno the kernel completed it with (EINVAL
/// on kernels before 6.11, which do not know the operation).
pub fn bind(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    with_address(IORING_OP_BIND, fd, addr)
}

/// connect(fd, addr) as IORING_OP_CONNECT: Ok, or the errno the kernel completed it with.
/// The kernel first tries it without blocking, so a refusal about the local port
/// (EADDRNOTAVAIL) completes at once, in the submitting task.
pub fn connect(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    with_address(IORING_OP_CONNECT, fd, addr)
}

/// One operation on `fd` that takes a socket address (bind, connect), as the kernel reads it
/// from the SQE: the sockaddr's address and length.
fn with_address(opcode: u8, fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let sa = SockAddr::from(addr);
    let res = submit_one(Sqe {
        opcode,
        fd,
        addr: sa.as_ptr() as u64,
        off: u64::from(sa.len()),
        ..Sqe::default()
    })?;
    completed(res)
}

/// listen(fd, backlog) as IORING_OP_LISTEN.
pub fn listen(fd: RawFd, backlog: u32) -> io::Result<()> {
    let res = submit_one(Sqe {
        opcode: IORING_OP_LISTEN,
        fd,
        len: backlog,
        ..Sqe::default()
    })?;
    completed(res)
}
