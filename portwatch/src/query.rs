//! The tracer's memory of recent failures, for `portwatch why`: the last [`MAX_FAILURES`]
//! failed calls, at most [`MAX_BYTES`] of them, each kept as the line `trace --json` writes
//! for it, so `why` shows exactly what the trace would have. The oldest go first; how many
//! went is counted, so `why` can say how far back the record goes.
//!
//! Each tracer serves its record on a unix socket in [`DIR`] ([`server`]), readable by root
//! only (the directory is 0750, the socket 0660, both the tracer's user and group: the same
//! reach as the JSON log of the shipped unit). Never TCP.

pub mod server;

use std::{collections::VecDeque, path::PathBuf, sync::Arc};

use crate::{
    event::Event,
    explain::Verdict,
    output::{
        Clock,
        json::{JsonEvent, JsonRecord},
        rfc3339,
    },
};

/// Where tracers put their sockets (`trace-PID.sock`).
pub const DIR: &str = "/run/portwatch";
/// How many failures a tracer keeps at most.
pub const MAX_FAILURES: usize = 1000;
/// How many bytes of JSON lines a tracer keeps at most.
pub const MAX_BYTES: usize = 4 << 20;

/// This tracer's socket.
pub fn socket_path() -> PathBuf {
    PathBuf::from(DIR).join(format!("trace-{}.sock", std::process::id()))
}

/// The last failures, as `trace --json` lines (no newline), oldest first.
pub struct Recent {
    lines: VecDeque<Arc<str>>,
    bytes: usize,
    dropped: u64,
    started: String,
    clock: Clock,
}

impl Recent {
    pub fn new(clock: Clock) -> Self {
        Recent {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            started: rfc3339(clock_now()),
            clock,
        }
    }

    /// Keeps a failed call (successes are not kept).
    pub fn note(&mut self, ev: &Event, verdict: Option<&Verdict>) {
        if ev.ok() {
            return;
        }
        let Ok(line) = serde_json::to_string(&JsonEvent::new(ev, verdict, &self.clock)) else {
            return;
        };
        self.push(line.into());
    }

    fn push(&mut self, line: Arc<str>) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > MAX_FAILURES || (self.bytes > MAX_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
                self.dropped += 1;
            }
        }
    }

    /// What a `why` gets: the header, then the lines.
    pub fn snapshot(&self) -> (JsonRecord, Vec<Arc<str>>) {
        (
            JsonRecord::new(
                std::process::id(),
                self.started.clone(),
                self.lines.len(),
                self.dropped,
                MAX_FAILURES,
                MAX_BYTES,
            ),
            self.lines.iter().cloned().collect(),
        )
    }
}

fn clock_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_failures_within_both_caps() {
        let mut r = Recent::new(Clock::now());
        for i in 0..(MAX_FAILURES + 5) {
            r.push(format!("{{\"n\":{i}}}").into());
        }
        let (head, lines) = r.snapshot();
        assert_eq!(lines.len(), MAX_FAILURES);
        assert_eq!(&*lines[0], "{\"n\":5}");
        assert_eq!((head.kept, head.dropped), (MAX_FAILURES, 5));
        let big: Arc<str> = "x".repeat(MAX_BYTES / 3).into();
        for _ in 0..4 {
            r.push(big.clone());
        }
        let (head, lines) = r.snapshot();
        assert_eq!(lines.len(), 3, "three fit in {MAX_BYTES} bytes");
        assert!(r.bytes <= MAX_BYTES);
        assert_eq!(head.dropped, 5 + MAX_FAILURES as u64 + 1);
    }
}
