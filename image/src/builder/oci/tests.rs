use std::process::Command;

use super::*;

fn image(dir: &Path) -> Image {
    let bin = dir.join("hello");
    fs::write(&bin, "#!/bin/sh\necho hi\n").unwrap();
    let mut layer = Layer::default();
    layer
        .add("usr/bin/hello", Node::File(bin, 0o755))
        .add("bin", Node::Symlink("usr/bin".into()))
        .add("tmp", Node::Dir(0o1777))
        .add("etc/nsswitch.conf", Node::Bytes(b"hosts: files dns\n".to_vec(), 0o644));
    Image {
        repository: "example.test/hello".into(),
        tag: "v1".into(),
        entrypoint: vec!["/usr/bin/hello".into()],
        cmd: Vec::new(),
        env: vec!["PATH=/usr/bin".into()],
        layer,
    }
}

fn extract(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(member).output().unwrap();
    assert!(out.status.success(), "{member}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn the_same_files_and_epoch_give_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let a = write_archive(&img, 1_767_225_600, &t.path().join("a.tar")).unwrap();
    let b = write_archive(&img, 1_767_225_600, &t.path().join("b.tar")).unwrap();
    assert_eq!((&a.digest, &a.config, a.bytes), (&b.digest, &b.config, b.bytes));
    assert_eq!(
        fs::read(t.path().join("a.tar")).unwrap(),
        fs::read(t.path().join("b.tar")).unwrap()
    );
    let c = write_archive(&img, 1_767_225_601, &t.path().join("c.tar")).unwrap();
    assert_ne!(a.digest, c.digest, "the epoch is in the layer and the config");
}

#[test]
fn the_archive_is_an_oci_layout_whose_digests_check_out() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("img.tar");
    let w = write_archive(&image(t.path()), 0, &path).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&extract(&path, "index.json")).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], w.digest);
    assert_eq!(m["annotations"]["io.containerd.image.name"], "example.test/hello:v1");
    let mhex = w.digest.strip_prefix("sha256:").unwrap();
    let manifest_bytes = extract(&path, &format!("blobs/sha256/{mhex}"));
    assert_eq!(hex::encode(Sha256::digest(&manifest_bytes)), mhex);
    assert_eq!(m["size"], manifest_bytes.len() as u64);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["config"]["digest"], w.config);
    let lhex = manifest["layers"][0]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    let layer = extract(&path, &format!("blobs/sha256/{lhex}"));
    assert_eq!(hex::encode(Sha256::digest(&layer)), lhex);
    let chex = w.config.strip_prefix("sha256:").unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&extract(&path, &format!("blobs/sha256/{chex}"))).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{lhex}"));
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/hello");
    let docker: serde_json::Value =
        serde_json::from_slice(&extract(&path, "manifest.json")).unwrap();
    assert_eq!(docker[0]["RepoTags"][0], "example.test/hello:v1");

    // The layer: sorted, parents added, root-owned, epoch times, modes kept.
    let lpath = t.path().join("layer.tar");
    fs::write(&lpath, &layer).unwrap();
    let out = Command::new("tar").args(["--utc", "-tvf"]).arg(&lpath).output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = list.lines().map(|l| l.split_whitespace().nth(5).unwrap()).collect();
    assert_eq!(
        names,
        ["bin", "etc/", "etc/nsswitch.conf", "tmp/", "usr/", "usr/bin/", "usr/bin/hello"]
    );
    assert!(list.lines().all(|l| l.contains(" 0/0 ") && l.contains("1970-01-01 00:00")), "{list}");
    assert!(list.contains("drwxrwxrwt") && list.contains("-rwxr-xr-x"), "{list}");
}

#[test]
fn bad_paths_and_missing_sources_name_the_image_and_the_file() {
    let t = tempfile::tempdir().unwrap();
    let mut img = image(t.path());
    img.layer.add("usr/../etc/x", Node::Dir(0o755));
    let e = write_archive(&img, 0, &t.path().join("x.tar")).unwrap_err().to_string();
    assert!(e.contains("example.test/hello:v1") && e.contains("usr/../etc/x"), "{e}");
    let mut img = image(t.path());
    img.layer.add("usr/bin/gone", Node::File(t.path().join("no-such-file"), 0o755));
    let e = write_archive(&img, 0, &t.path().join("x.tar")).unwrap_err();
    assert!(e.to_string().contains("reading") && e.to_string().contains("no-such-file"), "{e}");
    assert!(!t.path().join("x.tar").exists(), "nothing half-written is left");
}

#[test]
fn rfc3339_matches_date() {
    for epoch in [0u64, 951_782_400, 1_767_225_600, 4_102_444_799] {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        assert_eq!(rfc3339(epoch), String::from_utf8(out.stdout).unwrap().trim(), "{epoch}");
    }
}
