//! The sentences for a call that succeeded: what it shares the port with, and why the kernel
//! allowed that.

use super::{
    Attempt, Involved, Rule, Verdict,
    classify::coexist_rule,
    conflict::Coexist,
    phrase::{holder_desc, range_text, who},
};
use crate::{
    event::Call,
    facts::Facts,
    sockets::{Holder, Proto},
};

/// A server on a port in the ephemeral range: while it is down, the kernel may give that port
/// to an outgoing connection, and its next bind then fails. A note, not a failure; none for
/// port 0 (that is what the range is for) or a port already reserved.
pub fn note_ephemeral_risk(v: &mut Verdict, at: &Attempt, f: &Facts) {
    let asked_zero =
        at.ev.call == Call::Bind && at.ev.requested.as_ref().is_some_and(|r| r.port == 0);
    if asked_zero
        || at.port == 0
        || !f.sysctls.in_ephemeral_range(at.port)
        || f.sysctls.reserved(at.port) == Some(true)
    {
        return;
    }
    let Some((range, _)) = range_text(f) else {
        return;
    };
    v.details.push(format!(
        "port {} lies in the ephemeral range ({range}): while nothing holds it, the kernel may \
         give it to an outgoing connection as its local port, and a bind to it then fails \
         with EADDRINUSE; reserve it: sysctl -w net.ipv4.ip_local_reserved_ports={}",
        at.port, at.port
    ));
}

pub fn success(at: &Attempt, f: &Facts, others: &[(&Holder, Coexist)]) -> Verdict {
    let ep = at.endpoint();
    let port_zero = at.asked_port_zero()
        || (at.ev.call == Call::Bind && at.ev.requested.as_ref().is_some_and(|r| r.port == 0));
    let Some((h, c)) = others.first() else {
        return if port_zero {
            let range = range_text(f)
                .map(|(r, _)| format!(" from {r}"))
                .unwrap_or_default();
            Verdict::new(
                true,
                Rule::OkEphemeral,
                format!("ok: the kernel picked port {}{range}.", at.port),
            )
        } else if at.ev.call == Call::Listen {
            Verdict::new(true, Rule::OkListen, format!("ok: listening on {ep}."))
        } else if f.holders.is_some() && !f.holders_incomplete {
            Verdict::new(
                true,
                Rule::OkPortFree,
                format!(
                    "ok: nothing else holds {} port {} here.",
                    at.side.proto.name(),
                    at.port
                ),
            )
        } else {
            Verdict::new(true, Rule::Ok, format!("ok: bound {ep}."))
        };
    };
    let (rule, message) = if port_zero
        && *c == Coexist::ReuseAddr
        && f.sysctls.ip_autobind_reuse == Some(true)
    {
        (
            Rule::OkAutobindReuse,
            format!(
                "ok: port {} was already held by {} ({}), but net.ipv4.ip_autobind_reuse=1 lets \
                 port 0 share a port with SO_REUSEADDR sockets when no free one is left.",
                at.port,
                who(h),
                holder_desc(&h.socket)
            ),
        )
    } else {
        coexist_words(at, f, h, *c)
    };
    let mut v = Verdict::new(true, rule, message);
    for (h, c) in others {
        let (r, m) = coexist_words(at, f, h, *c);
        v.shares_with.push(Involved::new(h, r, m));
    }
    if others.len() > 1 {
        v.details
            .push(format!("{} sockets share this port", others.len() + 1));
    }
    v
}

/// A success on a port held only in other network namespaces: `ok-different-netns`, with
/// those sockets listed on their own (`other_netns`), since they share nothing with the call.
pub fn different_netns(at: &Attempt, f: &Facts, elsewhere: &[(&Holder, Coexist)]) -> Verdict {
    let mut v = success(at, f, &elsewhere[..1]);
    v.other_netns = std::mem::take(&mut v.shares_with);
    for (h, c) in &elsewhere[1..] {
        let (r, m) = coexist_words(at, f, h, *c);
        v.other_netns.push(Involved::new(h, r, m));
    }
    if elsewhere.len() > 1 {
        v.details.push(format!(
            "{} sockets hold port {} in other network namespaces",
            elsewhere.len(),
            at.port
        ));
    }
    v
}

/// The rule that let the call share the port with `h`, and the sentence saying so.
fn coexist_words(at: &Attempt, f: &Facts, h: &Holder, c: Coexist) -> (Rule, String) {
    let by_default = f.sysctls.bindv6only == Some(true);
    (
        coexist_rule(c, by_default),
        coexist_sentence(at, h, c, by_default),
    )
}

fn coexist_sentence(at: &Attempt, h: &Holder, c: Coexist, v6only_by_default: bool) -> String {
    let w = who(h);
    let hd = holder_desc(&h.socket);
    let ep = at.endpoint();
    match c {
        Coexist::SeparatePortSpaces => format!(
            "ok: {w} holds {}{hd} too, but {} and {} have separate port spaces.",
            if h.socket.proto == Proto::Tcp {
                "tcp "
            } else {
                ""
            },
            at.side.proto.name().to_uppercase(),
            h.socket.proto.name().to_uppercase()
        ),
        Coexist::DifferentNetns => format!(
            "ok: {w} holds {hd} in network namespace {}; different network namespaces never \
             conflict.",
            h.socket.netns
        ),
        Coexist::DifferentDevices => format!(
            "ok: {w} holds {hd}; sockets bound to different devices (here {}) may share a port.",
            at.sock.options.device_name()
        ),
        Coexist::DifferentAddresses => {
            format!("ok: {w} holds {hd}; different specific addresses may share a port.")
        }
        Coexist::V6Only { holder_is_v6only } => {
            let default_note = if v6only_by_default {
                " (the namespace default: net.ipv6.bindv6only=1)"
            } else {
                ""
            };
            if holder_is_v6only {
                format!(
                    "ok: {w} holds {hd}, which is IPv6-only{default_note}, so IPv4 {ep} stays free."
                )
            } else {
                format!(
                    "ok: {ep} is IPv6-only (IPV6_V6ONLY=1){default_note}, so it does not clash \
                     with the IPv4 {hd} of {w}."
                )
            }
        }
        Coexist::ReuseAddr => format!(
            "ok: shares the port with {w} ({hd}): both set SO_REUSEADDR and that one is not \
             listening."
        ),
        Coexist::UdpReuseAddr => format!(
            "ok: shares the port with {w} ({hd}): both UDP sockets set SO_REUSEADDR, which for \
             UDP allows even the same address."
        ),
        Coexist::ReusePort => format!(
            "ok: shares the port with {w} ({hd}): both set SO_REUSEPORT{}, and the kernel \
             spreads traffic across them.",
            at.side
                .uid
                .map(|u| format!(" as uid {u}"))
                .unwrap_or_default()
        ),
        Coexist::TimeWaitReuse => format!(
            "ok: got past a {} connection on {}: both it and this socket have \
             SO_REUSEADDR.",
            h.socket.state_name(),
            h.socket.endpoint()
        ),
    }
}
