//! The floor of the fexit backend, for the VM table: empty fexit programs (`r0 = 0; exit`) on
//! the kernel functions portwatch's fexit backend hooks, so the trampoline's own cost can be
//! told apart from what portwatch's programs do. The host bench's floor for the tracepoint
//! backend is bpftrace's `{ }`; the VM has no bpftrace, so this loads the programs itself with
//! bpf(2), finding each function's BTF id in /sys/kernel/btf/vmlinux.
//!
//! `xtask bench empty-fexit` (hidden) loads and attaches them, prints `READY` on stdout and
//! holds them until it is killed. It also serves the bench's BPF run-time pass: the programs'
//! fds are in its /proc/PID/fdinfo, as portwatch's are in portwatch's.

use std::{ffi::CString, fs, io::Write};

use anyhow::{Context, Result, bail, ensure};
use portwatch_common::programs;

/// The functions portwatch's fexit backend attaches to (its loader's list: binds, listen, the
/// conflict check, connects).
pub const FUNCTIONS: [&str; 6] = [
    programs::FEXIT_INET_BIND.func,
    programs::FEXIT_INET6_BIND.func,
    programs::FEXIT_INET_LISTEN.func,
    programs::FEXIT_INET_BIND_CONFLICT.func,
    programs::FEXIT_INET_STREAM_CONNECT.func,
    programs::FEXIT_INET_DGRAM_CONNECT.func,
];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FEXIT: u32 = 25;
const BTF_KIND_FUNC: u32 = 12;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zeroed, writable bpf_attr of its full length.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn put(attr: &mut [u8], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// BTF ids of the FUNC types named in `names`, in that order (None where absent).
pub fn func_ids(btf: &[u8], names: &[&str]) -> Result<Vec<Option<u32>>> {
    let u32_at = |at: usize| -> Result<u32> {
        let b = btf.get(at..at + 4).context("BTF cut short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    ensure!(
        btf.len() >= 24 && btf[..2] == [0x9f, 0xeb],
        "not little-endian BTF"
    );
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let name_at = |off: u32| -> &[u8] {
        let s = &btf[(strings + off as usize).min(btf.len())..];
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    };
    let mut out = vec![None; names.len()];
    let (mut at, mut id) = (types, 1u32);
    while at + 12 <= types + type_len {
        let (name, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == BTF_KIND_FUNC {
            let n = name_at(name);
            for (i, want) in names.iter().enumerate() {
                if n == want.as_bytes() && out[i].is_none() {
                    out[i] = Some(id);
                }
            }
        }
        // What follows each kind's 12-byte header (linux/btf.h).
        at += 12
            + match kind {
                1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
                3 => 12,              // ARRAY
                4 | 5 => vlen * 12,   // STRUCT, UNION
                6 | 13 => vlen * 8,   // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12, // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0,
                k => bail!("unknown BTF kind {k} at type {id}"),
            };
        id += 1;
    }
    Ok(out)
}

/// Loads `r0 = 0; exit` as an fexit program on BTF function `btf_id` and attaches it; returns
/// the program's and the link's fds.
fn attach_empty(name: &str, btf_id: u32) -> std::io::Result<(i32, i32)> {
    // mov r0, 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 144];
    put(&mut attr, 0, &BPF_PROG_TYPE_TRACING.to_le_bytes());
    put(&mut attr, 4, &2u32.to_le_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_le_bytes());
    // prog_name: 15 bytes and a NUL at most.
    let short = CString::new(format!("e_{}", &name[..name.len().min(13)])).unwrap_or_default();
    put(&mut attr, 48, short.as_bytes());
    put(&mut attr, 68, &BPF_TRACE_FEXIT.to_le_bytes());
    put(&mut attr, 108, &btf_id.to_le_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
    let mut open = [0u8; 16];
    put(&mut open, 8, &(prog as u32).to_le_bytes());
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open)?;
    Ok((prog, link))
}

/// `xtask bench empty-fexit`: attaches the empty programs, says READY, waits to be killed.
pub fn main() -> Result<()> {
    let btf = fs::read("/sys/kernel/btf/vmlinux").context("reading the kernel's BTF")?;
    let ids = func_ids(&btf, &FUNCTIONS)?;
    let mut attached = Vec::new();
    for (f, id) in FUNCTIONS.iter().zip(ids) {
        let Some(id) = id else {
            eprintln!("empty-fexit: {f} is not in BTF; skipped");
            continue;
        };
        match attach_empty(f, id) {
            Ok(_) => attached.push(*f),
            // portwatch attaches the conflict check as a bonus, and skips it the same way.
            Err(e) => eprintln!("empty-fexit: {f}: {e}; skipped"),
        }
    }
    ensure!(
        attached.contains(&programs::FEXIT_INET_BIND.func),
        "no empty program on {}",
        programs::FEXIT_INET_BIND.func
    );
    let mut so = std::io::stdout().lock();
    writeln!(so, "READY {}", attached.join(" "))?;
    so.flush()?;
    drop(so);
    loop {
        // SAFETY: pause(2) has no preconditions; a signal ends the process.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: an INT, a FUNC_PROTO with one parameter, then FUNCs named `funcs`.
    fn btf(funcs: &[&str]) -> Vec<u8> {
        let mut strings = b"\0int\0".to_vec();
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size_or_type: u32, tail: &[u8]| {
            for w in [name, (kind << 24) | vlen, size_or_type] {
                types.extend_from_slice(&w.to_le_bytes());
            }
            types.extend_from_slice(tail);
        };
        ty(1, 1, 0, 4, &[0, 0, 0, 32]); // id 1: int
        ty(0, 13, 1, 1, &[0, 0, 0, 0, 1, 0, 0, 0]); // id 2: int (*)(int)
        for f in funcs {
            let at = strings.len() as u32;
            strings.extend_from_slice(f.as_bytes());
            strings.push(0);
            ty(at, 12, 0, 2, &[]);
        }
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_functions_by_name_after_types_with_trailers() {
        let blob = btf(&["inet_listen", "inet_bind"]);
        assert_eq!(
            func_ids(&blob, &["inet_bind", "inet6_bind", "inet_listen"]).unwrap(),
            [Some(4), None, Some(3)]
        );
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(func_ids(&[0u8; 32], &["inet_bind"]).is_err());
    }
}
