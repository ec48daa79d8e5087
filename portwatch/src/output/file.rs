//! `--output FILE`: event lines appended to a file that a log shipper tails, rotated by size.
//!
//! A shipper reading the file must never see half a line, so lines are buffered here and
//! each complete line goes to the kernel in one write(2) on an O_APPEND descriptor: a reader
//! sees a line whole or not at all. Rotation renames `FILE` to `FILE.1` (and `FILE.1` to
//! `FILE.2`, up to `--output-keep`), then opens a new `FILE`; a reader that holds the old one
//! open reads it to its end, which is a line's end. SIGHUP reopens `FILE`, for logrotate.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Lines are handed to the kernel once this much is buffered (and on every flush).
const BUFFERED: usize = 64 * 1024;

/// Where `--output` writes, and when it rotates.
#[derive(Clone, Debug)]
pub struct FileTarget {
    pub path: PathBuf,
    /// Rotate before a line would take the file past this many bytes; None: never.
    pub max_size: Option<u64>,
    /// How many rotated files to keep (`FILE.1` ... `FILE.N`); 0 drops the old file.
    pub keep: u32,
}

/// The `n`th rotated sibling of `path`: `FILE.1` is the newest, `FILE.N` the oldest.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// An append-only, size-rotated file that takes whole lines only.
pub struct LineFile {
    target: FileTarget,
    file: File,
    /// Bytes in the current file (from its size at open, then counted).
    size: u64,
    /// What was written but not yet handed to the kernel; may end in a partial line.
    pending: Vec<u8>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl LineFile {
    pub fn open(target: FileTarget) -> io::Result<Self> {
        let file = open_append(&target.path)?;
        let size = file.metadata()?.len();
        Ok(LineFile {
            target,
            file,
            size,
            pending: Vec::with_capacity(BUFFERED),
        })
    }

    /// Closes and opens `FILE` again (SIGHUP: someone else moved it away).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.commit_lines()?;
        self.file = open_append(&self.target.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }

    /// `FILE.{keep-1}` → `FILE.{keep}`, ..., `FILE` → `FILE.1`, then a new `FILE`.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| rotated(&self.target.path, n);
        if self.target.keep == 0 {
            std::fs::remove_file(&self.target.path)?;
        } else {
            for n in (1..self.target.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            std::fs::rename(&self.target.path, numbered(1))?;
        }
        self.file = open_append(&self.target.path)?;
        self.size = 0;
        Ok(())
    }

    /// Writes the pending line at `range`, rotating first if it would not fit.
    fn write_line(&mut self, range: std::ops::Range<usize>) -> io::Result<()> {
        let len = range.len() as u64;
        if self
            .target
            .max_size
            .is_some_and(|max| self.size > 0 && self.size + len > max)
        {
            self.rotate()?;
        }
        // One write(2) for the line: a regular file takes it whole (a short write only
        // happens when the disk is full, and then write_all's retry is all we can do).
        self.file.write_all(&self.pending[range])?;
        self.size += len;
        Ok(())
    }

    /// Hands every complete pending line to the kernel, one write(2) each; a partial last
    /// line stays pending until its newline comes.
    fn commit_lines(&mut self) -> io::Result<()> {
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut start = 0;
        let result = loop {
            if start > end {
                break Ok(());
            }
            let stop = start
                + self.pending[start..=end]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(end - start)
                + 1;
            if let Err(e) = self.write_line(start..stop) {
                break Err(e);
            }
            start = stop;
        };
        self.pending.drain(..start);
        result
    }
}

impl Write for LineFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= BUFFERED {
            self.commit_lines()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.commit_lines()
    }
}

impl Drop for LineFile {
    fn drop(&mut self) {
        let _ = self.commit_lines();
    }
}

/// Where event lines go: stdout (buffered; a pipe reader copes with partial writes) or a
/// [`LineFile`].
pub enum Sink {
    Stdout(io::BufWriter<io::Stdout>),
    File(LineFile),
}

impl Sink {
    pub fn stdout() -> Self {
        Sink::Stdout(io::BufWriter::with_capacity(1 << 16, io::stdout()))
    }

    /// SIGHUP: reopen the file; nothing to do for stdout.
    pub fn reopen(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(_) => Ok(()),
            Sink::File(f) => f.reopen(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(buf),
            Sink::File(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.write_all(buf),
            Sink::File(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
        }
    }
}

/// Parses `--output-max-size`: bytes, or with a K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], s[i..].trim_end_matches(['b', 'B', 'i'])),
        None => (s, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 10M, 512K or 1048576)"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("{s:?}: the size unit is K, M or G")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} is not a usable size")),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests;
