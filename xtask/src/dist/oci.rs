//! `portwatch-VERSION.oci.tar`: an OCI image layout (oci-layout, index.json, blobs by sha256)
//! in one tar, the format `skopeo copy oci-archive:...` and `podman load` read. `FROM scratch`:
//! one layer holding `/usr/bin/portwatch` and nothing else, written by [`super::tar`] so the
//! bytes depend only on the binary and `SOURCE_DATE_EPOCH`.
//!
//! The binary carries the DaemonSet's capabilities as file capabilities (the
//! `security.capability` xattr, as `setcap cap_bpf,...+ep` would set it): for a non-root user
//! the runtime adds capabilities only to the bounding set, and exec of a binary with file
//! capabilities is what makes them effective (hence `allowPrivilegeEscalation: true`). The
//! image runs as 65534:65534 by default, as the DaemonSet does.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Release, gzip, sha256,
    tar::{self, Entry},
};
use crate::cmd::target_dir;

/// What the DaemonSet grants, by capability number: CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19,
/// CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
pub const FILE_CAPS: [u32; 5] = [2, 19, 21, 38, 39];

/// Where the binary is in the image; the entrypoint.
pub const BINARY: &str = "usr/bin/portwatch";

pub fn file_name(release: &Release) -> String {
    format!("portwatch-{}.oci.tar", release.version)
}

/// The name the archive's index gives the image, and the DaemonSet's `image:`.
pub fn reference(release: &Release) -> String {
    format!("portwatch:{}", release.version)
}

/// `struct vfs_cap_data` revision 2, effective bit set: permitted = `caps`, inheritable none.
pub fn vfs_cap_data(caps: &[u32]) -> Vec<u8> {
    let (mut lo, mut hi) = (0u32, 0u32);
    for &c in caps {
        if c < 32 {
            lo |= 1 << c;
        } else {
            hi |= 1 << (c - 32);
        }
    }
    let mut v = Vec::with_capacity(20);
    for word in [0x0200_0001u32, lo, 0, hi, 0] {
        v.extend(word.to_le_bytes());
    }
    v
}

pub fn build(release: &Release, binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let work = target_dir().join("dist-work/oci");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let mut exe = Entry::file(BINARY, 0o755, fs::read(binary)?);
    exe.xattrs
        .push(("security.capability".into(), vfs_cap_data(&FILE_CAPS)));
    let layer_tar = tar::write(
        &[Entry::dir("usr"), Entry::dir("usr/bin"), exe],
        release.epoch,
    )?;
    let diff_id = blob_digest(&work, "layer.tar", &layer_tar)?;
    let layer = gzip(&layer_tar)?;
    let created = release.date("+%Y-%m-%dT%H:%M:%SZ")?;
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "65534:65534",
            "Entrypoint": [format!("/{BINARY}")],
            "Cmd": ["trace", "--json"],
            "Labels": labels(release, &created),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask dist"}],
    });
    let config = serde_json::to_vec(&config)?;
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let layer_digest = blob_digest(&work, "layer.tar.gz", &layer)?;
    let config_digest = blob_digest(&work, "config.json", &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
        "annotations": labels(release, &created),
    }))?;
    let manifest_digest = blob_digest(&work, "manifest.json", &manifest)?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": reference(release)},
        }],
    }))?;
    blobs.push((config_digest, config));
    blobs.push((layer_digest, layer));
    blobs.push((manifest_digest, manifest));
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = vec![
        Entry::file(
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        Entry::file("index.json", 0o644, index),
        Entry::dir("blobs"),
        Entry::dir("blobs/sha256"),
    ];
    for (digest, data) in blobs {
        let hex = digest.trim_start_matches("sha256:");
        entries.push(Entry::file(&format!("blobs/sha256/{hex}"), 0o644, data));
    }
    let archive = out_dir.join(file_name(release));
    fs::write(&archive, tar::write(&entries, release.epoch)?)?;
    Ok(archive)
}

/// The `org.opencontainers.image.*` annotations, as config labels and manifest annotations.
fn labels(release: &Release, created: &str) -> Value {
    json!({
        "org.opencontainers.image.title": "portwatch",
        "org.opencontainers.image.description":
            "Who holds that port, and why does the kernel refuse? Live bind()/listen() tracing with explanations (eBPF).",
        "org.opencontainers.image.version": release.version,
        "org.opencontainers.image.revision": release.commit,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
    })
}

/// Writes `data` to `work/name` and returns its `sha256:` digest.
fn blob_digest(work: &Path, name: &str, data: &[u8]) -> Result<String> {
    let path = work.join(name);
    fs::write(&path, data)?;
    sha256(&path)
}
