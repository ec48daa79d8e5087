//! journald's native protocol, written by hand (no libsystemd): one datagram per entry to
//! `/run/systemd/journal/socket`, each field `NAME=value\n`, or, when the value holds a
//! newline or is not UTF-8, `NAME\n` + its length as a little-endian u64 + the bytes + `\n`.
//! Values are binary-safe that way, so names taken from other processes go in as data and can
//! never start a field of their own.
//!
//! Entries are bounded (see [`super::entry`]) far below the datagram limit, so the protocol's
//! memfd path for large entries is not needed: an entry that is refused anyway is counted and
//! reported, never dropped in silence.

use std::{
    io,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

/// Where journald listens for native entries.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// One entry: fields in order. Names are portwatch's constants (checked by [`valid_name`] in
/// debug builds); values are any bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(&'static str, Vec<u8>)>);

impl Fields {
    pub fn add(&mut self, name: &'static str, value: impl Into<Vec<u8>>) {
        debug_assert!(valid_name(name), "{name}");
        self.0.push((name, value.into()));
    }

    /// The first value of field `name`.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The datagram journald reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.iter().map(|(n, v)| n.len() + v.len() + 10).sum());
        for (name, value) in &self.0 {
            out.extend_from_slice(name.as_bytes());
            if value.contains(&b'\n') {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            } else {
                out.push(b'=');
            }
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }
}

/// A field name journald accepts from a client: `A-Z`, `0-9` and `_`, not starting with `_`
/// (those are journald's own, trusted fields) or a digit, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// An unconnected datagram socket that sends to journald's socket. Sending never blocks: when
/// journald's queue is full the entry is refused (EAGAIN) and the caller counts it, rather
/// than stall the trace behind a slow journal.
pub struct Writer {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Writer {
    pub fn new(path: &Path) -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Writer {
            sock,
            path: path.to_path_buf(),
        })
    }

    pub fn send(&self, fields: &Fields) -> io::Result<()> {
        self.sock.send_to(&fields.encode(), &self.path).map(|_| ())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_name_equals_value_lines() {
        let mut f = Fields::default();
        f.add("MESSAGE", "hello");
        f.add("PRIORITY", "3");
        assert_eq!(f.encode(), b"MESSAGE=hello\nPRIORITY=3\n");
    }

    /// A newline in a value (a process can name itself "x\nOBJECT_SYSTEMD_UNIT=y") goes in
    /// length-prefixed, as data: it cannot start a field.
    #[test]
    fn values_with_newlines_are_length_prefixed() {
        let mut f = Fields::default();
        f.add("PORTWATCH_COMM", "x\nOBJECT_SYSTEMD_UNIT=y");
        f.add("PRIORITY", "3");
        let mut want = b"PORTWATCH_COMM\n".to_vec();
        want.extend_from_slice(&23u64.to_le_bytes());
        want.extend_from_slice(b"x\nOBJECT_SYSTEMD_UNIT=y\nPRIORITY=3\n");
        assert_eq!(f.encode(), want);
    }

    #[test]
    fn field_names_follow_journald() {
        for ok in ["MESSAGE", "PORTWATCH_HOLDER_PIDS", "OBJECT_PID", "X1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "_PID", "1X", "message", "A-B", &"A".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
