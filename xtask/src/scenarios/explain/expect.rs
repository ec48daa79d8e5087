//! What an explanation must say, as a user reads it in `--json`: the rule, the process in the
//! way or sharing the port (pid, comm), words of the sentence, where the holder was found.

use anyhow::{Result, ensure};
use serde_json::json;

use super::holding::Holding;
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

/// Where the leading holder came from: the kernel's own conflict check under fexit (TCP),
/// else the socket tables or, for a bound-only socket, the fd tables. Checked only with the
/// holder kept: once it is gone, that is up to how portwatch captured it.
pub(super) fn source_is(cx: &Ctx, holding: Holding, ev: &Event, without_fexit: &str) -> Result<()> {
    if holding == Holding::Gone {
        return Ok(());
    }
    let want = if cx.pw.backend == "fexit" {
        "kernel-conflict-check"
    } else {
        without_fexit
    };
    fields(ev, &[("explain.holders.0.source", json!(want))])
}
