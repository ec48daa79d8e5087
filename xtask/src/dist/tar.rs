//! A deterministic tar writer (POSIX ustar, with PAX records for extended attributes), for the
//! image's layer and the OCI archive around it. Written by hand, like vm.rs's cpio, so the
//! bytes depend only on the entries: owner 0:0, one fixed mtime, entries in the order given,
//! and file capabilities (`security.capability`) stored without setcap, root or a filesystem
//! that keeps xattrs.

use anyhow::{Result, ensure};

pub enum Kind {
    Dir,
    File(Vec<u8>),
}

pub struct Entry {
    /// Relative, `/`-separated; directories without a trailing slash.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    /// Extended attributes, as `SCHILY.xattr.NAME` PAX records (what GNU tar, containerd and
    /// podman read).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: Kind::Dir,
            mode: 0o755,
            xattrs: Vec::new(),
        }
    }

    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
        Entry {
            path: path.to_string(),
            kind: Kind::File(data),
            mode,
            xattrs: Vec::new(),
        }
    }
}

/// The whole archive, ending in the two zero blocks.
pub fn write(entries: &[Entry], mtime: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        if !e.xattrs.is_empty() {
            let mut records = Vec::new();
            for (name, value) in &e.xattrs {
                records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
            }
            let name = format!("PaxHeaders/{}", e.path.rsplit('/').next().unwrap_or(""));
            out.extend(header(&name, b'x', 0o644, records.len() as u64, mtime)?);
            push_padded(&mut out, &records);
        }
        match &e.kind {
            Kind::Dir => out.extend(header(&format!("{}/", e.path), b'5', e.mode, 0, mtime)?),
            Kind::File(data) => {
                out.extend(header(&e.path, b'0', e.mode, data.len() as u64, mtime)?);
                push_padded(&mut out, data);
            }
        }
    }
    out.extend([0u8; 1024]);
    Ok(out)
}

/// `"LEN KEY=VALUE\n"`, where LEN counts the whole record, its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend(value);
    r.push(b'\n');
    r
}

fn header(name: &str, kind: u8, mode: u32, size: u64, mtime: u64) -> Result<[u8; 512]> {
    ensure!(name.len() <= 100, "tar entry name too long: {name}");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    octal(&mut h[148..155], sum as u64);
    Ok(h)
}

/// Zero-padded octal, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        // 10 bytes of body plus two digits of length.
        assert_eq!(pax_record("key", b"valu"), b"12 key=valu\n");
        let long = vec![b'x'; 95];
        let r = pax_record("k", &long);
        assert_eq!(r.len().to_string(), String::from_utf8_lossy(&r[..3]));
    }
}
