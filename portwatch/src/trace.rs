//! `portwatch trace`: the live loop. Reads the ring buffer, decodes, explains, prints, counts.
//!
//! The kernel side only wakes us once a quarter of the ring is full (a wakeup costs more than
//! the rest of the event path together), so we also drain on a short timer. On exit we detach
//! first, then drain what is left, so the last events before Ctrl-C are not lost.

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use log::debug;
use portwatch_common::maps;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    event::{self, Event, KernelHolder, Record},
    explain,
    facts::FactFinder,
    loader,
    netns::{self, Namespaces},
    output::{self, Clock, Printer, Summary},
    settings::{EventFilter, TraceSettings},
};

/// How often the ring buffer is drained when the kernel has not woken us.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub struct Session {
    ebpf: Ebpf,
    printer: Printer,
    filter: EventFilter,
    namespaces: Namespaces,
    facts: FactFinder,
    /// Holders the kernel side sent, waiting for their thread's event, which follows them,
    /// with the pass they came in. A thread's event comes in the same pass or the next; one
    /// that never comes (lost, or the thread died) is dropped after that.
    conflicts: HashMap<u32, (u64, Vec<KernelHolder>)>,
    /// Passes handled so far.
    passes: u64,
    /// Records read ahead while the tables were read; they open the next pass.
    lookahead: Vec<Record>,
    summary: Summary,
    printed: u64,
    limit: Option<u64>,
}

/// Records taken from the ring buffer per pass. A pass is explained as a unit: one socket
/// table lookup per port serves all its events. It also bounds the memory a flood can take.
const BATCH: usize = 16384;
/// Passes per wakeup before going back to the event loop (to serve signals and the timer).
const MAX_PASSES_PER_DRAIN: usize = 16;

/// Socket inodes that a successful call in `records` bound, with the position of the first.
fn bound_in(records: &[Record]) -> HashMap<u64, usize> {
    let mut at = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Record::Call(ev) = r
            && ev.ok()
            && let Some(s) = &ev.socket
            && s.ino != 0
        {
            at.entry(s.ino).or_insert(i);
        }
    }
    at
}

fn take(ring: &mut RingBuf<MapData>, into: &mut Vec<Record>, max: usize) {
    while into.len() < max {
        let Some(item) = ring.next() else { break };
        match event::decode(&item) {
            Some(r) => into.push(r),
            None => debug!("undecodable record of {} bytes", item.len()),
        }
    }
}

impl Session {
    /// Handles one pass of records.
    ///
    /// The socket tables are read after the calls happened, so a socket in them may be younger
    /// than the call being explained. Two guards keep such sockets out of explanations: a
    /// socket bound later in the same pass, and a socket bound by a record that arrived while
    /// the tables were being read (the look-ahead, which starts the next pass).
    fn handle_batch(&mut self, batch: Vec<Record>, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        self.passes += 1;
        let pass = self.passes;
        self.conflicts.retain(|_, (at, _)| *at + 1 >= pass);
        let bound_at = bound_in(&batch);
        // First the tables, for every call of the pass; the facts of each call are gathered
        // from them (cached) when it is explained, so a pass holds its records and no more.
        let mut keep = vec![false; batch.len()];
        let mut batch = batch;
        for (i, r) in batch.iter_mut().enumerate() {
            match r {
                Record::Holder { tid, holder } => {
                    let (at, list) = self.conflicts.entry(*tid).or_default();
                    *at = pass;
                    // The kernel side sends at most MAX_HOLDERS, plus the conflict check's.
                    if list.len() < 2 * usize::from(portwatch_common::MAX_HOLDERS) {
                        list.push(holder.clone());
                    }
                }
                Record::Call(ev) => {
                    ev.kernel_holders = self
                        .conflicts
                        .remove(&ev.tid)
                        .map(|(_, list)| list)
                        .unwrap_or_default();
                    if !self.filter.keeps(ev) {
                        continue;
                    }
                    self.enrich(ev);
                    self.facts
                        .prefetch(&mut self.ebpf, &mut self.namespaces, ev);
                    keep[i] = true;
                }
            }
        }
        take(ring, &mut self.lookahead, BATCH);
        let future = bound_in(&self.lookahead);
        for (i, r) in batch.into_iter().enumerate() {
            let Record::Call(ev) = r else { continue };
            if !keep[i] {
                continue;
            }
            let mut facts = self.facts.gather(&mut self.ebpf, &mut self.namespaces, &ev);
            let younger =
                |ino: u64| future.contains_key(&ino) || bound_at.get(&ino).is_some_and(|&j| j > i);
            if let Some(h) = facts.holders.as_mut() {
                h.retain(|h| !younger(h.socket.ino));
            }
            facts.other_netns.retain(|h| !younger(h.socket.ino));
            self.summary.count(&ev);
            let verdict = explain::explain(&ev, &facts);
            self.printer.event(&ev, verdict.as_ref())?;
            self.printed += 1;
            if self.done() {
                break;
            }
        }
        Ok(())
    }

    /// Adds what the kernel side cannot know: interface names in the socket's namespace.
    fn enrich(&mut self, ev: &mut Event) {
        if let (Some(r), Some(sock)) = (ev.requested.as_mut(), ev.socket.as_ref())
            && r.scope_id != 0
        {
            self.namespaces.note(sock.netns, ev.pid, ev.tid);
            r.scope_name = self.namespaces.ifname(sock.netns, r.scope_id);
        }
        if let Some(sock) = ev.socket.as_mut() {
            self.namespaces.note(sock.netns, ev.pid, ev.tid);
            if sock.options.bound_dev_if != 0 {
                sock.options.device = self
                    .namespaces
                    .ifname(sock.netns, sock.options.bound_dev_if);
            }
        }
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    /// Handles what the ring holds, a bounded amount at a time so that signals and the timer
    /// are served between passes even under a flood.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        for _ in 0..MAX_PASSES_PER_DRAIN {
            let mut batch = std::mem::take(&mut self.lookahead);
            take(ring, &mut batch, BATCH);
            if batch.is_empty() || self.done() {
                break;
            }
            self.facts.new_batch();
            self.handle_batch(batch, ring)?;
            // Another pass right away only when a full batch is already waiting (a backlog).
            // Each pass walks the socket tables (the whole TCP hash, ~3 ms); passes run back to
            // back on a partial batch would shrink to a few hundred events each and spend most
            // of the CPU on walks, so a partial batch waits for the next wakeup or tick.
            if self.lookahead.len() < BATCH {
                break;
            }
        }
        self.printer.flush()
    }
}

pub async fn run(settings: TraceSettings) -> Result<()> {
    loader::check_privileges("trace")?;
    let kernel = loader::kernel_info()?;
    let mut loaded = loader::load(settings.backend, &settings.kernel_filter, &kernel)?;
    // Loading parsed the kernel's BTF twice (ours, then aya's); give that memory back.
    unsafe { libc::malloc_trim(0) };
    let started = Instant::now();
    let ring = RingBuf::try_from(
        loaded
            .ebpf
            .take_map(maps::EVENTS)
            .context("EVENTS map missing")?,
    )
    .context("opening the ring buffer")?;
    let lost_map = loaded
        .ebpf
        .take_map(maps::LOST)
        .context("LOST map missing")?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its whole life.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    if let Some(why) = &loaded.fallback {
        output::status(format_args!(
            "portwatch: fexit unavailable ({why}); using the syscall tracepoints"
        ));
    }
    output::status(format_args!(
        "portwatch: tracing bind() and listen() with the {} backend (attached in {} ms{}). \
         Ctrl-C to stop.",
        loaded.backend,
        loaded.load_time.as_millis(),
        if loaded.conflict_hook {
            "; holders from the kernel's conflict check"
        } else {
            ""
        }
    ));

    let backend = loaded.backend;
    let mut session = Session {
        ebpf: loaded.ebpf,
        printer: Printer::new(
            settings.json,
            settings.color,
            Clock::now(),
            netns::current(),
        ),
        filter: settings.filter,
        namespaces: Namespaces::default(),
        facts: FactFinder::new(loaded.tables),
        conflicts: HashMap::new(),
        passes: 0,
        lookahead: Vec::new(),
        summary: Summary::new(backend),
        printed: 0,
        limit: settings.count,
    };
    session.printer.header().context("writing to stdout")?;

    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported_lost = 0u64;
    let mut outcome: io::Result<()> = Ok(());
    while !session.done() {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                outcome = session.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                outcome = session.drain(ring.get_mut());
                if outcome.is_ok() {
                    outcome = report_lost(&lost_map, &mut session, &mut reported_lost);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if outcome.is_err() {
            break;
        }
    }

    // Detach before the last drain: nothing new arrives, nothing already written is lost.
    loader::detach(&mut session.ebpf);
    let mut ring = ring.into_inner();
    // Nothing produces any more, so this ends.
    while outcome.is_ok()
        && !session.done()
        && (!session.lookahead.is_empty() || ring_has_data(&mut ring))
    {
        outcome = session.drain(&mut ring);
    }
    if outcome.is_ok() {
        outcome = report_lost(&lost_map, &mut session, &mut reported_lost);
    }
    session.summary.seconds = started.elapsed().as_secs_f64();
    let (rb, pending) = lost_totals(&lost_map);
    session.summary.lost_ringbuf = rb;
    session.summary.lost_pending = pending;
    outcome.context("writing to stdout")?;
    session
        .printer
        .summary(&session.summary)
        .context("writing to stdout")
}

/// Whether the ring buffer holds a record, without consuming it (the next drain reads it).
fn ring_has_data(ring: &mut RingBuf<MapData>) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

fn lost_totals(map: &aya::maps::Map) -> (u64, u64) {
    let Ok(arr) = aya::maps::PerCpuArray::<_, u64>::try_from(map) else {
        return (0, 0);
    };
    let sum = |i: u32| {
        arr.get(&i, 0)
            .map(|v| v.iter().copied().sum::<u64>())
            .unwrap_or(0)
    };
    (sum(0), sum(1))
}

fn report_lost(map: &aya::maps::Map, session: &mut Session, reported: &mut u64) -> io::Result<()> {
    let (rb, pending) = lost_totals(map);
    let total = rb + pending;
    if total > *reported {
        session.printer.lost(total - *reported, total)?;
        *reported = total;
    }
    Ok(())
}
