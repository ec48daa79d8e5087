//! Scenarios for portwatch's explanations (issue 3): every rule reproduced with real sockets,
//! held by separate processes, under the real tracer. Each asserts what a user reads: the
//! result, the rule id, and the pid and comm of the process in the way (or sharing the port).
//!
//! The same scenarios run on this host's kernel and on Debian's 6.1 in the VM, with both
//! backends there, so they also show that the rule engine agrees with two kernels.
//!
//! Every scenario with a holder process is registered twice (issue 8, see [`holding`]): as
//! `NAME`, with the holders kept until portwatch reported, and as `NAME_holder_gone`, with
//! them exiting right after the deciding call, which must be explained the same. One is
//! registered once ([`holding::kept_only`]): the other namespace, which the kernel side does
//! not read at the call. The other protocol it does read (both ways: a UDP bind next to TCP
//! and a TCP bind next to UDP).
//!
//! This file is the table of them, in the order they run. The bodies: [`cases`] (the generic
//! shapes: a clash, a share, a refusal), [`rules`] (rules that need their own set-up),
//! [`real_server`] (servers not written here), [`instant`] (holders only the kernel's view at
//! the call can explain); [`expect`] holds what an explanation must say.

/// [`holding::twice`], naming the second scenario `NAME_holder_gone`.
macro_rules! twice {
    ($name:literal, $body:expr) => {
        $crate::scenarios::explain::holding::twice($name, concat!($name, "_holder_gone"), $body)
    };
}

mod cases;
mod connect;
mod expect;
mod holding;
mod instant;
mod real_server;
mod rules;
mod tcp_state;

use self::{
    cases::{clashing, refusing, sharing},
    rules::{
        already_bound, autobind_reuse, bindtodevice_unbound, bindv6only_default, different_devices,
        different_netns, dual_stack, eperm_cgroup, ephemeral_exhausted, listen_conflict,
        listen_exhausted, privileged_port, reuseaddr_needs_both, reuseport_uid, same_address,
        time_wait, udp_reuseaddr,
    },
};
use super::{Scenario, sock::SockSpec};

pub fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    v.extend(twice!("explain_same_address", same_address));
    v.extend(twice!(
        "explain_wildcard_covers_specific",
        clashing(
            SockSpec::tcp("0.0.0.0:8080").listening(),
            SockSpec::tcp("127.0.0.1:8080"),
            "wildcard-covers-specific"
        )
    ));
    v.extend(twice!(
        "explain_specific_blocks_wildcard",
        clashing(
            SockSpec::tcp("127.0.0.1:8080").listening(),
            SockSpec::tcp("0.0.0.0:8080"),
            "specific-blocks-wildcard"
        )
    ));
    v.extend(twice!(
        "explain_different_addresses_coexist",
        sharing(
            SockSpec::tcp("127.0.0.1:8080").listening(),
            SockSpec::tcp("127.0.0.2:8080"),
            "ok-different-addresses"
        )
    ));
    v.extend(twice!(
        "explain_tcp_udp_separate_spaces",
        sharing(
            SockSpec::tcp("0.0.0.0:8080").listening(),
            SockSpec::udp("0.0.0.0:8080"),
            "ok-separate-port-spaces"
        )
    ));
    v.extend(twice!(
        "explain_udp_tcp_separate_spaces",
        sharing(
            SockSpec::udp("0.0.0.0:8080"),
            SockSpec::tcp("127.0.0.1:8080"),
            "ok-separate-port-spaces"
        )
    ));
    v.extend(twice!("explain_dual_stack_covers_ipv4", dual_stack));
    v.extend(twice!(
        "explain_v6only_leaves_ipv4",
        sharing(
            SockSpec::tcp("[::]:8080")
                .with(|o| o.v6only = Some(true))
                .listening(),
            SockSpec::tcp("0.0.0.0:8080"),
            "ok-v6only"
        )
    ));
    v.extend(twice!("explain_bindv6only_default", bindv6only_default));
    v.extend(twice!(
        "explain_v4_mapped",
        clashing(
            SockSpec::tcp("127.0.0.1:8080").listening(),
            SockSpec::tcp("[::ffff:127.0.0.1]:8080"),
            "v4-mapped"
        )
    ));
    v.extend(twice!(
        "explain_ipv4_blocks_dual_stack",
        clashing(
            SockSpec::tcp("0.0.0.0:8080").listening(),
            SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(false)),
            "ipv4-blocks-dual-stack"
        )
    ));
    v.push(Scenario::shared(
        "explain_v4_mapped_on_v6only",
        refusing(
            SockSpec::tcp("[::ffff:127.0.0.1]:8080").with(|o| o.v6only = Some(true)),
            libc::EINVAL,
            "v4-mapped-on-v6only",
        ),
    ));
    v.extend(twice!(
        "explain_reuseaddr_needs_both_bound_only_holder",
        reuseaddr_needs_both
    ));
    v.extend(twice!(
        "explain_reuseaddr_vs_listen",
        clashing(
            SockSpec::tcp("0.0.0.0:8080")
                .with(|o| o.reuseaddr = true)
                .listening(),
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
            "reuseaddr-vs-listen"
        )
    ));
    v.extend(twice!(
        "explain_reuseaddr_on_both",
        sharing(
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
            "ok-reuseaddr"
        )
    ));
    v.extend(twice!("explain_udp_reuseaddr", udp_reuseaddr));
    v.push(Scenario::shared(
        "explain_time_wait_blocks_restart",
        |_, pw, ns| {
            time_wait(
                pw,
                ns,
                false,
                true,
                Some("time-wait"),
                "the old socket didn't",
            )
        },
    ));
    v.push(Scenario::shared(
        "explain_time_wait_new_socket_lacks_reuseaddr",
        |_, pw, ns| {
            time_wait(
                pw,
                ns,
                true,
                false,
                Some("time-wait"),
                "this socket doesn't set SO_REUSEADDR",
            )
        },
    ));
    v.push(Scenario::shared(
        "explain_time_wait_passed_with_reuseaddr",
        |_, pw, ns| time_wait(pw, ns, true, true, None, "TIME_WAIT"),
    ));
    v.extend(twice!("explain_listen_conflict", listen_conflict));
    v.extend(twice!(
        "explain_reuseport_same_user",
        sharing(
            SockSpec::tcp("0.0.0.0:8080")
                .with(|o| o.reuseport = true)
                .listening(),
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseport = true),
            "ok-reuseport"
        )
    ));
    v.extend(twice!(
        "explain_reuseport_needs_both",
        clashing(
            SockSpec::tcp("0.0.0.0:8080")
                .with(|o| o.reuseport = true)
                .listening(),
            SockSpec::tcp("0.0.0.0:8080"),
            "reuseport-needs-both"
        )
    ));
    v.extend(twice!("explain_reuseport_uid_mismatch", reuseport_uid));
    v.extend(twice!(
        "explain_bindtodevice_unbound_conflicts",
        bindtodevice_unbound
    ));
    v.extend(twice!(
        "explain_bindtodevice_different_devices",
        different_devices
    ));
    v.push(holding::kept_only(
        "explain_different_netns_never_conflict",
        different_netns,
    ));
    v.push(Scenario::shared(
        "explain_ephemeral_exhausted",
        ephemeral_exhausted,
    ));
    v.push(Scenario::shared(
        "explain_listen_ephemeral_exhausted",
        listen_exhausted,
    ));
    v.extend(twice!("explain_autobind_reuse", autobind_reuse));
    v.push(Scenario::shared("explain_privileged_port", privileged_port));
    v.push(Scenario::shared(
        "explain_address_not_local",
        refusing(
            SockSpec::tcp("192.0.2.1:8080"),
            libc::EADDRNOTAVAIL,
            "address-not-local",
        ),
    ));
    v.push(Scenario::shared("explain_already_bound", already_bound));
    v.push(Scenario::shared(
        "explain_multicast_on_tcp",
        refusing(
            SockSpec::tcp("[ff02::1]:8080"),
            libc::EINVAL,
            "multicast-on-tcp",
        ),
    ));
    v.push(Scenario::shared(
        "explain_link_local_needs_scope",
        refusing(
            SockSpec::tcp("[fe80::1]:8080"),
            libc::EINVAL,
            "link-local-needs-scope",
        ),
    ));
    v.push(Scenario::shared(
        "explain_eperm_cgroup_program",
        eperm_cgroup,
    ));
    v.extend(real_server::scenarios());
    v.extend(instant::scenarios());
    v.extend(connect::scenarios());
    v
}
