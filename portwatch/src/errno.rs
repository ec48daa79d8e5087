//! Errno names, so output says EADDRINUSE instead of -98.

/// The symbolic name of an errno value (positive), e.g. 98 → "EADDRINUSE".
pub fn name(errno: i32) -> String {
    match known_name(errno) {
        Some(known) => known.to_string(),
        None => format!("E{errno}"),
    }
}

/// The symbolic name of an errno value portwatch knows, or None.
pub fn known_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENODEV => "ENODEV",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        _ => return None,
    })
}

/// The C library's description, e.g. "Address already in use".
pub fn describe(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An error and its causes, joined with ": " (aya puts the errno in the innermost one).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The OS errno somewhere in an error's chain of causes.
pub fn os_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(inner) = cur {
        if let Some(n) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(n);
        }
        cur = inner.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::name(98), "EADDRINUSE");
        assert_eq!(super::name(4095), "E4095");
        assert_eq!(super::describe(98), "Address already in use");
    }
}
