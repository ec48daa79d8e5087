//! What a cgroup v2 path means: the systemd unit, container or pod a process runs in, read from
//! the path alone (no container runtime API). Pure: the I/O (finding the path of a cgroup id
//! or a pid, the node's pod log directories) is in [`crate::cgroup`].
//!
//! Each runtime names its cgroups in a fixed shape; a path that matches none of them is shown
//! as the path, never given a name it does not carry.

/// A cgroup, and what its path says runs there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The cgroup v2 path, relative to the v2 mount ("/system.slice/nginx.service").
    pub path: String,
    /// What the path means; None when it matches no known shape.
    pub kind: Option<Kind>,
}

/// The workloads portwatch recognizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A systemd unit (`nginx.service`, `session-3.scope`); `user` is the uid of the
    /// `user@UID.service` manager it runs under, for user units.
    Systemd { unit: String, user: Option<u32> },
    /// A Docker container (systemd driver `docker-<id>.scope`, cgroupfs driver `/docker/<id>`).
    Docker { id: String },
    /// A Podman container (`libpod-<id>.scope`); `user` is set for rootless Podman.
    Podman { id: String, user: Option<u32> },
    /// A Kubernetes pod, and the container in it when the path goes that deep.
    Kubernetes {
        /// The pod uid as Kubernetes writes it, with dashes.
        pod_uid: String,
        qos: Qos,
        /// `containerd`, `cri-o` or `docker`, when the container's cgroup names it.
        runtime: Option<&'static str>,
        container_id: Option<String>,
        /// From the node's /var/log/pods and /var/log/containers, when they name the pod.
        names: Option<PodNames>,
    },
    /// An LXC container (`lxc.payload.<name>`, `/lxc/<name>`).
    Lxc { name: String },
}

/// A pod's Kubernetes quality-of-service class, which picks its cgroup parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// A pod's names, as the kubelet writes them in its log directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    /// The container's name, when /var/log/containers has an entry for its id.
    pub container: Option<String>,
}

impl Kind {
    /// The stable name, as JSON prints it.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Systemd { .. } => "systemd",
            Kind::Docker { .. } => "docker",
            Kind::Podman { .. } => "podman",
            Kind::Kubernetes { .. } => "kubernetes",
            Kind::Lxc { .. } => "lxc",
        }
    }
}

/// The first 12 hex digits of a container id, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Workload {
    /// Reads a cgroup v2 path.
    pub fn parse(path: &str) -> Self {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let kind = kubernetes(&parts)
            .or_else(|| container(&parts))
            .or_else(|| lxc(&parts))
            .or_else(|| systemd(&parts));
        Workload {
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            kind,
        }
    }

    /// The root cgroup: nothing to say about it.
    pub fn is_root(&self) -> bool {
        self.path == "/"
    }

    /// Words for a terminal: "docker 3f4e5a6b7c8d", "nginx.service", "cgroup /odd/path".
    pub fn label(&self) -> String {
        let Some(kind) = &self.kind else {
            return format!("cgroup {}", self.path);
        };
        match kind {
            Kind::Systemd { unit, user: None } => unit.clone(),
            Kind::Systemd {
                unit,
                user: Some(uid),
            } => format!("{unit} (user@{uid}.service)"),
            Kind::Docker { id } => format!("docker {}", short_id(id)),
            Kind::Podman { id, user: None } => format!("podman {}", short_id(id)),
            Kind::Podman { id, user: Some(u) } => {
                format!("podman {} (rootless, uid {u})", short_id(id))
            }
            Kind::Lxc { name } => format!("lxc {name}"),
            Kind::Kubernetes {
                pod_uid,
                container_id,
                names,
                ..
            } => {
                let pod = match names {
                    Some(n) => format!("pod {}/{}", n.namespace, n.pod),
                    None => format!("pod {pod_uid}"),
                };
                let name = names.as_ref().and_then(|n| n.container.as_deref());
                match (name, container_id) {
                    (Some(name), Some(id)) => {
                        format!("{pod} container {name} ({})", short_id(id))
                    }
                    (None, Some(id)) => format!("{pod} container {}", short_id(id)),
                    _ => pod,
                }
            }
        }
    }
}

/// The systemd unit journald would file a process of this cgroup under, by systemd's own rule
/// (`cg_path_get_unit`): the first path component after the leading slices, if it is a unit.
/// Everything below a unit is delegated to it (a container runtime, `Delegate=yes`, a user's
/// manager), so a cgroup named `nginx.service` made inside another unit's subtree still
/// belongs to that unit: unlike [`Workload::label`], which names the innermost unit for
/// people, this is what an entry may be attributed to without letting a process that owns a
/// subtree speak for another unit. Under `user@UID.service` the user unit is found the same
/// way inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwningUnit<'a> {
    System(&'a str),
    /// A unit of the user manager `user@uid.service` (`manager`).
    User {
        manager: &'a str,
        uid: u32,
        unit: &'a str,
    },
}

impl Workload {
    pub fn owning_unit(&self) -> Option<OwningUnit<'_>> {
        let mut parts = self
            .path
            .split('/')
            .filter(|p| !p.is_empty())
            .skip_while(|p| p.ends_with(".slice"));
        let first = parts.next().filter(|p| is_unit_name(p))?;
        let uid = first
            .strip_prefix("user@")
            .and_then(|p| p.strip_suffix(".service"))
            .and_then(|uid| uid.parse().ok());
        let inner = parts
            .find(|p| !p.ends_with(".slice"))
            .filter(|p| is_unit_name(p));
        Some(match (uid, inner) {
            (Some(uid), Some(unit)) => OwningUnit::User {
                manager: first,
                uid,
                unit,
            },
            _ => OwningUnit::System(first),
        })
    }
}

/// A service or scope name as systemd accepts it: `[A-Za-z0-9:_.\\@-]`, at most 255 bytes,
/// something before the suffix.
fn is_unit_name(p: &str) -> bool {
    let stem = p
        .strip_suffix(".service")
        .or_else(|| p.strip_suffix(".scope"));
    stem.is_some_and(|s| !s.is_empty())
        && p.len() <= 255
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><64 hex>.scope` → the id.
fn scoped_id<'a>(part: &'a str, prefix: &str) -> Option<&'a str> {
    let id = part.strip_prefix(prefix)?.strip_suffix(".scope")?;
    is_hex_id(id).then_some(id)
}

/// `user@1000.service` anywhere on the path → 1000.
fn user_manager(parts: &[&str]) -> Option<u32> {
    parts.iter().find_map(|p| {
        p.strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    })
}

/// Both cgroup drivers, every QoS class:
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`,
/// `kubepods.slice/kubepods-pod<uid_>.slice/...` (guaranteed),
/// `kubepods/besteffort/pod<uid>/<id>`, `kubepods/pod<uid>/<id>` (guaranteed).
fn kubernetes(parts: &[&str]) -> Option<Kind> {
    let top = parts
        .iter()
        .position(|p| *p == "kubepods" || *p == "kubepods.slice")?;
    let rest = &parts[top + 1..];
    let qos_of = |s: &str| match s {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    };
    let (qos, pod_part, after) = if parts[top] == "kubepods.slice" {
        // systemd driver: the pod slice is `kubepods-[<qos>-]pod<uid with _>.slice`.
        let (i, uid, qos) = rest.iter().enumerate().find_map(|(i, p)| {
            let name = p.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
            let (qos, uid) = match name.split_once("-pod") {
                Some((q, uid)) => (qos_of(q)?, uid),
                None => (Qos::Guaranteed, name.strip_prefix("pod")?),
            };
            Some((i, uid.replace('_', "-"), qos))
        })?;
        (qos, uid, &rest[i + 1..])
    } else {
        let (qos, rest) = match rest.first().copied().and_then(qos_of) {
            Some(q) => (q, &rest[1..]),
            None => (Qos::Guaranteed, rest),
        };
        let uid = rest.first()?.strip_prefix("pod")?.to_string();
        (qos, uid, &rest[1..])
    };
    if !is_pod_uid(&pod_part) {
        return None;
    }
    let (runtime, container_id) = match after.first() {
        Some(p) => {
            const SCOPES: [(&str, &str); 3] = [
                ("cri-containerd-", "containerd"),
                ("crio-", "cri-o"),
                ("docker-", "docker"),
            ];
            match SCOPES
                .iter()
                .find_map(|(prefix, rt)| Some((*rt, scoped_id(p, prefix)?)))
            {
                Some((rt, id)) => (Some(rt), Some(id.to_string())),
                None if is_hex_id(p) => (None, Some(p.to_string())),
                None => (None, None),
            }
        }
        None => (None, None),
    };
    Some(Kind::Kubernetes {
        pod_uid: pod_part,
        qos,
        runtime,
        container_id,
        names: None,
    })
}

/// A pod uid: 36 characters, hex and dashes (a UUID).
fn is_pod_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Docker and Podman outside Kubernetes.
fn container(parts: &[&str]) -> Option<Kind> {
    for (i, p) in parts.iter().enumerate() {
        if let Some(id) = scoped_id(p, "docker-") {
            return Some(Kind::Docker { id: id.into() });
        }
        if *p == "docker"
            && let Some(id) = parts.get(i + 1).filter(|id| is_hex_id(id))
        {
            return Some(Kind::Docker {
                id: (*id).to_string(),
            });
        }
        let libpod = scoped_id(p, "libpod-").or_else(|| {
            // cgroupfs manager: /libpod_parent/libpod-<id>
            p.strip_prefix("libpod-")
                .filter(|id| i > 0 && parts[i - 1] == "libpod_parent" && is_hex_id(id))
        });
        if let Some(id) = libpod {
            return Some(Kind::Podman {
                id: id.into(),
                user: user_manager(&parts[..i]),
            });
        }
    }
    None
}

/// LXC 4+ (`/lxc.payload.<name>`) and the older `/lxc/<name>`.
fn lxc(parts: &[&str]) -> Option<Kind> {
    parts.iter().enumerate().find_map(|(i, p)| {
        let name = match p.strip_prefix("lxc.payload.") {
            Some(n) => n,
            None if *p == "lxc" => parts.get(i + 1)?,
            None => return None,
        };
        (!name.is_empty()).then(|| Kind::Lxc { name: name.into() })
    })
}

/// The innermost systemd unit on the path: a `.service` or `.scope` (slices only group them).
fn systemd(parts: &[&str]) -> Option<Kind> {
    let (i, unit) = parts
        .iter()
        .enumerate()
        .rev()
        .find(|(_, p)| p.ends_with(".service") || p.ends_with(".scope"))?;
    let user = user_manager(&parts[..i]);
    Some(Kind::Systemd {
        unit: (*unit).to_string(),
        user,
    })
}

/// The pod's namespace and name from the entries of /var/log/pods (`<ns>_<pod>_<uid>`), and
/// the container's name from those of /var/log/containers (`<pod>_<ns>_<container>-<id>.log`).
/// Kubernetes names are DNS labels, so they never contain `_`.
pub fn pod_names(
    pod_uid: &str,
    container_id: Option<&str>,
    pod_dirs: &[String],
    container_logs: &[String],
) -> Option<PodNames> {
    let (namespace, pod) = pod_dirs.iter().find_map(|d| {
        let mut f = d.splitn(3, '_');
        let (ns, pod, uid) = (f.next()?, f.next()?, f.next()?);
        (uid == pod_uid).then(|| (ns.to_string(), pod.to_string()))
    })?;
    let container = container_id.and_then(|id| {
        container_logs.iter().find_map(|l| {
            let stem = l
                .strip_suffix(".log")?
                .strip_suffix(id)?
                .strip_suffix('-')?;
            let mut f = stem.splitn(3, '_');
            let (p, ns, name) = (f.next()?, f.next()?, f.next()?);
            (p == pod && ns == namespace && !name.is_empty()).then(|| name.to_string())
        })
    });
    Some(PodNames {
        namespace,
        pod,
        container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
    const UID: &str = "0b5e2c1a-7d3f-4e6a-9b8c-1d2e3f4a5b6c";

    fn kind(path: &str) -> Option<Kind> {
        Workload::parse(path).kind
    }

    fn unit(unit: &str, user: Option<u32>) -> Option<Kind> {
        Some(Kind::Systemd {
            unit: unit.into(),
            user,
        })
    }

    /// What an entry may be attributed to: the outermost unit, never a name made inside
    /// another unit's delegated subtree.
    #[test]
    fn owning_unit_is_systemds_outermost_unit() {
        let owner = |p: &str| Workload::parse(p).owning_unit().map(|u| format!("{u:?}"));
        assert_eq!(
            owner("/system.slice/nginx.service").as_deref(),
            Some("System(\"nginx.service\")")
        );
        assert_eq!(
            owner("/system.slice/app.service/sub/nginx.service").as_deref(),
            Some("System(\"app.service\")")
        );
        assert_eq!(
            owner(&format!(
                "/system.slice/docker-{ID}.scope/system.slice/nginx.service"
            )),
            Some(format!("System(\"docker-{ID}.scope\")"))
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service")
                .as_deref(),
            Some("User { manager: \"user@1000.service\", uid: 1000, unit: \"nginx.service\" }")
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/user@1000.service").as_deref(),
            Some("System(\"user@1000.service\")")
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("System(\"session-3.scope\")")
        );
        for none in [
            "/",
            "/system.slice",
            "/mytest/nginx.service",
            "/kubepods/besteffort/pod1/abc",
            "/system.slice/.service",
            "/system.slice/we ird.service",
        ] {
            assert_eq!(owner(none), None, "{none}");
        }
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            kind("/system.slice/nginx.service"),
            unit("nginx.service", None)
        );
        assert_eq!(
            kind("/user.slice/user-1000.slice/session-3.scope"),
            unit("session-3.scope", None)
        );
        assert_eq!(
            kind("/user.slice/user-1000.slice/user@1000.service/app.slice/web.service"),
            unit("web.service", Some(1000))
        );
        assert_eq!(
            kind("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            unit("init.scope", Some(1000))
        );
        assert_eq!(
            kind("/user.slice/user-1000.slice/user@1000.service"),
            unit("user@1000.service", None)
        );
        assert_eq!(kind("/init.scope"), unit("init.scope", None));
    }

    #[test]
    fn docker_both_drivers() {
        let want = Some(Kind::Docker { id: ID.into() });
        assert_eq!(kind(&format!("/system.slice/docker-{ID}.scope")), want);
        assert_eq!(kind(&format!("/docker/{ID}")), want);
        // A short or non-hex id is no container id.
        assert_eq!(kind("/docker/abc"), None);
        assert_eq!(
            kind("/system.slice/docker-abc.scope"),
            unit("docker-abc.scope", None)
        );
    }

    fn k8s(qos: Qos, runtime: Option<&'static str>, id: Option<&str>) -> Option<Kind> {
        Some(Kind::Kubernetes {
            pod_uid: UID.into(),
            qos,
            runtime,
            container_id: id.map(str::to_string),
            names: None,
        })
    }

    #[test]
    fn kubernetes_systemd_driver_every_qos_and_runtime() {
        let u = UID.replace('-', "_");
        for (qos, slice) in [
            (
                Qos::Burstable,
                "kubepods-burstable.slice/kubepods-burstable-pod",
            ),
            (
                Qos::BestEffort,
                "kubepods-besteffort.slice/kubepods-besteffort-pod",
            ),
            (Qos::Guaranteed, "kubepods-pod"),
        ] {
            for (prefix, rt) in [
                ("cri-containerd-", "containerd"),
                ("crio-", "cri-o"),
                ("docker-", "docker"),
            ] {
                let path = format!("/kubepods.slice/{slice}{u}.slice/{prefix}{ID}.scope");
                assert_eq!(kind(&path), k8s(qos, Some(rt), Some(ID)), "{path}");
            }
            let pod_only = format!("/kubepods.slice/{slice}{u}.slice");
            assert_eq!(kind(&pod_only), k8s(qos, None, None), "{pod_only}");
        }
    }

    #[test]
    fn kubernetes_cgroupfs_driver_every_qos() {
        for (qos, mid) in [
            (Qos::Burstable, "burstable/"),
            (Qos::BestEffort, "besteffort/"),
            (Qos::Guaranteed, ""),
        ] {
            let path = format!("/kubepods/{mid}pod{UID}/{ID}");
            assert_eq!(kind(&path), k8s(qos, None, Some(ID)), "{path}");
        }
        // Not a uid: not a pod.
        assert_eq!(kind("/kubepods/burstable/podxyz/abc"), None);
    }

    #[test]
    fn podman_rootful_and_rootless() {
        assert_eq!(
            kind(&format!("/machine.slice/libpod-{ID}.scope")),
            Some(Kind::Podman {
                id: ID.into(),
                user: None
            })
        );
        assert_eq!(
            kind(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            Some(Kind::Podman {
                id: ID.into(),
                user: Some(1000)
            })
        );
        assert_eq!(
            kind(&format!("/machine.slice/libpod-{ID}.scope/container")),
            Some(Kind::Podman {
                id: ID.into(),
                user: None
            })
        );
        assert_eq!(
            kind(&format!("/libpod_parent/libpod-{ID}")),
            Some(Kind::Podman {
                id: ID.into(),
                user: None
            })
        );
    }

    #[test]
    fn lxc_both_layouts() {
        let want = Some(Kind::Lxc {
            name: "web1".into(),
        });
        assert_eq!(kind("/lxc.payload.web1"), want);
        assert_eq!(kind("/lxc.payload.web1/system.slice/nginx.service"), want);
        assert_eq!(kind("/lxc/web1"), want);
    }

    #[test]
    fn unknown_shapes_are_the_path() {
        for p in [
            "/",
            "/process_api/e3b5c4a8",
            "/system.slice",
            "/mygroup/app",
        ] {
            let w = Workload::parse(p);
            assert_eq!(w.kind, None, "{p}");
            assert_eq!(w.path, p);
        }
        assert_eq!(
            Workload::parse("/mygroup/app").label(),
            "cgroup /mygroup/app"
        );
        assert!(Workload::parse("/").is_root());
    }

    #[test]
    fn labels_use_short_ids() {
        assert_eq!(
            Workload::parse(&format!("/docker/{ID}")).label(),
            "docker 3f4e5a6b7c8d"
        );
        let mut w = Workload::parse(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(w.label(), format!("pod {UID} container 3f4e5a6b7c8d"));
        if let Some(Kind::Kubernetes { names, .. }) = &mut w.kind {
            *names = Some(PodNames {
                namespace: "shop".into(),
                pod: "web-7d9f".into(),
                container: Some("nginx".into()),
            });
        }
        assert_eq!(
            w.label(),
            "pod shop/web-7d9f container nginx (3f4e5a6b7c8d)"
        );
    }

    #[test]
    fn pod_names_from_log_dirs() {
        let dirs = vec![
            "kube-system_coredns-1_11111111-2222-3333-4444-555555555555".to_string(),
            format!("shop_web-7d9f_{UID}"),
        ];
        let logs = vec![
            format!("web-7d9f_shop_nginx-{ID}.log"),
            "web-7d9f_shop_sidecar-0000.log".to_string(),
        ];
        assert_eq!(
            pod_names(UID, Some(ID), &dirs, &logs),
            Some(PodNames {
                namespace: "shop".into(),
                pod: "web-7d9f".into(),
                container: Some("nginx".into()),
            })
        );
        assert_eq!(
            pod_names(UID, Some("ffff"), &dirs, &logs).and_then(|n| n.container),
            None
        );
        assert_eq!(pod_names("nope", None, &dirs, &logs), None);
    }
}
