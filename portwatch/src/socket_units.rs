//! systemd socket activation: pid 1 (or a `systemd --user`) holds a port for a `.socket` unit
//! and starts the service on the first connection. The unit files say which unit names a port.
//! Parsing is pure; [`find`] reads the unit directories.

/// Where unit files live (admin's first, then the distribution's).
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// A `.socket` unit that listens on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketUnit {
    /// `web.socket`.
    pub name: String,
    /// The line that names the port, e.g. `ListenStream=0.0.0.0:8080`.
    pub listen: String,
    /// `ReusePort=yes`: the socket has SO_REUSEPORT, held by systemd's user (root for pid 1).
    pub reuse_port: bool,
}

/// The port of a `ListenStream=`/`ListenDatagram=` value: `8080`, `0.0.0.0:8080`,
/// `[::]:8080`, `127.0.0.1:8080`. None for paths (unix sockets) and other forms.
fn listen_port(value: &str) -> Option<u16> {
    let v = value.trim();
    let port = match v.rsplit_once(':') {
        Some((_, p)) => p,
        None => v,
    };
    port.parse().ok()
}

/// The unit's `Listen*=` lines that name `port`, from the unit file's text.
pub fn parse(name: &str, text: &str, port: u16) -> Option<SocketUnit> {
    let mut listen = None;
    let mut reuse_port = false;
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "ListenStream" | "ListenDatagram" if listen_port(value) == Some(port) => {
                listen.get_or_insert_with(|| line.to_string());
            }
            "ReusePort" => {
                reuse_port = matches!(value.trim(), "yes" | "true" | "1" | "on");
            }
            _ => {}
        }
    }
    Some(SocketUnit {
        name: name.to_string(),
        listen: listen?,
        reuse_port,
    })
}

/// Every `.socket` unit under the unit directories that names `port` (a name found in an
/// earlier directory hides the same name in a later one, as systemd does).
pub fn find(port: u16) -> Vec<SocketUnit> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for dir in UNIT_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".socket"))
            .collect();
        names.sort();
        for name in names {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(format!("{dir}/{name}")) else {
                continue;
            };
            out.extend(parse(&name, &text, port));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listen_line_for_a_port() {
        let text = "[Unit]\nDescription=web\n\n[Socket]\nListenStream=0.0.0.0:8080\n\
                    ListenStream=/run/web.sock\nReusePort=yes\n\n[Install]\nWantedBy=sockets.target\n";
        assert_eq!(
            parse("web.socket", text, 8080),
            Some(SocketUnit {
                name: "web.socket".into(),
                listen: "ListenStream=0.0.0.0:8080".into(),
                reuse_port: true,
            })
        );
        assert_eq!(parse("web.socket", text, 8081), None);
        let udp = "[Socket]\nListenDatagram=[::]:5353\n";
        assert_eq!(
            parse("mdns.socket", udp, 5353).map(|u| u.reuse_port),
            Some(false)
        );
        assert_eq!(
            parse("x.socket", "[Socket]\nListenStream=9000\n", 9000).map(|u| u.listen),
            Some("ListenStream=9000".into())
        );
    }
}
