//! Rotation under a reader: a tailer that follows `FILE` through its renames, as a log shipper
//! does, must read every line once, whole, in order.

use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use super::*;

/// Line `n`: its number, then a payload whose length varies with n, so lines straddle the
/// buffer and rotation boundaries at every offset.
fn line(n: u64) -> String {
    let payload: String =
        std::iter::repeat_n((b'a' + (n % 26) as u8) as char, (n % 97) as usize).collect();
    format!("{{\"seq\":{n},\"payload\":\"{payload}\"}}\n")
}

fn numbered(path: &Path, k: u32) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(format!(".{k}"));
    PathBuf::from(p)
}

/// The file that followed the one with inode `ino`, once that one was rotated away:
/// `FILE.{k-1}` if it is `FILE.k` now, `FILE` if it is `FILE.1`. A rotation renames the
/// oldest first, so if ours is still `FILE.k` after the open, what we opened was not renamed
/// since: it is the successor. Mid-rotation (or if `FILE` is not created yet) it says None:
/// look again.
fn successor(path: &Path, ino: u64, keep: u32) -> Option<File> {
    let at = |k: u32| std::fs::metadata(numbered(path, k)).is_ok_and(|m| m.ino() == ino);
    let k = (1..=keep).find(|&k| at(k))?;
    let next = if k == 1 {
        path.to_path_buf()
    } else {
        numbered(path, k - 1)
    };
    let file = File::open(next).ok()?;
    at(k).then_some(file)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portwatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads what is left in `file` into `text`.
fn read_rest(file: &mut File, text: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 4096];
    while let Ok(n @ 1..) = file.read(&mut chunk) {
        text.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_tailer_sees_every_line_whole_through_rotations() {
    const LINES: u64 = 30_000;
    const KEEP: u32 = 400;
    let dir = scratch("rotate");
    let path = dir.join("events.jsonl");
    let mut out = LineFile::open(FileTarget {
        path: path.clone(),
        max_size: Some(16 * 1024),
        keep: KEEP,
    })
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let tail_path = path.clone();
    let tail_done = Arc::clone(&done);
    // Opened before the writer starts, as a shipper already tailing the file would be: a
    // tailer thread that opened it late would start after the first rotations.
    let first = File::open(&path).unwrap();
    let tailer = std::thread::spawn(move || {
        let mut file = first;
        let mut text = Vec::new();
        let mut torn = Vec::new();
        let mut files = 1;
        loop {
            let before = text.len();
            read_rest(&mut file, &mut text);
            if text.len() > before {
                continue;
            }
            let finished = tail_done.load(Ordering::Acquire);
            let ino = file.metadata().unwrap().ino();
            let current = std::fs::metadata(&tail_path).map(|m| m.ino()).ok();
            if current != Some(ino) {
                // Rotated away: written to until the rename, so read what came meanwhile. It
                // is complete now and must end on a line's end; the next file follows it.
                read_rest(&mut file, &mut text);
                if text.last().is_some_and(|&b| b != b'\n') {
                    let from = text.len().saturating_sub(80);
                    torn.push(String::from_utf8_lossy(&text[from..]).into_owned());
                }
                let since = std::time::Instant::now();
                file = loop {
                    if let Some(next) = successor(&tail_path, ino, KEEP) {
                        break next;
                    }
                    assert!(
                        since.elapsed() < std::time::Duration::from_secs(10),
                        "lost track of the files after rotation {files}"
                    );
                    std::thread::yield_now();
                };
                files += 1;
            } else if finished {
                // The writer was done before this look: the last read had everything.
                read_rest(&mut file, &mut text);
                return (text, torn, files);
            } else {
                std::thread::yield_now();
            }
        }
    });

    for n in 0..LINES {
        let l = line(n);
        // In two pieces, as serde writes a line: the first piece alone must never reach the
        // file, even when a flush comes between the two.
        let (a, b) = l.as_bytes().split_at(l.len() / 2);
        out.write_all(a).unwrap();
        if n % 7 == 0 {
            out.flush().unwrap();
        }
        out.write_all(b).unwrap();
        if n % 5 == 0 {
            out.flush().unwrap();
        }
    }
    out.flush().unwrap();
    done.store(true, Ordering::Release);
    let (text, torn, files) = tailer.join().unwrap();

    assert!(torn.is_empty(), "files rotated away mid-line: {torn:?}");
    let text = String::from_utf8(text).unwrap();
    let mut expected = 0u64;
    for got in text.split_inclusive('\n') {
        assert_eq!(
            got,
            line(expected),
            "line {expected} torn, lost or out of order"
        );
        expected += 1;
    }
    assert_eq!(expected, LINES, "lines read");
    // 30 000 lines of ~75 bytes into 16 KiB files: over a hundred rotations happened while
    // the tailer read, and it followed each one.
    assert!(files > 100, "only {files} files");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file stays within the size limit and holds whole lines; the oldest beyond `keep`
/// go; SIGHUP's reopen starts a new file after logrotate moved the old one.
#[test]
fn files_stay_under_the_limit_and_old_ones_are_dropped() {
    let dir = scratch("keep");
    let path = dir.join("out.jsonl");
    let mut out = LineFile::open(FileTarget {
        path: path.clone(),
        max_size: Some(1000),
        keep: 2,
    })
    .unwrap();
    for n in 0..500 {
        out.write_all(line(n).as_bytes()).unwrap();
    }
    out.flush().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .ends_with(&line(499))
    );
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.len() <= 1000, "{name}: {} bytes", text.len());
        assert!(text.ends_with('\n'));
    }
    std::fs::rename(&path, dir.join("moved")).unwrap();
    out.reopen().unwrap();
    out.write_all(line(500).as_bytes()).unwrap();
    out.flush().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), line(500));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("10M"), Ok(10 << 20));
    assert_eq!(parse_size("512K"), Ok(512 << 10));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("0").is_err());
    assert!(parse_size("10T").is_err());
    assert!(parse_size("M").is_err());
}
