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
use portwatch_common::{ITER_ALL_PORTS, SockRecord, maps};

use crate::{
    event::ip_from,
    netns::Namespaces,
    sockets::{Family, Options, Proto, SocketView, State},
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
        .chunks_exact(size_of::<SockRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of plain integers.
            let r: SockRecord = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
            to_view(&r, now)
        })
        .collect())
}

fn to_view(r: &SockRecord, mono_ns: u64) -> SocketView {
    let state = State::from_raw(r.state, r.protocol);
    let tw_left_ms = (state.is_time_wait() && r.tw_expires != 0)
        .then(|| hz(r.jiffies_now, mono_ns))
        .flatten()
        .map(|hz| r.tw_expires.saturating_sub(r.jiffies_now) * 1000 / hz);
    let peer_addr = ip_from(r.family, &r.daddr);
    let connected = r.dport != 0;
    SocketView {
        family: Family::from_af(r.family),
        proto: Proto::from_raw(r.protocol, 0),
        addr: ip_from(r.family, &r.addr),
        port: r.port,
        state,
        options: Options::from_bits(r.options, r.reuse, r.bound_dev_if),
        // The tables report uid 0 for TIME_WAIT sockets, which keep none.
        uid: (!state.is_time_wait()).then_some(r.uid),
        netns: r.netns,
        ino: r.ino,
        peer: connected.then_some((peer_addr, r.dport)),
        tw_left_ms,
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's tick rate (CONFIG_HZ), which converts TIME_WAIT expiry jiffies to time.
///
/// No interface reports it, but the kernel starts `jiffies_64` at INITIAL_JIFFIES =
/// 2^32 − 300·HZ so that the 32-bit counter wraps five minutes after boot. So
/// `jiffies − 2^32 = HZ · (uptime − 300 s)`: the HZ that fits best among the values Kconfig
/// allows is the answer. Too close to the five-minute mark the candidates can't be told apart,
/// and the time left is then not shown.
pub fn hz(jiffies: u64, mono_ns: u64) -> Option<u64> {
    const CANDIDATES: [u64; 4] = [100, 250, 300, 1000];
    let ticks = jiffies as i128 - (1i128 << 32);
    let secs = mono_ns as f64 / 1e9 - 300.0;
    if secs.abs() < 10.0 {
        return None;
    }
    let (best, err) = CANDIDATES
        .iter()
        .map(|&hz| (hz, (ticks as f64 - hz as f64 * secs).abs()))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    // Accept only a clear fit: within 2% of the elapsed time in ticks.
    (err <= 0.02 * best as f64 * secs.abs()).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hz_from_initial_jiffies() {
        let boot = |hz: u64, uptime_s: f64| {
            (((1u64 << 32) as f64 - 300.0 * hz as f64) + hz as f64 * uptime_s) as u64
        };
        for hz_true in [100, 250, 300, 1000] {
            let j = boot(hz_true, 4000.0);
            assert_eq!(hz(j, 4_000_000_000_000), Some(hz_true));
            let j = boot(hz_true, 20.0);
            assert_eq!(hz(j, 20_000_000_000), Some(hz_true));
        }
        // Too close to the wrap point to tell.
        assert_eq!(hz(boot(250, 301.0), 301_000_000_000), None);
    }
}
