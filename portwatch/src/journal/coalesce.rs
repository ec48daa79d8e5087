//! Storm control for the journal: the first failure of a kind goes out at once; repeats of it
//! within [`WINDOW`] are counted and go out as one line when the window ends; a kind that
//! keeps failing gets one line per window. At most [`MAX_KINDS`] kinds are followed at once;
//! failures of further kinds in that time are counted and said in one line of their own. So
//! portwatch writes at most 2 × [`MAX_KINDS`] + 1 entries per window, however hard a machine
//! fails. Pure: time comes in as an argument.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// How long repeats of one kind are gathered before they go out as one line.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How many kinds of failure are followed at once.
pub const MAX_KINDS: usize = 100;

/// The count and span a repeat line stands for, and the failure it is worded after (the
/// first repeat of its window).
#[derive(Debug, PartialEq, Eq)]
pub struct Due<S> {
    pub sample: S,
    pub repeats: u64,
    pub span: Duration,
}

struct Window<S> {
    started: Instant,
    repeats: u64,
    /// The first repeat of the window, to word the line after.
    sample: Option<S>,
}

pub struct Coalescer<K, S> {
    window: Duration,
    max_kinds: usize,
    open: HashMap<K, Window<S>>,
    /// Failures of kinds past `max_kinds`, and since when.
    overflow: Option<(Instant, u64)>,
}

impl<K: Hash + Eq + Clone, S> Coalescer<K, S> {
    pub fn new(window: Duration, max_kinds: usize) -> Self {
        Coalescer {
            window,
            max_kinds,
            open: HashMap::new(),
            overflow: None,
        }
    }

    /// A failure of kind `key`: true when it is to be sent now (the first of its kind in a
    /// window); otherwise it is counted, and the first repeat's `sample` kept for the repeat
    /// line.
    pub fn offer(&mut self, key: &K, now: Instant, sample: impl FnOnce() -> S) -> bool {
        if let Some(w) = self.open.get_mut(key) {
            w.repeats += 1;
            // The first repeat words the line: one copy per window, not one per failure.
            if w.sample.is_none() {
                w.sample = Some(sample());
            }
            return false;
        }
        if self.open.len() >= self.max_kinds {
            let (_, n) = self.overflow.get_or_insert((now, 0));
            *n += 1;
            return false;
        }
        self.open.insert(
            key.clone(),
            Window {
                started: now,
                repeats: 0,
                sample: None,
            },
        );
        true
    }

    /// Repeat lines whose window ended by `now` (all of them with `all`, at exit). A kind that
    /// repeated starts a new window; one that did not is forgotten.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Due<S>> {
        let mut out = Vec::new();
        let window = self.window;
        self.open.retain(|_, w| {
            let span = now.saturating_duration_since(w.started);
            if !all && span < window {
                return true;
            }
            match w.sample.take() {
                Some(sample) => {
                    out.push(Due {
                        sample,
                        repeats: w.repeats,
                        span,
                    });
                    w.started = now;
                    w.repeats = 0;
                    !all
                }
                None => false,
            }
        });
        out
    }

    /// Failures of kinds past the limit whose window ended (all with `all`): how many, over
    /// what time.
    pub fn overflow_due(&mut self, now: Instant, all: bool) -> Option<(u64, Duration)> {
        let (since, n) = self.overflow?;
        let span = now.saturating_duration_since(since);
        if all || span >= self.window {
            self.overflow = None;
            return Some((n, span));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn a_storm_is_one_line_then_one_line_per_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 100);
        let key = ("nginx.service", 80, "same-address");
        let mut sent = 0;
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(i);
            if c.offer(&key, at, || i) {
                sent += 1;
            }
            assert!(
                c.due(at, false).is_empty(),
                "no line before the window ends"
            );
        }
        assert_eq!(sent, 1, "only the first goes out at once");
        let due = c.due(t0 + W, false);
        assert_eq!(
            due,
            [Due {
                sample: 1,
                repeats: 999,
                span: W
            }]
        );
        // Still failing: counted in the next window, not sent at once.
        assert!(!c.offer(&key, t0 + W + Duration::from_secs(1), || 1000));
        assert_eq!(c.due(t0 + 2 * W, false)[0].repeats, 1);
        // A quiet window forgets the kind: the next failure goes out at once.
        assert!(c.due(t0 + 3 * W, false).is_empty());
        assert!(c.offer(&key, t0 + 3 * W, || 0));
    }

    #[test]
    fn other_kinds_are_not_held_back() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 100);
        assert!(c.offer(&("a", 80), t0, || ()));
        assert!(c.offer(&("b", 80), t0, || ()));
        assert!(c.offer(&("a", 81), t0, || ()));
        assert!(!c.offer(&("a", 80), t0, || ()));
    }

    #[test]
    fn kinds_past_the_limit_are_counted_in_one_line() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 3);
        let sent = (0..10u16).filter(|p| c.offer(p, t0, || ())).count();
        assert_eq!(sent, 3);
        assert_eq!(c.overflow_due(t0 + Duration::from_secs(1), false), None);
        assert_eq!(c.overflow_due(t0 + W, false), Some((7, W)));
        assert_eq!(c.overflow_due(t0 + W, false), None);
    }

    /// At exit every pending count goes out, whatever its window.
    #[test]
    fn exit_flushes_what_is_pending() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 1);
        assert!(c.offer(&1, t0, || "first"));
        assert!(!c.offer(&1, t0, || "second"));
        assert!(!c.offer(&2, t0, || "other kind"));
        let later = t0 + Duration::from_secs(1);
        let due = c.due(later, true);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].sample, due[0].repeats), ("second", 1));
        assert_eq!(
            c.overflow_due(later, true),
            Some((1, Duration::from_secs(1)))
        );
        assert!(c.due(later, true).is_empty());
    }
}
