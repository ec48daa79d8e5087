//! `portwatch trace`: the live loop. Reads the ring buffer, decodes, explains, prints, counts.
//!
//! The kernel side only wakes us once a quarter of the ring is full (a wakeup costs more than
//! the rest of the event path together), so we also drain on a short timer. A drain runs for
//! at most [`DRAIN_SLICE`], so signals, the timer and the lost-event check are served every
//! ~100 ms even under a flood.
//!
//! On Ctrl-C or SIGTERM we detach first, then explain what is left for at most
//! [`EXIT_GRACE`]; whatever still waits after that is counted and dropped, and the summary
//! says how many. A second signal ends the process at once (the first one restores the
//! default action); the kernel detaches the programs when their file descriptors close.

use std::{
    collections::HashMap,
    io,
    sync::Arc,
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
    cgroup::Workloads,
    event::{self, Event, KernelHolder, Record},
    explain,
    facts::FactFinder,
    journal::Journal,
    loader,
    metrics::{self, Metrics},
    netns::{self, Namespaces},
    output::{
        self, Clock, Printer, Summary,
        file::{LineFile, Sink},
    },
    query::{self, Recent},
    settings::{EventFilter, TraceSettings},
};

/// How often the ring buffer is drained when the kernel has not woken us.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Where a session's explained events go: the trace's [`Printer`], or the demo's collector.
pub trait EventSink {
    fn event(&mut self, ev: &Event, verdict: Option<&explain::Verdict>) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// `new` more events were lost in the kernel (`total` in all).
    fn lost(&mut self, new: u64, total: u64) -> io::Result<()>;
}

impl EventSink for Printer {
    fn event(&mut self, ev: &Event, verdict: Option<&explain::Verdict>) -> io::Result<()> {
        Printer::event(self, ev, verdict)
    }
    fn flush(&mut self) -> io::Result<()> {
        Printer::flush(self)
    }
    fn lost(&mut self, new: u64, total: u64) -> io::Result<()> {
        Printer::lost(self, new, total)
    }
}

/// The event path shared by `trace` and `demo`: ring records in, explained events out to `P`.
pub struct Session<P: EventSink = Printer> {
    ebpf: Ebpf,
    printer: P,
    filter: EventFilter,
    namespaces: Namespaces,
    facts: FactFinder,
    /// Names the callers' cgroups.
    workloads: Workloads,
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
    /// The kernel side's per-CPU counters of dropped events, and how many were reported.
    lost_map: aya::maps::Map,
    reported_lost: u64,
    lost_checked: Instant,
    /// `--metrics`: counted here, served by [`metrics::server`].
    metrics: Option<Arc<Metrics>>,
    /// `--quiet`: count and explain, print no event lines.
    quiet: bool,
    /// `--journal`: failures to the systemd journal.
    journal: Option<Journal>,
    /// The last failures, for `portwatch why`.
    recent: Option<Arc<std::sync::Mutex<Recent>>>,
    /// `--metrics`: when the ephemeral-range gauge is to be measured next.
    ports_due: Option<Instant>,
    /// A failed connect() whose repeats may still come ([`Event::repeats`]), explained and
    /// waiting to be written: see [`Held`].
    held: Option<Held>,
}

/// A failed connect() held back, so that repeats arriving in the next reads of the ring fold
/// into it instead of making events of their own: io_uring's retries of one request can run
/// longer than one read of the ring takes to come round.
///
/// Only the last call of a pass is held, and only until another call is to be written, which
/// it then precedes: so events still come out in the order of their first attempts. It is
/// written as soon as a read brings another call, or a drain finds nothing new, or the trace
/// ends: about two poll intervals after its last attempt at most.
struct Held {
    ev: Event,
    verdict: Option<explain::Verdict>,
    /// This pass brought repeats of it and nothing else: hold on.
    extended: bool,
    /// This pass brought another call: write it first.
    closed: bool,
}

/// Records taken from the ring buffer per pass. A pass is explained as a unit: one socket
/// table lookup per port serves all its events. It also bounds the memory a flood can take.
const BATCH: usize = 4096;
/// How long one drain may run before the event loop gets its turn (signals, timer, losses).
const DRAIN_SLICE: Duration = Duration::from_millis(100);
/// How often, at most, a drain checks the kernel's lost-event counters (the timer also does).
const LOST_CHECK: Duration = Duration::from_millis(50);
/// How often `--metrics` measures the ephemeral ranges (a socket-table read per namespace).
const PORTS_INTERVAL: Duration = Duration::from_secs(10);
/// How long the last events are explained after a stop signal.
const EXIT_GRACE: Duration = Duration::from_millis(600);

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

impl<P: EventSink> Session<P> {
    /// A session over a loaded object whose ring and lost-counter maps were taken out
    /// ([`take_ring`]).
    pub fn new(
        ebpf: Ebpf,
        tables: Result<(), crate::tables::TablesError>,
        printer: P,
        filter: EventFilter,
        limit: Option<u64>,
        backend: portwatch_common::Backend,
        lost_map: aya::maps::Map,
    ) -> Self {
        Session {
            ebpf,
            printer,
            filter,
            namespaces: Namespaces::default(),
            facts: FactFinder::new(tables).for_trace(),
            workloads: Workloads::default(),
            conflicts: HashMap::new(),
            passes: 0,
            lookahead: Vec::new(),
            summary: Summary::new(backend),
            printed: 0,
            limit,
            lost_map,
            reported_lost: 0,
            lost_checked: Instant::now(),
            metrics: None,
            quiet: false,
            journal: None,
            recent: None,
            ports_due: None,
            held: None,
        }
    }

    /// Where the explained events went.
    pub fn sink(&mut self) -> &mut P {
        &mut self.printer
    }

    /// Forgets network namespace `ino`, which the caller has done with (the demo, after each
    /// experiment): its handle is closed, so the namespace can go, and a later call on the same
    /// port is no longer compared with its sockets.
    pub fn forget_netns(&mut self, ino: u32) {
        self.namespaces.forget(ino);
        self.facts.forget_netns(ino);
    }

    /// Detaches the programs (the object is unloaded when the session is dropped).
    pub fn detach(&mut self) {
        loader::detach(&mut self.ebpf);
    }

    /// Handles one pass of records.
    ///
    /// The socket tables are read after the calls happened, so a socket in them may be younger
    /// than the call being explained. Two guards keep such sockets out of explanations: a
    /// socket bound later in the same pass, and a socket bound by a record that arrived while
    /// the tables were being read (the look-ahead, which starts the next pass).
    ///
    /// A failed connect() that repeats an earlier one of the same process on the same socket
    /// ([`Event::repeats`]), in this pass or held from the last one ([`Held`]), is folded into
    /// that call's event, which counts the attempts: io_uring makes dozens of them for one
    /// request.
    fn handle_batch(&mut self, batch: Vec<Record>, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        self.passes += 1;
        let pass = self.passes;
        let started = Instant::now();
        self.conflicts.retain(|_, (at, _)| *at + 1 >= pass);
        let bound_at = bound_in(&batch);
        // First the tables, for every call of the pass; the facts of each call are gathered
        // from them (cached) when it is explained, so a pass holds its records and no more.
        let mut keep = vec![false; batch.len()];
        let mut batch = batch;
        // Per process and socket, the last failed connect() kept in this pass: a repeat of it is
        // folded into it.
        let mut last_call: HashMap<(u32, u64), usize> = HashMap::new();
        let mut last_kept = None;
        for (i, kept) in keep.iter_mut().enumerate() {
            let (before, rest) = batch.split_at_mut(i);
            match &mut rest[0] {
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
                    if let Some(key) = ev.repeat_key() {
                        if let Some(&j) = last_call.get(&key)
                            && let Record::Call(first) = &mut before[j]
                            && ev.repeats(first)
                        {
                            first.attempts += 1;
                            continue;
                        }
                        if let Some(h) = self.held.as_mut()
                            && !h.closed
                            && ev.repeats(&h.ev)
                        {
                            h.ev.attempts += 1;
                            h.extended = true;
                            continue;
                        }
                        last_call.insert(key, i);
                    }
                    // Any other call ends the held one: it goes out before this.
                    if let Some(h) = self.held.as_mut() {
                        h.closed = true;
                    }
                    last_kept = Some(i);
                    self.facts
                        .prefetch(&mut self.ebpf, &mut self.namespaces, ev);
                    *kept = true;
                }
            }
        }
        // The range's sockets, read once per namespace for all the pass's calls that count them.
        self.facts
            .read_wanted_ranges(&mut self.ebpf, &mut self.namespaces);
        take(ring, &mut self.lookahead, BATCH);
        let future = bound_in(&self.lookahead);
        // The held call goes out first (it came before this pass's calls), unless this pass
        // brought only repeats of it.
        self.write_held(|h| h.closed || !h.extended)?;
        if let Some(h) = self.held.as_mut() {
            h.extended = false;
        }
        for (i, r) in batch.into_iter().enumerate() {
            if self.done() {
                break;
            }
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
            let verdict = explain::explain(&ev, &facts);
            // The pass's last call, a failed connect(): its repeats may be in the next pass.
            if last_kept == Some(i) && ev.repeat_key().is_some() {
                self.held = Some(Held {
                    ev,
                    verdict,
                    extended: false,
                    closed: false,
                });
                continue;
            }
            self.write(&ev, verdict.as_ref())?;
        }
        let explained = keep.iter().filter(|&&k| k).count();
        if explained > 0 {
            debug!(
                "pass {pass}: {explained} calls explained in {:.1?}",
                started.elapsed()
            );
        }
        Ok(())
    }

    /// Counts an explained call and writes it everywhere it goes.
    fn write(&mut self, ev: &Event, verdict: Option<&explain::Verdict>) -> io::Result<()> {
        self.summary.count(ev);
        if let Some(m) = &self.metrics {
            m.record(ev, verdict);
        }
        if let Some(j) = &mut self.journal {
            j.call(ev, verdict);
        }
        if let Some(r) = &self.recent
            && !ev.ok()
            && let Ok(mut r) = r.lock()
        {
            r.note(ev, verdict);
        }
        if !self.quiet {
            self.printer.event(ev, verdict)?;
        }
        self.printed += 1;
        Ok(())
    }

    /// Writes the held call (see [`Held`]) if `due` says it is time.
    fn write_held(&mut self, due: impl Fn(&Held) -> bool) -> io::Result<()> {
        match self.held.take_if(|h| due(h)) {
            Some(h) if !self.done() => self.write(&h.ev, h.verdict.as_ref()),
            _ => Ok(()),
        }
    }

    /// Adds what the kernel side cannot know: interface names in the socket's namespace, what
    /// the caller's cgroup is.
    fn enrich(&mut self, ev: &mut Event) {
        if let (Some(r), Some(sock)) = (ev.requested.as_mut(), ev.socket.as_ref())
            && r.scope_id != 0
        {
            self.namespaces.note(sock.netns, ev.pid, ev.tid);
            r.scope_name = self.namespaces.ifname(sock.netns, r.scope_id);
        }
        ev.workload = self.workloads.of_id(ev.cgroup_id);
        if let Some(sock) = ev.socket.as_mut() {
            self.namespaces.note(sock.netns, ev.pid, ev.tid);
            self.namespaces.name_device(sock);
        }
    }

    /// `--metrics`: measures how full each watched namespace's ephemeral range is (one
    /// socket-table read per namespace) into `portwatch_ephemeral_ports_used_ratio`, at most
    /// every [`PORTS_INTERVAL`], and never more than a twentieth of the time: on a host with
    /// 100k connections a read takes ~0.1 s, during which no event is read. The namespaces are
    /// `--netns`'s, else every one portwatch sees, up to [`metrics::MAX_RANGE_NETNS`] of them.
    fn measure_ports(&mut self) {
        let Some(m) = self.metrics.clone() else {
            return;
        };
        if self.ports_due.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let started = Instant::now();
        let namespaces = match self.filter.netns {
            Some(n) => vec![n],
            None => self.namespaces.discover(),
        };
        // Its own pass: the events' caches are neither used nor left behind.
        self.facts.new_batch();
        let mut measured = Vec::new();
        for n in namespaces.into_iter().take(metrics::MAX_RANGE_NETNS) {
            match self
                .facts
                .netns_ratios(&mut self.ebpf, &mut self.namespaces, n)
            {
                Ok(p) => {
                    for proto in [crate::sockets::Proto::Tcp, crate::sockets::Proto::Udp] {
                        if let Some(r) = p.worst_ratio(proto) {
                            m.set_ephemeral_ratio(n, proto, r);
                        }
                    }
                    measured.push(n);
                }
                Err(why) => debug!("netns {n}: ephemeral range not measured: {why}"),
            }
        }
        m.retain_ephemeral_netns(&measured);
        self.facts.new_batch();
        debug!(
            "ephemeral ranges of {} namespaces measured in {:.1?}",
            measured.len(),
            started.elapsed()
        );
        self.ports_due = Some(Instant::now() + PORTS_INTERVAL.max(20 * started.elapsed()));
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    /// Handles everything still in the ring. Call it once nothing produces any more (after
    /// [`Session::detach`]), or right after the calls whose events are wanted: the kernel side
    /// has written a call's event before the call returns.
    pub fn drain_rest(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while !self.done() && (!self.lookahead.is_empty() || ring_has_data(ring)) {
            self.drain(ring, Instant::now() + DRAIN_SLICE)?;
        }
        self.write_held(|_| true)
    }

    /// Handles what the ring holds, pass by pass, until it is empty or `until`: signals, the
    /// timer and the lost-event check are served between drains even under a flood. Losses
    /// are checked after every pass, so a warning follows a loss within a pass.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, until: Instant) -> io::Result<()> {
        let mut passes = 0;
        loop {
            let mut batch = std::mem::take(&mut self.lookahead);
            take(ring, &mut batch, BATCH);
            if batch.is_empty() {
                // Nothing came since the last drain (a poll interval, when the timer drains): no
                // repeat of a held call is on its way. An empty ring right after a pass proves
                // nothing: a run of repeats may still be going on.
                if passes == 0 {
                    self.write_held(|_| true)?;
                }
                break;
            }
            passes += 1;
            if self.done() {
                break;
            }
            self.facts.new_batch();
            self.handle_batch(batch, ring)?;
            // A loss check is a syscall per CPU: after a pass, but not more than every
            // LOST_CHECK (a flood makes a pass every few ms).
            if self.lost_checked.elapsed() >= LOST_CHECK {
                self.report_lost()?;
            }
            if Instant::now() >= until {
                break;
            }
        }
        self.printer.flush()
    }

    /// Reports events the kernel dropped since the last report.
    fn report_lost(&mut self) -> io::Result<()> {
        self.lost_checked = Instant::now();
        let Some(total) = lost_total(&self.lost_map) else {
            return Ok(());
        };
        if total > self.reported_lost {
            if let Some(m) = &self.metrics {
                m.lost(total - self.reported_lost);
            }
            self.printer.lost(total - self.reported_lost, total)?;
            self.reported_lost = total;
        }
        Ok(())
    }

    /// Counts and drops what still waits (records not yet explained): after a stop signal,
    /// once the grace period is over. Holder records are not events and are not counted.
    fn drop_rest(&mut self, ring: &mut RingBuf<MapData>) -> u64 {
        let mut dropped = self
            .lookahead
            .drain(..)
            .filter(|r| matches!(r, Record::Call(_)))
            .count() as u64;
        while let Some(item) = ring.next() {
            if matches!(
                item.first(),
                Some(
                    &portwatch_common::record::BIND
                        | &portwatch_common::record::LISTEN
                        | &portwatch_common::record::CONNECT
                )
            ) {
                dropped += 1;
            }
        }
        dropped
    }
}

/// The ring buffer and the lost-events counters, taken out of a loaded object.
pub fn take_ring(ebpf: &mut Ebpf) -> Result<(RingBuf<MapData>, aya::maps::Map)> {
    let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?)
        .context("opening the ring buffer")?;
    let lost = ebpf.take_map(maps::LOST).context("LOST map missing")?;
    Ok((ring, lost))
}

pub async fn run(settings: TraceSettings) -> Result<()> {
    loader::check_privileges("trace")?;
    let kernel = loader::kernel_info()?;
    let mut loaded = loader::load(settings.backend, &settings.kernel_filter, &kernel)?;
    // Loading parsed the kernel's BTF twice (ours, then aya's); give that memory back.
    unsafe { libc::malloc_trim(0) };
    let started = Instant::now();
    let (ring, lost_map) = take_ring(&mut loaded.ebpf)?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its whole life.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let clock = Clock::now();
    let mut printer = Printer::new(settings.json, settings.color, clock, netns::current());
    if let Some(target) = &settings.output {
        let file = LineFile::open(target.clone())
            .with_context(|| format!("--output: opening {}", target.path.display()))?;
        printer = printer.writing_to(Sink::File(file));
    }

    let journal = if settings.journal {
        Some(Journal::open()?)
    } else {
        None
    };
    // `portwatch why` can ask from the ready line on.
    let recent = Arc::new(std::sync::Mutex::new(Recent::new(clock)));
    let _served = match query::server::start(Arc::clone(&recent)) {
        Ok(served) => Some(served),
        Err(e) => {
            output::status(format_args!(
                "portwatch: note: `portwatch why` cannot ask this tracer: {}: {e}",
                query::DIR
            ));
            None
        }
    };

    // Served before the ready line, so whoever waits for that line can scrape at once.
    let metrics = match settings.metrics {
        Some(addr) => {
            let m = Arc::new(Metrics::new(loaded.backend, &settings.kernel_filter.ports));
            let at = metrics::server::start(addr, Arc::clone(&m)).await?;
            output::status(format_args!("portwatch: metrics at http://{at}/metrics"));
            Some(m)
        }
        None => None,
    };
    if let Some(why) = &loaded.fallback {
        output::status(format_args!(
            "portwatch: fexit unavailable ({why}); using the syscall tracepoints"
        ));
    }
    output::status(format_args!(
        "portwatch: tracing bind() and listen() with the {} backend (attached in {} ms{}{}). \
         Ctrl-C to stop.",
        loaded.backend,
        loaded.load_time.as_millis(),
        if loaded.conflict_hook {
            "; holders from the kernel's conflict check"
        } else {
            ""
        },
        if settings.kernel_filter.connect {
            "; also connect()s that find no local port"
        } else {
            ""
        }
    ));

    let backend = loaded.backend;
    let mut session = Session::new(
        loaded.ebpf,
        loaded.tables,
        printer,
        settings.filter,
        settings.count,
        backend,
        lost_map,
    );
    session.metrics = metrics;
    session.quiet = settings.quiet;
    session.journal = journal;
    session.recent = Some(recent);
    session.measure_ports();
    if !session.quiet {
        session.printer.header().context("writing to stdout")?;
    }

    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outcome: io::Result<()> = Ok(());
    while !session.done() {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                outcome = session.drain(guard.get_inner_mut(), Instant::now() + DRAIN_SLICE);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                session.measure_ports();
                outcome = session.drain(ring.get_mut(), Instant::now() + DRAIN_SLICE);
                if outcome.is_ok() {
                    outcome = session.report_lost();
                }
                if let Some(j) = &mut session.journal {
                    j.tick(false);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                if let Err(e) = session.printer.reopen() {
                    output::status(format_args!("portwatch: warning: SIGHUP: reopening the output file: {e}"));
                }
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    // A second Ctrl-C or SIGTERM from here on ends the process at once.
    restore_default_signals();

    // Detach before the last drain: nothing new arrives, nothing already written is lost.
    session.detach();
    let mut ring = ring.into_inner();
    let grace = Instant::now() + EXIT_GRACE;
    while outcome.is_ok()
        && !session.done()
        && Instant::now() < grace
        && (!session.lookahead.is_empty() || ring_has_data(&mut ring))
    {
        outcome = session.drain(&mut ring, grace);
    }
    if outcome.is_ok() {
        outcome = session.write_held(|_| true);
    }
    if !session.done() {
        session.summary.unexplained_at_exit = session.drop_rest(&mut ring);
    }
    if outcome.is_ok() {
        outcome = session.report_lost();
    }
    session.summary.seconds = started.elapsed().as_secs_f64();
    // An unreadable counter claims nothing new: the summary keeps the last count read.
    session.summary.lost = lost_total(&session.lost_map).unwrap_or(session.reported_lost);
    if let Some(j) = &mut session.journal {
        j.finish();
    }
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

/// Events the kernel side dropped so far, summed over CPUs. None when the counter could not
/// be read: said once on stderr, so a count that stops growing is not mistaken for no losses.
fn lost_total(map: &aya::maps::Map) -> Option<u64> {
    let read = aya::maps::PerCpuArray::<_, u64>::try_from(map).and_then(|arr| {
        arr.get(&portwatch_common::lost::RINGBUF, 0)
            .map(|v| v.iter().copied().sum::<u64>())
    });
    match read {
        Ok(total) => Some(total),
        Err(e) => {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                output::status(format_args!(
                    "portwatch: warning: could not read the kernel's lost-event counter ({} \
                     map): {}; lost counts from here on are the last ones read",
                    maps::LOST,
                    crate::errno::chain(&e)
                ));
            }
            None
        }
    }
}

/// Gives SIGINT and SIGTERM back their default action: after the first one, a second ends
/// the process at once instead of waiting for the last explanations.
fn restore_default_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: resetting a disposition to SIG_DFL has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}
