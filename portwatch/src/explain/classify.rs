//! Which rule decides: the classification of a clash or a coexistence, apart from its wording.

use super::{
    Rule,
    conflict::{Blocker, Coexist, Overlap},
};

/// The rule naming how two addresses overlap, when no sharing option is to blame.
pub fn overlap_rule(o: Overlap) -> Rule {
    match o {
        Overlap::Same => Rule::SameAddress,
        Overlap::V4Mapped => Rule::V4Mapped,
        Overlap::HolderWildcard => Rule::WildcardCoversSpecific,
        Overlap::AskerWildcard => Rule::SpecificBlocksWildcard,
        Overlap::HolderDualStack => Rule::DualStackCoversIpv4,
        Overlap::AskerDualStack => Rule::Ipv4BlocksDualStack,
    }
}

/// Overlaps across address families are the surprise in a clash, so they lead over the
/// sharing options that failed to help (those still appear in the message).
fn cross_family(o: Overlap) -> bool {
    matches!(
        o,
        Overlap::HolderDualStack | Overlap::AskerDualStack | Overlap::V4Mapped
    )
}

/// The rule that decides a clash between the asker and one holder.
pub fn clash_rule(o: Overlap, b: Blocker) -> Rule {
    let soft = matches!(
        b,
        Blocker::NoOptions
            | Blocker::HolderListens
            | Blocker::ReuseAddrOneSided { .. }
            | Blocker::ReusePortOneSided { .. }
    );
    if soft && cross_family(o) {
        overlap_rule(o)
    } else {
        blocker_rule(b).unwrap_or(overlap_rule(o))
    }
}

fn blocker_rule(b: Blocker) -> Option<Rule> {
    Some(match b {
        Blocker::NoOptions => return None,
        Blocker::ReuseAddrOneSided { .. } => Rule::ReuseaddrNeedsBoth,
        Blocker::HolderListens => Rule::ReuseaddrVsListen,
        Blocker::ListenTwice => Rule::ListenConflict,
        Blocker::TimeWait { .. } => Rule::TimeWait,
        Blocker::ReusePortOneSided { .. } => Rule::ReuseportNeedsBoth,
        Blocker::ReusePortUid { .. } => Rule::ReuseportUidMismatch,
        Blocker::DeviceVsUnbound { .. } => Rule::BindtodeviceUnbound,
    })
}

/// The rule that let two sockets share a port. `v6only_by_default`: net.ipv6.bindv6only=1 in
/// the namespace, so an IPv6-only socket is so by default.
pub fn coexist_rule(c: Coexist, v6only_by_default: bool) -> Rule {
    match c {
        Coexist::SeparatePortSpaces => Rule::OkSeparatePortSpaces,
        Coexist::DifferentNetns => Rule::OkDifferentNetns,
        Coexist::DifferentDevices => Rule::OkDifferentDevices,
        Coexist::DifferentAddresses => Rule::OkDifferentAddresses,
        Coexist::V6Only { .. } if v6only_by_default => Rule::OkV6onlyByDefault,
        Coexist::V6Only { .. } => Rule::OkV6only,
        Coexist::ReuseAddr => Rule::OkReuseaddr,
        Coexist::UdpReuseAddr => Rule::OkUdpReuseaddr,
        Coexist::ReusePort => Rule::OkReuseport,
        Coexist::TimeWaitReuse => Rule::OkTimeWaitReuse,
    }
}
