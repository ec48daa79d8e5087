use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message};

/// Builds the kernel programs (portwatch-ebpf) for the BPF target and leaves the object in
/// OUT_DIR, where loader.rs includes it; and tells `--version` which commit and target this is.
fn main() -> anyhow::Result<()> {
    version_info();
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../portwatch-ebpf");
    // The build-dependency on portwatch-ebpf reruns us when its library or dependencies
    // change; this covers its binary (the programs) too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    let object = build_ebpf(&pinned_toolchain()?)?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    std::fs::copy(&object, out.join("portwatch"))
        .with_context(|| format!("copying {} into {}", object.display(), out.display()))?;
    Ok(())
}

/// `cargo build` of portwatch-ebpf for bpfel-unknown-none, as the aya-template's aya-build
/// does it (same flags, same target directory under OUT_DIR), but quiet: aya-build turns every
/// line of the inner cargo's progress into a `warning: portwatch@...` of the outer build.
/// Here a successful build says nothing but the compiler's own warnings, and a failed one
/// shows everything the inner cargo said. Returns the object's path.
fn build_ebpf(toolchain: &str) -> anyhow::Result<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    // Built with the toolchain the workspace pins: its LLVM must match bpf-linker's, and the
    // generic `nightly` may be a different one. Nightly, so -Z build-std is available.
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo", "build"])
        .args(["--package", "portwatch-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--message-format=json")
        .arg("--target-dir")
        .arg(out.join("aya-build/target/portwatch-ebpf"))
        // --disable-expand-memcpy-in-order: bpf-linker otherwise tells LLVM to expand only
        // memcpy inline, in order, and to call a `memset` for every zeroing, even of 3 bytes.
        // That memset is compiler-builtins' byte loop: 5 instructions a byte, about a fifth of
        // an event's run time before this flag (BENCHMARKS.md, bpf_stats). Without it LLVM
        // stores whole words inline. In-order copies matter only to JITs that pattern-match
        // them (offload), not to the x86-64 and arm64 ones portwatch runs on.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--disable-expand-memcpy-in-order\x1f{}",
                remap_paths().join("\x1f")
            ),
        )
        // The outer build's compiler (or wrapper) may be another toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdin(Stdio::null());
    let output = cmd.output().map_err(|e| {
        anyhow!("starting `rustup run {toolchain} cargo` for the eBPF programs: {e} (install rustup, then `cargo xtask setup`)")
    })?;
    let mut object = None;
    let mut diagnostics = Vec::new();
    for message in Message::parse_stream(&output.stdout[..]) {
        match message.context("reading the eBPF build's JSON messages")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(exe),
                target,
                ..
            }) if target.name == "portwatch" => object = Some(exe.into_std_path_buf()),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                diagnostics.push(message.rendered.unwrap_or(message.message));
            }
            Message::TextLine(line) => diagnostics.push(line),
            _ => {}
        }
    }
    if !output.status.success() {
        // Cargo prints a failed build script's stderr: all of it, this time.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        for d in &diagnostics {
            eprintln!("{d}");
        }
        bail!(
            "building the eBPF programs (portwatch-ebpf) failed ({}); its output is above",
            output.status
        );
    }
    // A successful build's real compiler warnings still show (the clippy stage fails on them).
    for line in diagnostics.iter().flat_map(|d| d.lines()) {
        println!("cargo:warning={line}");
    }
    object.ok_or_else(|| anyhow!("the eBPF build produced no `portwatch` object"))
}

/// The object's BTF line info names source files: this checkout's and cargo's registry's
/// paths are replaced by fixed ones, so the object (and the binary around it) is the same
/// bytes wherever it is built (`cargo xtask dist` remaps the user-space code the same way).
fn remap_paths() -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let mut flags = vec![format!(
        "--remap-path-prefix={}=/portwatch",
        workspace.display()
    )];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        flags.push(format!(
            "--remap-path-prefix={}=/cargo/registry/src",
            home.join("registry/src").display()
        ));
    }
    flags
}

/// Sets `PORTWATCH_GIT_COMMIT` (the commit, `unknown` outside a git checkout; `cargo xtask
/// dist` passes its own, with `-dirty` for uncommitted changes) and `PORTWATCH_TARGET` (the
/// target triple) for `portwatch --version`.
fn version_info() {
    println!("cargo:rerun-if-env-changed=PORTWATCH_GIT_COMMIT");
    let commit = std::env::var("PORTWATCH_GIT_COMMIT").ok().or_else(|| {
        let dir = env!("CARGO_MANIFEST_DIR");
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(args)
                .current_dir(dir)
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        // Rerun when HEAD moves: HEAD itself, the branch it names, and packed refs. Only
        // files that exist: cargo reruns a build script whose watched file is missing, every
        // time (and then rebuilds the crate).
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for w in watched {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &w])
                && Path::new(&p).exists()
            {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=PORTWATCH_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=PORTWATCH_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}

/// The `channel` from the workspace's rust-toolchain.toml.
fn pinned_toolchain() -> anyhow::Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rust-toolchain.toml");
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .ok_or_else(|| anyhow!("no channel in {path}"))
}
