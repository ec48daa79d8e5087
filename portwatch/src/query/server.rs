//! The tracer's side of `portwatch why`: a unix stream socket in [`super::DIR`] that answers
//! each connection with the record (a header line, then the failures) and closes. Nothing is
//! read from the client, so there is nothing to parse from it. Answers are written by tasks
//! of their own, at most [`MAX_CLIENTS`] at once and each for at most [`ANSWER_TIME`], so a
//! client that does not read cannot hold up the trace.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::AsyncWriteExt as _, net::UnixListener, sync::Semaphore};

use super::Recent;

/// Connections answered at once; more are closed unanswered until one finishes.
const MAX_CLIENTS: usize = 4;
/// How long one answer may take.
const ANSWER_TIME: Duration = Duration::from_secs(5);

/// The socket, removed when the tracer ends.
pub struct Served {
    pub path: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Why a directory may not hold the socket: it must be ours (or root's) and writable by no
/// one else, or someone else could put a socket of their own where `why` looks.
fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || (meta.uid() != euid && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory that only its owner (root or uid {euid}) may write to",
            dir.display()
        )));
    }
    Ok(())
}

/// Makes the directory (0750) if needed, binds `trace-PID.sock` in it (0660) and starts
/// answering. Must be called inside the runtime.
pub fn start(record: Arc<Mutex<Recent>>) -> io::Result<Served> {
    let dir = Path::new(super::DIR);
    // Recursive for a system that has no /run yet (a bare initramfs); every real one has.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    check_dir(dir)?;
    let path = super::socket_path();
    // A socket left by a dead tracer that had our pid.
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let served = Served { path };
    fs::set_permissions(&served.path, fs::Permissions::from_mode(0o660))?;
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                // EMFILE and the like: try again a little later rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let answer = answer(&record);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ANSWER_TIME, stream.write_all(&answer)).await;
                drop(slot);
            });
        }
    });
    Ok(served)
}

/// The header line and the failures, newline-terminated.
fn answer(record: &Mutex<Recent>) -> Vec<u8> {
    let (head, lines) = match record.lock() {
        Ok(r) => r.snapshot(),
        Err(poisoned) => poisoned.into_inner().snapshot(),
    };
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 256);
    let _ = serde_json::to_writer(&mut out, &head);
    out.push(b'\n');
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}
