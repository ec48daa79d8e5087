//! `portwatch why [PORT]`: the failures the running tracers recorded ([`crate::query`]), or a
//! JSON log's, shown as `trace` showed them. Answers "why did port 8080 fail?" after the fact.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    cli::WhyArgs,
    netns,
    output::{self, file::rotated, json::JsonRecord, parse_rfc3339},
    query,
};

/// The JSON log the shipped systemd unit writes: read when no tracer runs.
pub const UNIT_LOG: &str = "/var/log/portwatch/events.jsonl";
/// How long a tracer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Rotated siblings looked for at most (`FILE.1` ... `FILE.N`).
const MAX_SIBLINGS: u32 = 1000;

/// One recorded failure: its time, the object, and the line as it was written.
struct Failure {
    unix_ns: i128,
    value: Value,
    line: String,
}

/// What was read, and what to say about where it came from.
#[derive(Default)]
struct Found {
    failures: Vec<Failure>,
    notes: Vec<String>,
}

pub fn run(args: WhyArgs) -> Result<()> {
    let found = match &args.log {
        Some(path) => read_log(path)?,
        None => match ask_tracers()? {
            Some(found) => found,
            None if Path::new(UNIT_LOG).exists() => {
                output::status(format_args!(
                    "portwatch: no tracer is running; reading the unit's JSON log {UNIT_LOG}"
                ));
                read_log(Path::new(UNIT_LOG))?
            }
            None => bail!(
                "no portwatch tracer is running on this host (none answers in {}); start one \
                 with `sudo systemctl start portwatch` or `sudo portwatch trace`, or read a \
                 JSON log with `portwatch why --log FILE`",
                query::DIR
            ),
        },
    };
    for note in &found.notes {
        output::status(format_args!("portwatch: {note}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let cutoff = args.since.map(|d| now - d.as_nanos() as i128);
    let mut shown: Vec<Failure> = found
        .failures
        .into_iter()
        .filter(|f| args.port.is_none_or(|p| on_port(&f.value, p)))
        .filter(|f| cutoff.is_none_or(|c| f.unix_ns >= c))
        .collect();
    shown.sort_by_key(|f| f.unix_ns);
    dedupe(&mut shown);
    let what = format!(
        "{}{}",
        args.port
            .map(|p| format!(" on port {p}"))
            .unwrap_or_default(),
        args.since
            .map(|d| format!(" in the last {}", words(d)))
            .unwrap_or_default()
    );
    if shown.is_empty() {
        output::status(format_args!("portwatch: no failed call{what} was recorded"));
        return Ok(());
    }
    output::status(format_args!(
        "portwatch: {} failed call{}{what}, oldest first:",
        shown.len(),
        if shown.len() == 1 { "" } else { "s" }
    ));
    let own_netns = netns::current();
    let mut out = io::BufWriter::new(io::stdout().lock());
    if !args.json {
        writeln!(out, "{}", output::why::header())?;
    }
    for f in &shown {
        if args.json {
            writeln!(out, "{}", f.line)?;
        } else {
            write!(
                out,
                "{}",
                output::why::event(&f.value, f.unix_ns, own_netns)
            )?;
        }
    }
    out.flush().context("writing to stdout")
}

/// "2h", "90 s": a duration as given.
fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The port asked for, or the one bound.
fn on_port(ev: &Value, port: u16) -> bool {
    ["requested", "bound"]
        .iter()
        .any(|k| ev[k]["port"].as_u64() == Some(u64::from(port)))
}

/// Two tracers on one host both saw each call: one of each is enough. Same call (type, pid,
/// thread, socket, result) within 2 ms (their clocks may differ by a microsecond).
fn dedupe(sorted: &mut Vec<Failure>) {
    let key = |v: &Value| {
        ["type", "pid", "tid", "sock_ino", "result"]
            .map(|k| v[k].to_string())
            .join("|")
    };
    let mut kept: Vec<Failure> = Vec::with_capacity(sorted.len());
    for f in sorted.drain(..) {
        let k = key(&f.value);
        let dup = kept
            .iter()
            .rev()
            .take_while(|g| f.unix_ns - g.unix_ns <= 2_000_000)
            .any(|g| key(&g.value) == k);
        if !dup {
            kept.push(f);
        }
    }
    *sorted = kept;
}

/// A line that is a failed call: an object with `"ok": false` and a time.
fn failure(line: &str) -> Option<Failure> {
    let value: Value = serde_json::from_str(line).ok()?;
    let unix_ns = parse_rfc3339(value["time"].as_str()?)?;
    Some(Failure {
        unix_ns,
        value,
        line: line.to_string(),
    })
}

/// Asks every tracer in [`query::DIR`]; None when none answers.
fn ask_tracers() -> Result<Option<Found>> {
    let dir = Path::new(query::DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(denied(dir)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut sockets: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trace-") && n.ends_with(".sock"))
        })
        .collect();
    sockets.sort();
    let mut found = Found::default();
    let mut answered = 0;
    for path in &sockets {
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            // Left by a tracer that was killed, or gone since the listing.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(denied(path)),
            Err(e) => {
                found
                    .notes
                    .push(format!("could not ask {}: {e}", path.display()));
                continue;
            }
        };
        match read_answer(stream, &mut found) {
            Ok(()) => answered += 1,
            Err(e) => found
                .notes
                .push(format!("{}: no whole answer: {e:#}", path.display())),
        }
    }
    Ok((answered > 0).then_some(found))
}

fn denied(path: &Path) -> String {
    format!(
        "{}: permission denied: tracers answer only root, as their JSON log is root's; run \
         `sudo portwatch why`",
        path.display()
    )
}

/// One tracer's answer: the header line, then its failures.
fn read_answer(mut stream: UnixStream, found: &mut Found) -> Result<()> {
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let mut lines = text.lines();
    let head: JsonRecord = serde_json::from_str(lines.next().context("an empty answer")?)
        .context("the answer's first line")?;
    let mut kept = 0;
    for line in lines {
        if let Some(f) = failure(line) {
            found.failures.push(f);
            kept += 1;
        }
    }
    found.notes.push(if head.dropped == 0 {
        format!(
            "tracer pid {}: {kept} failed call{} recorded since it started at {}",
            head.pid,
            if kept == 1 { "" } else { "s" },
            head.started
        )
    } else {
        format!(
            "tracer pid {}: the last {kept} failed calls (it keeps {} calls, {} MiB); {} older \
             ones since it started at {} are no longer kept",
            head.pid,
            head.max_failures,
            head.max_bytes >> 20,
            head.dropped,
            head.started
        )
    });
    Ok(())
}

/// FILE and its rotated siblings, oldest first: FILE.N, ..., FILE.1, FILE.
fn read_log(path: &Path) -> Result<Found> {
    if !path.exists() {
        bail!("--log {}: no such file", path.display());
    }
    let mut files: Vec<PathBuf> = (1..=MAX_SIBLINGS)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut found = Found::default();
    let mut skipped = 0u64;
    let mut first_skipped: Option<String> = None;
    for file in &files {
        let reader = BufReader::new(
            File::open(file).with_context(|| format!("opening {}", file.display()))?,
        );
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.with_context(|| format!("reading {}", file.display()))?;
            if line.is_empty() {
                continue;
            }
            let parsed = match std::str::from_utf8(&line) {
                // Only failures are parsed whole; any other line only has to be JSON.
                Ok(text) if text.contains("\"ok\":false") => failure(text).map(Some),
                Ok(_) => serde_json::from_slice::<serde::de::IgnoredAny>(&line)
                    .ok()
                    .map(|_| None),
                Err(_) => None,
            };
            match parsed {
                Some(Some(f)) => found.failures.push(f),
                Some(None) => {}
                None => {
                    skipped += 1;
                    first_skipped.get_or_insert_with(|| format!("{}:{}", file.display(), i + 1));
                }
            }
        }
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    found.notes.push(format!(
        "read {}: {} failed call{}{}",
        names.join(", "),
        found.failures.len(),
        if found.failures.len() == 1 { "" } else { "s" },
        match (&first_skipped, skipped) {
            (Some(at), 1) => format!("; skipped 1 line that is not a whole JSON object ({at})"),
            (Some(at), n) => {
                format!("; skipped {n} lines that are not whole JSON objects (the first at {at})")
            }
            _ => String::new(),
        }
    ));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ns: i128, line: &str) -> Failure {
        Failure {
            unix_ns: ns,
            value: serde_json::from_str(line).unwrap(),
            line: line.into(),
        }
    }

    /// Two tracers' copies of one call (their clocks a microsecond apart) are one failure;
    /// the same process failing again, or another call, is not.
    #[test]
    fn one_call_seen_by_two_tracers_is_shown_once() {
        let call = r#"{"type":"bind","pid":7,"tid":7,"sock_ino":99,"result":-98}"#;
        let again = r#"{"type":"bind","pid":7,"tid":7,"sock_ino":100,"result":-98}"#;
        let mut list = vec![
            at(1_000_000, call),
            at(1_001_000, call),
            at(1_002_000, again),
            at(9_000_000, call),
        ];
        dedupe(&mut list);
        let kept: Vec<i128> = list.iter().map(|f| f.unix_ns).collect();
        assert_eq!(kept, [1_000_000, 1_002_000, 9_000_000]);
    }

    #[test]
    fn a_port_matches_as_asked_or_as_bound() {
        let asked: Value =
            serde_json::from_str(r#"{"requested":{"port":80},"bound":null}"#).unwrap();
        let bound: Value =
            serde_json::from_str(r#"{"requested":null,"bound":{"port":80}}"#).unwrap();
        assert!(on_port(&asked, 80) && on_port(&bound, 80));
        assert!(!on_port(&asked, 8080));
        assert_eq!(words(Duration::from_secs(7200)), "2h");
        assert_eq!(words(Duration::from_secs(90)), "90s");
    }

    /// A failure line needs a time portwatch wrote; a cut line or a line without one is not
    /// a failure.
    #[test]
    fn a_failure_line_is_whole_json_with_a_time() {
        let line = r#"{"type":"bind","time":"2026-11-30T04:58:08.638794Z","ok":false}"#;
        assert!(failure(line).is_some());
        assert!(failure(&line[..line.len() / 2]).is_none());
        assert!(failure(r#"{"type":"bind","ok":false}"#).is_none());
    }
}
