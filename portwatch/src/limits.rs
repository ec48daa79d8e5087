//! This process's open-files limit. portwatch holds a file per network namespace it looks
//! into (and a few per socket-table read), so a machine with hundreds of namespaces needs more
//! than the usual soft limit of 1024. Like many tools, portwatch raises its soft limit to the
//! hard one at start; when even that is not enough, the cause is named once (EMFILE), not as
//! a failure of every namespace.

use std::io;

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns the limit in effect.
pub fn raise_open_files() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a plain struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(raised.rlim_cur);
    }
    Ok(lim.rlim_cur)
}

/// The soft open-files limit now (0 if unknown).
pub fn open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur
}

/// Whether `errno` says this process (EMFILE) or the system (ENFILE) ran out of files.
pub fn is_out_of_files(errno: i32) -> bool {
    errno == libc::EMFILE || errno == libc::ENFILE
}

/// The sentence for running out of files, with the limit and the fix.
pub fn out_of_files_message() -> String {
    format!(
        "too many open files (EMFILE): portwatch's open-files limit is {} (ulimit -n, already \
         raised to the hard limit); raise the hard limit (ulimit -Hn, LimitNOFILE=)",
        open_files()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A soft limit below the hard one is raised to it. The limit is the whole process's, and
    /// the other tests run beside this one, so it is lowered in a forked child: the child only
    /// makes the rlimit calls (no allocation, no lock another thread could hold) and answers
    /// with its exit status.
    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on a plain struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        if lim.rlim_max < 128 {
            eprintln!(
                "skipped: the hard open-files limit is {}, too low to lower the soft one below it",
                lim.rlim_max
            );
            return;
        }
        // SAFETY: the child calls only async-signal-safe functions (getrlimit, setrlimit,
        // _exit) before it exits, as a child of a multi-threaded process must.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let lowered = libc::rlimit {
                rlim_cur: 64,
                rlim_max: lim.rlim_max,
            };
            let code = if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } != 0 {
                1
            } else if open_files() != 64 {
                2
            } else if !matches!(raise_open_files(), Ok(n) if n == lim.rlim_max) {
                3
            } else if open_files() != lim.rlim_max {
                4
            } else {
                0
            };
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let why = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(0) => return,
            Some(1) => "lowering the soft limit to 64 failed",
            Some(2) => "open_files() did not read the lowered limit 64",
            Some(3) => "raise_open_files() did not return the hard limit",
            Some(4) => "open_files() did not read the raised limit",
            _ => "it died",
        };
        panic!("in the child: {why}");
    }
}
