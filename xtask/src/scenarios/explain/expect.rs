//! What an explanation must say, as a user reads it in `--json`: the rule, the process in the
//! way or sharing the port (pid, comm), words of the sentence, where the holder was found.

use anyhow::{Result, ensure};
use serde_json::json;

use crate::scenarios::{
    Ctx,
    check::fields,
    holder::Holder,
    portwatch::{Event, lookup},
};

/// The explanation blames `h`'s process first.
pub(super) fn blames(ev: &Event, rule: &str, h: &Holder) -> Result<()> {
    fields(
        ev,
        &[
            ("explain.rule", json!(rule)),
            ("explain.holders.0.owners.0.pid", json!(h.pid)),
            ("explain.holders.0.owners.0.comm", json!(h.comm)),
        ],
    )
}

/// The explanation says the port is shared with `h`'s process, and why.
pub(super) fn shares_with(ev: &Event, rule: &str, h: &Holder) -> Result<()> {
    fields(
        ev,
        &[
            ("ok", json!(true)),
            ("explain.rule", json!(rule)),
            ("explain.shares_with.0.owners.0.pid", json!(h.pid)),
            ("explain.shares_with.0.owners.0.comm", json!(h.comm)),
        ],
    )
}

pub(super) fn message(ev: &Event) -> String {
    lookup(&ev.0, "explain.message")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(super) fn says(ev: &Event, words: &[&str]) -> Result<()> {
    let m = message(ev);
    for w in words {
        ensure!(
            m.contains(w),
            "the explanation lacks {w:?}: {m}\n  line: {ev}"
        );
    }
    Ok(())
}

/// Where the leading holder came from. The holder of a failed call comes from the kernel at
/// the call: named by its own conflict check with fexit, read from the port's bucket at the
/// syscall's exit with the tracepoints; so the same whether the holder is kept or gone.
pub(super) fn source_is(cx: &Ctx, ev: &Event) -> Result<()> {
    let want = if cx.pw.backend == "fexit" {
        "kernel-conflict-check"
    } else {
        "kernel-at-call"
    };
    fields(ev, &[("explain.holders.0.source", json!(want))])
}
