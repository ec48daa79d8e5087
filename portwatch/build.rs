use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the kernel programs (portwatch-ebpf) for the BPF target and leaves the object in
/// OUT_DIR, where main.rs includes it. This is the aya-template's wiring.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "portwatch-ebpf")
        .ok_or_else(|| anyhow!("portwatch-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    // Build the programs with the toolchain the workspace pins: its LLVM must match
    // bpf-linker's, and the generic `nightly` may be a different one.
    let pinned = pinned_toolchain()?;
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(&pinned))
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
