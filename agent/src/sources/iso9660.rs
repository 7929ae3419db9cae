//! A small read-only ISO 9660 reader: enough to find the `OVF ENV` CD-ROM by its volume label
//! and read `ovf-env.xml` from its root directory without mounting it (no privileges, no
//! isofs module, nothing to clean up).
//!
//! Only the primary volume descriptor's root directory is read. vSphere and `xorriso`/
//! `genisoimage` write the file there as `OVF-ENV.XML;1` or `OVF_ENV.XML;1` (8.3-ish names
//! upper-cased by ISO level 1/2); names are compared case-insensitively with the version
//! suffix removed.

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

/// Reads the file whose normalized name is one of `names` from the root directory;
/// `Ok(None)` when there is none. Files over `limit` bytes are refused.
pub fn read_root_file<R: Read + Seek>(
    r: &mut R,
    vol: &Volume,
    names: &[&str],
    limit: usize,
) -> Result<Option<Vec<u8>>, IsoError> {
    if vol.root_len > MAX_DIR {
        return Err(IsoError::Corrupt("root directory too large"));
    }
    let mut dir = vec![0u8; vol.root_len as usize];
    r.seek(SeekFrom::Start(u64::from(vol.root_lba) * SECTOR))?;
    r.read_exact(&mut dir)?;
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
        let name_len = rec[32] as usize;
        if 33 + name_len > len {
            return Err(IsoError::Corrupt("file name out of bounds"));
        }
        let flags = rec[25];
        let name = normalize_name(&rec[33..33 + name_len]);
        if flags & 0x02 == 0 && names.contains(&name.as_str()) {
            let lba = le32(&rec[2..6]);
            let size = le32(&rec[10..14]);
            if size as usize > limit {
                return Err(IsoError::TooLarge { size, limit });
            }
            let mut data = vec![0u8; size as usize];
            r.seek(SeekFrom::Start(u64::from(lba) * SECTOR))?;
            r.read_exact(&mut data)?;
            return Ok(Some(data));
        }
        off += len;
    }
    Ok(None)
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
}
