//! The tree against `veritysetup` (Debian `cryptsetup-bin`): the same bytes as `veritysetup
//! format` with our salt and UUID, accepted by `veritysetup verify`, and every tampering
//! named by [`verify`] and refused by veritysetup too.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::*;

fn data(blocks: u64) -> Vec<u8> {
    // Distinct blocks (a repeated block would hide an off-by-one in the level layout).
    let mut out = Vec::with_capacity((blocks * BLOCK) as usize);
    for b in 0..blocks {
        let mut block = vec![0u8; BLOCK as usize];
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = ((b * 31 + i as u64 * 7) % 251) as u8;
        }
        out.extend_from_slice(&block);
    }
    out
}

fn params(blocks: u64) -> Params {
    Params {
        uuid: Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
        salt: (0..SALT_LEN as u8).map(|i| i.wrapping_mul(37)).collect(),
        data_blocks: blocks,
    }
}

fn veritysetup(args: &[&str]) -> std::process::Output {
    Command::new("veritysetup").args(args).output().expect(
        "veritysetup is needed for this test (Debian package cryptsetup-bin, scripts/setup)",
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn levels_follow_the_kernels_layout() {
    assert_eq!(params(1).levels(), Vec::<u64>::new());
    assert_eq!(params(2).levels(), [1]);
    assert_eq!(params(128).levels(), [1]);
    assert_eq!(params(129).levels(), [2, 1]);
    assert_eq!(params(128 * 128 + 1).levels(), [129, 2, 1]);
    assert_eq!(params(129).hash_device_bytes(), 4 * BLOCK);
}

#[test]
fn tree_is_what_veritysetup_format_writes_and_verify_accepts() {
    for blocks in [1, 7, 128, 129, 300] {
        let t = tempfile::tempdir().unwrap();
        let (d, ours, theirs) =
            (t.path().join("data"), t.path().join("ours"), t.path().join("theirs"));
        let bytes = data(blocks);
        fs::write(&d, &bytes).unwrap();
        let p = params(blocks);
        let tree = format(&p, &mut bytes.as_slice()).unwrap();
        fs::write(&ours, &tree.hash_device).unwrap();
        let o = veritysetup(&[
            "format",
            s(&d),
            s(&theirs),
            "--hash",
            "sha256",
            "--data-block-size",
            "4096",
            "--hash-block-size",
            "4096",
            "--salt",
            &hex::encode(&p.salt),
            "--uuid",
            &p.uuid.to_string(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
        let root = out.lines().find_map(|l| l.strip_prefix("Root hash:")).map(str::trim);
        assert_eq!(root, Some(tree.root_hex().as_str()), "{blocks}: {out}");
        // veritysetup may end the file at the superblock when there is no hash block.
        let mut t = fs::read(&theirs).unwrap();
        assert!(t.len() <= tree.hash_device.len(), "{blocks}: theirs is longer");
        t.resize(tree.hash_device.len(), 0);
        assert_eq!(t, tree.hash_device, "{blocks} blocks: hash devices differ");
        let o = veritysetup(&["verify", s(&d), s(&ours), &tree.root_hex()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(verify(&tree.hash_device, &mut bytes.as_slice(), &tree.root_hex()).unwrap(), p);
    }
}

#[test]
fn a_flipped_byte_anywhere_is_named_and_refused_by_veritysetup_too() {
    let blocks = 300;
    let t = tempfile::tempdir().unwrap();
    let (d, h) = (t.path().join("data"), t.path().join("hash"));
    let bytes = data(blocks);
    let tree = format(&params(blocks), &mut bytes.as_slice()).unwrap();
    let root = tree.root_hex();
    fs::write(&h, &tree.hash_device).unwrap();

    // A data block.
    let mut bad = bytes.clone();
    bad[(211 * BLOCK + 5) as usize] ^= 1;
    let e = verify(&tree.hash_device, &mut bad.as_slice(), &root).unwrap_err();
    assert!(
        matches!(e, VerityError::DataBlock { block: 211, offset } if offset == 211 * BLOCK),
        "{e}"
    );
    assert!(e.to_string().contains("data block 211"), "{e}");
    fs::write(&d, &bad).unwrap();
    let o = veritysetup(&["verify", s(&d), s(&h), &root]);
    assert!(!o.status.success(), "veritysetup accepted a changed data block");

    // A level-0 hash block (block 0 is the superblock, 1 the top, 2..=4 level 0).
    fs::write(&d, &bytes).unwrap();
    let mut hash = tree.hash_device.clone();
    hash[(3 * BLOCK + 100) as usize] ^= 0x80;
    let e = verify(&hash, &mut bytes.as_slice(), &root).unwrap_err();
    assert!(matches!(e, VerityError::HashBlock { block: 3, level: 0 }), "{e}");
    fs::write(&h, &hash).unwrap();
    assert!(!veritysetup(&["verify", s(&d), s(&h), &root]).status.success());

    // The top block, or a wrong root hash.
    let mut hash = tree.hash_device.clone();
    hash[BLOCK as usize] ^= 1;
    let e = verify(&hash, &mut bytes.as_slice(), &root).unwrap_err();
    assert!(matches!(e, VerityError::RootHash { block: 1, .. }), "{e}");
    let other = format!("{}0", &root[..63]);
    let e = verify(&tree.hash_device, &mut bytes.as_slice(), &other).unwrap_err();
    assert!(e.to_string().contains("root hash mismatch"), "{e}");

    // Hostile superblocks and root hashes are errors, never panics.
    for (at, v) in [(0usize, b'X'), (8, 2), (32, b'm'), (65, 0x20), (81, 0x10)] {
        let mut hash = tree.hash_device.clone();
        hash[at] = v;
        let e = verify(&hash, &mut bytes.as_slice(), &root).unwrap_err();
        assert!(matches!(e, VerityError::Superblock(_)), "byte {at}: {e}");
    }
    let mut huge = tree.hash_device.clone();
    huge[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(verify(&huge, &mut bytes.as_slice(), &root), Err(VerityError::Superblock(_))));
    for r in ["", "zz", &root[..62]] {
        assert!(verify(&tree.hash_device, &mut bytes.as_slice(), r).is_err());
    }
    assert!(verify(&tree.hash_device[..600], &mut bytes.as_slice(), &root).is_err());
    let short = &bytes[..(10 * BLOCK) as usize];
    assert!(matches!(
        verify(&tree.hash_device, &mut &short[..], &root),
        Err(VerityError::Io { .. })
    ));
}

#[test]
fn table_names_both_devices_the_size_and_the_salt() {
    let p = params(300);
    assert_eq!(
        p.table("/dev/vda3", "/dev/vda4", "ab"),
        format!(
            "0 2400 verity 1 /dev/vda3 /dev/vda4 4096 4096 300 1 sha256 ab {}",
            hex::encode(&p.salt)
        )
    );
}
