//! Shell completions and the man page, generated from the same clap definitions as the flags
//! themselves ([`crate::cli`]), so they cannot drift from what portwatch accepts.

use std::io::{self, Write};

use clap::CommandFactory as _;

use crate::cli::Cli;

/// `portwatch completions SHELL`: the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    // clap_complete panics when its writer fails (a full disk, a closed pipe): it writes to
    // memory, and the errors of the one real write are ours to report.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "portwatch", &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// `portwatch man`: the man page, section 1, with a section per subcommand.
pub fn man(out: &mut impl Write) -> io::Result<()> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        if matches!(name, "completions" | "man" | "help") {
            continue;
        }
        writeln!(out, ".SH \"PORTWATCH {}\"", name.to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        page.render_description_section(&mut section)?;
        page.render_options_section(&mut section)?;
        if sub.get_after_help().is_some() {
            page.render_extra_section(&mut section)?;
        }
        // The subcommand's own headings become subsections of its section.
        for line in String::from_utf8_lossy(&section).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(out, ".SS {heading}")?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_subcommands_and_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).expect("generate");
            let text = String::from_utf8(out).expect("utf-8");
            for word in ["trace", "who", "port", "pid", "failed", "netns", "comm"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn the_man_page_documents_both_commands() {
        let mut out = Vec::new();
        man(&mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with(".ie") || text.contains(".TH portwatch"),
            "{text:.200}"
        );
        for word in [
            ".SH \"PORTWATCH TRACE\"",
            ".SH \"PORTWATCH WHO\"",
            "SO_REUSEPORT",
        ] {
            assert!(text.contains(word), "no {word}");
        }
    }

    /// A writer that is always full, as stdout on /dev/full.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Before: clap_complete panicked on the failed write.
    #[test]
    fn a_full_disk_is_an_error_not_a_panic() {
        let err = completions(clap_complete::Shell::Bash, &mut Full).expect_err("disk full");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(man(&mut Full).is_err());
    }
}
