//! The experiments: each a question and the real sockets that answer it. An experiment only
//! makes calls; what they returned is recorded by [`Trial`], never assumed, and the last call
//! of each is the one the demo reports and explains.

use std::{io, net::SocketAddr, os::fd::OwnedFd};

use super::lab::{self, CallResult, Child, Scratch, Spec, result_name};
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

/// Who made a call: one of the experiment's server processes.
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
    /// The line of `sockets` that reports the last call, and the same line without its result
    /// (and without saying which call decided), for `--quiz` to show before the answer.
    pub last_line: Option<(usize, String)>,
    pub observations: Vec<String>,
    /// The last bind() or listen(): the one reported.
    pub last: Option<Caller>,
    clients: Vec<OwnedFd>,
    children: Vec<Child>,
    namespaces: Vec<Scratch>,
}

impl Trial {
    /// Records a call of server `idx` on the socket `spec` describes.
    fn record(&mut self, idx: usize, spec: &Spec, caller: Caller, uid: Option<u32>) {
        let call = match caller.call {
            Call::Bind => "bind",
            Call::Listen => "listen",
            Call::Connect => "connect",
        };
        let name = SERVER_NAMES.get(idx).copied().unwrap_or("server");
        let who = match uid {
            Some(u) => format!("{name}, pid {}, uid {u}", caller.pid),
            None => format!("{name}, pid {}", caller.pid),
        };
        let head = format!("{} ({who}):", spec.describe());
        self.sockets
            .push(format!("{head} {call} {}", result_name(caller.result)));
        self.last_line = Some((self.sockets.len() - 1, format!("{head} ?")));
        self.last = Some(caller);
    }

    /// Starts the experiment's next server: a process of its own (named `server-a`,
    /// `server-b`, ...), as `uid` (None: as the demo's own user), making `spec`. Returns its
    /// index for [`Trial::listen`].
    fn server(&mut self, spec: Spec, uid: Option<u32>) -> io::Result<usize> {
        let idx = self.children.len();
        let name = SERVER_NAMES.get(idx).copied().unwrap_or("server");
        let c = Child::spawn(&spec, uid, name)?;
        let caller = Caller {
            pid: c.pid as u32,
            call: c.call,
            result: c.result,
        };
        self.children.push(c);
        self.record(idx, &spec, caller, uid);
        Ok(idx)
    }

    /// listen() on the socket server `idx` bound earlier.
    fn listen(&mut self, idx: usize) {
        let Some(c) = self.children.get(idx) else {
            return;
        };
        let name = SERVER_NAMES.get(idx).copied().unwrap_or("server");
        let result = c.listen();
        let caller = Caller {
            pid: c.pid as u32,
            call: Call::Listen,
            result,
        };
        let head = format!("listen on the socket of {name} (pid {}):", c.pid);
        self.sockets
            .push(format!("{head} listen {}", result_name(result)));
        self.last_line = Some((self.sockets.len() - 1, format!("{head} ?")));
        self.last = Some(caller);
    }
}

impl Trial {
    /// The inodes of the extra namespaces the experiment made (besides its scratch one).
    pub fn extra_namespaces(&self) -> Vec<u32> {
        self.namespaces.iter().map(|n| n.inode).collect()
    }
}

/// The servers' process names, in the order an experiment starts them: what portwatch's
/// explanations call them ("pid 4711 (server-a) holds ...").
const SERVER_NAMES: &[&str] = &["server-a", "server-b", "server-c"];

impl Drop for Trial {
    /// Children first (their sockets close when they are reaped), then the clients, then any
    /// extra namespace: nothing of an experiment is left for the next.
    fn drop(&mut self) {
        self.children.clear();
        self.clients.clear();
        self.namespaces.clear();
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
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            t.server(Spec::udp("0.0.0.0", p), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "two-addresses",
        question: "Can two servers listen on the same port on two different addresses of one \
                   host (127.0.0.1 and 127.0.0.2, both on lo)?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("127.0.0.1", p).listening(), None)?;
            t.server(Spec::tcp("127.0.0.2", p).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "same-address",
        question: "Can two servers listen on the same address and port?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("127.0.0.1", p).listening(), None)?;
            t.server(Spec::tcp("127.0.0.1", p).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "wildcard-then-specific",
        question: "A server listens on 0.0.0.0 (all addresses). Can another bind 127.0.0.1 on \
                   the same port?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            t.server(Spec::tcp("127.0.0.1", p).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "specific-then-wildcard",
        question: "A server listens on 127.0.0.1. Can another bind 0.0.0.0 on the same port?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("127.0.0.1", p).listening(), None)?;
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
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
            t.server(Spec::tcp("::", p).v6only(false).listening(), None)?;
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "ipv4-then-dual-stack",
        question: "A server listens on 0.0.0.0. Can another listen on [::] with \
                   IPV6_V6ONLY=0, same port?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            t.server(Spec::tcp("::", p).v6only(false).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "v6only-next-to-ipv4",
        question: "A server listens on 0.0.0.0. Can another listen on [::] with \
                   IPV6_V6ONLY=1, same port?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            t.server(Spec::tcp("::", p).v6only(true).listening(), None)?;
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
            // The experiment's namespace is its own: the setting goes with it.
            let before = lab::read_sysctl(NAME)?;
            lab::set_sysctl(NAME, "1")?;
            t.observations.push(format!(
                "net.ipv6.bindv6only in the scratch namespace: {before} -> {}",
                lab::read_sysctl(NAME)?
            ));
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            t.server(Spec::tcp("::", p).listening(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-both",
        question: "Two TCP sockets both set SO_REUSEADDR and bind the same address and port, \
                   neither listening yet. Does the second bind work?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-both-listen",
        question: "Two sockets bound with SO_REUSEADDR as above: can both of them listen?",
        bsd: None,
        run: |t, p| {
            let a = t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            let b = t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            t.listen(a);
            t.listen(b);
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-one-side",
        question: "Only the second socket sets SO_REUSEADDR. Can it bind next to a bound \
                   (not listening) socket on the same address?",
        bsd: None,
        run: |t, p| {
            t.server(Spec::tcp("127.0.0.1", p), None)?;
            t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "reuseaddr-vs-listener",
        question: "A server with SO_REUSEADDR listens on 0.0.0.0. Can a socket with \
                   SO_REUSEADDR bind 127.0.0.1 on the same port?",
        bsd: Some(BSD_REUSEADDR),
        run: |t, p| {
            t.server(Spec::tcp("0.0.0.0", p).reuseaddr().listening(), None)?;
            t.server(Spec::tcp("127.0.0.1", p).reuseaddr(), None)?;
            Ok(())
        },
    },
    Experiment {
        id: "reuseport-same-user",
        question: "Two servers of the same user set SO_REUSEPORT and listen on the same \
                   address and port. Does it work, and who gets the connections?",
        bsd: None,
        run: |t, p| {
            let a = t.server(Spec::tcp("127.0.0.1", p).reuseport().listening(), None)?;
            let b = t.server(Spec::tcp("127.0.0.1", p).reuseport().listening(), None)?;
            let last = t.last;
            if last.is_some_and(|l| l.result.is_ok()) {
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
            t.server(
                Spec::tcp("127.0.0.1", p).reuseport().listening(),
                Some(65534),
            )?;
            t.server(Spec::tcp("127.0.0.1", p).reuseport().listening(), None)?;
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
            t.server(Spec::tcp("0.0.0.0", p).listening(), None)?;
            let here = std::fs::File::open("/proc/thread-self/ns/net")?;
            let first = crate::netns::current();
            let other = lab::new_netns()?;
            t.observations.push(format!(
                "second scratch namespace: net:[{}] (the first: net:[{first}])",
                other.inode
            ));
            let held = t.server(Spec::tcp("0.0.0.0", p).listening(), None);
            lab::enter(&here)?;
            t.namespaces.push(other);
            held.map(drop)
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
    let count = |i: usize| {
        t.children
            .get(i)
            .and_then(Child::accepted)
            .map_or("?".to_string(), |n| n.to_string())
    };
    let (to_a, to_b) = (count(a), count(b));
    t.observations.push(format!(
        "{made} connections to 127.0.0.1:{port}: the kernel gave {to_a} to server-a and {to_b} \
         to server-b (it picks by a hash of each connection's addresses and ports)"
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
    let old = t.server(old, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = lab::connect(addr).map_err(|e| {
        io::Error::other(format!(
            "connecting to the old server: {}",
            result_name(Err(e))
        ))
    })?;
    // The server wrote a byte once it accepted: the connection is established on its side.
    let accepted = lab::read_until(&client, 1, 2000);
    if let Some(c) = t.children.get_mut(old) {
        let pid = c.pid;
        c.kill();
        t.sockets
            .push(format!("the old server (server-a, pid {pid}) was killed"));
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
    t.server(new, None)?;
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
