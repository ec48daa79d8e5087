//! `cargo xtask setup`: installs what building and testing portwatch needs on a Debian 12
//! machine, idempotently.
//!
//! Every check is a local lookup (rustup's component list, dpkg's database, `bpf-linker
//! --version`), so when everything is there setup costs tens of milliseconds and touches no
//! network. Only what is missing gets installed, and `apt-get update` runs only then.
//!
//! The bootstrap question: xtask itself is compiled by the toolchain pinned in
//! rust-toolchain.toml, so that toolchain must exist before any `cargo xtask` can start.
//! rustup ≥ 1.28 installs it (with the listed components) on first use, unless
//! `RUSTUP_AUTO_INSTALL=0`, which these machines set. Then cargo stops with "toolchain ... is
//! not installed" and `rustup toolchain install` (no arguments, in the repo) is the fix; see
//! docs/TESTING.md. Setup still checks the components, because with auto-install off a
//! toolchain can be present without rust-src (which `-Z build-std` needs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, workspace_root};

/// Debian packages, with why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    (
        "libpolly-22-dev",
        "LLVM 22's static libraries reference Polly",
    ),
    ("zlib1g-dev", "linking bpf-linker"),
    ("libzstd-dev", "linking bpf-linker"),
    (
        "qemu-system-x86",
        "the VM with Debian's kernel (fexit backend tests)",
    ),
    ("busybox-static", "the VM's userland"),
    ("cpio", "initramfs tooling"),
    ("bpftool", "checking that no programs stay loaded"),
    ("iproute2", "ss and ip, for looking at sockets by hand"),
    (
        "systemd",
        "systemd-journald and journalctl for the journal scenarios, systemd-analyze for the unit",
    ),
    (
        "util-linux",
        "unshare and nsenter (journald in a private mount namespace), setpriv",
    ),
    (
        "bpftrace",
        "the bench's peer tracer and empty-program baseline",
    ),
    ("gcc", "compiling the bench's bind loop"),
    (
        "libc6-dev",
        "libc.a: `cargo xtask dist` links glibc statically",
    ),
    ("lintian", "checking the .deb (dist stage)"),
    (
        "skopeo",
        "reading the image archive as registry tooling does (dist stage)",
    ),
    (
        "libcap2-bin",
        "capsh and getcap: the dist stage runs the image's binary as the DaemonSet does",
    ),
];

/// The bpf-linker release whose LLVM (22) matches the pinned nightly's.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The `[toolchain]` table of rust-toolchain.toml.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub channel: String,
    pub components: Vec<String>,
}

/// Reads rust-toolchain.toml.
pub fn pinned_toolchain() -> Result<Toolchain> {
    let path = workspace_root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_toolchain(&text).with_context(|| format!("no channel in {}", path.display()))
}

/// A hand parser for the two keys we need keeps xtask free of a TOML crate.
fn parse_toolchain(text: &str) -> Option<Toolchain> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(key)?.trim_start();
            Some(rest.strip_prefix('=')?.trim().to_string())
        })
    };
    let channel = value("channel")?.trim_matches('"').to_string();
    let components = value("components")
        .map(|v| {
            v.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some(Toolchain {
        channel,
        components,
    })
}

/// Makes sure everything is installed. Quiet when nothing was missing, apart from one line
/// when `announce` is set (for `cargo xtask setup` and the test log).
pub fn ensure(announce: bool) -> Result<()> {
    let started = Instant::now();
    let toolchain = pinned_toolchain()?;
    let mut did = Vec::new();
    if ensure_toolchain(&toolchain)? {
        did.push(format!("toolchain {}", toolchain.channel));
    }
    let installed = ensure_packages()?;
    if !installed.is_empty() {
        did.push(format!("packages {}", installed.join(" ")));
    }
    if ensure_bpf_linker(&toolchain)? {
        did.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    let took = started.elapsed();
    if !did.is_empty() {
        eprintln!("setup: installed {} in {:.1?}", did.join("; "), took);
    } else if announce {
        eprintln!(
            "setup: everything present ({}, {} packages, bpf-linker {BPF_LINKER_VERSION}) in {:.0?}",
            toolchain.channel,
            PACKAGES.len(),
            took
        );
    }
    Ok(())
}

/// Installs the pinned toolchain or any of its components that is missing. Returns whether
/// anything was installed.
fn ensure_toolchain(tc: &Toolchain) -> Result<bool> {
    let listed = cmd::probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &tc.channel,
    ]));
    let missing: Vec<&String> = match &listed {
        // Names are "rust-src" or "clippy-x86_64-unknown-linux-gnu".
        Some(list) => tc
            .components
            .iter()
            .filter(|c| {
                !list
                    .lines()
                    .any(|l| l == c.as_str() || l.starts_with(&format!("{c}-")))
            })
            .collect(),
        None => tc.components.iter().collect(),
    };
    if listed.is_some() && missing.is_empty() {
        return Ok(false);
    }
    if cmd::probe(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup is not installed; install it from https://rustup.rs and run this again");
    }
    eprintln!(
        "setup: toolchain {} {}",
        tc.channel,
        if listed.is_none() {
            "is not installed".to_string()
        } else {
            format!(
                "lacks {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    // --no-self-update: never let a toolchain install replace rustup itself as a side effect.
    cmd::run(
        Command::new("rustup")
            .args(["toolchain", "install", &tc.channel, "--profile", "minimal"])
            .args(["--component", &tc.components.join(",")])
            .arg("--no-self-update"),
    )?;
    Ok(true)
}

/// Installs missing Debian packages. Returns the names installed.
fn ensure_packages() -> Result<Vec<String>> {
    let mut wanted: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    // Any python3 will do (pyenv's included); only install Debian's when there is none. A PATH
    // lookup, not `python3 --version`: pyenv's shim alone takes 0.1 s to answer.
    if cmd::find_program("python3").is_none() {
        wanted.push("python3");
    }
    let missing = missing_packages(&wanted)?;
    if missing.is_empty() {
        return Ok(missing);
    }
    for p in &missing {
        let why = PACKAGES
            .iter()
            .find(|(n, _)| n == p)
            .map_or("", |(_, w)| *w);
        eprintln!(
            "setup: missing package {p}{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        );
    }
    // The package lists may be absent (fresh image) or stale, so refresh them, but only now.
    cmd::run(cmd::privileged("apt-get").args(["update", "-q"]))?;
    cmd::run(
        cmd::privileged("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_packages(&wanted)?;
    if !still.is_empty() {
        bail!("apt-get install did not install {}", still.join(" "));
    }
    Ok(missing)
}

/// The packages of `names` that dpkg does not list as installed.
fn missing_packages(names: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits 1 when a name is unknown to dpkg; its stdout still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(names)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(names
        .iter()
        .filter(|n| {
            !text.lines().any(|l| {
                let mut f = l.split_whitespace();
                // "llvm-22-dev ii" ("ii" = wanted install, installed).
                f.next() == Some(**n) && f.next().is_some_and(|s| s.starts_with("ii"))
            })
        })
        .map(|n| n.to_string())
        .collect())
}

/// `cargo install`s bpf-linker unless a 0.13 is already on PATH or in cargo's bin directory.
/// Returns whether it installed.
fn ensure_bpf_linker(tc: &Toolchain) -> Result<bool> {
    let found = bpf_linker_candidates()
        .into_iter()
        .find_map(|p| cmd::probe(Command::new(&p).arg("--version")).map(|v| (p, v)));
    let wanted_minor = BPF_LINKER_VERSION.rsplit_once('.').map_or("", |(m, _)| m);
    match &found {
        Some((_, v))
            if v.split_whitespace().nth(1).is_some_and(|ver| {
                ver == wanted_minor || ver.starts_with(&format!("{wanted_minor}."))
            }) =>
        {
            return Ok(false);
        }
        Some((p, v)) => eprintln!(
            "setup: {} reports {:?}, need {wanted_minor}",
            p.display(),
            v.trim()
        ),
        None => eprintln!("setup: bpf-linker not found"),
    }
    if !Path::new(LLVM_PREFIX).join("lib").is_dir() {
        bail!("{LLVM_PREFIX} is missing although llvm-22-dev is installed");
    }
    // The pinned toolchain builds it (its LLVM is 22 too), from a neutral directory so no
    // workspace config applies. About a minute on 2 cores.
    cmd::run(
        Command::new("cargo")
            .arg(format!("+{}", tc.channel))
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .current_dir(std::env::temp_dir())
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                "llvm-22",
                "--locked",
                "--force",
            ]),
    )?;
    Ok(true)
}

/// `bpf-linker` as the build will find it (PATH), then cargo's bin directory, which a fresh
/// shell may not have on PATH yet.
fn bpf_linker_candidates() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("bpf-linker")];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(h) = cargo_home {
        v.push(h.join("bin/bpf-linker"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_toolchain_file() {
        let tc = parse_toolchain(
            "# comment\n[toolchain]\nchannel = \"nightly-2026-06-20\"\n\
             components = [\"rust-src\", \"clippy\", \"rustfmt\"]\nprofile = \"minimal\"\n",
        )
        .unwrap();
        assert_eq!(tc.channel, "nightly-2026-06-20");
        assert_eq!(tc.components, ["rust-src", "clippy", "rustfmt"]);
        assert!(parse_toolchain("[toolchain]\n").is_none());
    }

    #[test]
    fn the_repo_pins_a_toolchain_with_rust_src() {
        let tc = pinned_toolchain().unwrap();
        assert!(tc.channel.starts_with("nightly-"));
        assert!(tc.components.iter().any(|c| c == "rust-src"));
    }
}
