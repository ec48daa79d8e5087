//! What `who --addr` predicts: a bind it imagined and the rules' verdict on it. Domain data,
//! built by [`crate::who`] and shown by [`crate::output::who`], so it lives below both.

use std::net::IpAddr;

use crate::{explain::Verdict, sockets::SocketView};

/// A bind `who --addr` imagined, and what the rules say it would do now.
pub struct Prediction {
    /// The socket as it would be before the bind: family, protocol, options, netns, uid.
    pub socket: SocketView,
    /// The address and port the bind asks for.
    pub addr: IpAddr,
    pub port: u16,
    pub verdict: Verdict,
    /// Why a success cannot be promised: a socket portwatch could not see may be in the way.
    /// Set only when the rules found nothing in the way.
    pub cannot_tell: Option<&'static str>,
}

impl Prediction {
    /// Some(true/false), or None when portwatch cannot tell.
    pub fn would_succeed(&self) -> Option<bool> {
        match (self.verdict.ok, self.cannot_tell) {
            (true, Some(_)) => None,
            (ok, _) => Some(ok),
        }
    }
}
