//! A deterministic ustar writer: every header is a function of (path, kind, mode, size) and
//! the one mtime given, uid/gid 0 and no user or group names, so the same tree gives the same
//! bytes on any machine. Only what image layers need: directories, regular files, symlinks.

use std::io::{self, Read, Write};

/// One tar entry's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory (the path is written with a trailing `/`).
    Dir,
    /// A regular file of `size` bytes; its content follows.
    File {
        /// Bytes of content.
        size: u64,
    },
    /// A symbolic link to the header's link target.
    Symlink,
}

/// A tar stream being written to `W`; [`Tar::finish`] writes the two zero blocks.
#[derive(Debug)]
pub struct Tar<W: Write> {
    out: W,
    mtime: u64,
}

const BLOCK: usize = 512;

impl<W: Write> Tar<W> {
    /// A tar whose every entry has mtime `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u64) -> Self {
        Self { out, mtime }
    }

    /// A directory entry.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let h =
            header(&format!("{}/", path.trim_end_matches('/')), Kind::Dir, mode, "", self.mtime)?;
        self.out.write_all(&h)
    }

    /// A symlink entry.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let h = header(path, Kind::Symlink, 0o777, target, self.mtime)?;
        self.out.write_all(&h)
    }

    /// A regular file with exactly `size` bytes read from `content`.
    pub fn file(&mut self, path: &str, mode: u32, size: u64, content: impl Read) -> io::Result<()> {
        self.out.write_all(&header(path, Kind::File { size }, mode, "", self.mtime)?)?;
        let copied = io::copy(&mut content.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: {copied} bytes read, {size} expected (file changed?)"),
            ));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `value` in octal, zero-padded, NUL-terminated, into `field`.
fn octal(field: &mut [u8], value: u64) -> io::Result<()> {
    let s = format!("{:0width$o}\0", value, width = field.len() - 1);
    if s.len() != field.len() {
        return Err(invalid(format!("{value} does not fit a {}-byte tar field", field.len())));
    }
    field.copy_from_slice(s.as_bytes());
    Ok(())
}

/// Splits `path` into ustar's (prefix, name): name ≤ 100 bytes, prefix ≤ 155, split at a `/`.
fn split_path(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    let body = path.trim_end_matches('/');
    let cut = body
        .char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100)
        .map(|(i, _)| i)
        .next()
        .ok_or_else(|| invalid(format!("{path}: too long for a ustar header")))?;
    Ok((&path[..cut], &path[cut + 1..]))
}

/// One 512-byte ustar header.
pub fn header(path: &str, kind: Kind, mode: u32, link: &str, mtime: u64) -> io::Result<[u8; 512]> {
    let mut h = [0u8; BLOCK];
    let (prefix, name) = split_path(path)?;
    if link.len() > 100 {
        return Err(invalid(format!("{path}: link target {link} longer than 100 bytes")));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode & 0o7777))?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    let (size, flag) = match kind {
        Kind::File { size } => (size, b'0'),
        Kind::Dir => (0, b'5'),
        Kind::Symlink => (0, b'2'),
    };
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0)?;
    octal(&mut h[337..345], 0)?;
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn gnu_tar_reads_what_we_write() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("x.tar");
        let long = format!("usr/lib/{}/libfoo.so", "d".repeat(90));
        let mut tar = Tar::new(std::fs::File::create(&path).unwrap(), 1_767_225_600);
        tar.dir("usr", 0o755).unwrap();
        tar.file("usr/hello", 0o644, 5, &b"hello"[..]).unwrap();
        tar.symlink("bin", "usr/bin").unwrap();
        tar.file(&long, 0o755, 3, &b"abc"[..]).unwrap();
        tar.finish().unwrap();
        let out = Command::new("tar").args(["-tvf"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list = String::from_utf8(out.stdout).unwrap();
        assert!(list.contains("drwxr-xr-x 0/0") && list.contains("usr/"), "{list}");
        assert!(
            list.lines().any(|l| l.starts_with("-rw-r--r-- 0/0 ")
                && l.ends_with(" 5 2026-01-01 00:00 usr/hello")),
            "{list}"
        );
        assert!(list.contains("bin -> usr/bin"), "{list}");
        assert!(list.contains(&long), "{list}");
    }

    #[test]
    fn a_short_read_is_an_error_and_a_long_name_is_refused() {
        let mut tar = Tar::new(Vec::new(), 0);
        let e = tar.file("f", 0o644, 10, &b"abc"[..]).unwrap_err();
        assert!(e.to_string().contains("3 bytes read, 10 expected"), "{e}");
        let e = header(&"x".repeat(300), Kind::Dir, 0o755, "", 0).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
