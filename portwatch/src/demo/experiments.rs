//! The experiments: each a question and the real sockets that answer it. An experiment only
//! makes calls; what they returned is recorded by [`Trial`], never assumed, and the last call
//! of each is the one the demo reports and explains.

use std::{io, net::SocketAddr, os::fd::OwnedFd};

use super::lab::{self, CallResult, Child, Scratch, Sock, Spec, result_name};
use crate::event::Call;

/// One experiment of the demo.
pub struct Experiment {
    /// Stable id (`--only`, JSON `experiment`).
    pub id: &'static str,
    pub question: &'static str,
    /// Where Linux differs from what BSD-based write-ups describe.
    pub bsd: Option<&'static str>,
    pub run: fn(&mut Trial, u16) -> io::Result<()>,
}

/// Who made a call: this process or a child.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub pid: u32,
    pub call: Call,
    pub result: CallResult,
}

/// What one experiment did: its sockets (as described, with each call's observed result),
/// what it noticed besides, and the resources it holds until it is dropped.
#[derive(Default)]
pub struct Trial {
    pub sockets: Vec<String>,
    pub observations: Vec<String>,
    /// The last bind() or listen(): the one reported.
    pub last: Option<Caller>,
    socks: Vec<Sock>,
    clients: Vec<OwnedFd>,
    children: Vec<Child>,
    namespaces: Vec<Scratch>,
    /// Sysctls to put back when the experiment is over (after its events were explained:
    /// the explanation reads them).
    sysctls: Vec<(&'static str, String)>,
}

impl Trial {
    fn record(&mut self, who: &str, spec: &Spec, caller: Caller) {
        let call = match caller.call {
            Call::Bind => "bind",
            Call::Listen => "listen",
            Call::Connect => "connect",
        };
        self.sockets.push(format!(
            "{} ({who}): {call} {}",
            spec.describe(),
            result_name(caller.result)
        ));
        self.last = Some(caller);
    }

    /// Makes `spec` in the demo's own process; returns its index for [`Trial::listen`].
    fn open(&mut self, spec: Spec) -> Option<usize> {
        let o = lab::open(&spec);
        self.record(
            "this process",
            &spec,
            Caller {
                pid: std::process::id(),
                call: o.call,
                result: o.result,
            },
        );
        let s = o.sock?;
        self.socks.push(s);
        Some(self.socks.len() - 1)
    }

    /// Makes `spec` in a child process, as `uid` (None: as the demo's own user).
    fn child(&mut self, spec: Spec, uid: Option<u32>) -> io::Result<()> {
        let c = Child::spawn(&spec, uid)?;
        let who = match uid {
            Some(u) => format!("child pid {}, uid {u}", c.pid),
            None => format!("child pid {}", c.pid),
        };
        self.record(
            &who,
            &spec,
            Caller {
                pid: c.pid as u32,
                call: c.call,
                result: c.result,
            },
        );
        self.children.push(c);
        Ok(())
    }

    /// listen() on a socket this process opened earlier.
    fn listen(&mut self, idx: Option<usize>, what: &str) {
        let Some(s) = idx.and_then(|i| self.socks.get(i)) else {
            self.sockets.push(format!(
                "listen on {what}: skipped, its socket was not made"
            ));
            return;
        };
        let result = s.listen();
        self.sockets
            .push(format!("listen on {what}: {}", result_name(result)));
        self.last = Some(Caller {
            pid: std::process::id(),
            call: Call::Listen,
            result,
        });
    }
}

impl Drop for Trial {
    /// Children first (their sockets close when they are reaped), then ours, then any extra
    /// namespace: nothing of an experiment is left for the next.
    fn drop(&mut self) {
        self.children.clear();
        self.clients.clear();
        self.socks.clear();
        self.namespaces.clear();
        for (name, value) in self.sysctls.drain(..) {
            if let Err(e) = lab::set_sysctl(name, &value) {
                log::warn!("putting {name} back to {value} in the scratch namespace: {e}");
            }
        }
    }
}

const BSD_REUSEADDR: &str = "On the BSDs and macOS, SO_REUSEADDR lets a specific address bind \
next to a wildcard holder (the classic use in BSD write-ups); Linux never lets SO_REUSEADDR bind \
next to a listening socket.";
const BSD_REUSEPORT: &str = "On the BSDs, SO_REUSEPORT lets any two sockets share a port; Linux \
also requires the same user (effective uid at socket creation), so that another user cannot \
hijack a port.";

pub const ALL: &[Experiment] = &[
    Experiment {
        id: "tcp-udp",
        question: "Can a TCP server and a UDP server use the same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).listening());
            t.open(Spec::udp("0.0.0.0", p));
            Ok(())
        },
    },
    Experiment {
        id: "two-addresses",
        question: "Can two servers listen on the same port on two different addresses of one \
                   host (127.0.0.1 and 127.0.0.2, both on lo)?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("127.0.0.1", p).listening());
            t.open(Spec::tcp("127.0.0.2", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "same-address",
        question: "Can two servers listen on the same address and port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("127.0.0.1", p).listening());
            t.open(Spec::tcp("127.0.0.1", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "wildcard-then-specific",
        question: "A server listens on 0.0.0.0 (all addresses). Can another bind 127.0.0.1 on \
                   the same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).listening());
            t.open(Spec::tcp("127.0.0.1", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "specific-then-wildcard",
        question: "A server listens on 127.0.0.1. Can another bind 0.0.0.0 on the same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("127.0.0.1", p).listening());
            t.open(Spec::tcp("0.0.0.0", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "dual-stack-then-ipv4",
        question: "A server listens on [::] with IPV6_V6ONLY=0 (what Java and Node do by \
                   default). Can another listen on 0.0.0.0, same port?",
        bsd: Some(
            "FreeBSD's [::] is IPv6-only by default (net.inet6.ip6.v6only=1), which is why \
             an IPv6 and an IPv4 server on one port work there.",
        ),
        run: |t, p| {
            t.open(Spec::tcp("::", p).v6only(false).listening());
            t.open(Spec::tcp("0.0.0.0", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "ipv4-then-dual-stack",
        question: "A server listens on 0.0.0.0. Can another listen on [::] with \
                   IPV6_V6ONLY=0, same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).listening());
            t.open(Spec::tcp("::", p).v6only(false).listening());
            Ok(())
        },
    },
    Experiment {
        id: "v6only-next-to-ipv4",
        question: "A server listens on 0.0.0.0. Can another listen on [::] with \
                   IPV6_V6ONLY=1, same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).listening());
            t.open(Spec::tcp("::", p).v6only(true).listening());
            Ok(())
        },
    },
    Experiment {
        id: "bindv6only-sysctl",
        question: "With net.ipv6.bindv6only=1 (set in the demo's namespace only), a server \
                   listens on 0.0.0.0. Can another listen on [::] without setting \
                   IPV6_V6ONLY?",
        bsd: None,
        run: |t, p| {
            const NAME: &str = "net/ipv6/bindv6only";
            let before = lab::read_sysctl(NAME)?;
            lab::set_sysctl(NAME, "1")?;
            t.sysctls.push((NAME, before.clone()));
            t.observations.push(format!(
                "net.ipv6.bindv6only in the scratch namespace: {before} -> {}",
                lab::read_sysctl(NAME)?
            ));
            t.open(Spec::tcp("0.0.0.0", p).listening());
            t.open(Spec::tcp("::", p).listening());
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-both",
        question: "Two TCP sockets both set SO_REUSEADDR and bind the same address and port, \
                   neither listening yet. Does the second bind work?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-both-listen",
        question: "Two sockets bound with SO_REUSEADDR as above: can both of them listen?",
        bsd: None,
        run: |t, p| {
            let a = t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            let b = t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            t.listen(a, "the first socket");
            t.listen(b, "the second socket");
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-one-side",
        question: "Only the second socket sets SO_REUSEADDR. Can it bind next to a bound \
                   (not listening) socket on the same address?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("127.0.0.1", p));
            t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-vs-listener",
        question: "A server with SO_REUSEADDR listens on 0.0.0.0. Can a socket with \
                   SO_REUSEADDR bind 127.0.0.1 on the same port?",
        bsd: Some(BSD_REUSEADDR),
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).reuseaddr().listening());
            t.open(Spec::tcp("127.0.0.1", p).reuseaddr());
            Ok(())
        },
    },
    Experiment {
        id: "reuseport-same-user",
        question: "Two servers of the same user set SO_REUSEPORT and listen on the same \
                   address and port. Does it work, and who gets the connections?",
        bsd: None,
        run: |t, p| {
            let a = t.open(Spec::tcp("127.0.0.1", p).reuseport().listening());
            let b = t.open(Spec::tcp("127.0.0.1", p).reuseport().listening());
            let last = t.last;
            if let (Some(a), Some(b)) = (a, b)
                && last.is_some_and(|l| l.result.is_ok())
            {
                spread(t, a, b, p);
            }
            t.last = last;
            Ok(())
        },
    },
    Experiment {
        id: "reuseport-other-user",
        question: "A server of user 65534 (nobody) listens with SO_REUSEPORT. Can root listen \
                   with SO_REUSEPORT on the same address and port?",
        bsd: Some(BSD_REUSEPORT),
        run: |t, p| {
            t.child(
                Spec::tcp("127.0.0.1", p).reuseport().listening(),
                Some(65534),
            )?;
            t.open(Spec::tcp("127.0.0.1", p).reuseport().listening());
            Ok(())
        },
    },
    Experiment {
        id: "restart-plain",
        question: "A server (no SO_REUSEADDR) with a live connection is killed; the connection \
                   sits in TIME_WAIT. Can the new instance, also without SO_REUSEADDR, listen \
                   again at once?",
        bsd: None,
        run: |t, p| restart(t, p, false, false),
    },
    Experiment {
        id: "restart-reuseaddr",
        question: "The same restart, with SO_REUSEADDR on the old server and on the new one.",
        bsd: None,
        run: |t, p| restart(t, p, true, true),
    },
    Experiment {
        id: "restart-new-only",
        question: "The same restart, with SO_REUSEADDR on the new server only (the old one \
                   did not set it).",
        bsd: None,
        run: |t, p| restart(t, p, false, true),
    },
    Experiment {
        id: "other-netns",
        question: "A server listens on 0.0.0.0. Can a server in another network namespace \
                   (what a container has) listen on 0.0.0.0, same port?",
        bsd: None,
        run: |t, p| {
            t.open(Spec::tcp("0.0.0.0", p).listening());
            let here = std::fs::File::open("/proc/thread-self/ns/net")?;
            let first = crate::netns::current();
            let other = lab::new_netns()?;
            t.observations.push(format!(
                "second scratch namespace: net:[{}] (the first: net:[{first}])",
                other.inode
            ));
            let held = t.child(Spec::tcp("0.0.0.0", p).listening(), None);
            lab::enter(&here)?;
            t.namespaces.push(other);
            held
        },
    },
];

/// Connects to the two SO_REUSEPORT listeners and counts where the kernel put each connection.
fn spread(t: &mut Trial, a: usize, b: usize, port: u16) {
    const CONNECTIONS: usize = 20;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut made = 0;
    for _ in 0..CONNECTIONS {
        if let Ok(c) = lab::connect(addr) {
            t.clients.push(c);
            made += 1;
        }
    }
    let to_a = lab::accept_all(&t.socks[a]);
    let to_b = lab::accept_all(&t.socks[b]);
    t.observations.push(format!(
        "{made} connections to 127.0.0.1:{port}: the kernel gave {to_a} to the first socket \
         and {to_b} to the second (it picks by a hash of each connection's addresses and ports)"
    ));
}

/// The restart case: a server in a child process accepts a connection, is killed; the client
/// closes after it, so the server's side of the connection goes to TIME_WAIT; then a new
/// server listens on the same address and port.
fn restart(t: &mut Trial, port: u16, old_reuseaddr: bool, new_reuseaddr: bool) -> io::Result<()> {
    let mut old = Spec::tcp("127.0.0.1", port).listening();
    if old_reuseaddr {
        old = old.reuseaddr();
    }
    t.child(old, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = lab::connect(addr).map_err(|e| {
        io::Error::other(format!(
            "connecting to the old server: {}",
            result_name(Err(e))
        ))
    })?;
    // The server wrote a byte once it accepted: the connection is established on its side.
    let accepted = lab::read_until(&client, 1, 2000);
    if let Some(mut c) = t.children.pop() {
        c.kill();
        t.sockets.push(format!(
            "the old server (pid {}) was killed",
            t.last.map_or(0, |l| l.pid)
        ));
    }
    let closed = lab::read_until(&client, 0, 2000);
    drop(client);
    t.observations.push(format!(
        "the old server {} the connection, and its close {} the client, which then closed too",
        if accepted {
            "had accepted"
        } else {
            "had not accepted (in time)"
        },
        if closed {
            "reached"
        } else {
            "did not reach (in time)"
        },
    ));
    let mut new = Spec::tcp("127.0.0.1", port).listening();
    if new_reuseaddr {
        new = new.reuseaddr();
    }
    t.open(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ALL;

    /// `--only` and the JSON `experiment` field go by id: each names one experiment.
    #[test]
    fn ids_are_unique_and_plain() {
        let ids: BTreeSet<&str> = ALL.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), ALL.len());
        for id in ids {
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()),
                "{id}"
            );
        }
    }
}
