//! Boot a stock Debian cloud kernel (Debian 12's 6.1 or Debian 13's 6.12) under QEMU (TCG) into
//! a busybox initramfs and run one command in it.
//!
//! Why: the build machines run a kernel that refuses BPF trampolines (fentry/fexit/LSM load with
//! EPERM) and has no kprobes, so the fexit backend can only be exercised on a stock distro kernel.
//! Two of them, because the kernel's socket code changed in between: from 6.6 the bind options
//! are bits of `inet_flags`, and TCP binds go through bhash2.
//! Nested KVM hangs there, so the VM runs under TCG (pure emulation, a few seconds per boot).
//!
//! Results travel over a second serial port (`/dev/ttyS1` in the guest, a plain file on the host)
//! rather than the console, so kernel messages, warnings and the command's own chatter can never
//! corrupt them. The init script appends a trailer `\n##EXIT <code>\n` to that port after the
//! command finishes; [`run`] strips it and reports the code separately.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cmd::workspace_root;

/// The metapackage that always depends on a Debian release's newest cloud kernel image. The
/// concrete version (`6.1.0-NN`, `6.12.NN+deb13`) changes with every security update, so it is
/// resolved from this package when a kernel is fetched instead of being pinned.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The keyring Debian's own sources are signed with (package debian-archive-keyring, which apt
/// depends on); it holds the keys of Debian 13 too.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A Debian release whose stock cloud kernel the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distro {
    /// Debian 12 (bookworm), Linux 6.1: the release these machines run.
    Debian12,
    /// Debian 13 (trixie), Linux 6.12.
    Debian13,
}

impl Distro {
    pub const ALL: [Distro; 2] = [Distro::Debian12, Distro::Debian13];

    /// For logs and stage names.
    pub fn label(self) -> &'static str {
        match self {
            Distro::Debian12 => "Debian 12 (6.1)",
            Distro::Debian13 => "Debian 13 (6.12)",
        }
    }

    /// A short name for paths: its directory in the kernel cache, say.
    pub fn dir_name(self) -> &'static str {
        match self {
            Distro::Debian12 => "debian12",
            Distro::Debian13 => "debian13",
        }
    }

    /// The suite to fetch from through a private sources file, or `None` for the system's own
    /// sources (Debian 12 on these machines).
    fn suite(self) -> Option<&'static str> {
        match self {
            Distro::Debian12 => None,
            Distro::Debian13 => Some("trixie"),
        }
    }
}

/// Host copy of the static busybox (package busybox-static); it provides the guest's shell and
/// every tool the init script uses.
const BUSYBOX: &str = "/bin/busybox";

/// Minimal firmware, about 0.3 s faster than SeaBIOS under TCG and without its escape codes.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Trailer the init script writes to ttyS1 after the command, followed by the exit code.
const EXIT_TRAILER: &[u8] = b"\n##EXIT ";

/// An extracted kernel image package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` inside the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the package. Nothing is loaded from it automatically; pass
    /// what a test needs as [`Guest::files`].
    pub modules_dir: PathBuf,
}

/// Kernel modules for the guest: `names` and what they depend on, from the kernel package.
/// Returns the files to copy in (as [`Guest::files`]) and the shell lines that load them,
/// dependencies first. The package has no modules.dep (depmod makes it at install), so each
/// module's own `depends=` entry (its `.modinfo`) is read; `.ko.xz` files (Debian 13 on) are
/// unpacked with xz here and with busybox's xzcat in the guest, since busybox's insmod reads
/// only plain modules.
pub fn modules(kernel: &Kernel, names: &[&str]) -> Result<(Vec<(PathBuf, String)>, String)> {
    let mut index: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut dirs = vec![kernel.modules_dir.join("kernel")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko.xz").or_else(|| n.strip_suffix(".ko")))
            {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if order.contains(&name) {
            return Ok(());
        }
        ensure!(depth < 16, "module dependencies too deep at {name}");
        let path = index
            .get(&name)
            .ok_or_else(|| anyhow!("no module {name} in the kernel package"))?;
        for dep in module_depends(path)? {
            visit(&dep, index, order, depth + 1)?;
        }
        order.push(name);
        Ok(())
    }
    for n in names {
        visit(n, &index, &mut order, 0)?;
    }
    let mut files = Vec::new();
    let mut script = String::new();
    for name in &order {
        let host = &index[name];
        let file = host.file_name().unwrap_or_default().to_string_lossy();
        let guest = format!("/lib/pw-modules/{file}");
        if file.ends_with(".xz") {
            script.push_str(&format!(
                "xzcat {guest} >/tmp/{name}.ko && insmod /tmp/{name}.ko; "
            ));
        } else {
            script.push_str(&format!("insmod {guest}; "));
        }
        files.push((host.clone(), guest));
    }
    Ok((files, script))
}

/// The `depends=` list of a module file's `.modinfo`.
fn module_depends(path: &Path) -> Result<Vec<String>> {
    let bytes = if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .context("running xz -dc (package xz-utils)")?;
        ensure!(out.status.success(), "xz -dc {} failed", path.display());
        out.stdout
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let entry = bytes
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(entry)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect())
}

/// Makes sure `distro`'s cloud kernel is extracted under `cache/<distro>/` and returns it.
///
/// A kernel already in the cache is returned at once, without running apt (apt-cache alone takes
/// about a second here, as no package cache is kept): tests stay on one kernel until the cache is
/// deleted, which then fetches the newest. With an empty cache the package name is resolved from
/// the apt metadata (`apt-get update` runs only if that fails, or when a private list is still
/// empty) and `apt-get download`ed.
pub fn ensure_kernel(cache: &Path, distro: Distro) -> Result<Kernel> {
    let cache = cache.join(distro.dir_name());
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    if let Some(k) = newest_cached(&cache)? {
        return Ok(k);
    }
    let apt = Apt::new(distro, &cache)?;
    if apt.lists_empty() {
        apt.update()?;
    }
    download(&cache, &apt).or_else(|first| {
        // Stale or missing package lists: the lookup fails, or the mirror no longer has the file.
        eprintln!("vm: {first:#}; running apt-get update and retrying");
        apt.update()?;
        download(&cache, &apt)
    })
}

/// apt as [`ensure_kernel`] runs it: on the system's sources, or on a private sources file and
/// lists directory under the cache, which reach another suite of the same archive without
/// touching the system's apt state.
struct Apt {
    options: Vec<String>,
    /// The private lists directory, if any.
    lists: Option<PathBuf>,
}

impl Apt {
    fn new(distro: Distro, cache: &Path) -> Result<Self> {
        let Some(suite) = distro.suite() else {
            return Ok(Apt {
                options: Vec::new(),
                lists: None,
            });
        };
        let root = cache.join(".apt");
        let lists = root.join("lists");
        let sources = root.join("debian.sources");
        for d in [lists.join("partial"), root.join("cache/archives/partial")] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let archive = system_archive()?;
        let signed_by = if Path::new(DEBIAN_KEYRING).is_file() {
            format!("Signed-By: {DEBIAN_KEYRING}\n")
        } else {
            String::new()
        };
        // Targets: only the package list (not the AppStream metadata the system's apt.conf may
        // ask for), ~10 MB.
        fs::write(
            &sources,
            format!(
                "# Written by cargo xtask (vm.rs): {} from the system's own archive.\n\
                 Types: deb\nURIs: {archive}\nSuites: {suite}\nComponents: main\n\
                 Architectures: amd64\nTargets: Packages\n{signed_by}",
                distro.label()
            ),
        )
        .with_context(|| format!("writing {}", sources.display()))?;
        let option = |k: &str, v: &Path| vec!["-o".to_string(), format!("{k}={}", v.display())];
        let mut options = option("Dir::Etc::sourcelist", &sources);
        options.extend(option("Dir::Etc::sourceparts", Path::new("/nonexistent")));
        options.extend(option("Dir::State::Lists", &lists));
        options.extend(option("Dir::Cache", &root.join("cache")));
        Ok(Apt {
            options,
            lists: Some(lists),
        })
    }

    /// `program` (apt-get, apt-cache) with the private options, if any.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        // Sandbox user root: apt otherwise warns that _apt cannot write into the directory.
        c.args(&self.options)
            .args(["-o", "APT::Sandbox::User=root"]);
        c
    }

    /// Whether the private lists directory has no package list yet.
    fn lists_empty(&self) -> bool {
        self.lists.as_ref().is_some_and(|d| {
            fs::read_dir(d).map_or(true, |entries| {
                !entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
        })
    }

    fn update(&self) -> Result<()> {
        run_quiet(self.command("apt-get").args(["update", "-qq"]))?;
        Ok(())
    }
}

/// The archive the system's apt sources name for the system's own release (e.g.
/// `http://deb.debian.org/debian/` for bookworm), as apt itself reads the sources.
fn system_archive() -> Result<String> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"'))
        .ok_or_else(|| anyhow!("no VERSION_CODENAME in /etc/os-release"))?;
    let targets = run_quiet(Command::new("apt-get").args([
        "indextargets",
        "--no-release-info",
        "--format",
        "$(REPO_URI) $(RELEASE)",
        "Identifier: Packages",
    ]))?;
    targets
        .lines()
        .find_map(|l| {
            let (uri, release) = l.split_once(' ')?;
            (release == codename).then(|| uri.to_string())
        })
        .ok_or_else(|| anyhow!("the system's apt sources name no archive for {codename}"))
}

fn download(cache: &Path, apt: &Apt) -> Result<Kernel> {
    let package = resolve_package(apt)?;
    let dir = cache.join(&package);
    // Download and extract into scratch directories, then rename: a present `dir` is always a
    // complete extraction, even after an interrupted run.
    let dl = cache.join(".download");
    let partial = cache.join(format!(".{package}.partial"));
    for d in [&dl, &partial, &dir] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    fs::create_dir_all(&dl)?;
    eprintln!("vm: downloading {package}");
    run_quiet(
        apt.command("apt-get")
            .args(["-q", "download", &package])
            .current_dir(&dl),
    )?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| anyhow!("apt-get download {package} produced no .deb"))?;
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    kernel_in(&partial).context("checking the extracted package")?;
    fs::rename(&partial, &dir)?;
    fs::remove_dir_all(&dl)?;
    kernel_in(&dir)
}

/// `linux-image-6.1.0-NN-cloud-amd64-unsigned` (or the 6.12 one), from the metapackage's
/// candidate version. The unsigned flavour has the same image without the secure-boot signature
/// wrapper.
fn resolve_package(apt: &Apt) -> Result<String> {
    let out = run_quiet(apt.command("apt-cache").args(["depends", META_PACKAGE]))?;
    let signed = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-amd64"))
        .ok_or_else(|| {
            anyhow!("no linux-image-*-cloud-amd64 in `apt-cache depends {META_PACKAGE}`")
        })?;
    let unsigned = format!("{signed}-unsigned");
    // Verify apt knows it, so a stale package list is caught here (and triggers an update).
    run_quiet(
        apt.command("apt-cache")
            .args(["show", "--no-all-versions", &unsigned]),
    )?;
    Ok(unsigned)
}

fn newest_cached(cache: &Path) -> Result<Option<Kernel>> {
    let mut best: Option<(Vec<u32>, Kernel)> = None;
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or("");
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let Ok(k) = kernel_in(&path) else { continue };
        let key = version_key(&k.version);
        if best.as_ref().is_none_or(|(b, _)| key > *b) {
            best = Some((key, k));
        }
    }
    Ok(best.map(|(_, k)| k))
}

/// The leading numbers of a Debian kernel release, for ordering: `6.1.0-56-cloud-amd64` →
/// [6, 1, 0, 56], `6.12.117+deb13-cloud-amd64` → [6, 12, 117].
fn version_key(release: &str) -> Vec<u32> {
    release
        .split(['.', '-', '+'])
        .map_while(|part| part.parse().ok())
        .collect()
}

fn kernel_in(root: &Path) -> Result<Kernel> {
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("no vmlinuz-* in {}", boot.display()))?;
    let version = vmlinuz.file_name().unwrap().to_str().unwrap()["vmlinuz-".len()..].to_string();
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&version))
        .find(|p| p.is_dir())
        .ok_or_else(|| anyhow!("no lib/modules/{version} in {}", root.display()))?;
    Ok(Kernel {
        version,
        vmlinuz,
        modules_dir,
    })
}

/// What to run in the guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Host file or directory → absolute guest path. Dynamically linked ELF executables get their
    /// shared libraries and loader copied along, at the host paths `ldd` reports.
    pub files: Vec<(PathBuf, String)>,
    /// Run as root with `sh -c`; stdout/stderr go to the console, results to `/dev/ttyS1`.
    pub command: String,
    /// Wall-clock limit for boot + command + power-off. TCG boots take ~3-5 s.
    pub timeout: Duration,
    pub memory_mb: u32,
    /// vCPUs (`-smp`): 1 for the tests; the bench gives the loop a vCPU of its own.
    pub cpus: u32,
    /// Added to the kernel command line.
    pub kernel_args: String,
}

#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Everything on ttyS0 (kernel log and the command's stdout/stderr), `\r\n` → `\n`.
    pub console: String,
    /// Bytes the command wrote to `/dev/ttyS1`, without the exit trailer.
    pub results: Vec<u8>,
    /// `None` when the guest stopped without reaching the trailer (panic, init killed).
    pub exit_code: Option<i32>,
    /// QEMU start to exit: boot, command and power-off.
    pub elapsed: Duration,
}

/// Boots `kernel` with an initramfs built from `guest` and waits for the guest to power off.
///
/// `work` holds the initramfs, `console.log` (written live, so `tail -f` it while debugging) and
/// `results.bin`. It is reused between runs, so concurrent runs need distinct directories.
/// A timeout kills QEMU and is an error that quotes the end of the console.
pub fn run(kernel: &Kernel, guest: &Guest, work: &Path) -> Result<GuestOutput> {
    // QEMU's legacy -serial syntax has no escape for ",", so such a path would be cut short.
    ensure!(
        !work.to_string_lossy().contains(','),
        "VM work directory {} must not contain a comma",
        work.display()
    );
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initrd.gz");
    let console_path = work.join("console.log");
    let results_path = work.join("results.bin");
    // Tools such as `bpftool feature probe` read the kernel config from /boot.
    let config = kernel
        .vmlinuz
        .with_file_name(format!("config-{}", kernel.version));
    build_initramfs(
        guest,
        config
            .is_file()
            .then_some((config.as_path(), kernel.version.as_str())),
        &initrd,
    )?;
    // Never let a previous run's results be mistaken for this one's.
    fs::write(&results_path, b"")?;

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-no-reboot", "-nographic"])
        .args(["-m", &guest.memory_mb.to_string()])
        .args(["-smp", &guest.cpus.to_string()])
        // No NIC: the guest only needs `lo`, and this skips the iPXE option ROM.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        // panic=-1: reboot at once on panic, which -no-reboot turns into QEMU exiting.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 rdinit=/init {}",
            guest.kernel_args
        ))
        // The first -serial is ttyS0 (console, multiplexed with the monitor on stdio as
        // -nographic does by default); the second is ttyS1, the results channel.
        .args(["-serial", "mon:stdio"])
        .arg("-serial")
        .arg(format!("file:{}", results_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // qboot (qemu-system-data) jumps straight to the kernel; SeaBIOS is the fallback.
    if Path::new(QBOOT).exists() {
        cmd.args(["-bios", QBOOT]);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;

    let mut stdout = child.stdout.take().unwrap();
    let mut log = fs::File::create(&console_path)?;
    let console_thread = thread::spawn(move || -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = log.write_all(&buf[..n]);
        }
        all
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = start + guest.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let console = String::from_utf8_lossy(&console_thread.join().unwrap()).replace("\r\n", "\n");
    let qemu_stderr = stderr_thread.join().unwrap();

    let Some(status) = status else {
        bail!(
            "VM timed out after {:.0?} and QEMU was killed (command: {:?}).\nLast console lines:\n{}\n\
             (full console: {}; {} bytes of results so far in {})",
            guest.timeout,
            guest.command,
            tail(&console, 30),
            console_path.display(),
            fs::metadata(&results_path).map(|m| m.len()).unwrap_or(0),
            results_path.display()
        );
    };
    ensure!(
        status.success(),
        "qemu-system-x86_64 failed ({status}): {}\nLast console lines:\n{}",
        qemu_stderr.trim(),
        tail(&console, 30)
    );

    let mut results = fs::read(&results_path)?;
    let exit_code = match find_last(&results, EXIT_TRAILER) {
        Some(at) => {
            let code = std::str::from_utf8(&results[at + EXIT_TRAILER.len()..])
                .ok()
                .and_then(|s| s.trim().parse().ok());
            results.truncate(at);
            code
        }
        None => None,
    };
    Ok(GuestOutput {
        console,
        results,
        exit_code,
        elapsed,
    })
}

/// The last `lines` lines of `s`.
pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// PID 1 in the guest. busybox's applets are linked at boot, so the initramfs stays small.
/// ttyS1 is switched to raw mode so binary results are not mangled (no `\n` → `\r\n`); the
/// setting sticks across opens. Closing the last fd of a serial port waits until its bytes
/// are transmitted, so the trailer is on the host before `poweroff -f`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
ip link set lo up
stty -F /dev/ttyS1 raw -echo
cd /
sh -c "$(cat /.vm/command)" </dev/null
code=$?
printf '\n##EXIT %d\n' "$code" >/dev/ttyS1
poweroff -f
"#;

enum Entry {
    Dir,
    File { src: PathBuf, mode: u32 },
    Data { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// Builds the initramfs as a gzip'd newc cpio, written by hand so device nodes need no mknod
/// and nothing is staged on disk.
fn build_initramfs(guest: &Guest, config: Option<(&Path, &str)>, out: &Path) -> Result<()> {
    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "run", "etc",
        ".vm",
    ] {
        add_dir(&mut tree, d);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    tree.insert("dev/console".into(), Entry::CharDev { major: 5, minor: 1 });
    tree.insert(
        "bin/busybox".into(),
        Entry::File {
            src: BUSYBOX.into(),
            mode: 0o755,
        },
    );
    tree.insert("bin/sh".into(), Entry::Symlink("busybox".into()));
    tree.insert(
        "init".into(),
        Entry::Data {
            data: INIT.into(),
            mode: 0o755,
        },
    );
    tree.insert(
        ".vm/command".into(),
        Entry::Data {
            data: guest.command.clone().into(),
            mode: 0o644,
        },
    );

    if let Some((path, version)) = config {
        add_file(&mut tree, path, &format!("boot/config-{version}"))?;
    }
    for (host, guest_path) in &guest.files {
        ensure!(
            guest_path.starts_with('/'),
            "guest path {guest_path:?} must be absolute"
        );
        add_host_path(&mut tree, host, guest_path.trim_start_matches('/'))
            .with_context(|| format!("adding {} as {guest_path}", host.display()))?;
    }

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("starting gzip")?;
    let mut w = std::io::BufWriter::new(gzip.stdin.take().unwrap());
    let mut ino = 1;
    for (name, entry) in &tree {
        ino += 1;
        match entry {
            Entry::Dir => cpio_entry(&mut w, ino, name, 0o040755, 0, &[])?,
            Entry::File { src, mode } => {
                let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                cpio_entry(&mut w, ino, name, 0o100000 | mode, 0, &data)?
            }
            Entry::Data { data, mode } => cpio_entry(&mut w, ino, name, 0o100000 | mode, 0, data)?,
            Entry::Symlink(target) => {
                cpio_entry(&mut w, ino, name, 0o120777, 0, target.as_bytes())?
            }
            Entry::CharDev { major, minor } => {
                cpio_entry(&mut w, ino, name, 0o020600, (*major << 8) | minor, &[])?
            }
        }
    }
    cpio_entry(&mut w, 0, "TRAILER!!!", 0, 0, &[])?;
    w.flush()?;
    drop(w);
    let status = gzip.wait()?;
    ensure!(status.success(), "gzip failed: {status}");
    Ok(())
}

fn add_dir(tree: &mut BTreeMap<String, Entry>, path: &str) {
    let mut acc = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        tree.entry(acc.clone()).or_insert(Entry::Dir);
    }
}

fn add_file(tree: &mut BTreeMap<String, Entry>, src: &Path, guest: &str) -> Result<()> {
    if let Some((parent, _)) = guest.rsplit_once('/') {
        add_dir(tree, parent);
    }
    let mode = fs::metadata(src)?.permissions().mode() & 0o7777;
    tree.insert(
        guest.to_string(),
        Entry::File {
            src: src.to_path_buf(),
            mode,
        },
    );
    Ok(())
}

fn add_host_path(tree: &mut BTreeMap<String, Entry>, host: &Path, guest: &str) -> Result<()> {
    let meta = fs::metadata(host)?;
    if meta.is_dir() {
        add_dir(tree, guest);
        for entry in fs::read_dir(host)? {
            let entry = entry?;
            let name = entry.file_name();
            let child = format!("{guest}/{}", name.to_string_lossy());
            add_host_path(tree, &entry.path(), &child)?;
        }
        return Ok(());
    }
    add_file(tree, host, guest)?;
    if is_dynamic_elf(host)? {
        for lib in shared_libs(host)? {
            let g = lib.to_string_lossy().trim_start_matches('/').to_string();
            if !tree.contains_key(&g) {
                add_file(tree, &lib, &g)?;
            }
        }
    }
    Ok(())
}

/// ELF executable or shared object (not a relocatable .ko) with a PT_INTERP or DT_NEEDED that
/// `ldd` can resolve; static binaries are filtered by `ldd` itself.
fn is_dynamic_elf(path: &Path) -> Result<bool> {
    let mut head = [0u8; 18];
    let mut f = fs::File::open(path)?;
    if f.metadata()?.size() < 18 {
        return Ok(false);
    }
    f.read_exact(&mut head)?;
    let e_type = u16::from_le_bytes([head[16], head[17]]);
    Ok(&head[..4] == b"\x7fELF" && (e_type == 2 || e_type == 3))
}

/// Shared libraries and the dynamic loader, as absolute host paths, from `ldd`.
fn shared_libs(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" / "statically linked": nothing to copy.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
        // "linux-vdso.so.1 (0x...)" (in the kernel, skipped), "libfoo.so => not found".
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", elf.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn cpio_entry(
    w: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    rdev: u32,
    data: &[u8],
) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, // uid
        0, // gid
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        rdev >> 8,
        rdev & 0xff,
        0, // check
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + namesize)?;
    w.write_all(data)?;
    pad4(w, data.len())?;
    Ok(())
}

fn pad4(w: &mut impl Write, len: usize) -> Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(())
}

fn run_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo xtask vm [--file HOST[:GUEST]]... -- <command>`
#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Copy a host file or directory into the guest (GUEST defaults to HOST). Shared libraries
    /// of dynamically linked executables come along.
    #[arg(long = "file", value_name = "HOST[:GUEST]")]
    files: Vec<String>,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// vCPUs (`-smp`).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Added to the guest kernel's command line.
    #[arg(long, default_value = "")]
    kernel_args: String,
    /// Which Debian release's kernel to boot.
    #[arg(long, value_enum, default_value = "debian12")]
    kernel: Distro,
    /// Where kernels are downloaded and extracted.
    #[arg(long, default_value_os_t = workspace_root().join("vm-cache"))]
    cache: PathBuf,
    /// Scratch directory for the initramfs, console.log and results.bin.
    #[arg(long, default_value_os_t = workspace_root().join("target/xtask-vm"))]
    work: PathBuf,
    /// Write the results (ttyS1) to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    results: Option<PathBuf>,
    /// Shell command line run as root in the guest; write results to /dev/ttyS1.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Prints the console to stderr and the results to stdout (or `--results`), so
/// `cargo xtask vm -- 'cmd >/dev/ttyS1' > out` captures just the results. Fails unless the guest
/// command exited 0.
pub fn run_cli(args: VmArgs) -> Result<()> {
    let kernel = ensure_kernel(&args.cache, args.kernel)?;
    eprintln!(
        "vm: kernel {} ({}; modules in {})",
        kernel.version,
        kernel.vmlinuz.display(),
        kernel.modules_dir.display()
    );
    let files = args
        .files
        .iter()
        .map(|f| match f.split_once(':') {
            Some((h, g)) => (PathBuf::from(h), g.to_string()),
            None => (PathBuf::from(f), f.clone()),
        })
        .collect();
    let guest = Guest {
        files,
        command: args.command.join(" "),
        timeout: Duration::from_secs(args.timeout),
        memory_mb: args.memory,
        cpus: args.cpus,
        kernel_args: args.kernel_args.clone(),
    };
    let out = run(&kernel, &guest, &args.work)?;
    eprintln!("===== console ({}) =====", kernel.version);
    eprint!("{}", out.console);
    if !out.console.ends_with('\n') {
        eprintln!();
    }
    eprintln!("===== results: {} bytes =====", out.results.len());
    match &args.results {
        Some(p) => {
            fs::write(p, &out.results).with_context(|| format!("writing {}", p.display()))?
        }
        None => {
            let mut so = std::io::stdout().lock();
            so.write_all(&out.results)?;
            so.flush()?;
        }
    }
    eprintln!(
        "===== exit code: {:?}, {:.1?} boot to power-off =====",
        out.exit_code, out.elapsed
    );
    match out.exit_code {
        Some(0) => Ok(()),
        Some(c) => bail!("guest command exited with {c}"),
        None => bail!("guest stopped without reporting an exit code (kernel panic or init died?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_modules_dependencies_from_its_modinfo() {
        let dir = std::env::temp_dir().join(format!("pw-modinfo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let with = dir.join("vxlan.ko");
        fs::write(
            &with,
            b"\x7fELF...\0license=GPL\0depends=udp_tunnel,ip6_udp_tunnel\0name=vxlan\0",
        )
        .unwrap();
        let without = dir.join("tun.ko");
        fs::write(&without, b"\x7fELF\0depends=\0name=tun\0").unwrap();
        assert_eq!(
            module_depends(&with).unwrap(),
            ["udp_tunnel", "ip6_udp_tunnel"]
        );
        assert!(module_depends(&without).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn orders_debian_kernel_releases() {
        assert_eq!(version_key("6.1.0-56-cloud-amd64"), [6, 1, 0, 56]);
        assert_eq!(version_key("6.12.117+deb13-cloud-amd64"), [6, 12, 117]);
        assert!(version_key("6.1.0-56-cloud-amd64") > version_key("6.1.0-9-cloud-amd64"));
        assert!(
            version_key("6.12.117+deb13-cloud-amd64") > version_key("6.12.48+deb13-cloud-amd64")
        );
    }
}
