//! What an explanation must say, as a user reads it in `--json`: the rule, the process in the
//! way or sharing the port (pid, comm; see [`Holding`] for a holder that is gone), words of
//! the sentence, where the holder was found.

use anyhow::{Result, ensure};
use portwatch_common::Backend;
use serde_json::{Value, json};

use super::holding::Holding;
use crate::scenarios::{
    Ctx,
    check::{Want, fields},
    holder::Holder,
    portwatch::Event,
};

/// The explanation blames `h`'s process first.
pub(super) fn blames(ev: &Event, rule: &str, holding: Holding, h: &Holder) -> Result<()> {
    let mut want = vec![("explain.rule".to_string(), json!(rule))];
    want.extend(named("explain.holders.0", holding, h.pid, &h.comm));
    fields_owned(ev, &want)
}

/// The explanation says the port is shared with `h`'s process, and why.
pub(super) fn shares_with(ev: &Event, rule: &str, holding: Holding, h: &Holder) -> Result<()> {
    let mut want = vec![
        ("ok".to_string(), json!(true)),
        ("explain.rule".to_string(), json!(rule)),
    ];
    want.extend(named("explain.shares_with.0", holding, h.pid, &h.comm));
    fields_owned(ev, &want)
}

/// How portwatch names process `pid` (`comm`) behind the socket at `side`
/// (`explain.holders.0`): as its owner while it holds it; once it is gone, as the process
/// that bound it (`bound_by`), with no owner made up and `owner_status` "closed".
pub(super) fn named(side: &str, holding: Holding, pid: u32, comm: &str) -> Vec<(String, Value)> {
    let at = |field: &str| format!("{side}.{field}");
    match holding {
        Holding::Kept => vec![
            (at("owners.0.pid"), json!(pid)),
            (at("owners.0.comm"), json!(comm)),
        ],
        Holding::Gone => vec![
            (at("owners"), json!([])),
            (at("owner_status"), json!("closed")),
            (at("bound_by.pid"), json!(pid)),
            (at("bound_by.comm"), json!(comm)),
        ],
    }
}

/// [`fields`] for expectations whose paths were built.
pub(super) fn fields_owned(ev: &Event, want: &[(String, Value)]) -> Result<()> {
    let want: Vec<Want<'_>> = want.iter().map(|(p, v)| (p.as_str(), v.clone())).collect();
    fields(ev, &want)
}

pub(super) fn says(ev: &Event, words: &[&str]) -> Result<()> {
    let m = ev.message();
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
    let want = if cx.pw.backend == Some(Backend::Fexit) {
        "kernel-conflict-check"
    } else {
        "kernel-at-call"
    };
    fields(ev, &[("explain.holders.0.source", json!(want))])
}
