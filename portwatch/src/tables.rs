//! The kernel's socket tables, read through the iter/tcp and iter/udp programs.
//!
//! An iterator sees the network namespace of the thread that creates its fd, so the read runs
//! on a thread that joined the namespace in question. It sees listening, connected, TIME_WAIT
//! and UDP sockets with the kernel's own view of their options (the TIME_WAIT socket's
//! SO_REUSEADDR bit included, which decides the restart case). It does not see TCP sockets
//! that are bound but not listening: see [`crate::sockinfo`] for those.

use std::io::Read as _;

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::Iter,
};
use portwatch_common::{HolderRecord, ITER_ALL_PORTS, maps};

use crate::{
    event::{decode_holder, monotonic_ns},
    netns::Namespaces,
    sockets::SocketView,
};

const PROGRAMS: [(&str, &str); 2] = [("iter_tcp", "tcp"), ("iter_udp", "udp")];

/// The kernel functions whose BTF ids aya looks up to load the iterators (`bpf_iter_<target>`).
pub fn btf_functions() -> impl Iterator<Item = String> {
    PROGRAMS
        .iter()
        .map(|(_, target)| format!("bpf_iter_{target}"))
}

/// Loads the two iterator programs (once per process).
pub fn load(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), String> {
    for (name, target) in PROGRAMS {
        let p: &mut Iter = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load(target, btf)
            .map_err(|e| format!("loading iter/{target}: {e}"))?;
    }
    Ok(())
}

/// Every TCP and UDP socket on `port` (all ports for None) in namespace `netns`.
pub fn read(
    ebpf: &mut Ebpf,
    namespaces: &mut Namespaces,
    netns: u32,
    port: Option<u16>,
) -> Result<Vec<SocketView>, String> {
    {
        let mut cfg: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut(maps::ITER_PORT)
                .ok_or("ITER_PORT map missing")?,
        )
        .map_err(|e| e.to_string())?;
        cfg.set(0, &port.map_or(ITER_ALL_PORTS, u32::from), 0)
            .map_err(|e| format!("setting the port: {e}"))?;
    }
    let mut links = Vec::new();
    for (name, _) in PROGRAMS {
        let p: &mut Iter = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        let id = p.attach().map_err(|e| format!("attaching {name}: {e}"))?;
        links.push(p.take_link(id).map_err(|e| format!("{name}: {e}"))?);
    }
    let bytes = namespaces
        .run_in(netns, move || -> Result<Vec<u8>, String> {
            let mut all = Vec::new();
            for link in links {
                let mut file = link
                    .into_file()
                    .map_err(|e| format!("creating the iterator: {e}"))?;
                file.read_to_end(&mut all)
                    .map_err(|e| format!("reading the iterator: {e}"))?;
            }
            Ok(all)
        })
        .ok_or_else(|| format!("network namespace {netns} is gone or cannot be entered"))??;
    let now = monotonic_ns();
    Ok(bytes
        .chunks_exact(size_of::<HolderRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of plain integers.
            let r: HolderRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            decode_holder(&r, now).socket
        })
        .collect())
}
