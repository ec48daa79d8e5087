//! Reading kernel memory through the field table user space resolved from BTF.

use core::{arch::asm, mem::MaybeUninit};

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_kernel as probe_read_raw, bpf_task_pt_regs,
        },
    },
    maps::Array,
    programs::{FExitContext, TracePointContext},
};
use portwatch_common::{AF_INET6, Field, KernelLayout, opt, port_bits, tcp_state};

/// Where the fields live in the running kernel. Written by user space before load; zero here.
#[unsafe(no_mangle)]
pub static LAYOUT: KernelLayout = unsafe { core::mem::zeroed() };

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

/// Whether `port`'s bit is set in a port bitmap (bit `port % 64` of word `port / 64`, as
/// [`portwatch_common::PORT_WORDS`] words). An array lookup is inlined by the verifier: a few
/// instructions, not a hash probe.
#[inline(always)]
pub fn port_bit(bits: &Array<u64>, port: u16) -> bool {
    bits.get(port_bits::word(port))
        .is_some_and(|w| w & port_bits::bit(port) != 0)
}

/// A pointer-sized value at `addr`, 0 where unreadable.
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    read_bytes(addr, 8)
}

/// A field of the struct at `base`, or 0 when it cannot be read or this kernel lacks it.
#[inline(always)]
pub fn read_field(base: u64, field: &'static Field) -> u64 {
    read_value(base, global(field))
}

/// [`read_field`] for a field already read from LAYOUT (or built from one).
#[inline(always)]
fn read_value(base: u64, f: Field) -> u64 {
    if f.size == 0 || f.size > 8 || base == 0 {
        return 0;
    }
    unpack(read_bytes(base + u64::from(f.offset), u32::from(f.size)), f)
}

/// Shifts and masks a bitfield out of the bytes that hold it; plain fields pass through.
#[inline(always)]
fn unpack(v: u64, f: Field) -> u64 {
    if f.bits == 0 {
        v
    } else {
        (v >> f.shift) & ((1u64 << f.bits) - 1)
    }
}

/// `(WORDS - 1) * 8` bytes of a struct, fetched with one helper call, for fields that sit
/// close together.
///
/// Why: each bpf_probe_read_kernel is a helper call through the kernel's fault-tolerant copy
/// (about 5 ns on this host with the memory hot, measured with bpftrace; far more under TCG),
/// and an event reads a dozen fields of `sock_common` alone. Offsets come from LAYOUT, which
/// the verifier sees as constants (frozen .rodata), so the word a field sits in is a fixed
/// stack slot, and the fallback for a field outside the window is dead code that the verifier
/// skips. The last word stays zero, so a field that ends inside the window can always be read
/// as two words.
pub struct Window<const WORDS: usize> {
    base: u64,
    start: u32,
    words: [u64; WORDS],
}

impl<const WORDS: usize> Window<WORDS> {
    const BYTES: u32 = ((WORDS - 1) * 8) as u32;

    /// Reads the window at `base + start`; all zeros when `base` is 0 or unreadable.
    #[inline(always)]
    pub fn load(base: u64, start: u32) -> Self {
        // Left uninitialised for the helper, which zeroes it when the read faults (as it does
        // for base 0): a zeroing first would only be more stores on every event.
        let mut words = MaybeUninit::<[u64; WORDS]>::uninit();
        let words = unsafe {
            probe_read_raw(
                words.as_mut_ptr().cast::<c_void>(),
                Self::BYTES,
                (base + u64::from(start)) as *const c_void,
            );
            words.as_mut_ptr().cast::<u64>().add(WORDS - 1).write(0);
            words.assume_init()
        };
        Window { base, start, words }
    }

    /// The window that starts at the lowest of `fields`' offsets.
    #[inline(always)]
    pub fn around(base: u64, fields: &[&'static Field]) -> Self {
        let mut start = u32::MAX;
        for f in fields {
            let f = global(*f);
            if f.size != 0 && f.offset < start {
                start = f.offset;
            }
        }
        Self::load(base, if start == u32::MAX { 0 } else { start })
    }

    /// A field, from the window when it lies inside, else with its own read.
    #[inline(always)]
    pub fn field(&self, field: &'static Field) -> u64 {
        self.get(global(field))
    }

    /// Outside the window (or for a field this kernel lacks), the same read as [`read_field`].
    /// Inside, no check of `base` is needed: the words of an unreadable window are zeros.
    #[inline(always)]
    fn get(&self, f: Field) -> u64 {
        let inside = f.size != 0
            && f.size <= 8
            && f.offset >= self.start
            && f.offset - self.start + u32::from(f.size) <= Self::BYTES;
        if !inside {
            return read_value(self.base, f);
        }
        let rel = f.offset - self.start;
        let i = (rel / 8) as usize;
        let shift = (rel % 8) * 8;
        // SAFETY: `inside` keeps the field's bytes within the first WORDS - 1 words, so `i` and,
        // for a field that runs into the next word, `i + 1` are in bounds. The verifier sees
        // them as constants (they come from LAYOUT), so no index check is needed at run time:
        // every instruction here runs for each field of each event.
        let lo = unsafe { *self.words.get_unchecked(i) } >> shift;
        let v = if rel % 8 + u32::from(f.size) <= 8 {
            lo
        } else {
            lo | (unsafe { *self.words.get_unchecked(i + 1) } << (64 - shift))
        };
        let v = if f.size == 8 {
            v
        } else {
            v & ((1u64 << (u32::from(f.size) * 8)) - 1)
        };
        unpack(v, f)
    }

    /// 16 bytes (an IPv6 address) starting at `field`'s offset; zeros when the kernel has no
    /// such field.
    #[inline(always)]
    pub fn bytes16(&self, field: &'static Field) -> [u8; 16] {
        let f = global(field);
        let mut out = [0u8; 16];
        if f.size == 0 || self.base == 0 {
            return out;
        }
        if f.offset >= self.start && f.offset - self.start + 16 <= Self::BYTES {
            let lo = self.get(Field::plain(f.offset, 8)).to_le_bytes();
            let hi = self.get(Field::plain(f.offset + 8, 8)).to_le_bytes();
            out[..8].copy_from_slice(&lo);
            out[8..].copy_from_slice(&hi);
        } else {
            unsafe {
                probe_read_raw(
                    out.as_mut_ptr().cast::<c_void>(),
                    16,
                    (self.base + u64::from(f.offset)) as *const c_void,
                )
            };
        }
        out
    }
}

/// Field `f` of the struct at `base`, a pointer the verifier knows the BTF type of (from
/// `bpf_get_current_task_btf`, or a pointer field loaded from such a struct): a load
/// instruction, not a helper call. The kernel turns each into a guarded load, so a null or
/// stale pointer reads as 0, as a probe read does.
///
/// Why: a helper call costs far more than a load, the more so under TCG, where the VM's fexit
/// rows are measured. Only for fields of the pointer's own type: the verifier checks each load
/// against BTF, and refuses one that spans two fields or reaches past the struct.
///
/// The arms are inline asm for the reason [`tp_arg`]'s are; `f.size` is a load-time constant,
/// so the verifier walks only the arm it selects.
#[inline(always)]
pub fn btf_load(base: u64, f: Field) -> u64 {
    let p = base + u64::from(f.offset);
    let v: u64;
    unsafe {
        match f.size {
            1 => asm!("{0} = *(u8 *)({1} + 0)", out(reg) v, in(reg) p, options(readonly, nostack)),
            2 => asm!("{0} = *(u16 *)({1} + 0)", out(reg) v, in(reg) p, options(readonly, nostack)),
            4 => asm!("{0} = *(u32 *)({1} + 0)", out(reg) v, in(reg) p, options(readonly, nostack)),
            8 => asm!("{0} = *(u64 *)({1} + 0)", out(reg) v, in(reg) p, options(readonly, nostack)),
            _ => v = 0,
        }
    }
    unpack(v, f)
}

/// The calling task's pid, tid and name, as `bpf_get_current_pid_tgid` and `_comm` give them,
/// from its task_struct: one helper call instead of two (the comm helper copies byte by byte).
///
/// The uid and the cgroup id still come from their helpers: reaching them means following
/// pointers (`cred`, `cgroups → dfl_cgrp → kn`), and each typed pointer load made the
/// verifier's work heavier: loading all three programs took 40 ms longer on this host with
/// them, 5 ms without.
pub struct Caller {
    pub pid: u32,
    pub tid: u32,
    /// `comm`, as two words of 8 bytes.
    pub comm: [u64; 2],
}

#[inline(always)]
pub fn caller() -> Caller {
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let comm = global(&LAYOUT.task_comm).offset;
    Caller {
        pid: btf_load(task, global(&LAYOUT.task_tgid)) as u32,
        tid: btf_load(task, global(&LAYOUT.task_pid)) as u32,
        comm: [
            btf_load(task, Field::plain(comm, 8)),
            btf_load(task, Field::plain(comm + 8, 8)),
        ],
    }
}

/// A syscall tracepoint field at `offset` (offsets come from tracefs' format files).
///
/// Why the match: a load straight from the context is one instruction and a probe read is a
/// helper call, but the verifier allows context loads only at offsets fixed in the instruction.
/// `offset` is a load-time constant to the verifier, which walks only the arm it selects. The
/// arms are inline asm so that LLVM cannot merge them into one load from a computed address,
/// which the verifier would refuse. Kernels so far put the arguments at 16, 24 and 32 and the
/// return value at 16; any other offset still works, through the probe read.
#[inline(always)]
pub fn tp_arg(ctx: &TracePointContext, offset: u32) -> u64 {
    let p = ctx.as_ptr();
    let v: u64;
    unsafe {
        match offset {
            16 => {
                asm!("{0} = *(u64 *)({1} + 16)", out(reg) v, in(reg) p, options(readonly, nostack))
            }
            24 => {
                asm!("{0} = *(u64 *)({1} + 24)", out(reg) v, in(reg) p, options(readonly, nostack))
            }
            32 => {
                asm!("{0} = *(u64 *)({1} + 32)", out(reg) v, in(reg) p, options(readonly, nostack))
            }
            _ => v = ctx.read_at::<u64>(offset as usize).unwrap_or(0),
        }
    }
    v
}

/// The first `N` slots of an fexit program's context (the arguments, then the return value
/// after the last one), in one read instead of one per slot.
#[inline(always)]
pub fn fexit_args<const N: usize>(ctx: &FExitContext) -> [u64; N] {
    probe_kernel::<[u64; N]>(ctx.as_ptr() as u64).unwrap_or([0; N])
}

/// Argument `n` of an fexit program (the return value follows the arguments). Read as a plain
/// number, so that the verifier lets us add offsets to it.
#[inline(always)]
pub fn fexit_arg(ctx: &FExitContext, n: u64) -> u64 {
    read_u64(ctx.as_ptr() as u64 + n * 8)
}

/// The first three arguments of the current syscall, from the caller's saved registers.
pub struct SyscallArgs {
    pub di: u64,
    pub si: u64,
    pub dx: u64,
}

/// The arguments of syscall `nr`, read at its exit from the registers user space left at its
/// entry (`task_pt_regs`, which the kernel keeps at the top of the task's stack), with loads
/// typed by BTF ([`btf_load`]). None when `orig_ax` is not `nr`: then the registers are not
/// what we think, and nothing is guessed.
#[inline(always)]
pub fn syscall_args(nr: u32) -> Option<SyscallArgs> {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if btf_load(regs, global(&LAYOUT.regs_orig_ax)) != u64::from(nr) {
        return None;
    }
    Some(SyscallArgs {
        di: btf_load(regs, global(&LAYOUT.regs_di)),
        si: btf_load(regs, global(&LAYOUT.regs_si)),
        dx: btf_load(regs, global(&LAYOUT.regs_dx)),
    })
}

/// `current->files->fdt->fd[fd]->private_data`: the `struct socket *` behind an fd, or 0. The
/// task, its fd table and the table's size and array are typed by BTF ([`btf_load`]); the
/// array is indexed by a number, which only a probe read can follow.
#[inline(never)]
pub fn socket_of_fd(fd: i64) -> u64 {
    if fd < 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let files = btf_load(task, global(&LAYOUT.task_files));
    let fdt = btf_load(files, global(&LAYOUT.files_fdt));
    if fd as u64 >= btf_load(fdt, global(&LAYOUT.fdt_max_fds)) {
        return 0;
    }
    let fds = btf_load(fdt, global(&LAYOUT.fdt_fd));
    if fds == 0 {
        return 0;
    }
    let file = read_u64(fds + (fd as u64) * 8);
    read_field(file, &LAYOUT.file_private_data)
}

/// The inode number of network namespace `net` (a `struct net *`), 0 when unreadable.
#[inline(always)]
pub fn netns_of(net: u64) -> u32 {
    read_field(net, &LAYOUT.net_inum) as u32
}

/// The `struct sock` fields that sit outside `sock_common`, read together.
pub struct SockBody {
    pub protocol: u16,
    pub sock_type: u16,
    pub uid: u32,
}

/// A `struct sock *`, the `struct socket *` that owns it when known, and the start of its
/// `sock_common` read in one go (see [`Window`]).
pub struct Sock {
    pub sk: u64,
    socket: u64,
    common: Window<4>,
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
        Some(Sock::new(sk, socket))
    }

    /// A sock reached without its socket (the other side of a conflict). It may be a
    /// TIME_WAIT socket, which has only `sock_common`: check [`Sock::is_full`] before reading
    /// anything past it.
    #[inline(always)]
    pub fn from_sk(sk: u64) -> Sock {
        Sock::new(sk, 0)
    }

    /// `sock_common` opens every `struct sock` (and TIME_WAIT and request socks). Its first
    /// 24 bytes hold the addresses, ports, family, state, reuse bits and bound device on 6.1
    /// and 6.18; the rest (netns, IPv6 addresses) is read field by field. A wider window
    /// would save those reads but costs stack that the fexit programs do not have.
    #[inline(always)]
    fn new(sk: u64, socket: u64) -> Sock {
        Sock {
            sk,
            socket,
            common: Window::load(sk, 0),
        }
    }

    #[inline(always)]
    pub fn family(&self) -> u16 {
        self.common.field(&LAYOUT.sk_family) as u16
    }

    #[inline(always)]
    pub fn state(&self) -> u8 {
        self.common.field(&LAYOUT.sk_state) as u8
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        let s = self.state();
        s != tcp_state::TIME_WAIT && s != tcp_state::NEW_SYN_RECV
    }

    #[inline(always)]
    pub fn num(&self) -> u16 {
        self.common.field(&LAYOUT.sk_num) as u16
    }

    #[inline(always)]
    pub fn reuse(&self) -> u8 {
        self.common.field(&LAYOUT.sk_reuse) as u8
    }

    #[inline(always)]
    pub fn bound_dev_if(&self) -> u32 {
        self.common.field(&LAYOUT.sk_bound_dev_if) as u32
    }

    /// Protocol, type and owner uid; only for full sockets (see [`Sock::is_full`]).
    #[inline(always)]
    pub fn body(&self) -> SockBody {
        let w = Window::<3>::around(
            self.sk,
            &[&LAYOUT.sk_protocol, &LAYOUT.sk_type, &LAYOUT.sk_uid],
        );
        SockBody {
            protocol: w.field(&LAYOUT.sk_protocol) as u16,
            sock_type: w.field(&LAYOUT.sk_type) as u16,
            uid: w.field(&LAYOUT.sk_uid) as u32,
        }
    }

    #[inline(always)]
    pub fn netns(&self) -> u32 {
        netns_of(self.net())
    }

    /// The `struct net *` the socket lives in.
    #[inline(always)]
    pub fn net(&self) -> u64 {
        self.common.field(&LAYOUT.sk_net)
    }

    /// The `struct socket *`, 0 for TIME_WAIT, request and orphaned socks.
    #[inline(always)]
    pub fn socket(&self) -> u64 {
        if self.socket != 0 {
            self.socket
        } else {
            read_field(self.sk, &LAYOUT.sk_socket)
        }
    }

    /// Inode of the socket (what /proc/PID/fd links name) behind `socket` ([`Sock::socket`]),
    /// 0 when orphaned. Every socket lives in a `socket_alloc` next to its inode, so no
    /// pointer needs following.
    #[inline(always)]
    pub fn ino_of(&self, socket: u64) -> u64 {
        let inode = global(&LAYOUT.socket_inode);
        if socket == 0 || inode.size == 0 {
            return 0;
        }
        read_field(socket + u64::from(inode.offset), &LAYOUT.inode_ino)
    }

    /// The bound local address: 4 bytes for IPv4, 16 for IPv6, in network order.
    #[inline(always)]
    pub fn rcv_saddr(&self, family: u16) -> [u8; 16] {
        self.addr(family, &LAYOUT.sk_rcv_saddr, &LAYOUT.sk_v6_rcv_saddr)
    }

    /// The peer address, for connected sockets.
    #[inline(always)]
    pub fn daddr(&self, family: u16) -> [u8; 16] {
        self.addr(family, &LAYOUT.sk_daddr, &LAYOUT.sk_v6_daddr)
    }

    #[inline(always)]
    fn addr(&self, family: u16, v4: &'static Field, v6: &'static Field) -> [u8; 16] {
        if family == AF_INET6 {
            return self.common.bytes16(v6);
        }
        let mut out = [0u8; 16];
        let b = (self.common.field(v4) as u32).to_ne_bytes();
        out[0] = b[0];
        out[1] = b[1];
        out[2] = b[2];
        out[3] = b[3];
        out
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        u16::from_be(self.common.field(&LAYOUT.sk_dport) as u16)
    }

    /// Options that live in `sock_common`, so they can be read on TIME_WAIT sockets too.
    #[inline(always)]
    pub fn common_options(&self) -> u16 {
        let mut o = 0;
        if self.reuse() != 0 {
            o |= opt::REUSEADDR;
        }
        if self.common.field(&LAYOUT.sk_reuseport) != 0 {
            o |= opt::REUSEPORT;
        }
        if self.common.field(&LAYOUT.sk_ipv6only) != 0 {
            o |= opt::V6ONLY;
        }
        o
    }

    /// All options; only for full sockets (see [`Sock::is_full`]).
    #[inline(always)]
    pub fn options(&self) -> u16 {
        let mut o = self.common_options();
        let inet = Window::<3>::around(
            self.sk,
            &[
                &LAYOUT.inet_freebind,
                &LAYOUT.inet_transparent,
                &LAYOUT.inet_bind_address_no_port,
            ],
        );
        if inet.field(&LAYOUT.inet_freebind) != 0 {
            o |= opt::FREEBIND;
        }
        if inet.field(&LAYOUT.inet_transparent) != 0 {
            o |= opt::TRANSPARENT;
        }
        if inet.field(&LAYOUT.inet_bind_address_no_port) != 0 {
            o |= opt::BIND_ADDRESS_NO_PORT;
        }
        o
    }

    /// For a TIME_WAIT sock, the state it stands for (TIME_WAIT, or FIN_WAIT2 when its peer
    /// has not closed); 0 for any other sock.
    #[inline(always)]
    pub fn substate(&self) -> u8 {
        if self.state() == tcp_state::TIME_WAIT {
            read_field(self.sk, &LAYOUT.tw_substate) as u8
        } else {
            0
        }
    }

    /// When a TIME_WAIT socket expires, in jiffies.
    #[inline(always)]
    pub fn tw_expires(&self) -> u64 {
        read_field(self.sk, &LAYOUT.tw_timer_expires)
    }
}
