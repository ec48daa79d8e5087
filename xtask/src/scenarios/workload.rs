//! Scenarios for workload names (issue 13): real processes in real cgroup v2 directories shaped
//! like each runtime's, made under the host's v2 mount for the test (inside a directory of the
//! runner's own, so nothing real is touched) and removed afterwards, in a real conflict.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::{
    Ctx, Scenario, check,
    holder::Holder,
    netns::{self, Netns},
    portwatch::Portwatch,
    sock::SockSpec,
};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::shared("workload_docker_holder_blocks_pod", docker_blocks_pod).host_only(),
        Scenario::shared("workload_docker_proxy_names_its_container", docker_proxy).host_only(),
        Scenario::shared("workload_systemd_socket_unit", socket_unit).host_only(),
    ]
}

/// The cgroup v2 mount point, from mountinfo (`/sys/fs/cgroup/unified` on hybrid hosts).
pub fn v2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// A tree of cgroups under `<v2 mount>/<top>`; dropping it moves its processes back to the
/// root cgroup and removes the directories, deepest first.
pub(super) struct Cgroups {
    root: PathBuf,
    top: PathBuf,
}

impl Cgroups {
    pub(super) fn new(top: &str) -> Result<Self> {
        let root = v2_root()?;
        Ok(Cgroups {
            top: root.join(top),
            root,
        })
    }

    /// Makes `<top>/<rel>` and moves `pid` there. Returns its path relative to the v2 mount.
    pub(super) fn put(&self, rel: &str, pid: u32) -> Result<String> {
        let dir = self.top.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", dir.display()))?;
        Ok(format!(
            "/{}",
            dir.strip_prefix(&self.root).unwrap_or(&dir).display()
        ))
    }

    fn remove(&self, dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.remove(&e.path());
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove(&self.top.clone());
    }
}

/// A pod's entries in the kubelet's log directories, removed on drop (and the directories too
/// when this made them).
struct PodLogs {
    made: Vec<PathBuf>,
}

impl PodLogs {
    fn new(ns: &str, pod: &str, uid: &str, container: &str, id: &str) -> Result<Self> {
        let mut made = Vec::new();
        for dir in ["/var/log/pods", "/var/log/containers"] {
            if !Path::new(dir).exists() {
                std::fs::create_dir_all(dir)?;
                made.push(PathBuf::from(dir));
            }
        }
        let pod_dir = PathBuf::from(format!("/var/log/pods/{ns}_{pod}_{uid}"));
        std::fs::create_dir_all(pod_dir.join(container))?;
        made.push(pod_dir);
        let log = PathBuf::from(format!(
            "/var/log/containers/{pod}_{ns}_{container}-{id}.log"
        ));
        std::fs::write(&log, "")?;
        made.push(log);
        Ok(PodLogs { made })
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        // The log directories themselves only if empty: something else may have used them.
        for p in self.made.iter().rev() {
            let _ = if !p.is_dir() {
                std::fs::remove_file(p)
            } else if p.starts_with("/var/log/pods/") {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_dir(p)
            };
        }
    }
}

/// A 64-hex container id of this run's own.
fn container_id(n: u32) -> String {
    format!("{:08x}{n:08x}{:048x}", std::process::id(), 0xc0ffee)
}

/// A Docker container (systemd driver) listens; a container of a burstable Kubernetes pod
/// (containerd, systemd driver) binds the same port and fails. The failing event names the pod
/// (uid with dashes, names from the log directories) and the holder's owner the container,
/// with whole ids.
fn docker_blocks_pod(_cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let run = std::process::id();
    let cg = Cgroups::new(&format!("pw-test-{run}.slice"))?;
    let docker_id = container_id(1);
    let pod_id = container_id(2);
    let pod_uid = format!("{run:08x}-7d3f-4e6a-9b8c-1d2e3f4a5b6c");
    let pod_uid_ = pod_uid.replace('-', "_");
    let _logs = PodLogs::new("shop", &format!("web-{run}"), &pod_uid, "nginx", &pod_id)?;

    let mut server = Holder::spawn(ns, "pw-docker")?;
    let docker_path = cg.put(
        &format!("system.slice/docker-{docker_id}.scope"),
        server.pid,
    )?;
    server.bind_ok(&SockSpec::tcp("127.0.0.1:8090").listening())?;

    let mut pod = Holder::spawn(ns, "pw-pod")?;
    let pod_path = cg.put(
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_uid_}.slice/\
             cri-containerd-{pod_id}.scope"
        ),
        pod.pid,
    )?;
    let b = pod.bind_fails(&SockSpec::tcp("127.0.0.1:8090"), libc::EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", pod.pid, b.ino)?;
    check::fields(
        &ev,
        &[
            ("errno", json!("EADDRINUSE")),
            ("workload.cgroup", json!(pod_path)),
            ("workload.kind", json!("kubernetes")),
            ("workload.pod_uid", json!(pod_uid)),
            ("workload.qos", json!("burstable")),
            ("workload.runtime", json!("containerd")),
            ("workload.container_id", json!(pod_id)),
            ("workload.pod_namespace", json!("shop")),
            ("workload.pod_name", json!(format!("web-{run}"))),
            ("workload.container_name", json!("nginx")),
            ("explain.holders.0.owners.0.pid", json!(server.pid)),
            (
                "explain.holders.0.owners.0.workload.cgroup",
                json!(docker_path),
            ),
            ("explain.holders.0.owners.0.workload.kind", json!("docker")),
            (
                "explain.holders.0.owners.0.workload.container_id",
                json!(docker_id),
            ),
        ],
    )?;
    let short = &docker_id[..12];
    let message = ev.0["explain"]["message"].as_str().unwrap_or_default();
    anyhow::ensure!(
        message.contains(&format!("pw-docker, docker {short})")),
        "the sentence should name the container by its short id: {message}"
    );
    Ok(())
}

/// A process that is not docker-proxy but is named like it (a python3 reached through a link
/// called `docker-proxy`, so its comm is `docker-proxy`), with docker-proxy's arguments,
/// listening on `host_port` in `ns`. Killed on drop.
struct FakeProxy {
    child: std::process::Child,
    _dir: PathBuf,
}

impl FakeProxy {
    fn start(ns: &Netns, host_port: u16, container: &str) -> Result<Self> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import os,sys; print(os.path.realpath(sys.executable))",
            ])
            .output()
            .context("running python3")?;
        let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = std::env::temp_dir().join(format!("pw-proxy-{}-{host_port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("docker-proxy");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&python, &link)?;
        let script = format!(
            "import socket,time\n\
             s=socket.socket(); s.bind(('0.0.0.0',{host_port})); s.listen()\n\
             print('ready',flush=True)\n\
             time.sleep(60)"
        );
        let port = host_port.to_string();
        let mut cmd = Command::new(&link);
        cmd.args([
            "-c",
            &script,
            "-proto",
            "tcp",
            "-host-ip",
            "0.0.0.0",
            "-host-port",
        ])
        .arg(&port)
        .args(["-container-ip", container, "-container-port", "80"])
        .stdout(Stdio::piped());
        ns.enter_on_spawn(&mut cmd)?;
        let mut child = cmd.spawn().context("starting the fake docker-proxy")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "the fake docker-proxy did not start: {line:?}"
        );
        Ok(FakeProxy { child, _dir: dir })
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A docker-proxy whose container address is in another namespace, where a process in a
/// Docker-shaped cgroup runs: the verdict names that container. One whose address no namespace
/// has: the verdict calls it stale.
fn docker_proxy(_cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let run = std::process::id();
    let addr = format!("172.31.{}.{}", run % 250, 2 + run / 250 % 250);
    let cg = Cgroups::new(&format!("pw-test-{run}-proxy.slice"))?;
    let id = container_id(3);
    netns::in_new_netns("pw-container", |cns| {
        let mut ip = Command::new("ip");
        ip.args(["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        cns.enter_on_spawn(&mut ip)?;
        ensure!(ip.status()?.success(), "ip addr add {addr} failed");
        let app = Holder::spawn(cns, "pw-app")?;
        cg.put(&format!("system.slice/docker-{id}.scope"), app.pid)?;

        let live = FakeProxy::start(ns, 8095, &addr)?;
        let stale = FakeProxy::start(ns, 8096, "172.30.255.254")?;
        let mut web = Holder::spawn(ns, "pw-web")?;
        for (port, proxy, want) in [
            (
                8095,
                &live,
                format!("for the container at {addr}:80 (docker {})", &id[..12]),
            ),
            (
                8096,
                &stale,
                "the container is gone and this proxy is a stale holder".into(),
            ),
        ] {
            let b = web.bind_fails(&SockSpec::tcp(&format!("0.0.0.0:{port}")), libc::EADDRINUSE)?;
            let ev = pw.wait_call(ns, "bind", web.pid, b.ino)?;
            let container_netns = if port == 8095 {
                json!(cns.inode())
            } else {
                json!(null)
            };
            check::fields(
                &ev,
                &[
                    ("explain.holders.0.owners.0.pid", json!(proxy.child.id())),
                    ("explain.holders.0.owners.0.comm", json!("docker-proxy")),
                    (
                        "explain.holders.0.owners.0.docker_proxy.host_port",
                        json!(port),
                    ),
                    (
                        "explain.holders.0.owners.0.docker_proxy.container_port",
                        json!(80),
                    ),
                    (
                        "explain.holders.0.owners.0.docker_proxy.container_netns",
                        container_netns,
                    ),
                ],
            )?;
            if port == 8095 {
                check::fields(
                    &ev,
                    &[(
                        "explain.holders.0.owners.0.docker_proxy.container.container_id",
                        json!(id),
                    )],
                )?;
            }
            let details = ev.0["explain"]["details"].to_string();
            ensure!(
                details.contains(&want),
                "want {want:?} in the details: {details}"
            );
        }
        Ok(())
    })
}

/// A unit file that names a port, removed on drop.
struct UnitFile(PathBuf);

impl Drop for UnitFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A process pretending to be systemd (its comm starts with `systemd`) holds a port that a
/// `.socket` unit file under /etc/systemd/system names: the verdict says socket activation
/// and names the unit.
fn socket_unit(_cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let name = format!("pw-test-{}.socket", std::process::id());
    let path = PathBuf::from("/etc/systemd/system").join(&name);
    std::fs::create_dir_all("/etc/systemd/system")?;
    std::fs::write(
        &path,
        "[Unit]\nDescription=portwatch test\n\n[Socket]\nListenStream=0.0.0.0:8097\n\
         ReusePort=yes\n",
    )?;
    let _unit = UnitFile(path);
    let mut systemd = Holder::spawn(ns, "systemd-pwtest")?;
    systemd.bind_ok(&SockSpec::tcp("0.0.0.0:8097").listening())?;
    let mut web = Holder::spawn(ns, "pw-web")?;
    let b = web.bind_fails(&SockSpec::tcp("0.0.0.0:8097"), libc::EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", web.pid, b.ino)?;
    check::fields(
        &ev,
        &[
            ("explain.holders.0.owners.0.pid", json!(systemd.pid)),
            ("explain.holders.0.owners.0.comm", json!("systemd-pwtest")),
        ],
    )?;
    let details = ev.0["explain"]["details"].to_string();
    let want = format!("socket unit {name} (ListenStream=0.0.0.0:8097) holds port 8097");
    ensure!(
        details.contains(&want),
        "want {want:?} in the details: {details}"
    );
    ensure!(details.contains("socket activation"), "{details}");
    Ok(())
}
