//! Loads the kernel programs and attaches them with one of the two backends.
//!
//! The checks that come first (privileges, BTF, kernel version) exist so that a user gets one
//! line naming the problem and the fix, rather than an errno from deep inside aya.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{FExit, TracePoint},
};
use log::debug;
pub use portwatch_common::Backend;
use portwatch_common::{
    FexitTarget, KernelLayout, RING_BYTES, Settings, globals, maps, port_bits, programs,
};
use thiserror::Error;

use crate::{
    btf::{self, Btf},
    layout, tables,
};

/// The compiled kernel programs, built by build.rs (the aya-template's wiring, made quiet).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

/// Wake the reader when this much is waiting (a quarter of the ring); otherwise it polls.
pub const WAKEUP_BYTES: u64 = (RING_BYTES / 4) as u64;

const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "portwatch {command} loads eBPF programs, which needs root or the capabilities CAP_BPF \
         and CAP_PERFMON; missing: {missing} (the README's \"Least privilege\" lists what \
         else each command uses).\n  fix: run it with sudo: sudo portwatch {command}, or \
         grant {missing}"
    )]
    NotPrivileged { command: String, missing: String },
    #[error(
        "{TRACEFS} is readable by root only, and the tracepoint backend reads its event \
         formats there; without root that needs CAP_DAC_READ_SEARCH.\n  fix: add \
         CAP_DAC_READ_SEARCH (AmbientCapabilities= in a systemd unit), or run as root"
    )]
    TracefsDenied,
    #[error(
        "this kernel has no BTF ({path} is missing), which portwatch needs to find kernel \
         struct offsets.\n  fix: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (the default \
         in Debian, Ubuntu, Fedora and RHEL kernels since 2020)"
    )]
    NoBtf { path: String },
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error(
        "kernel {found} is too old: portwatch needs Linux 5.17 or newer (BPF ring buffer, bpf_loop)"
    )]
    KernelTooOld { found: String },
    #[error("finding kernel struct offsets in BTF: {0}")]
    Layout(#[from] layout::LayoutError),
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0}")]
    Tracefs(std::io::Error),
    #[error("reading the tracepoint format {path}: {detail}")]
    TracepointFormat { path: String, detail: String },
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("no backend could be loaded:\n  fexit: {fexit}\n  tracepoint: {tracepoint}")]
    NoBackend { fexit: String, tracepoint: String },
    /// Attaching the backend the user named with `--backend` (only `trace` has the flag, so
    /// only it gets this error, and its fix names the flag).
    #[error(
        "{backend} backend: {detail}\n  fix: try --backend auto, which falls back to what loads"
    )]
    Backend { backend: Backend, detail: String },
    #[error("preparing the kernel's BTF for aya: {0}")]
    AyaBtf(aya::BtfError),
    #[error("the port filter ({} map): {detail}", maps::PORT_BITS)]
    PortFilter { detail: String },
    #[error("socket table iterators: {0}")]
    Tables(tables::TablesError),
}

/// Which backend to load: the one the user named, or (auto) fexit with a fallback to the
/// tracepoints. The loader owns this choice; the CLI only maps its flag onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Only(Backend),
}

/// What the kernel side filters, so that filtered-out calls cost almost nothing.
#[derive(Clone, Debug, Default)]
pub struct KernelFilter {
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub failed_only: bool,
    /// Trace portwatch's own calls too (`demo`, whose experiments are its own sockets). Off
    /// for `trace`: its probe binds must not trace themselves.
    pub include_self: bool,
    /// Trace connect()s that fail for want of a local port (`trace`, unless `--no-connect`).
    pub connect: bool,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub backend: Backend,
    /// Why fexit was not used, when `auto` fell back.
    pub fallback: Option<String>,
    /// Whether the kernel's own conflict check is hooked (fexit on inet_bind_conflict).
    pub conflict_hook: bool,
    pub load_time: Duration,
    /// Whether the socket table iterators loaded (and why not).
    pub tables: Result<(), tables::TablesError>,
}

/// What loading needs to know about the running kernel. The BTF it came from is dropped
/// once this is built: it is several MiB and nothing else needs it.
pub struct KernelInfo {
    pub layout: KernelLayout,
    /// The fexit target functions this kernel's BTF has, with their parameter counts.
    funcs: Vec<(&'static str, usize)>,
    /// The BTF aya gets to find fexit and iterator targets: see [`Btf::func_stub`].
    aya_stub: Vec<u8>,
    /// Where the kernel's one UDP table is, on kernels without a UDP table per namespace
    /// ([`Settings::udp_table`]); 0 where not needed or not readable.
    udp_table: u64,
}

impl KernelInfo {
    /// Whether `target` can be attached here as its program was written; the one-line reason
    /// when not.
    fn check(&self, target: &FexitTarget) -> Result<(), String> {
        let found = self.funcs.iter().find(|(f, _)| *f == target.func);
        fits(target, found.map(|(_, n)| *n))
    }

    fn aya_btf(&self) -> Result<aya::Btf, LoadError> {
        aya::Btf::parse(&self.aya_stub, aya::Endianness::default()).map_err(LoadError::AyaBtf)
    }
}

pub fn check_privileges(command: &str) -> Result<(), LoadError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let eff = crate::procfs::effective_caps("self").unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(LoadError::NotPrivileged {
        command: command.to_string(),
        missing: missing.join(" and "),
    })
}

pub fn kernel_info() -> Result<KernelInfo, LoadError> {
    let release = kernel_release();
    if let Some((major, minor)) = parse_version(&release)
        && (major, minor) < (5, 17)
    {
        return Err(LoadError::KernelTooOld { found: release });
    }
    let path = Path::new(btf::VMLINUX);
    if !path.exists() {
        return Err(LoadError::NoBtf {
            path: btf::VMLINUX.to_string(),
        });
    }
    let started = Instant::now();
    // Only kernels before 6.2 keep a single UDP table, found by its symbol; reading the symbol
    // list takes tens of milliseconds, so it runs while the BTF is parsed.
    let single_udp_table = parse_version(&release).is_none_or(|v| v < (6, 2));
    let udp_symbol =
        single_udp_table.then(|| std::thread::spawn(|| kernel_symbol(KALLSYMS, "udp_table")));
    let btf = Btf::from_file(path)?;
    let layout = layout::resolve(&btf)?;
    let udp_table = match udp_symbol {
        Some(read) if layout.net_udp_table.size == 0 => match read.join() {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => {
                debug!("udp_table not in {KALLSYMS}, or its address hidden: {AFTER}");
                0
            }
            Ok(Err(e)) => {
                debug!("{KALLSYMS}: {e}: {AFTER}");
                0
            }
            Err(_) => 0,
        },
        _ => 0,
    };
    let fexit_targets = || {
        FEXIT_PROGRAMS
            .iter()
            .chain([&CONFLICT_PROGRAM])
            .chain(&CONNECT_PROGRAMS)
            .map(|t| t.func)
    };
    let funcs = fexit_targets()
        .filter_map(|f| Some((f, btf.func_param_count(f)?)))
        .collect();
    // aya needs the BTF ids of the fexit and iterator targets, and nothing else.
    let stub_funcs: Vec<String> = fexit_targets()
        .map(String::from)
        .chain(tables::btf_functions())
        .collect();
    let aya_stub = btf.func_stub(&stub_funcs);
    debug!(
        "BTF parsed and layout resolved in {:?}: {layout:?}",
        started.elapsed()
    );
    Ok(KernelInfo {
        layout,
        funcs,
        aya_stub,
        udp_table,
    })
}

const KALLSYMS: &str = "/proc/kallsyms";

/// What missing the UDP table's address costs.
const AFTER: &str = "a TCP bind's UDP neighbours are read after the call, not at it";

/// The address of the kernel's symbol `name` in `path` (/proc/kallsyms), or None when it is
/// not there or its address is hidden (shown as 0 to a reader without CAP_SYSLOG).
fn kernel_symbol(path: &str, name: &str) -> std::io::Result<Option<u64>> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    for line in file.lines() {
        if let Some(addr) = symbol_address(&line?, name) {
            return Ok((addr != 0).then_some(addr));
        }
    }
    Ok(None)
}

/// The address on one /proc/kallsyms line (`ffffffff8a2b3c40 D udp_table`) when it names
/// `name`, a symbol of the kernel itself (not of a module).
fn symbol_address(line: &str, name: &str) -> Option<u64> {
    let mut fields = line.split_ascii_whitespace();
    let (addr, _kind, sym) = (fields.next()?, fields.next()?, fields.next()?);
    if sym != name || fields.next().is_some() {
        return None;
    }
    u64::from_str_radix(addr, 16).ok()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Mounts tracefs when nobody has (minimal systems and VMs often don't). aya looks it up once,
/// so this must run before the first tracepoint attach.
fn ensure_tracefs() -> Result<(), LoadError> {
    let events = Path::new(TRACEFS).join("events");
    match std::fs::metadata(&events) {
        Ok(_) => return Ok(()),
        // Mounted, but mode 0700 root: not something a mount would fix.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(LoadError::TracefsDenied);
        }
        Err(_) => {}
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = c"tracefs";
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    debug!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Offset of `ret` in the bind, listen (and connect) exit tracepoint records (the programs
/// share it).
fn tracepoint_ret_offset(connect: bool) -> Result<u32, LoadError> {
    ensure_tracefs()?;
    let ret = tracepoint_field_offset(programs::SYS_EXIT_BIND, "ret")?;
    let mut others = vec![(
        "listen",
        tracepoint_field_offset(programs::SYS_EXIT_LISTEN, "ret")?,
    )];
    if connect {
        others.push((
            "connect",
            tracepoint_field_offset(programs::SYS_EXIT_CONNECT, "ret")?,
        ));
    }
    if let Some((call, at)) = others.into_iter().find(|&(_, at)| at != ret) {
        return Err(LoadError::TracepointFormat {
            path: format!("{TRACEFS}/events/{}", programs::TRACEPOINT_CATEGORY),
            detail: format!("unexpected layout: bind ret at {ret}, {call} ret at {at}"),
        });
    }
    Ok(ret)
}

/// Offset of `field` in a syscall tracepoint's record, from its tracefs format file.
fn tracepoint_field_offset(event: &str, field: &str) -> Result<u32, LoadError> {
    let path = format!(
        "{TRACEFS}/events/{}/{event}/format",
        programs::TRACEPOINT_CATEGORY
    );
    let err = |detail: String| LoadError::TracepointFormat {
        path: path.clone(),
        detail,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    for line in text.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';');
        let name_part = parts.next().unwrap_or_default();
        let name = name_part.rsplit([' ', '*']).next().unwrap_or_default();
        if name != field {
            continue;
        }
        let offset = parts
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| err(format!("no offset for {field}")))?;
        return Ok(offset);
    }
    Err(err(format!("no field {field}")))
}

pub fn load(
    choice: BackendChoice,
    filter: &KernelFilter,
    kernel: &KernelInfo,
) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    bump_memlock();
    // The fexit backend needs no tracefs; auto reads it up front for the fallback.
    let tp = if choice == BackendChoice::Only(Backend::Fexit) {
        None
    } else {
        Some(tracepoint_ret_offset(filter.connect))
    };
    let settings = settings(
        filter,
        tp.as_ref().and_then(|r| r.as_ref().ok().copied()),
        kernel.udp_table,
    );
    // aya finds fexit and iterator targets in a BTF of its own; it gets the stub.
    let aya_btf = kernel.aya_btf()?;
    let mut ebpf = open_object(kernel, &settings, &filter.ports, &aya_btf)?;

    let (backend, fallback, conflict_hook) = match choice {
        BackendChoice::Only(Backend::Fexit) => {
            let hook =
                attach_fexit(&mut ebpf, kernel, &aya_btf, filter.connect).map_err(|detail| {
                    LoadError::Backend {
                        backend: Backend::Fexit,
                        detail,
                    }
                })?;
            (Backend::Fexit, None, hook)
        }
        BackendChoice::Only(Backend::Tracepoint) => {
            if let Some(Err(e)) = tp {
                return Err(e);
            }
            attach_tracepoints(&mut ebpf, filter.connect).map_err(|detail| LoadError::Backend {
                backend: Backend::Tracepoint,
                detail,
            })?;
            (Backend::Tracepoint, None, false)
        }
        BackendChoice::Auto => match attach_fexit(&mut ebpf, kernel, &aya_btf, filter.connect) {
            Ok(hook) => (Backend::Fexit, None, hook),
            Err(fexit) => {
                unload_fexit(&mut ebpf);
                let attached = match tp {
                    Some(Err(e)) => Err(e.to_string()),
                    _ => attach_tracepoints(&mut ebpf, filter.connect),
                };
                if let Err(tracepoint) = attached {
                    return Err(LoadError::NoBackend { fexit, tracepoint });
                }
                (Backend::Tracepoint, Some(fexit), false)
            }
        },
    };
    // Socket table iterators, for finding holders later.
    let tables = tables::load_iterators(&mut ebpf, &aya_btf);
    if let Err(e) = &tables {
        debug!("socket table iterators unavailable: {e}");
    }
    Ok(Loaded {
        ebpf,
        backend,
        fallback,
        conflict_hook,
        tables,
        load_time: started.elapsed(),
    })
}

/// The kernel side's [`Settings`] for these filters. `tp_exit_ret` is the offset tracefs gave,
/// or the one every kernel so far uses when tracefs was not read (fexit, `who`); `udp_table`
/// is [`KernelInfo::udp_table`].
fn settings(filter: &KernelFilter, tp_exit_ret: Option<u32>, udp_table: u64) -> Settings {
    Settings {
        filter_pid: filter.pid.unwrap_or(0),
        self_pid: if filter.include_self {
            0
        } else {
            std::process::id()
        },
        wakeup_bytes: WAKEUP_BYTES,
        tp_exit_ret: tp_exit_ret.unwrap_or(Settings::TP_EXIT_RET_DEFAULT),
        nr_bind: libc::SYS_bind as u32,
        nr_listen: libc::SYS_listen as u32,
        nr_connect: libc::SYS_connect as u32,
        filter_ports: u8::from(!filter.ports.is_empty()),
        filter_failed: u8::from(filter.failed_only),
        _pad: [0; 6],
        udp_table,
    }
}

/// Loads the object (maps created, no program loaded yet) with the layout and settings written
/// into its read-only globals and the port filter into its bitmap.
fn open_object(
    kernel: &KernelInfo,
    settings: &Settings,
    ports: &[u16],
    btf: &aya::Btf,
) -> Result<Ebpf, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .btf(btf)
        .override_global(globals::LAYOUT, &kernel.layout, true)
        .override_global(globals::SETTINGS, settings, true)
        .map_max_entries(maps::EVENTS, RING_BYTES)
        .load(EBPF_OBJECT)?;
    let map_err = |e: aya::maps::MapError| LoadError::PortFilter {
        detail: e.to_string(),
    };
    let mut bits: Array<&mut MapData, u64> = Array::try_from(
        ebpf.map_mut(maps::PORT_BITS)
            .ok_or_else(|| LoadError::PortFilter {
                detail: "missing from the object".to_string(),
            })?,
    )
    .map_err(map_err)?;
    for &p in ports {
        let word = port_bits::word(p);
        let old = bits.get(&word, 0).map_err(map_err)?;
        bits.set(word, &(old | port_bits::bit(p)), 0)
            .map_err(map_err)?;
    }
    Ok(ebpf)
}

/// The object for `portwatch who`: socket table iterators only, nothing attached to the
/// bind path.
pub fn load_for_tables(kernel: &KernelInfo) -> Result<Ebpf, LoadError> {
    bump_memlock();
    let btf = kernel.aya_btf()?;
    let settings = settings(&KernelFilter::default(), None, 0);
    let mut ebpf = open_object(kernel, &settings, &[], &btf)?;
    tables::load_iterators(&mut ebpf, &btf).map_err(LoadError::Tables)?;
    Ok(ebpf)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg. Raising it
/// can fail without CAP_SYS_RESOURCE, which is harmless on the newer kernels.
fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether `target`'s program fits a kernel whose BTF gives `found` parameters for its
/// function (`None`: no such function); the one-line reason when not.
fn fits(target: &FexitTarget, found: Option<usize>) -> Result<(), String> {
    match found {
        None => Err(format!("the kernel's BTF has no function {}", target.func)),
        Some(n) if n != target.params => Err(format!(
            "{} takes {n} parameters in the kernel's BTF, but fexit/{} expects {} (it reads \
             the return value after them)",
            target.func, target.func, target.params
        )),
        Some(_) => Ok(()),
    }
}

/// inet_bind, inet6_bind, inet_listen: the fexit backend.
const FEXIT_PROGRAMS: [FexitTarget; 3] = [
    programs::FEXIT_INET_BIND,
    programs::FEXIT_INET6_BIND,
    programs::FEXIT_INET_LISTEN,
];
/// The kernel's own conflict check: a bonus, see [`attach_fexit`].
const CONFLICT_PROGRAM: FexitTarget = programs::FEXIT_INET_BIND_CONFLICT;

/// inet_stream_connect, inet_dgram_connect: every connect path, io_uring included.
const CONNECT_PROGRAMS: [FexitTarget; 2] = [
    programs::FEXIT_INET_STREAM_CONNECT,
    programs::FEXIT_INET_DGRAM_CONNECT,
];

fn attach_fexit(
    ebpf: &mut Ebpf,
    kernel: &KernelInfo,
    btf: &aya::Btf,
    connect: bool,
) -> Result<bool, String> {
    let connects: &[FexitTarget] = if connect { &CONNECT_PROGRAMS } else { &[] };
    for target in FEXIT_PROGRAMS.iter().chain(connects) {
        kernel.check(target)?;
        let FexitTarget { prog, func, .. } = *target;
        let p: &mut FExit = ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{prog}: {e}"))?;
        p.load(func, btf)
            .map_err(|e| describe_load_error(func, &e))?;
        if let Some(n) = p.info().ok().and_then(|i| i.verified_instruction_count()) {
            debug!("{prog}: the verifier processed {n} instructions");
        }
        p.attach()
            .map_err(|e| format!("attaching to {func}: {e}"))?;
    }
    // The conflict hook is a bonus: without it, holders come from the socket tables instead.
    let FexitTarget { prog, func, .. } = CONFLICT_PROGRAM;
    if let Err(why) = kernel.check(&CONFLICT_PROGRAM) {
        debug!("conflict hook not attached: {why}; holders will come from the socket tables");
        return Ok(false);
    }
    let attached = (|| -> Result<(), String> {
        let p: &mut FExit = ebpf
            .program_mut(prog)
            .ok_or("missing")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        p.load(func, btf)
            .map_err(|e| describe_load_error(func, &e))?;
        p.attach().map_err(|e| format!("{e}"))?;
        Ok(())
    })();
    match attached {
        Ok(()) => Ok(true),
        Err(e) => {
            debug!("conflict hook {func} not attached: {e}");
            Ok(false)
        }
    }
}

fn describe_load_error(func: &str, e: &aya::programs::ProgramError) -> String {
    let text = crate::errno::chain(e);
    if crate::errno::os_errno(e) == Some(libc::EPERM) {
        format!(
            "loading fexit/{func}: EPERM: this kernel refuses trampoline (fentry/fexit) \
             programs"
        )
    } else {
        format!("loading fexit/{func}: {text}")
    }
}

fn unload_fexit(ebpf: &mut Ebpf) {
    for FexitTarget { prog, .. } in FEXIT_PROGRAMS
        .iter()
        .chain([&CONFLICT_PROGRAM])
        .chain(&CONNECT_PROGRAMS)
    {
        if let Some(p) = ebpf.program_mut(prog)
            && let Ok(p) = <&mut FExit>::try_from(p)
        {
            let _ = p.unload();
        }
    }
}

/// One program per syscall, at its exit: it reads the arguments from the caller's saved
/// registers, so no enter program has to carry them across.
const TRACEPOINT_PROGRAMS: [&str; 2] = [programs::SYS_EXIT_BIND, programs::SYS_EXIT_LISTEN];

/// The tracepoint programs to attach: bind and listen, and connect when it is traced.
fn tracepoint_programs(connect: bool) -> impl Iterator<Item = &'static str> {
    TRACEPOINT_PROGRAMS
        .into_iter()
        .chain(connect.then_some(programs::SYS_EXIT_CONNECT))
}

/// Detaches and unloads every tracing program; the socket table iterators stay for the last
/// explanations.
pub fn detach(ebpf: &mut Ebpf) {
    unload_fexit(ebpf);
    for name in tracepoint_programs(true) {
        if let Some(p) = ebpf.program_mut(name)
            && let Ok(p) = <&mut TracePoint>::try_from(p)
        {
            let _ = p.unload();
        }
    }
}

fn attach_tracepoints(ebpf: &mut Ebpf, connect: bool) -> Result<(), String> {
    for name in tracepoint_programs(connect) {
        let p: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load()
            .map_err(|e| format!("loading {name}: {}", crate::errno::chain(&e)))?;
        if let Some(n) = p.info().ok().and_then(|i| i.verified_instruction_count()) {
            debug!("{name}: the verifier processed {n} instructions");
        }
        let category = programs::TRACEPOINT_CATEGORY;
        p.attach(category, name).map_err(|e| {
            format!(
                "attaching to {category}/{name}: {}",
                crate::errno::chain(&e)
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod stack_limit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_version("6.1.0-40-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn finds_a_kernel_symbol_not_a_module_one() {
        assert_eq!(
            symbol_address("ffffffff8a2b3c40 D udp_table", "udp_table"),
            Some(0xffff_ffff_8a2b_3c40)
        );
        assert_eq!(
            symbol_address("0000000000000000 D udp_table", "udp_table"),
            Some(0)
        );
        assert_eq!(
            symbol_address("ffffffff8a2b3c40 D udp_table_x", "udp_table"),
            None
        );
        assert_eq!(
            symbol_address("ffffffffc0a01000 d udp_table\t[vxlan]", "udp_table"),
            None
        );
        assert_eq!(symbol_address("garbage", "udp_table"), None);
    }

    #[test]
    fn an_fexit_target_needs_its_parameter_count() {
        let t = &FEXIT_PROGRAMS[0];
        assert_eq!(fits(t, Some(t.params)), Ok(()));
        assert_eq!(
            fits(t, None),
            Err("the kernel's BTF has no function inet_bind".to_string())
        );
        let wrong = fits(t, Some(t.params + 1)).unwrap_err();
        assert!(
            wrong.starts_with(
                "inet_bind takes 4 parameters in the kernel's BTF, but fexit/inet_bind expects 3"
            ),
            "{wrong}"
        );
        assert!(!wrong.contains('\n'), "{wrong}");
    }

    /// This host's BTF agrees with the table wherever it has the function.
    #[test]
    fn the_table_matches_this_kernels_btf() {
        let btf = Btf::from_file(Path::new(btf::VMLINUX)).expect(
            "this kernel's BTF (/sys/kernel/btf/vmlinux): portwatch cannot run without it, and \
             every machine this project tests on has it",
        );
        for t in FEXIT_PROGRAMS
            .iter()
            .chain([&CONFLICT_PROGRAM])
            .chain(&CONNECT_PROGRAMS)
        {
            if let Some(n) = btf.func_param_count(t.func) {
                assert_eq!(fits(t, Some(n)), Ok(()));
            }
        }
    }

    /// Every name user space looks up in the kernel object is defined there, in the section
    /// that makes it what user space takes it for: the contract's names are the object's.
    #[test]
    fn the_object_defines_every_name_of_the_contract() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let obj = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let section_of = |name: &str| -> Option<String> {
            let sym = obj
                .symbols()
                .find(|s| s.name() == Ok(name) && !s.is_undefined())?;
            let section = obj.section_by_index(sym.section_index()?).ok()?;
            Some(section.name().ok()?.to_string())
        };
        for name in tracepoint_programs(true) {
            assert_eq!(section_of(name).as_deref(), Some("tracepoint"), "{name}");
        }
        for t in FEXIT_PROGRAMS
            .iter()
            .chain([&CONFLICT_PROGRAM])
            .chain(&CONNECT_PROGRAMS)
        {
            let want = format!("fexit/{}", t.func);
            assert_eq!(section_of(t.prog), Some(want), "{}", t.prog);
        }
        for (name, target) in [
            (programs::ITER_TCP, "tcp"),
            (programs::ITER_UDP, "udp"),
            (programs::ITER_TASK_FILE, "task_file"),
        ] {
            let want = format!("iter/{target}");
            assert_eq!(section_of(name), Some(want), "{name}");
        }
        for name in [
            maps::EVENTS,
            maps::PORT_BITS,
            maps::LOST,
            maps::ITER_FILTER,
            maps::ITER_PEER_PORTS,
        ] {
            assert_eq!(section_of(name).as_deref(), Some("maps"), "{name}");
        }
        for name in [globals::LAYOUT, globals::SETTINGS] {
            let section = section_of(name).unwrap_or_default();
            assert!(section.starts_with(".rodata"), "{name} in {section:?}");
        }
    }

    /// The errno values the kernel side compares with are this architecture's.
    #[test]
    fn the_contracts_errnos_are_the_kernels() {
        use portwatch_common::errno;
        assert_eq!(errno::EBADF, libc::EBADF);
        assert_eq!(errno::EAGAIN, libc::EAGAIN);
        assert_eq!(errno::EFAULT, libc::EFAULT);
        assert_eq!(errno::ENOTSOCK, libc::ENOTSOCK);
        assert_eq!(errno::EADDRINUSE, libc::EADDRINUSE);
        assert_eq!(errno::EADDRNOTAVAIL, libc::EADDRNOTAVAIL);
    }
}
