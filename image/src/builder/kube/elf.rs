//! The shared libraries an ELF executable needs, found in a Debian root: what goes into a
//! minimal image beside the binary. `readelf` (binutils) reads the dynamic section; the
//! search follows Debian's multiarch directories, as ld.so does without a cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::exec;

/// Where ld.so looks on Debian amd64 (merged /usr: `lib` is `usr/lib`).
const SEARCH: [&str; 4] =
    ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib", "usr/lib64"];

/// (`NEEDED` names, program interpreter) of `file`; a static binary has neither.
fn dynamic(file: &Path) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let out = exec::output(Command::new("readelf").args(["-d", "-l", "-W"]).arg(file))
        .with_context(|| format!("reading the ELF headers of {}", file.display()))?;
    let mut needed = Vec::new();
    let mut interp = None;
    for line in out.lines() {
        if line.contains("(NEEDED)") {
            if let Some(name) = line.split('[').nth(1).and_then(|r| r.split(']').next()) {
                needed.push(name.to_string());
            }
        } else if let Some(rest) = line.split("program interpreter: ").nth(1) {
            interp = Some(rest.trim_end_matches(']').to_string());
        }
    }
    Ok((needed, interp))
}

/// The libraries `files` need, recursively: image path (relative, e.g.
/// `usr/lib/x86_64-linux-gnu/libc.so.6`) to the file in `root` that provides it (symlinks
/// followed when the layer copies it). The interpreter goes to `usr/lib64/...` (the image
/// links `lib64` there).
pub fn libraries(root: &Path, files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<PathBuf> = files.to_vec();
    while let Some(file) = todo.pop() {
        let (needed, interp) = dynamic(&file)?;
        if let Some(interp) = interp {
            let rel = interp.trim_start_matches('/').replacen("lib64/", "usr/lib64/", 1);
            let src = root.join(&rel);
            if !src.exists() {
                bail!("{}: its interpreter {interp} is not in {}", file.display(), root.display());
            }
            found.insert(rel, src);
        }
        for name in needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(dir) = SEARCH.iter().find(|d| root.join(d).join(&name).exists()) else {
                bail!("{}: needs {name}, which is not in {}", file.display(), root.display());
            };
            let src = root.join(dir).join(&name);
            found.insert(format!("usr/lib/x86_64-linux-gnu/{name}"), src.clone());
            todo.push(src);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_iptables_needs_libc_and_xtables() {
        let libs =
            libraries(Path::new("/"), &[PathBuf::from("/usr/sbin/xtables-nft-multi")]).unwrap();
        for want in [
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            "usr/lib/x86_64-linux-gnu/libxtables.so.12",
            "usr/lib/x86_64-linux-gnu/libnftnl.so.11",
            "usr/lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(libs.contains_key(want), "{want} not in {libs:?}");
        }
    }

    #[test]
    fn a_static_binary_needs_nothing_and_a_missing_library_is_named() {
        assert!(libraries(Path::new("/"), &[PathBuf::from("/bin/busybox")]).unwrap().is_empty());
        let t = tempfile::tempdir().unwrap();
        let e = libraries(t.path(), &[PathBuf::from("/usr/sbin/xtables-nft-multi")]).unwrap_err();
        assert!(format!("{e:#}").contains("is not in"), "{e:#}");
    }
}
