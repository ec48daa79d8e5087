//! Making foreign text safe for a terminal. A process chooses its own name (prctl
//! PR_SET_NAME), an administrator names interfaces and cgroups: any of them can hold an escape
//! sequence that recolors the reader's terminal or retitles its window, or a newline that forges
//! a whole output line. Every string that did not come from portwatch itself goes through
//! [`safe`] before it reaches the human output (JSON escapes on its own).

use std::{borrow::Cow, fmt::Write as _};

/// `text` with every control character (C0, DEL, C1) and every bidirectional override shown as
/// a visible escape (`\x1b`, `\n`, `\u{202e}`) instead of being sent to the terminal. A
/// backslash is left alone: it is printable, and names containing one are shown as they are.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if let Some(short) = short_escape(c) {
            out.push_str(short);
        } else if u32::from(c) < 0x100 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

fn short_escape(c: char) -> Option<&'static str> {
    Some(match c {
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        _ => return None,
    })
}

/// Characters a terminal acts on instead of showing: controls, and the bidi overrides and
/// isolates that reorder what follows them on the line (a name could make "pid 1 (a)" read
/// as something else).
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_unchanged_and_unallocated() {
        for name in [
            "nginx",
            "python3",
            "kworker/0:1",
            "a b",
            "eth0.100",
            "naïve",
            r"a\b",
        ] {
            assert!(
                matches!(safe(name), Cow::Borrowed(n) if n == name),
                "{name}"
            );
        }
    }

    #[test]
    fn escapes_bells_newlines_and_overrides_become_visible() {
        let hostile = "\x1b[31mRED\x1b]0;pwn\x07\nfake line\r\u{9b}2J\u{202e}x\u{7f}";
        let shown = safe(hostile);
        assert_eq!(
            shown,
            "\\x1b[31mRED\\x1b]0;pwn\\x07\\nfake line\\r\\x9b2J\\u{202e}x\\x7f"
        );
        assert!(!shown.chars().any(unsafe_char), "{shown}");
    }
}
