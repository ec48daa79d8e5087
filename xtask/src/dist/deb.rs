//! `portwatch_VERSION-1_amd64.deb`, staged by hand and packed by `dpkg-deb`: the static
//! binary, its man page and bash/zsh/fish completions (from the binary's own `man` and
//! `completions`), the systemd unit from `deploy/systemd/` as it is in the tree (installed,
//! neither enabled nor started: the package has no maintainer scripts), copyright and
//! changelog. Depends on nothing: the binary is static.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{Release, gzip, output_of};
use crate::cmd::{self, target_dir, workspace_root};

pub const MAINTAINER: &str = "portwatch developers <portwatch@lists.example.org>";

/// Paths the package installs (files only), relative to `/`.
pub const FILES: &[&str] = &[
    "usr/bin/portwatch",
    "usr/share/man/man1/portwatch.1.gz",
    "usr/share/bash-completion/completions/portwatch",
    "usr/share/zsh/vendor-completions/_portwatch",
    "usr/share/fish/vendor_completions.d/portwatch.fish",
    "lib/systemd/system/portwatch.service",
    "usr/share/doc/portwatch/copyright",
    "usr/share/doc/portwatch/changelog.Debian.gz",
];

pub fn file_name(release: &Release) -> String {
    format!("portwatch_{}-1_amd64.deb", release.version)
}

pub fn build(release: &Release, binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let root = target_dir().join("dist-work/deb");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let put = |rel: &str, data: &[u8], mode: u32| -> Result<()> {
        let path = root.join(rel);
        let parent = path.parent().context("a parent")?;
        fs::create_dir_all(parent)?;
        fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/portwatch", &fs::read(binary)?, 0o755)?;
    put(
        "usr/share/man/man1/portwatch.1.gz",
        &gzip(&output_of(binary, &["man"])?)?,
        0o644,
    )?;
    for (shell, rel) in [("bash", FILES[2]), ("zsh", FILES[3]), ("fish", FILES[4])] {
        put(rel, &output_of(binary, &["completions", shell])?, 0o644)?;
    }
    put(
        "lib/systemd/system/portwatch.service",
        &fs::read(workspace_root().join("deploy/systemd/portwatch.service"))?,
        0o644,
    )?;
    put(
        "usr/share/doc/portwatch/copyright",
        copyright(release)?.as_bytes(),
        0o644,
    )?;
    put(
        "usr/share/doc/portwatch/changelog.Debian.gz",
        &gzip(changelog(release)?.as_bytes())?,
        0o644,
    )?;
    // md5sums, as dpkg --verify and debsums read them.
    let sums = cmd::probe(Command::new("md5sum").args(FILES).current_dir(&root))
        .context("md5sum failed")?;
    put("DEBIAN/md5sums", sums.as_bytes(), 0o644)?;
    let installed_kib = FILES
        .iter()
        .map(|f| fs::metadata(root.join(f)).map(|m| m.len().div_ceil(1024)))
        .sum::<std::io::Result<u64>>()?;
    put(
        "DEBIAN/control",
        control(release, installed_kib)?.as_bytes(),
        0o644,
    )?;
    // Directories as dpkg expects them, whatever the umask was.
    for dir in walk_dirs(&root)? {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out_dir.join(file_name(release));
    cmd::run(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", release.epoch.to_string())
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn walk_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            v.extend(walk_dirs(&p)?);
        }
    }
    Ok(v)
}

fn control(release: &Release, installed_kib: u64) -> Result<String> {
    Ok(format!(
        "Package: portwatch\n\
         Version: {}-1\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Built-Using: glibc (= {})\n\
         Section: net\n\
         Priority: optional\n\
         Description: explains bind() and listen() results live, with eBPF\n \
         Who holds that port, and why does the kernel refuse? portwatch traces every\n \
         bind() and listen() on the machine and explains each result in plain words:\n \
         which socket is in the way of an \"Address already in use\", which kernel\n \
         rule made them clash, and what to change. It also finds sockets that are\n \
         bound but not listening, which lsof and fuser do not show.\n \
         .\n \
         Needs Linux 5.17 or later with BTF (/sys/kernel/btf/vmlinux). The binary is\n \
         statically linked; the systemd unit is installed but not enabled.\n",
        release.version,
        glibc_version()?
    ))
}

/// The Debian source version of the glibc the binary is statically linked with (libc6-dev's
/// source): Built-Using names it, as Debian policy asks of a static link, so that the exact
/// LGPL source stays available from the archive.
fn glibc_version() -> Result<String> {
    let v =
        cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${source:Version}", "libc6-dev"]))
            .context("dpkg-query libc6-dev (apt-get install libc6-dev)")?;
    Ok(v.trim().to_string())
}

/// A crate linked into the binary (or its embedded eBPF object), as `cargo metadata` names it.
struct LinkedCrate {
    name: String,
    version: String,
    license: String,
}

/// The registry crates compiled into `/usr/bin/portwatch`: the normal (not build or dev)
/// dependencies of `portwatch` and of `portwatch-ebpf`, whose object is embedded in it,
/// procedural macros left out.
fn linked_crates() -> Result<Vec<LinkedCrate>> {
    let out = cmd::probe(
        Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--filter-platform"])
            .arg("x86_64-unknown-linux-gnu")
            .current_dir(workspace_root()),
    )
    .context("cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    let packages = meta["packages"].as_array().context("no packages")?;
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph")?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("no workspace members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let id_of = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name && members.contains(&p["id"].as_str().unwrap_or("")))
            .and_then(|p| p["id"].as_str())
    };
    let mut todo: Vec<&str> = ["portwatch", "portwatch-ebpf"]
        .iter()
        .map(|n| id_of(n).with_context(|| format!("no workspace package {n}")))
        .collect::<Result<_>>()?;
    let mut seen: std::collections::BTreeSet<&str> = todo.iter().copied().collect();
    while let Some(id) = todo.pop() {
        let node = nodes.iter().find(|n| n["id"] == id).context("a node")?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if let Some(pkg) = dep["pkg"].as_str()
                && normal
                && seen.insert(pkg)
            {
                todo.push(pkg);
            }
        }
    }
    let mut crates: Vec<LinkedCrate> = packages
        .iter()
        .filter(|p| {
            let id = p["id"].as_str().unwrap_or("");
            // Procedural macros run in the compiler; nothing of theirs is in the binary.
            let proc_macro = p["targets"].as_array().into_iter().flatten().any(|t| {
                t["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k == "proc-macro")
            });
            seen.contains(id) && !members.contains(&id) && !proc_macro
        })
        .map(|p| LinkedCrate {
            name: p["name"].as_str().unwrap_or("").to_string(),
            version: p["version"].as_str().unwrap_or("").to_string(),
            license: p["license"].as_str().unwrap_or("not stated").to_string(),
        })
        .collect();
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(crates)
}

/// machine-readable copyright (DEP-5). The eBPF programs inside the binary are MIT or GPL-2.0
/// (the kernel requires a GPL-compatible license for the helpers they call).
fn copyright(release: &Release) -> Result<String> {
    let crates: String = linked_crates()?
        .iter()
        .map(|c| format!(" {} {}: {}\n", c.name, c.version, c.license))
        .collect();
    let mit = fs::read_to_string(workspace_root().join("LICENSE-MIT"))?;
    let mit: String = mit
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: portwatch\n\
         Comment: Built by `cargo xtask dist` from commit {}.\n\
         \n\
         Files: *\n\
         Copyright: portwatch developers\n\
         License: MIT or Apache-2.0\n\
         Comment: The eBPF programs embedded in /usr/bin/portwatch are MIT or GPL-2.\n \
         .\n \
         /usr/bin/portwatch is statically linked. It contains the Rust standard library\n \
         (MIT or Apache-2.0), the GNU C Library (LGPL-2.1+; Built-Using names the exact\n \
         source version, which Debian's archive keeps) and these crates from crates.io,\n \
         each under the license its authors state:\n\
         {crates}\
         \n\
         License: MIT\n{mit}\
         \n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n\
         \n\
         License: GPL-2\n \
         On Debian systems, the full text of the GNU General Public License version 2\n \
         is in /usr/share/common-licenses/GPL-2.\n",
        release.commit
    ))
}

fn changelog(release: &Release) -> Result<String> {
    Ok(format!(
        "portwatch ({}-1) unstable; urgency=medium\n\
         \n  \
         * Built by `cargo xtask dist` from commit {}.\n\
         \n \
         -- {MAINTAINER}  {}\n",
        release.version,
        release.commit,
        release.date("-R")?
    ))
}
