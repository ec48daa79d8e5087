//! The `dist` stage's tests: what an operator would see after installing each artifact.
//!
//! - [`static_in_vm`]: the static binary, copied alone into a busybox initramfs (no other ELF,
//!   no library), traces and explains a real conflict between two busybox `nc` processes on
//!   Debian 12's and 13's kernels.
//! - [`deb`] (root): `lintian` has no errors; `dpkg -i` on this host; `/usr/bin/portwatch`
//!   explains a conflict between two separate processes in a fresh network namespace; the
//!   unit is installed but neither enabled nor started; `dpkg --purge` leaves no file.
//! - [`image`] (root): the archive read by GNU tar, each blob checked against its digest,
//!   and by skopeo, which must agree; the layer unpacked; its binary is the dist binary byte for byte with the DaemonSet's
//!   capabilities as file capabilities; then it runs the way `deploy/kubernetes/daemonset.yaml`
//!   runs it (its args, user, capabilities and host mounts, read-only root) from that root
//!   filesystem under `unshare` + `chroot`, since `podman run` cannot work on these hosts.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{Release, deb as debfile, oci};
use crate::{
    cmd::{self, target_dir},
    deploy,
    scenarios::{
        check::fields,
        holder::Holder,
        netns::{RootNs, in_new_netns},
        portwatch::{Config, Portwatch},
        prometheus,
        sock::SockSpec,
    },
    vm,
};

/// `xtask dist-check`: the root-only checks, against `target/dist/`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Only the .deb checks.
    #[arg(long)]
    pub only_deb: bool,
    /// Only the image checks.
    #[arg(long, conflicts_with = "only_deb")]
    pub only_image: bool,
}

pub fn main(args: CheckArgs) -> Result<()> {
    ensure!(cmd::is_root(), "dist-check runs as root (dpkg -i, chroot)");
    let dir = super::dist_dir();
    let mut release = Release::current()?;
    let binary = dir.join(format!("portwatch-{}-x86_64-linux", release.version));
    // The artifacts may be older than the checkout: the commit they were built from is the
    // one the dist binary names.
    release.commit = built_commit(&binary)?;
    let mut failures = Vec::new();
    if !args.only_image
        && let Err(e) = deb(&release, &dir.join(debfile::file_name(&release)))
    {
        failures.push(format!(".deb: {e:#}"));
    }
    if !args.only_deb
        && let Err(e) = image(&release, &dir.join(oci::file_name(&release)), &binary)
    {
        failures.push(format!("image: {e:#}"));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// The commit in `binary --version` (`portwatch 0.1.0 (commit 0123456789ab, TARGET)`), which
/// must also name the target.
fn built_commit(binary: &Path) -> Result<String> {
    let out = super::output_of(binary, &["--version"]).with_context(|| {
        format!(
            "{} is missing or broken: run `cargo xtask dist`",
            binary.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out);
    let commit = text
        .split_once("(commit ")
        .and_then(|(_, rest)| rest.split_once(", "))
        .filter(|(_, rest)| rest.starts_with(super::TARGET))
        .map(|(c, _)| c.to_string())
        .with_context(|| format!("{} --version: {text:?}", binary.display()))?;
    ensure!(
        commit.len() >= 12 && commit[..12].bytes().all(|b| b.is_ascii_hexdigit()),
        "{} --version names no commit: {text:?}",
        binary.display()
    );
    Ok(commit)
}

/// The conflict every artifact must explain: a holder process listening on 127.0.0.1:PORT and
/// a second process whose bind there fails, in a fresh network namespace, while `portwatch`
/// (started through `wrapper`, with `args`) traces from the root one. Returns the event.
/// `also` runs after that, with portwatch's pid, while it still runs.
fn explains_conflict(
    exe: &Path,
    wrapper: &[&str],
    args: Vec<String>,
    port: u16,
    also: &(dyn Fn(u32) -> Result<()> + Sync),
) -> Result<Value> {
    let cfg = Config {
        exe: exe.to_path_buf(),
        backend: None,
        timeout_scale: 1.0,
        root_ns: RootNs::open()?,
    };
    let pw = Portwatch::start_wrapped(&cfg, wrapper, args)?;
    let pid = pw.pid;
    let result = in_new_netns("pw-dist", |ns| {
        let mut holder = Holder::spawn(ns, "pw-dist-holder")?;
        let mut client = Holder::spawn(ns, "pw-dist-client")?;
        let spec = SockSpec::tcp(&format!("127.0.0.1:{port}"));
        holder.bind_ok(&spec.clone().listening())?;
        let fail = client.bind_fails(&spec, libc::EADDRINUSE)?;
        let ev = pw.wait_call(ns, "bind", client.pid, fail.ino)?;
        fields(
            &ev,
            &[
                ("errno", json!("EADDRINUSE")),
                ("explain.rule", json!("same-address")),
                ("explain.holders.0.owners.0.pid", json!(holder.pid)),
                ("explain.holders.0.owners.0.comm", json!("pw-dist-holder")),
            ],
        )?;
        also(pw.pid)?;
        holder.exit()?;
        client.exit()?;
        Ok(ev.0)
    });
    let stopped = pw.stop();
    let ev = result.with_context(|| format!("portwatch (pid {pid})"))?;
    stopped?;
    Ok(ev)
}

/// lintian, install, trace, purge.
fn deb(release: &Release, deb: &Path) -> Result<()> {
    ensure!(
        deb.is_file(),
        "{} is missing: run `cargo xtask dist`",
        deb.display()
    );
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian (apt-get install lintian)")?;
    let said = String::from_utf8_lossy(&out.stdout);
    eprint!(
        "lintian: {}",
        if said.trim().is_empty() {
            "no tags\n"
        } else {
            &said
        }
    );
    ensure!(
        out.status.success() && !said.lines().any(|l| l.starts_with("E:")),
        "lintian found errors ({}):\n{said}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cmd::probe(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${db:Status-Abbrev}",
        "portwatch",
    ]));
    ensure!(
        status.as_deref().is_none_or(|s| !s.starts_with("ii")),
        "portwatch is already installed as a package on this host; `dpkg --purge portwatch` first"
    );
    cmd::run(Command::new("dpkg").arg("-i").arg(deb))?;
    let result = installed(release);
    let purged = cmd::run(Command::new("dpkg").args(["--purge", "portwatch"]));
    result?;
    purged?;
    for f in debfile::FILES {
        ensure!(
            !Path::new("/").join(f).exists(),
            "/{f} is still there after dpkg --purge"
        );
    }
    for d in ["/usr/share/doc/portwatch", "/var/log/portwatch"] {
        ensure!(
            !Path::new(d).exists(),
            "{d} is still there after dpkg --purge"
        );
    }
    let listed = cmd::probe(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${db:Status-Abbrev}",
        "portwatch",
    ]));
    ensure!(
        listed
            .as_deref()
            .is_none_or(|s| s.trim().is_empty() || s.starts_with("un") || s.starts_with("pn")),
        "dpkg still knows portwatch after --purge: {listed:?}"
    );
    eprintln!("deb: installed, traced, purged; no file left");
    Ok(())
}

/// What the installed package must give: every file, a working binary that says its version,
/// a man page `man` can find, and a unit that is not enabled.
fn installed(release: &Release) -> Result<()> {
    for f in debfile::FILES {
        ensure!(
            Path::new("/").join(f).is_file(),
            "dpkg -i did not install /{f}"
        );
    }
    let listed = cmd::probe(Command::new("dpkg").args(["-L", "portwatch"])).unwrap_or_default();
    for f in debfile::FILES {
        ensure!(
            listed.lines().any(|l| l == format!("/{f}")),
            "dpkg -L does not list /{f}"
        );
    }
    // What an auditor reads: the crates inside the static binary, with their licenses, and
    // the glibc source it was linked from.
    let copyright = std::fs::read_to_string("/usr/share/doc/portwatch/copyright")?;
    ensure!(
        copyright.contains("\n aya 0.") && copyright.contains("GNU C Library"),
        "the copyright file should list the linked crates (aya among them) and glibc:\n{copyright}"
    );
    let built_using =
        cmd::probe(Command::new("dpkg-query").args(["-W", "-f", "${Built-Using}", "portwatch"]))
            .unwrap_or_default();
    ensure!(
        built_using.starts_with("glibc (= "),
        "the installed package should say Built-Using: glibc (= VERSION), got {built_using:?}"
    );
    let version = super::output_of(Path::new("/usr/bin/portwatch"), &["--version"])?;
    let version = String::from_utf8_lossy(&version);
    ensure!(
        version.contains(&release.version)
            && version.contains(&release.commit)
            && version.contains(super::TARGET),
        "/usr/bin/portwatch --version: {version}"
    );
    // Not enabled: no symlink in any .wants directory.
    // Not enabled (systemctl reads the unit files; no systemd needs to run), and nothing
    // could have started it: the package has no maintainer scripts.
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "portwatch.service"])
        .output()
        .context("running systemctl")?;
    let enabled = String::from_utf8_lossy(&enabled.stdout);
    ensure!(
        enabled.trim() == "disabled",
        "systemctl is-enabled portwatch.service: {enabled:?}, want \"disabled\""
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let p = format!("/var/lib/dpkg/info/portwatch.{script}");
        ensure!(!Path::new(&p).exists(), "the package has a {script}: {p}");
    }
    let ev = explains_conflict(
        Path::new("/usr/bin/portwatch"),
        &[],
        ["trace", "--json", "--port", "47310"]
            .map(String::from)
            .to_vec(),
        47310,
        &|_| Ok(()),
    )?;
    eprintln!(
        "deb: /usr/bin/portwatch explained: {}",
        ev["explain"]["message"]
    );
    Ok(())
}

/// The image, unpacked and run as the DaemonSet runs it.
fn image(release: &Release, archive: &Path, binary: &Path) -> Result<()> {
    ensure!(
        archive.is_file(),
        "{} is missing: run `cargo xtask dist`",
        archive.display()
    );
    let work = target_dir().join("dist-work/image-check");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let layout = work.join("layout");
    let root = work.join("rootfs");
    fs::create_dir_all(&layout)?;
    fs::create_dir_all(&root)?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&layout),
    )?;
    let read_json = |p: PathBuf| -> Result<Value> {
        serde_json::from_slice(&fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("{} is not JSON", p.display()))
    };
    let blob = |digest: &Value| -> Result<PathBuf> {
        let digest = digest.as_str().context("a digest")?;
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        ensure!(
            super::sha256(&path)? == digest,
            "{} does not match its digest",
            path.display()
        );
        Ok(path)
    };
    let index = read_json(layout.join("index.json"))?;
    let entry = &index["manifests"][0];
    ensure!(
        entry["annotations"]["org.opencontainers.image.ref.name"]
            == oci::reference(release).as_str(),
        "index.json names {}",
        entry["annotations"]
    );
    let manifest = read_json(blob(&entry["digest"])?)?;
    let config = read_json(blob(&manifest["config"]["digest"])?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(
        layers.len() == 1,
        "want one layer (FROM scratch), got {}",
        layers.len()
    );
    cmd::run(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=security.capability", "-xpzf"])
            .arg(blob(&layers[0]["digest"])?)
            .arg("-C")
            .arg(&root),
    )?;
    // skopeo (what the README pushes with) must read the same image: it checks the digests
    // as it copies, and its view of the config must be ours.
    let copy = work.join("skopeo");
    cmd::run(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("dir:{}", copy.display())),
    )?;
    let seen = cmd::probe(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", archive.display())),
    )
    .context("skopeo inspect --config failed")?;
    let seen: Value = serde_json::from_str(&seen)?;
    ensure!(
        seen["config"] == config["config"],
        "skopeo reads the config as {}, the archive holds {}",
        seen["config"],
        config["config"]
    );
    let labels = &config["config"]["Labels"];
    for (k, want) in [
        ("org.opencontainers.image.version", release.version.as_str()),
        ("org.opencontainers.image.revision", release.commit.as_str()),
        ("org.opencontainers.image.title", "portwatch"),
    ] {
        ensure!(labels[k] == want, "label {k} is {}, want {want}", labels[k]);
    }
    let entrypoint = config["config"]["Entrypoint"][0]
        .as_str()
        .context("no Entrypoint")?;
    let exe = root.join(entrypoint.trim_start_matches('/'));
    ensure!(
        fs::read(&exe)? == fs::read(binary)?,
        "the image's {entrypoint} is not the dist binary {}",
        binary.display()
    );
    let files: Vec<String> = cmd::probe(Command::new("find").arg(".").current_dir(&root))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    ensure!(
        files == [".", "./usr", "./usr/bin", "./usr/bin/portwatch"],
        "the image holds {files:?}"
    );
    let caps = cmd::probe(Command::new("getcap").arg(&exe)).unwrap_or_default();
    ensure!(
        caps.contains("cap_dac_read_search,cap_sys_ptrace,cap_sys_admin,cap_perfmon,cap_bpf=ep"),
        "getcap on the image's binary: {caps:?}"
    );

    let ds = deploy::daemonset()?;
    let image_name = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("");
    ensure!(
        image_name == oci::reference(release),
        "daemonset.yaml runs image {image_name:?}; this build is {}",
        oci::reference(release)
    );
    let run = PodRun::from_daemonset(&ds, &root, &work)?;
    let wrapper: Vec<&str> = run.wrapper.iter().map(String::as_str).collect();
    let metrics = run.metrics.clone();
    let ev = explains_conflict(
        Path::new(entrypoint),
        &wrapper,
        run.args.clone(),
        47320,
        &|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
            let line = |k: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(k))
                    .unwrap_or("")
                    .to_string()
            };
            ensure!(
                line("Uid:").split_whitespace().nth(1) == Some("65534"),
                "the container's portwatch runs as {}",
                line("Uid:")
            );
            // CAP_DAC_READ_SEARCH, SYS_PTRACE, SYS_ADMIN, PERFMON, BPF: from the file
            // capabilities, within the DaemonSet's bounding set.
            let eff =
                u64::from_str_radix(line("CapEff:").split_whitespace().nth(1).unwrap_or(""), 16)?;
            let want = oci::FILE_CAPS.iter().fold(0u64, |m, c| m | 1 << c);
            let bnd =
                u64::from_str_radix(line("CapBnd:").split_whitespace().nth(1).unwrap_or(""), 16)?;
            ensure!(
                eff == want && bnd == want,
                "the container's portwatch has CapEff {eff:x} and CapBnd {bnd:x}, want {want:x}"
            );
            let Some(addr) = &metrics else { return Ok(()) };
            let addr = addr.replace("0.0.0.0", "127.0.0.1");
            let health = http_get_in(pid, &addr, "/healthz")?;
            ensure!(
                health.trim() == "ok",
                "/healthz in the container said {health:?}"
            );
            let text = http_get_in(pid, &addr, "/metrics")?;
            ensure!(
                text.lines().any(|l| l.starts_with("portwatch_calls_total{")
                    && l.contains("result=\"EADDRINUSE\"")),
                "/metrics in the container has no failed call:\n{text}"
            );
            Ok(())
        },
    )?;
    eprintln!(
        "image: {entrypoint} under the DaemonSet's settings explained: {}",
        ev["explain"]["message"]
    );
    Ok(())
}

/// How a container of the DaemonSet would start: its args, and a wrapper that gives the
/// process what the runtime would: a private mount namespace and network namespace, the host
/// paths mounted where `volumeMounts` says (read-only where it says), /proc of the host pid
/// namespace (`hostPID: true`), a read-only root, the capability bounding set the
/// securityContext leaves (`drop: ALL`, `add: ...`), and the user. The entrypoint gets its
/// capabilities from its file capabilities, as in a real pod.
struct PodRun {
    wrapper: Vec<String>,
    args: Vec<String>,
    /// `--metrics`' address, if the args have one.
    metrics: Option<String>,
}

impl PodRun {
    fn from_daemonset(ds: &Value, root: &Path, work: &Path) -> Result<PodRun> {
        let pod = &ds["spec"]["template"]["spec"];
        ensure!(
            pod["hostPID"] == true,
            "the wrapper below assumes hostPID: true"
        );
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        ensure!(
            sc["readOnlyRootFilesystem"] == true,
            "readOnlyRootFilesystem is not true"
        );
        ensure!(
            sc["capabilities"]["drop"] == json!(["ALL"]),
            "capabilities.drop is not [ALL]"
        );
        let keep: Vec<String> = sc["capabilities"]["add"]
            .as_array()
            .context("no capabilities.add")?
            .iter()
            .filter_map(Value::as_str)
            .map(|c| format!("cap_{}", c.to_lowercase()))
            .collect();
        // Every capability this kernel knows, by name (capsh decodes a mask), minus `add`.
        let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()?;
        let all = cmd::probe(
            Command::new("capsh").arg(format!("--decode={:x}", (1u64 << (last + 1)) - 1)),
        )
        .context("capsh --decode (apt-get install libcap2-bin)")?;
        let drop: Vec<&str> = all
            .trim()
            .split_once('=')
            .context("capsh --decode printed no names")?
            .1
            .split(',')
            .filter(|c| !keep.iter().any(|k| k == c))
            .collect();
        let uid = sc["runAsUser"].as_u64().context("no runAsUser")?;
        let gid = sc["runAsGroup"].as_u64().context("no runAsGroup")?;
        let args: Vec<String> = c["args"]
            .as_array()
            .context("no args")?
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let q = |p: &Path| format!("'{}'", p.display());
        let r = q(root);
        let mut script = vec![
            "set -e".to_string(),
            // The pod's network namespace: the runtime brings its loopback up.
            "ip link set lo up".to_string(),
            format!("mount --bind {r} {r}"),
            // What every container gets: /proc (of the host's pid namespace: hostPID), /sys
            // read-only, a /dev with the usual devices.
            format!("mkdir -p {r}/proc {r}/sys {r}/dev {r}/tmp"),
            format!("mount -t proc proc {r}/proc"),
            format!("mount -t sysfs -o ro sysfs {r}/sys"),
            format!("mount -t tmpfs -o mode=755 tmpfs {r}/dev"),
        ];
        for d in ["null", "zero", "full", "random", "urandom", "tty"] {
            script.push(format!(
                "touch {r}/dev/{d}; mount --bind /dev/{d} {r}/dev/{d}"
            ));
        }
        script.push(format!("mount -t tmpfs tmpfs {r}/tmp"));
        let volumes = pod["volumes"].as_array().context("no volumes")?;
        for m in c["volumeMounts"].as_array().context("no volumeMounts")? {
            let vol = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .with_context(|| format!("no volume {}", m["name"]))?;
            let host = vol["hostPath"]["path"]
                .as_str()
                .context("not a hostPath volume")?;
            let mut host = PathBuf::from(host);
            if !host.exists() {
                // DirectoryOrCreate would make it on the node; an empty one of our own stands
                // in, so the test leaves nothing behind.
                ensure!(
                    vol["hostPath"]["type"] == "DirectoryOrCreate",
                    "host path {} does not exist here",
                    host.display()
                );
                host = work.join("empty").join(m["name"].as_str().unwrap_or("x"));
                fs::create_dir_all(&host)?;
            }
            let at = format!("{r}{}", m["mountPath"].as_str().context("no mountPath")?);
            // The root is read-only from here on for the container, but its mount points are
            // made by the runtime, as here (inside /sys and /dev these are on the new mounts).
            script.push(format!("mkdir -p '{at}' 2>/dev/null || test -d '{at}'"));
            script.push(format!("mount --rbind {} '{at}'", q(&host)));
            if m["readOnly"] == true {
                script.push(format!("mount -o remount,bind,ro '{at}'"));
            }
        }
        script.push(format!("mount -o remount,bind,ro {r}"));
        // capsh (not setpriv + chroot: dropping the bounding set first would take
        // CAP_SYS_CHROOT with it) chroots, leaves `add` as the bounding set, no inheritable
        // or ambient capabilities, switches user, and execs the entrypoint, whose file
        // capabilities then take effect as they do in the pod.
        script.push(format!(
            "exec capsh --chroot={r} --drop={} --inh= --noamb --gid={gid} --groups={gid} \
             --uid={uid} --shell=\"$0\" -- \"$@\"",
            drop.join(",")
        ));
        Ok(PodRun {
            wrapper: [
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script.join("\n"),
            ]
            .map(String::from)
            .to_vec(),
            metrics: args
                .windows(2)
                .find(|w| w[0] == "--metrics")
                .map(|w| w[1].clone()),
            args,
        })
    }
}

/// The static binary alone in a VM with `distro`'s kernel: busybox, the binary and nothing
/// else (vm.rs copies shared libraries only for dynamic executables, and this one has none).
/// One `nc` listens, a second one's bind fails; portwatch must name the first as the holder.
pub fn static_in_vm(binary: &Path, distro: vm::Distro) -> Result<()> {
    ensure!(
        !super::has_interpreter(binary)?,
        "{} is not static",
        binary.display()
    );
    let kernel = vm::ensure_kernel(&cmd::workspace_root().join("vm-cache"), distro)?;
    let command = "set -e
/bin/portwatch --version >/dev/ttyS1
/bin/portwatch trace --json --port 8080 >/tmp/events 2>/tmp/status &
PW=$!
i=0; until grep -q 'tracing bind' /tmp/status; do i=$((i+1)); [ $i -lt 600 ] || { cat /tmp/status; exit 3; }; sleep 0.1; done
nc -l -p 8080 >/dev/null & HOLDER=$!
sleep 2
if nc -l -p 8080 >/dev/null 2>/tmp/nc.err; then echo 'second nc bound'; exit 4; fi
cat /tmp/nc.err
echo HOLDER $HOLDER >/dev/ttyS1
i=0; until grep -q EADDRINUSE /tmp/events; do i=$((i+1)); [ $i -lt 600 ] || break; sleep 0.1; done
kill -INT $PW; wait $PW || true; kill $HOLDER || true
cat /tmp/status
cat /tmp/events >/dev/ttyS1
";
    let guest = vm::Guest {
        files: vec![(binary.to_path_buf(), "/bin/portwatch".into())],
        command: command.into(),
        timeout: Duration::from_secs(300),
        memory_mb: 512,
        cpus: 1,
        kernel_args: String::new(),
    };
    let work = target_dir().join("xtask-vm-dist").join(distro.dir_name());
    let out = vm::run(&kernel, &guest, &work)?;
    let text = String::from_utf8_lossy(&out.results);
    if out.exit_code != Some(0) {
        bail!(
            "in the VM ({}): exit code {:?}\n{}\n{text}",
            kernel.version,
            out.exit_code,
            vm::tail(&out.console, 30)
        );
    }
    let mut lines = text.lines();
    let version = lines.next().unwrap_or("");
    ensure!(
        version.contains(super::TARGET),
        "--version in the VM: {version:?}"
    );
    let holder: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("HOLDER "))
        .and_then(|p| p.trim().parse().ok())
        .context("the VM reported no holder pid")?;
    let event = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "bind" && v["errno"] == "EADDRINUSE")
        .with_context(|| format!("no failed bind among portwatch's output in the VM:\n{text}"))?;
    let owner = &event["explain"]["holders"][0]["owners"][0];
    ensure!(
        owner["pid"] == holder && owner["comm"] == "nc" && event["comm"] == "nc",
        "in the VM ({}) portwatch named {owner} as the holder, not nc pid {holder}: {event}",
        kernel.version
    );
    eprintln!(
        "VM {} ({}): {version}; {} backend; {} ({:.1} s boot to power-off)",
        distro.label(),
        kernel.version,
        event["backend"],
        event["explain"]["message"],
        out.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Reads `GET path` from a process's network namespace (the container's `--metrics`).
pub fn http_get_in(pid: u32, addr: &str, path: &str) -> Result<String> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let addr = addr.parse()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: an open nsfs file; setns moves only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            prometheus::http_get(addr, path, "")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("panicked"))?
    })
}
