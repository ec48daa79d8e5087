//! Small helpers for running the tools xtask drives (cargo, apt, rustup, sudo).
//!
//! Every command is echoed before it runs, so a CI log shows exactly what to repeat by hand.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, ensure};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args...`, prefixed with `sudo` when we are not root. The tasks that need root
/// (apt, loading eBPF) are few and explicit; everything else runs as the invoking user.
pub fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// Shell-like rendering of a command for logs (no quoting beyond what is needed to read it).
pub fn render(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            let v = v?.to_string_lossy();
            let v = if v.contains(char::is_whitespace) {
                format!("'{v}'")
            } else {
                v.into_owned()
            };
            Some(format!("{}={v}", k.to_string_lossy()))
        })
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            parts.push(format!("'{a}'"));
        } else {
            parts.push(a.into_owned());
        }
    }
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio after echoing it; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", render(cmd));
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting {}", render(cmd)))?;
    ensure!(
        status.success(),
        "`{}` failed ({status}) after {:.1} s",
        render(cmd),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `cmd` silently and returns its stdout, or `None` when it cannot start or fails.
/// For cheap presence checks, where failure just means "not there".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo` (the rustup proxy) in the workspace root, so rust-toolchain.toml picks the pinned
/// toolchain, exactly as when a developer types the command.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

/// Where `name` would be found: the first executable file of that name in PATH, then in
/// /usr/sbin and /sbin, which are not on every user's PATH. No process is started.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
