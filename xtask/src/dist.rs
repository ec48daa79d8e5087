//! `cargo xtask dist`: what an operator installs, in `target/dist/`, built offline from this
//! checkout: the static binary, a .deb, an OCI image archive and `SHA256SUMS`.
//!
//! Reproducible where the tools allow: every timestamp is `SOURCE_DATE_EPOCH` (the commit's
//! time unless set), paths of this checkout and of cargo's registry are remapped out of the
//! binary, archives are written with fixed owners and order (`tar.rs`, `dpkg-deb
//! --root-owner-group`, `gzip -n`).
//!
//! The binary is glibc static-pie (`-C target-feature=+crt-static` for x86_64-unknown-linux-gnu):
//! rustup's server has no musl standard library for the pinned nightly, and the gnu one links
//! statically with Debian's libc6-dev. portwatch resolves no host names and no user names, so
//! none of glibc's dlopen()ed NSS modules is ever wanted.

pub mod check;
mod deb;
mod oci;
pub mod tar;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{self, target_dir, workspace_root};

/// The triple the static binary is built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What one `dist` run is built from.
#[derive(Debug, Clone)]
pub struct Release {
    /// portwatch's Cargo.toml version.
    pub version: String,
    /// 12 hex digits, with `-dirty` when tracked files differ from the commit.
    pub commit: String,
    /// `SOURCE_DATE_EPOCH`: every timestamp in every artifact.
    pub epoch: u64,
}

/// The files of one `dist` run.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub release: Release,
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub image: PathBuf,
}

/// `target/dist/`.
pub fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

impl Release {
    pub fn current() -> Result<Release> {
        let manifest = workspace_root().join("portwatch/Cargo.toml");
        let text = fs::read_to_string(&manifest)?;
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("version = "))
            .map(|v| v.trim_matches('"').to_string())
            .with_context(|| format!("no version in {}", manifest.display()))?;
        let git = |args: &[&str]| -> Result<String> {
            cmd::probe(Command::new("git").args(args).current_dir(workspace_root()))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "`git {}` failed: dist builds from a git checkout",
                        args.join(" ")
                    )
                })
        };
        let mut commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
            commit.push_str("-dirty");
        }
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
            Err(_) => git(&["log", "-1", "--format=%ct"])?.parse()?,
        };
        Ok(Release {
            version,
            commit,
            epoch,
        })
    }

    /// The epoch in `date` format `fmt`, UTC.
    pub fn date(&self, fmt: &str) -> Result<String> {
        let out = cmd::probe(Command::new("date").env("LC_ALL", "C").args([
            "-u",
            "-d",
            &format!("@{}", self.epoch),
            fmt,
        ]))
        .context("running date")?;
        Ok(out.trim().to_string())
    }
}

/// Builds everything into `target/dist/` and prints what it wrote.
pub fn build() -> Result<Artifacts> {
    let release = Release::current()?;
    let dir = dist_dir();
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let built = build_static(&release)?;
    let binary = dir.join(format!("portwatch-{}-x86_64-linux", release.version));
    fs::copy(&built, &binary)?;
    let deb = deb::build(&release, &binary, &dir)?;
    let image = oci::build(&release, &binary, &dir)?;
    let names: Vec<String> = [&binary, &deb, &image]
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let sums = cmd::probe(Command::new("sha256sum").args(&names).current_dir(&dir))
        .context("sha256sum failed")?;
    fs::write(dir.join("SHA256SUMS"), &sums)?;
    eprintln!(
        "dist: {} (commit {}, SOURCE_DATE_EPOCH={}):",
        dir.display(),
        release.commit,
        release.epoch
    );
    for n in names.iter().chain(["SHA256SUMS".to_string()].iter()) {
        let size = fs::metadata(dir.join(n))?.len();
        eprintln!("  {n:<40} {:>6.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
    Ok(Artifacts {
        dir,
        release,
        binary,
        deb,
        image,
    })
}

/// `cargo build --release` for [`TARGET`] with crt-static, symbols stripped and this
/// machine's paths remapped. `--target` keeps these flags off build scripts and proc-macros
/// (which cannot be static), and gives the build its own directory, so the ordinary release
/// build is not invalidated.
fn build_static(release: &Release) -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let flags = [
        "-Ctarget-feature=+crt-static".to_string(),
        "-Cstrip=symbols".to_string(),
        format!(
            "--remap-path-prefix={}=/portwatch",
            workspace_root().display()
        ),
        format!(
            "--remap-path-prefix={}=/cargo/registry/src",
            cargo_home.join("registry/src").display()
        ),
    ];
    let mut build = cmd::cargo();
    build.args(["build", "--release", "-p", "portwatch", "--target", TARGET]);
    // RUSTFLAGS when no path has a space, so the echoed command can be typed again.
    if flags.iter().any(|f| f.contains(char::is_whitespace)) {
        build.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    } else {
        build
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", flags.join(" "));
    }
    cmd::run(
        build
            .env("PORTWATCH_GIT_COMMIT", &release.commit)
            .env("SOURCE_DATE_EPOCH", release.epoch.to_string()),
    )?;
    let bin = target_dir().join(TARGET).join("release/portwatch");
    ensure!(
        !has_interpreter(&bin)?,
        "{} asks for a dynamic loader (PT_INTERP): the static link did not happen",
        bin.display()
    );
    Ok(bin)
}

/// Whether the ELF file has a PT_INTERP program header, i.e. needs a dynamic loader and
/// shared libraries to start. A static(-pie) executable has none.
pub fn has_interpreter(elf: &Path) -> Result<bool> {
    let data = fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    ensure!(
        data.len() > 64 && &data[..5] == b"\x7fELF\x02",
        "{} is not a 64-bit ELF file",
        elf.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into()?) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    for i in 0..count {
        let at = phoff + i * entsize;
        let Some(p_type) = data.get(at..at + 4) else {
            bail!(
                "{}: program headers past the end of the file",
                elf.display()
            );
        };
        if u32::from_le_bytes(p_type.try_into()?) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `sha256:HEX` of a file, by sha256sum.
pub fn sha256(path: &Path) -> Result<String> {
    let out = cmd::probe(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    let hex = out.split_whitespace().next().unwrap_or("");
    ensure!(hex.len() == 64, "sha256sum printed {out:?}");
    Ok(format!("sha256:{hex}"))
}

/// `gzip -9n` of `data`: no name and no time in the header, so the same input gives the same
/// bytes.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    ensure!(out.status.success(), "gzip failed: {}", out.status);
    Ok(out.stdout)
}

/// Runs the built binary with `args` and returns its stdout: the man page and completions come
/// from the binary itself.
pub fn output_of(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "{} {}: {}",
        binary.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
