//! A small read-only ISO 9660 reader: enough to find the `OVF ENV` CD-ROM by its volume label
//! and read `ovf-env.xml` from its root directory without mounting it (no privileges, no
//! isofs module, nothing to clean up).
//!
//! The primary volume descriptor's directory tree is read, by path ([`read_path`]: the
//! config drive's `openstack/latest/meta_data.json`). vSphere and `xorriso`/`genisoimage`
//! write `ovf-env.xml` as `OVF-ENV.XML;1` or `OVF_ENV.XML;1` (8.3-ish names upper-cased by ISO
//! level 1/2); names are compared case-insensitively with the version suffix removed, and a
//! Rock Ridge name (`NM`, what `-r`/`-R` images carry) matches too.

use std::io::{Read, Seek, SeekFrom};

const SECTOR: u64 = 2048;
/// Directory sizes we are willing to scan (the root of an OVF ENV ISO has a few entries).
const MAX_DIR: u32 = 1024 * 1024;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IsoError {
    /// Reading the device failed.
    #[error("read failed")]
    Io(#[from] std::io::Error),
    /// No ISO 9660 primary volume descriptor at sector 16.
    #[error("not an ISO 9660 image")]
    NotIso,
    /// A directory record points outside reason.
    #[error("corrupt ISO 9660 directory: {0}")]
    Corrupt(&'static str),
    /// The entry is there but is not read.
    #[error("refused: {0}")]
    Refused(&'static str),
    /// The file is larger than the caller allows.
    #[error("file is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: u32,
        /// The limit.
        limit: usize,
    },
}

/// The primary volume descriptor fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume identifier, trailing spaces removed (`OVF ENV`).
    pub label: String,
    root_lba: u32,
    root_len: u32,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the primary volume descriptor.
pub fn read_volume<R: Read + Seek>(r: &mut R) -> Result<Volume, IsoError> {
    // Descriptors start at sector 16; the primary one is type 1. Scan a few.
    for i in 16..32u64 {
        let mut d = [0u8; 2048];
        r.seek(SeekFrom::Start(i * SECTOR))?;
        if r.read_exact(&mut d).is_err() {
            return Err(IsoError::NotIso);
        }
        if &d[1..6] != b"CD001" {
            return Err(IsoError::NotIso);
        }
        match d[0] {
            1 => {
                let label = String::from_utf8_lossy(&d[40..72]).trim_end().to_owned();
                let root = &d[156..190];
                return Ok(Volume {
                    label,
                    root_lba: le32(&root[2..6]),
                    root_len: le32(&root[10..14]),
                });
            }
            255 => break,
            _ => continue,
        }
    }
    Err(IsoError::NotIso)
}

/// Normalizes an ISO 9660 file identifier for comparison: lower case, `;N` and a trailing
/// `.` removed.
pub fn normalize_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let s = s.split(';').next().unwrap_or("").to_owned();
    s.strip_suffix('.').map(str::to_owned).unwrap_or(s)
}

/// One record of a directory: its names, kind and extent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The primary name, normalized ([`normalize_name`]).
    primary: String,
    /// The Rock Ridge name (`NM`), lower-cased, when there is one.
    rock_ridge: Option<String>,
    is_dir: bool,
    /// A Rock Ridge symbolic link (`SL`), or a file in several extents: never read.
    refused: bool,
    lba: u32,
    size: u32,
}

impl Entry {
    fn is_named(&self, names: &[&str]) -> bool {
        names.contains(&self.primary.as_str())
            || self.rock_ridge.as_deref().is_some_and(|n| names.contains(&n))
    }
}

/// The Rock Ridge name in a record's System Use area: the `NM` entries' text joined (`CE`
/// continuation areas are not followed: names that long are not ours).
fn rock_ridge_name(su: &[u8]) -> (Option<String>, bool) {
    let mut name: Option<Vec<u8>> = None;
    let mut symlink = false;
    let mut off = 0usize;
    while off + 4 <= su.len() {
        let len = su[off + 2] as usize;
        if len < 4 || off + len > su.len() {
            break;
        }
        match &su[off..off + 2] {
            b"NM" if len >= 5 && su[off + 4] & 0x06 == 0 => {
                name.get_or_insert_with(Vec::new).extend_from_slice(&su[off + 5..off + len]);
            }
            b"SL" => symlink = true,
            b"ST" => break,
            _ => {}
        }
        off += len;
    }
    (name.map(|n| String::from_utf8_lossy(&n).to_lowercase()), symlink)
}

/// Reads the records of the directory at `lba` (`len` bytes); `.` and `..` are left out.
fn read_dir<R: Read + Seek>(r: &mut R, lba: u32, len: u32) -> Result<Vec<Entry>, IsoError> {
    if len > MAX_DIR {
        return Err(IsoError::Corrupt("directory too large"));
    }
    let mut dir = vec![0u8; len as usize];
    r.seek(SeekFrom::Start(u64::from(lba) * SECTOR))?;
    r.read_exact(&mut dir)?;
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < dir.len() {
        let len = dir[off] as usize;
        if len == 0 {
            // Records do not cross sectors: skip to the next sector.
            off = (off / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        if len < 34 || off + len > dir.len() {
            return Err(IsoError::Corrupt("directory record out of bounds"));
        }
        let rec = &dir[off..off + len];
        off += len;
        let name_len = rec[32] as usize;
        if 33 + name_len > len {
            return Err(IsoError::Corrupt("file name out of bounds"));
        }
        let raw = &rec[33..33 + name_len];
        if raw == [0] || raw == [1] {
            continue;
        }
        // the System Use area follows the name, padded to an even offset
        let su_start = (33 + name_len + 1) & !1;
        let (rock_ridge, symlink) = rock_ridge_name(rec.get(su_start..).unwrap_or(&[]));
        let flags = rec[25];
        out.push(Entry {
            primary: normalize_name(raw),
            rock_ridge,
            is_dir: flags & 0x02 != 0,
            refused: symlink || flags & 0x80 != 0,
            lba: le32(&rec[2..6]),
            size: le32(&rec[10..14]),
        });
    }
    Ok(out)
}

fn read_extent<R: Read + Seek>(r: &mut R, e: &Entry, limit: usize) -> Result<Vec<u8>, IsoError> {
    if e.size as usize > limit {
        return Err(IsoError::TooLarge { size: e.size, limit });
    }
    let mut data = vec![0u8; e.size as usize];
    r.seek(SeekFrom::Start(u64::from(e.lba) * SECTOR))?;
    r.read_exact(&mut data)?;
    Ok(data)
}

/// Reads the file whose name (the normalized primary name or the Rock Ridge name) is one of
/// `names` from the root directory; `Ok(None)` when there is none. Files over `limit` bytes
/// are refused.
pub fn read_root_file<R: Read + Seek>(
    r: &mut R,
    vol: &Volume,
    names: &[&str],
    limit: usize,
) -> Result<Option<Vec<u8>>, IsoError> {
    read_path(r, vol, &[names], limit)
}

/// Reads the file at `path` (each component: the names it may have, lower case, as in
/// [`read_root_file`]) from the root down; `Ok(None)` when a component is missing. Every
/// component but the last must be a directory and the last a file; a Rock Ridge symbolic
/// link or a multi-extent file is refused ([`IsoError::Refused`]).
pub fn read_path<R: Read + Seek>(
    r: &mut R,
    vol: &Volume,
    path: &[&[&str]],
    limit: usize,
) -> Result<Option<Vec<u8>>, IsoError> {
    let (mut lba, mut len) = (vol.root_lba, vol.root_len);
    for (i, names) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let entries = read_dir(r, lba, len)?;
        let Some(e) = entries.iter().find(|e| e.is_named(names) && e.is_dir != last) else {
            if entries.iter().any(|e| e.is_named(names)) {
                return Err(IsoError::Refused(if last {
                    "a directory where a file is expected"
                } else {
                    "a file where a directory is expected"
                }));
            }
            return Ok(None);
        };
        if e.refused {
            return Err(IsoError::Refused("a symbolic link or a multi-extent file"));
        }
        if last {
            return read_extent(r, e, limit).map(Some);
        }
        (lba, len) = (e.lba, e.size);
    }
    Ok(None)
}

/// Finds a device by volume label: `/dev/disk/by-label/<label>` when udev made it, else the
/// first `/dev/sr*` whose ISO 9660 label is one of `labels` (two sectors read per drive).
pub fn find_labelled(dev_dir: &std::path::Path, labels: &[&str]) -> Option<std::path::PathBuf> {
    if let Some(p) =
        labels.iter().map(|l| dev_dir.join("disk/by-label").join(l)).find(|p| p.exists())
    {
        return Some(p);
    }
    let mut srs: Vec<std::path::PathBuf> = std::fs::read_dir(dev_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("sr")))
        .collect();
    srs.sort();
    srs.into_iter().find(|p| {
        std::fs::File::open(p)
            .ok()
            .and_then(|mut f| read_volume(&mut f).ok())
            .is_some_and(|v| labels.contains(&v.label.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a minimal ISO: PVD at 16, terminator at 17, root dir at 18, file at 19.
    fn tiny_iso(label: &str, name: &str, body: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 20 * 2048 + 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        let mut l = [b' '; 32];
        l[..label.len()].copy_from_slice(label.as_bytes());
        pvd[40..72].copy_from_slice(&l);
        pvd[156] = 34;
        pvd[158..162].copy_from_slice(&18u32.to_le_bytes());
        pvd[166..170].copy_from_slice(&2048u32.to_le_bytes());
        pvd[181] = 2;
        let term = &mut img[17 * 2048..18 * 2048];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        let dir = &mut img[18 * 2048..19 * 2048];
        let mut off = 0;
        for (n, flags, lba, size) in [
            (&b"\0"[..], 2u8, 18u32, 2048u32),
            (&b"\x01"[..], 2, 18, 2048),
            (name.as_bytes(), 0, 19, body.len() as u32),
        ] {
            let len = 33 + n.len() + (1 - n.len() % 2);
            dir[off] = len as u8;
            dir[off + 2..off + 6].copy_from_slice(&lba.to_le_bytes());
            dir[off + 10..off + 14].copy_from_slice(&size.to_le_bytes());
            dir[off + 25] = flags;
            dir[off + 32] = n.len() as u8;
            dir[off + 33..off + 33 + n.len()].copy_from_slice(n);
            off += len;
        }
        img[19 * 2048..19 * 2048 + body.len()].copy_from_slice(body);
        img
    }

    #[test]
    fn finds_label_and_file() {
        let img = tiny_iso("OVF ENV", "OVF_ENV.XML;1", b"<Environment/>");
        let mut c = Cursor::new(img);
        let v = read_volume(&mut c).unwrap();
        assert_eq!(v.label, "OVF ENV");
        let f = read_root_file(&mut c, &v, &["ovf-env.xml", "ovf_env.xml"], 1 << 20).unwrap();
        assert_eq!(f.as_deref(), Some(&b"<Environment/>"[..]));
        let none = read_root_file(&mut c, &v, &["other.xml"], 1 << 20).unwrap();
        assert!(none.is_none());
        assert!(matches!(
            read_root_file(&mut c, &v, &["ovf_env.xml"], 4),
            Err(IsoError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_non_iso_and_corrupt_records() {
        assert!(matches!(read_volume(&mut Cursor::new(vec![0u8; 40000])), Err(IsoError::NotIso)));
        let mut img = tiny_iso("OVF ENV", "OVF_ENV.XML;1", b"x");
        img[18 * 2048 + 68] = 200; // third record claims 200 bytes, name length overflows
        img[18 * 2048 + 68 + 32] = 250;
        let mut c = Cursor::new(img);
        let v = read_volume(&mut c).unwrap();
        assert!(read_root_file(&mut c, &v, &["ovf_env.xml"], 100).is_err());
    }

    /// Appends one directory record (`su`: its System Use area) at `dir[*off..]`.
    fn record(
        dir: &mut [u8],
        off: &mut usize,
        name: &[u8],
        flags: u8,
        lba: u32,
        size: u32,
        su: &[u8],
    ) {
        let base = 33 + name.len() + (1 - name.len() % 2);
        let len = base + su.len() + su.len() % 2;
        dir[*off] = len as u8;
        dir[*off + 2..*off + 6].copy_from_slice(&lba.to_le_bytes());
        dir[*off + 10..*off + 14].copy_from_slice(&size.to_le_bytes());
        dir[*off + 25] = flags;
        dir[*off + 32] = name.len() as u8;
        dir[*off + 33..*off + 33 + name.len()].copy_from_slice(name);
        dir[*off + base..*off + base + su.len()].copy_from_slice(su);
        *off += len;
    }

    fn nm(name: &str) -> Vec<u8> {
        let mut v = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// root (18) → `OPENSTAC` (RR `openstack`, 19) → `META_DAT.JSO;1` (RR `meta_data.json`, 20).
    fn tree_iso(body: &[u8], leaf_su: &[u8], leaf_flags: u8) -> Vec<u8> {
        let mut img = tiny_iso("config-2", "X;1", b"");
        img.resize(22 * 2048, 0);
        let mut off = 0;
        let root = &mut img[18 * 2048..19 * 2048];
        root.fill(0);
        record(root, &mut off, b"\0", 2, 18, 2048, &[]);
        record(root, &mut off, b"\x01", 2, 18, 2048, &[]);
        record(root, &mut off, b"OPENSTAC", 2, 19, 2048, &nm("openstack"));
        let mut off = 0;
        let sub = &mut img[19 * 2048..20 * 2048];
        record(sub, &mut off, b"\0", 2, 19, 2048, &[]);
        record(sub, &mut off, b"\x01", 2, 18, 2048, &[]);
        record(sub, &mut off, b"META_DAT.JSO;1", leaf_flags, 20, body.len() as u32, leaf_su);
        img[20 * 2048..20 * 2048 + body.len()].copy_from_slice(body);
        img
    }

    #[test]
    fn reads_paths_by_rock_ridge_or_primary_names() {
        let img = tree_iso(b"{}", &nm("meta_data.json"), 0);
        let mut c = Cursor::new(img);
        let v = read_volume(&mut c).unwrap();
        let get = |c: &mut Cursor<Vec<u8>>, path: &[&[&str]]| read_path(c, &v, path, 1 << 20);
        let rr: &[&[&str]] = &[&["openstack"], &["meta_data.json"]];
        assert_eq!(get(&mut c, rr).unwrap().as_deref(), Some(&b"{}"[..]));
        let primary: &[&[&str]] = &[&["openstac"], &["meta_dat.jso"]];
        assert_eq!(get(&mut c, primary).unwrap().as_deref(), Some(&b"{}"[..]));
        assert!(get(&mut c, &[&["openstack"], &["user_data"]]).unwrap().is_none());
        assert!(get(&mut c, &[&["nope"], &["meta_data.json"]]).unwrap().is_none());
        // a directory is not read as a file, nor a file walked as a directory
        let e = get(&mut c, &[&["openstack"]]).unwrap_err().to_string();
        assert_eq!(e, "refused: a directory where a file is expected");
        let e = get(&mut c, &[&["openstack"], &["meta_data.json"], &["x"]]).unwrap_err();
        assert_eq!(e.to_string(), "refused: a file where a directory is expected");
        assert!(matches!(get(&mut c, rr), Ok(Some(_))));
        assert!(matches!(read_path(&mut c, &v, rr, 1), Err(IsoError::TooLarge { .. })));
    }

    #[test]
    fn refuses_symlinks_multi_extent_files_and_bad_records() {
        let mut sl = vec![b'S', b'L', 5, 1, 0];
        sl.extend(nm("meta_data.json"));
        let path: &[&[&str]] = &[&["openstack"], &["meta_data.json"]];
        for (su, flags) in [(sl, 0u8), (nm("meta_data.json"), 0x80)] {
            let mut c = Cursor::new(tree_iso(b"{}", &su, flags));
            let v = read_volume(&mut c).unwrap();
            let e = read_path(&mut c, &v, path, 1 << 20).unwrap_err().to_string();
            assert_eq!(e, "refused: a symbolic link or a multi-extent file");
        }
        // a directory that claims 2 GiB, a file past the end of the image
        let mut img = tree_iso(b"{}", &nm("meta_data.json"), 0);
        let rec = 18 * 2048 + 34 + 34; // the third record of the root
        img[rec + 10..rec + 14].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut c = Cursor::new(img);
        let v = read_volume(&mut c).unwrap();
        let e = read_path(&mut c, &v, path, 1 << 20).unwrap_err().to_string();
        assert_eq!(e, "corrupt ISO 9660 directory: directory too large");
        let mut img = tree_iso(b"{}", &nm("meta_data.json"), 0);
        let leaf = 19 * 2048 + 34 + 34;
        img[leaf + 2..leaf + 6].copy_from_slice(&100_000u32.to_le_bytes());
        let mut c = Cursor::new(img);
        let v = read_volume(&mut c).unwrap();
        assert!(matches!(read_path(&mut c, &v, path, 1 << 20), Err(IsoError::Io(_))));
        // a truncated Rock Ridge entry is ignored, not read past
        assert_eq!(rock_ridge_name(&[b'N', b'M', 200, 1, 0, b'a']), (None, false));
        assert_eq!(rock_ridge_name(&[b'N', b'M', 2, 1]), (None, false));
        assert_eq!(rock_ridge_name(&nm("Ab")), (Some("ab".into()), false));
    }
}
