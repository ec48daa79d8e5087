//! Reading kernel memory through the field table user space resolved from BTF.

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task, bpf_probe_read_kernel as probe_read_raw},
    },
    programs::{FExitContext, TracePointContext},
};
use portwatch_common::{AF_INET6, Field, KernelLayout, opt};

/// Where the fields live in the running kernel. Written by user space before load; zero here.
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = unsafe { core::mem::zeroed() };

const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// Reads a load-time constant. The volatile read stops rustc from folding the placeholder value
/// in; the verifier still sees the real one, since aya freezes .rodata.
#[inline(always)]
pub fn global<T: Copy>(v: &'static T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn probe_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
pub fn probe_user<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// `size` (at most 8) bytes at `addr` as a little-endian number, 0 where unreadable.
///
/// The helper zeroes the buffer when the read faults, so its result needs no branch: every
/// branch here would multiply the states the verifier walks (an earlier version with one
/// per read took 270 ms to load on a fast machine).
#[inline(always)]
pub fn read_bytes(addr: u64, size: u32) -> u64 {
    let mut buf = [0u8; 8];
    unsafe {
        probe_read_raw(
            buf.as_mut_ptr().cast::<c_void>(),
            size & 0xf,
            addr as *const c_void,
        )
    };
    u64::from_le_bytes(buf)
}

/// 16 bytes (an IPv6 address) at `addr`, zeros where unreadable.
#[inline(always)]
pub fn read_16(addr: u64) -> [u8; 16] {
    let mut buf = [0u8; 16];
    unsafe { probe_read_raw(buf.as_mut_ptr().cast::<c_void>(), 16, addr as *const c_void) };
    buf
}

/// A pointer-sized value at `addr`, 0 where unreadable.
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    read_bytes(addr, 8)
}

/// A field of the struct at `base`, or 0 when it cannot be read or this kernel lacks it.
#[inline(always)]
pub fn read_field(base: u64, field: &'static Field) -> u64 {
    let f = global(field);
    if f.size == 0 || f.size > 8 || base == 0 {
        return 0;
    }
    let v = read_bytes(base + u64::from(f.offset), u32::from(f.size));
    if f.bits == 0 {
        v
    } else {
        (v >> f.shift) & ((1u64 << f.bits) - 1)
    }
}

/// A syscall tracepoint field at `offset` (offsets come from tracefs' format files).
#[inline(always)]
pub fn tp_arg(ctx: &TracePointContext, offset: u32) -> u64 {
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

/// Argument `n` of an fexit program (the return value follows the arguments). Read as a plain
/// number, so that the verifier lets us add offsets to it.
#[inline(always)]
pub fn fexit_arg(ctx: &FExitContext, n: u64) -> u64 {
    read_u64(ctx.as_ptr() as u64 + n * 8)
}

/// `current->files->fdt->fd[fd]->private_data`: the `struct socket *` behind an fd, or 0.
#[inline(always)]
pub fn socket_of_fd(fd: i64) -> u64 {
    if fd < 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let files = read_field(task, &LAYOUT.task_files);
    let fdt = read_field(files, &LAYOUT.files_fdt);
    if fd as u64 >= read_field(fdt, &LAYOUT.fdt_max_fds) {
        return 0;
    }
    let fds = read_field(fdt, &LAYOUT.fdt_fd);
    if fds == 0 {
        return 0;
    }
    let file = read_u64(fds + (fd as u64) * 8);
    read_field(file, &LAYOUT.file_private_data)
}

/// A `struct sock *`, and the `struct socket *` that owns it when known.
pub struct Sock {
    sk: u64,
    socket: u64,
}

impl Sock {
    #[inline(always)]
    pub fn from_socket(socket: u64) -> Option<Sock> {
        if socket == 0 {
            return None;
        }
        let sk = read_field(socket, &LAYOUT.socket_sk);
        if sk == 0 {
            return None;
        }
        Some(Sock { sk, socket })
    }

    /// A sock reached without its socket (the other side of a conflict). It may be a
    /// TIME_WAIT socket, which has only `sock_common`: check [`Sock::is_full`] before reading
    /// anything past it.
    #[inline(always)]
    pub fn from_sk(sk: u64) -> Sock {
        Sock { sk, socket: 0 }
    }

    #[inline(always)]
    pub fn family(&self) -> u16 {
        read_field(self.sk, &LAYOUT.sk_family) as u16
    }

    #[inline(always)]
    pub fn state(&self) -> u8 {
        read_field(self.sk, &LAYOUT.sk_state) as u8
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        let s = self.state();
        s != TCP_TIME_WAIT && s != TCP_NEW_SYN_RECV
    }

    #[inline(always)]
    pub fn num(&self) -> u16 {
        read_field(self.sk, &LAYOUT.sk_num) as u16
    }

    #[inline(always)]
    pub fn reuse(&self) -> u8 {
        read_field(self.sk, &LAYOUT.sk_reuse) as u8
    }

    #[inline(always)]
    pub fn bound_dev_if(&self) -> u32 {
        read_field(self.sk, &LAYOUT.sk_bound_dev_if) as u32
    }

    #[inline(always)]
    pub fn protocol(&self) -> u16 {
        read_field(self.sk, &LAYOUT.sk_protocol) as u16
    }

    #[inline(always)]
    pub fn sock_type(&self) -> u16 {
        read_field(self.sk, &LAYOUT.sk_type) as u16
    }

    #[inline(always)]
    pub fn uid(&self) -> u32 {
        read_field(self.sk, &LAYOUT.sk_uid) as u32
    }

    #[inline(always)]
    pub fn netns(&self) -> u32 {
        let net = read_field(self.sk, &LAYOUT.sk_net);
        read_field(net, &LAYOUT.net_inum) as u32
    }

    /// Inode of the socket (what /proc/PID/fd links name), 0 when orphaned.
    #[inline(always)]
    pub fn ino(&self) -> u64 {
        let socket = if self.socket != 0 {
            self.socket
        } else {
            read_field(self.sk, &LAYOUT.sk_socket)
        };
        let file = read_field(socket, &LAYOUT.socket_file);
        let inode = read_field(file, &LAYOUT.file_inode);
        read_field(inode, &LAYOUT.inode_ino)
    }

    /// The bound local address: 4 bytes for IPv4, 16 for IPv6, in network order.
    #[inline(always)]
    pub fn rcv_saddr(&self, family: u16) -> [u8; 16] {
        let mut out = [0u8; 16];
        if family == AF_INET6 {
            let f = global(&LAYOUT.sk_v6_rcv_saddr);
            if f.size != 0 {
                out = read_16(self.sk + u64::from(f.offset));
            }
        } else {
            let v = read_field(self.sk, &LAYOUT.sk_rcv_saddr) as u32;
            let b = v.to_ne_bytes();
            out[0] = b[0];
            out[1] = b[1];
            out[2] = b[2];
            out[3] = b[3];
        }
        out
    }

    /// Options that live in `sock_common`, so they can be read on TIME_WAIT sockets too.
    #[inline(always)]
    pub fn common_options(&self) -> u16 {
        let mut o = 0;
        if self.reuse() != 0 {
            o |= opt::REUSEADDR;
        }
        if read_field(self.sk, &LAYOUT.sk_reuseport) != 0 {
            o |= opt::REUSEPORT;
        }
        if read_field(self.sk, &LAYOUT.sk_ipv6only) != 0 {
            o |= opt::V6ONLY;
        }
        o
    }

    /// All options; only for full sockets (see [`Sock::is_full`]).
    #[inline(always)]
    pub fn options(&self) -> u16 {
        let mut o = self.common_options();
        if read_field(self.sk, &LAYOUT.inet_freebind) != 0 {
            o |= opt::FREEBIND;
        }
        if read_field(self.sk, &LAYOUT.inet_transparent) != 0 {
            o |= opt::TRANSPARENT;
        }
        if read_field(self.sk, &LAYOUT.inet_bind_address_no_port) != 0 {
            o |= opt::BIND_ADDRESS_NO_PORT;
        }
        o
    }

    /// When a TIME_WAIT socket expires, in jiffies.
    #[inline(always)]
    pub fn tw_expires(&self) -> u64 {
        read_field(self.sk, &LAYOUT.tw_timer_expires)
    }

    /// The peer address, for connected sockets.
    #[inline(always)]
    pub fn daddr(&self, family: u16) -> [u8; 16] {
        let mut out = [0u8; 16];
        if family == AF_INET6 {
            let f = global(&LAYOUT.sk_v6_daddr);
            if f.size != 0 {
                out = read_16(self.sk + u64::from(f.offset));
            }
        } else {
            let b = (read_field(self.sk, &LAYOUT.sk_daddr) as u32).to_ne_bytes();
            out[0] = b[0];
            out[1] = b[1];
            out[2] = b[2];
            out[3] = b[3];
        }
        out
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        u16::from_be(read_field(self.sk, &LAYOUT.sk_dport) as u16)
    }
}
