//! `portwatch demo`: "can two programs use the same port?", answered by doing it on this
//! kernel. Each experiment makes real sockets, each server a process of its own, in a fresh
//! scratch network namespace of its own while
//! portwatch's own tracer (the trace session: loader, ring, FactFinder, explain) watches, and
//! the demo narrates the question, the sockets, the result the kernel gave, and portwatch's
//! explanation of the traced call.
//!
//! Nothing is left behind: the namespace has no name and lives only through handles and
//! sockets of this process, children die with it, and the BPF programs are attached through
//! file descriptors (no pins), so the kernel removes all of it when portwatch exits, whether
//! it finishes, is interrupted (SIGINT/SIGTERM: the experiment in progress is abandoned and
//! cleaned up) or is killed.

mod experiments;
mod lab;

use std::io::{self, Write as _};

use anyhow::{Context as _, Result, bail};

use self::{
    experiments::{ALL, Caller, Experiment, Trial},
    lab::result_name,
};
use crate::{
    cli::DemoArgs,
    event::Event,
    explain::Verdict,
    loader::{self, BackendChoice, KernelFilter},
    output::{
        self,
        json::{self as json_out, JsonDemo},
    },
    settings::EventFilter,
    trace::{self, EventSink, Session},
};

/// The port of every experiment. Outside the ephemeral range (no note about reserving it
/// distracts from the lesson), and free: each experiment runs in a fresh, empty network
/// namespace of its own, so one experiment's TIME_WAIT connections never meet another's
/// sockets.
const PORT: u16 = 8080;

/// Collects the traced events, with their verdicts, for the demo to pick from.
#[derive(Default)]
struct Collected(Vec<(Event, Option<Verdict>)>);

impl EventSink for Collected {
    fn event(&mut self, ev: &Event, verdict: Option<&Verdict>) -> io::Result<()> {
        self.0.push((ev.clone(), verdict.cloned()));
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The demo reads the ring right after each experiment's calls; a loss shows as an
    /// experiment without its traced event, which the narration says.
    fn lost(&mut self, _new: u64, _total: u64) -> io::Result<()> {
        Ok(())
    }
}

/// One experiment's report.
pub struct Report<'a> {
    pub experiment: &'a Experiment,
    pub trial: Trial,
    /// The reported call and its result, as the syscall returned it.
    pub caller: Option<Caller>,
    /// The traced event of that call, and portwatch's verdict on it.
    pub traced: Option<(Event, Option<Verdict>)>,
    /// What the experiment could not do (set-up failures), if anything.
    pub error: Option<String>,
}

impl Report<'_> {
    pub fn result(&self) -> String {
        self.caller
            .map(|c| result_name(c.result))
            .unwrap_or_else(|| "not-run".into())
    }
    pub fn rule(&self) -> Option<&'static str> {
        self.traced
            .as_ref()
            .and_then(|(_, v)| v.as_ref())
            .map(|v| v.rule.id())
    }
    fn json(&self, predicted_ok: Option<bool>) -> JsonDemo<'_> {
        JsonDemo {
            experiment: self.experiment.id,
            question: self.experiment.question,
            sockets: &self.trial.sockets,
            result: self.result(),
            rule: self.rule(),
            explanation: self.explanation(),
            details: self.verdict().map_or(&[], |v| v.details.as_slice()),
            fix: self.verdict().and_then(|v| v.fix.as_deref()),
            observations: &self.trial.observations,
            bsd: self.experiment.bsd,
            error: self.error.as_deref(),
            predicted_ok,
            correct: predicted_ok
                .zip(self.caller)
                .map(|(p, c)| p == c.result.is_ok()),
        }
    }

    fn verdict(&self) -> Option<&Verdict> {
        self.traced.as_ref().and_then(|(_, v)| v.as_ref())
    }

    pub fn explanation(&self) -> Option<String> {
        match &self.traced {
            Some((_, Some(v))) => Some(v.message.clone()),
            Some((_, None)) => Some("portwatch had nothing to say about this call".into()),
            None => None,
        }
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let chosen: Vec<(usize, &Experiment)> = ALL
        .iter()
        .enumerate()
        .filter(|(_, e)| args.only.as_deref().is_none_or(|o| o == e.id))
        .collect();
    if let Some(o) = &args.only
        && chosen.is_empty()
    {
        bail!("no experiment is called {o:?}; `portwatch demo --list` names them");
    }
    if args.list {
        let mut out = io::stdout().lock();
        for e in ALL {
            writeln!(out, "{:<24} {}", e.id, e.question)?;
        }
        return Ok(());
    }
    loader::check_privileges("demo")?;
    lab::catch_signals().context("catching SIGINT and SIGTERM")?;
    let kernel = loader::kernel_info()?;
    let mut loaded = loader::load(
        BackendChoice::Auto,
        &KernelFilter {
            pid: None,
            ports: vec![PORT],
            failed_only: false,
            include_self: true,
            connect: false,
        },
        &kernel,
    )?;
    let (mut ring, lost) = trace::take_ring(&mut loaded.ebpf)?;
    let host = std::fs::File::open("/proc/thread-self/ns/net").context("opening our netns")?;
    let backend = loaded.backend;
    let mut session = Session::new(
        loaded.ebpf,
        loaded.tables,
        Collected::default(),
        EventFilter {
            comm: None,
            uid: None,
            netns: None,
            cgroup: None,
            proto: None,
            family: None,
        },
        None,
        loaded.backend,
        lost,
    );
    let mut score = (0usize, 0usize);
    let mut out = io::stdout().lock();
    let mut outcome: io::Result<()> = Ok(());
    for (n, (_, e)) in chosen.into_iter().enumerate() {
        if lab::interrupted() {
            break;
        }
        let port = PORT;
        let scratch = lab::new_netns().context("creating a scratch network namespace")?;
        if n == 0 && !args.json {
            output::status(format_args!(
                "portwatch demo: each experiment in a fresh scratch network namespace (the \
                 first: net:[{}]), tracing with the {backend} backend",
                scratch.inode
            ));
        }
        let mut trial = Trial::default();
        let error = (e.run)(&mut trial, port).err().map(|e| e.to_string());
        // The kernel side wrote each call's event before the call returned.
        if let Err(e) = session.drain_rest(&mut ring) {
            outcome = Err(e);
            break;
        }
        let caller = trial.last;
        let traced = caller.and_then(|c| pick(&mut session.sink().0, c, port));
        session.sink().0.clear();
        let report = Report {
            experiment: e,
            trial,
            caller,
            traced,
            error,
        };
        let shown = if args.quiz {
            narrate_question(&mut out, &report, args.json, true)
                .and_then(|()| quiz(&mut out, &report, &mut score, args.json))
        } else {
            Ok(None)
        };
        if args.quiz && !args.json && lab::interrupted() {
            // Interrupted at the prompt: end the line, reveal nothing.
            let _ = writeln!(out);
            break;
        }
        let shown = shown.and_then(|pred| {
            if args.json {
                json_out::write_line(&mut out, &report.json(pred))
            } else {
                narrate(&mut out, &report, args.quiz)
            }
        });
        // Dropping the report kills the experiment's servers and closes its sockets; then
        // its namespace goes, and the tracer forgets it (it would otherwise keep it open, and
        // the next experiment's port would be "held in another namespace").
        let extra = report.trial.extra_namespaces();
        drop(report);
        lab::enter(&host).context("returning to our network namespace")?;
        for ino in extra.into_iter().chain([scratch.inode]) {
            session.forget_netns(ino);
        }
        drop(scratch);
        if let Err(e) = shown {
            outcome = Err(e);
            break;
        }
    }
    session.detach();
    drop(session);
    lab::enter(&host).context("returning to our network namespace")?;
    outcome?;
    if lab::interrupted() {
        output::status(format_args!(
            "portwatch demo: interrupted; the scratch namespace, its sockets and the tracer are \
             gone"
        ));
        std::process::exit(130);
    }
    if args.quiz {
        let line = format!("Score: {}/{}", score.0, score.1);
        if args.json {
            output::status(format_args!("{line}"));
        } else {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// The traced event of the reported call: the last one on `port` by the caller's process with
/// the same call.
fn pick(
    events: &mut Vec<(Event, Option<Verdict>)>,
    c: Caller,
    port: u16,
) -> Option<(Event, Option<Verdict>)> {
    let at = events
        .iter()
        .rposition(|(ev, _)| ev.pid == c.pid && ev.call == c.call && ev.port() == port)?;
    Some(events.swap_remove(at))
}

/// The question and the sockets. `hide_last`: the quiz asks about the last call, so its line
/// comes without its result (nor which call decided) until the answer is in.
fn narrate_question(
    out: &mut impl io::Write,
    r: &Report,
    json: bool,
    hide_last: bool,
) -> io::Result<()> {
    if json {
        return Ok(());
    }
    writeln!(out, "== {}: {}", r.experiment.id, r.experiment.question)?;
    for (i, s) in r.trial.sockets.iter().enumerate() {
        match &r.trial.last_line {
            Some((at, masked)) if hide_last && *at == i => writeln!(out, "   socket  {masked}")?,
            _ => writeln!(out, "   socket  {s}")?,
        }
    }
    Ok(())
}

/// Asks for a prediction (y: the last call succeeds, n: it fails) and scores it. Returns the
/// prediction (None at end of input or without one).
fn quiz(
    out: &mut impl io::Write,
    r: &Report,
    score: &mut (usize, usize),
    json: bool,
) -> io::Result<Option<bool>> {
    if !json {
        write!(out, "   Will the last call succeed? [y/n] ")?;
        out.flush()?;
    }
    let line = read_line()?;
    // A terminal echoed the answer and its newline; piped answers are not echoed.
    if !json && unsafe { libc::isatty(0) } == 0 {
        writeln!(out)?;
    }
    let Some(line) = line else {
        return Ok(None);
    };
    let prediction = match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "ok" => true,
        "n" | "no" | "fail" => false,
        _ => return Ok(None),
    };
    if let Some(c) = r.caller {
        score.1 += 1;
        if prediction == c.result.is_ok() {
            score.0 += 1;
        }
    }
    Ok(Some(prediction))
}

/// One line from stdin, read without buffering ahead (the next answer stays for the next
/// question) and given up on SIGINT.
fn read_line() -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        if lab::interrupted() {
            return Ok(None);
        }
        let mut b = [0u8; 1];
        let n = unsafe { libc::read(0, b.as_mut_ptr() as *mut libc::c_void, 1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        if b[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(b[0]);
    }
}

fn narrate(out: &mut impl io::Write, r: &Report, quizzed: bool) -> io::Result<()> {
    if !quizzed {
        narrate_question(out, r, false, false)?;
    } else if let Some((at, _)) = &r.trial.last_line
        && let Some(s) = r.trial.sockets.get(*at)
    {
        // The answer is in: the last call's line, with its result.
        writeln!(out, "   socket  {s}")?;
    }
    for o in &r.trial.observations {
        writeln!(out, "   seen    {o}")?;
    }
    if let Some(e) = &r.error {
        writeln!(out, "   error   the experiment could not finish: {e}")?;
    }
    writeln!(out, "   result  {} (observed on this kernel)", r.result())?;
    if let (Some((ev, _)), Some(c)) = (&r.traced, r.caller)
        && ev.ret != c.result.map_or_else(|e| -e, |()| 0)
    {
        writeln!(
            out,
            "   note    the traced call returned {}, the syscall here returned {}",
            result_name(ev.errno().map_or(Ok(()), Err)),
            r.result()
        )?;
    }
    match &r.traced {
        Some((_, Some(v))) => {
            writeln!(out, "   rule    {}", v.rule)?;
            writeln!(out, "   why     {}", v.message)?;
            for d in &v.details {
                writeln!(out, "           {d}")?;
            }
            if let Some(f) = &v.fix {
                writeln!(out, "   fix     {f}")?;
            }
        }
        Some((_, None)) => writeln!(
            out,
            "   why     portwatch had nothing to say about this call"
        )?,
        None => writeln!(
            out,
            "   why     the tracer did not deliver this call's event"
        )?,
    }
    if let Some(n) = r.experiment.bsd {
        writeln!(out, "   BSD     {n}")?;
    }
    writeln!(out)
}
