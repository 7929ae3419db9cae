//! What the image's dpkg database says: installed packages (`var/lib/dpkg/status`), the
//! `.deb` digests the rootfs stage recorded, and licences from DEP-5 copyright files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::SbomError;

/// One installed binary package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    /// `Package:`.
    pub name: String,
    /// `Version:` (with its epoch, if any).
    pub version: String,
    /// `Architecture:` (`amd64`, `all`).
    pub arch: String,
    /// `Source:`: the source package and its version when it differs (a binNMU, `+b1`).
    pub source: Option<Source>,
}

/// A `Source:` field: `NAME` or `NAME (VERSION)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    /// Source package name.
    pub name: String,
    /// Its version, when the field gives one.
    pub version: Option<String>,
}

/// The installed packages (`Status: install ok installed`) of `status`, the text of
/// `var/lib/dpkg/status` at `path` (named in errors), sorted by name and architecture.
pub fn parse_status(text: &str, path: &Path) -> Result<Vec<DebPackage>, SbomError> {
    let mut out = Vec::new();
    let mut line_no = 0usize;
    for para in text.split("\n\n") {
        let start = line_no + 1;
        line_no += para.lines().count() + 1;
        if para.trim().is_empty() {
            continue;
        }
        let fields = fields(para);
        let bad =
            |reason: String| SbomError::Status { path: path.to_path_buf(), line: start, reason };
        let get = |key: &str| fields.get(key).map(|v| v.trim().to_string());
        let Some(name) = get("Package").filter(|n| !n.is_empty()) else {
            return Err(bad("a paragraph without Package".into()));
        };
        if get("Status").as_deref() != Some("install ok installed") {
            continue;
        }
        let version = get("Version").filter(|v| !v.is_empty());
        let arch = get("Architecture").filter(|v| !v.is_empty());
        let (Some(version), Some(arch)) = (version, arch) else {
            return Err(bad(format!("{name}: no Version or Architecture")));
        };
        if !valid_token(&name) || !valid_token(&version) || !valid_token(&arch) {
            return Err(bad(format!("{name}: Package, Version or Architecture is not a token")));
        }
        let source = match get("Source") {
            Some(s) => Some(parse_source(&s).ok_or_else(|| bad(format!("{name}: Source {s:?}")))?),
            None => None,
        };
        out.push(DebPackage { name, version, arch, source });
    }
    out.sort();
    Ok(out)
}

/// Whether `s` is one dpkg token: printable ASCII, no spaces, no separators.
fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b",()[]|".contains(&b))
}

fn parse_source(s: &str) -> Option<Source> {
    let (name, version) = match s.split_once('(') {
        Some((n, rest)) => (n.trim(), Some(rest.strip_suffix(')')?.trim().to_string())),
        None => (s.trim(), None),
    };
    let ok = valid_token(name) && version.as_deref().is_none_or(valid_token);
    ok.then(|| Source { name: name.to_string(), version })
}

/// The fields of one deb822 paragraph (continuation lines joined with `\n`).
fn fields(para: &str) -> BTreeMap<&str, String> {
    let mut out: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for line in para.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.and_then(|k| out.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.insert(k, v.trim().to_string());
            last = Some(k);
        }
    }
    out
}

/// `debs.sha256` (what the rootfs stage's hook wrote: `sha256sum *.deb` in apt's archive
/// directory): (name, version, architecture) -> SHA-256. apt names each file
/// `NAME_VERSION_ARCH.deb` with the epoch's `:` as `%3a`.
pub fn parse_deb_manifest(
    text: &str,
    path: &Path,
) -> Result<BTreeMap<(String, String, String), String>, SbomError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: &str| SbomError::Manifest {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let Some((sha, file)) = line.split_once("  ") else {
            return Err(bad("not `SHA256  FILE`"));
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not a SHA-256"));
        }
        let parts: Vec<&str> = file.strip_suffix(".deb").unwrap_or("").split('_').collect();
        let [name, version, arch] = parts[..] else {
            return Err(bad("not NAME_VERSION_ARCH.deb"));
        };
        let version = version.replace("%3a", ":").replace("%3A", ":");
        out.insert((name.to_string(), version, arch.to_string()), sha.to_ascii_lowercase());
    }
    Ok(out)
}

/// Each package's declared licence (an SPDX expression) from its DEP-5
/// `usr/share/doc/PKG/copyright` under `root`; packages without a machine-readable one are left
/// out. Read before the customize stage prunes (a profile may remove `/usr/share/doc`).
pub fn read_licences(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(root.join("usr/share/doc")) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        // A symlink to another package's directory is that package's file, not this one's.
        let path = e.path().join("copyright");
        let Ok(text) = fs::read_to_string(&path) else { continue };
        if let Some(expr) = dep5_licence(&text) {
            out.insert(name, expr);
        }
    }
    out
}

/// The SPDX expression of a DEP-5 copyright file: every `License:` short name, mapped to SPDX
/// identifiers (or `LicenseRef-` ones), joined with `AND`. `None` for a file that is not
/// machine-readable or names no licence.
pub fn dep5_licence(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    if !first.starts_with("Format:") || !first.contains("copyright-format") {
        return None;
    }
    let mut terms = BTreeSet::new();
    for para in text.split("\n\n") {
        if let Some(v) = fields(para).get("License") {
            if let Some(expr) = licence_expression(v.lines().next().unwrap_or("")) {
                terms.insert(expr);
            }
        }
    }
    if terms.is_empty() {
        return None;
    }
    let many = terms.len() > 1;
    let parts: Vec<String> = terms
        .into_iter()
        .map(|t| if many && t.contains(" OR ") { format!("({t})") } else { t })
        .collect();
    Some(parts.join(" AND "))
}

/// One `License:` short line as an SPDX expression: short names joined by `or`/`and`; a
/// `with ... exception` makes the whole line one `LicenseRef-`. Prose (two names in a row, a
/// comma) is not a short name: `None`.
fn licence_expression(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.contains(',') {
        return None;
    }
    if line.to_ascii_lowercase().contains(" with ") {
        return Some(licence_ref(line));
    }
    let mut out = Vec::new();
    let mut expect_name = true;
    for tok in line.split_whitespace() {
        match (expect_name, tok.to_ascii_lowercase().as_str()) {
            (false, "or") => out.push("OR".to_string()),
            (false, "and") => out.push("AND".to_string()),
            (true, _) => out.push(spdx_id(tok)),
            (false, _) => return None,
        }
        expect_name = !expect_name;
    }
    if expect_name {
        return None;
    }
    // Mixed `and`/`or` is read left to right by nobody consistently: keep it as written, with
    // SPDX's precedence (AND binds tighter), which matches DEP-5's own rule.
    Some(out.join(" "))
}

/// A Debian short licence name as an SPDX identifier.
fn spdx_id(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let known: &[(&str, &str)] = &[
        ("apache-2.0", "Apache-2.0"),
        ("artistic", "Artistic-1.0"),
        ("artistic-1.0", "Artistic-1.0"),
        ("artistic-2.0", "Artistic-2.0"),
        ("bsd-2-clause", "BSD-2-Clause"),
        ("bsd-3-clause", "BSD-3-Clause"),
        ("bsd-4-clause", "BSD-4-Clause"),
        ("bsl-1.0", "BSL-1.0"),
        ("cc0-1.0", "CC0-1.0"),
        ("curl", "curl"),
        ("expat", "MIT"),
        ("mit", "MIT"),
        ("isc", "ISC"),
        ("zlib", "Zlib"),
        ("mpl-1.1", "MPL-1.1"),
        ("mpl-2.0", "MPL-2.0"),
        ("x11", "X11"),
        ("ftl", "FTL"),
        ("openldap-2.8", "OLDAP-2.8"),
        ("psf-2", "PSF-2.0"),
        ("python-2.0", "Python-2.0"),
        ("0bsd", "0BSD"),
        ("unicode-dfs-2016", "Unicode-DFS-2016"),
        ("fsfap", "FSFAP"),
        ("fsfullr", "FSFULLR"),
        ("fsful", "FSFUL"),
        ("sgi-b-2.0", "SGI-B-2.0"),
        ("wtfpl", "WTFPL"),
    ];
    if let Some((_, id)) = known.iter().find(|(k, _)| *k == lower) {
        return id.to_string();
    }
    gnu_id(name).unwrap_or_else(|| licence_ref(name))
}

/// `GPL-2+`, `LGPLv2.1+`, `GPL-3.0`, `GFDL-1.3+`: the GNU family with a version.
fn gnu_id(name: &str) -> Option<String> {
    let (body, later) = match name.strip_suffix('+') {
        Some(b) => (b, true),
        None => (name, false),
    };
    let upper = body.to_ascii_uppercase();
    let family = ["LGPL", "AGPL", "GFDL", "GPL"].into_iter().find(|f| upper.starts_with(f))?;
    let version = upper[family.len()..].trim_start_matches(['-', 'V']);
    let version = version.strip_suffix(".0").unwrap_or(version);
    let version = match version {
        "1" | "2" | "3" => format!("{version}.0"),
        "2.1" | "1.1" | "1.2" | "1.3" => version.to_string(),
        _ => return None,
    };
    Some(format!("{family}-{version}-{}", if later { "or-later" } else { "only" }))
}

/// `LicenseRef-NAME`, with everything SPDX does not allow in an id (`[A-Za-z0-9.-]`) made `-`
/// (`+` spelled `-plus`, so `GPL+` and `GPL` stay apart).
pub fn licence_ref(name: &str) -> String {
    let mut id = String::from("LicenseRef-");
    for c in name.trim().chars() {
        match c {
            '+' => id.push_str("-plus"),
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => id.push(c),
            _ => id.push('-'),
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: libc6\nStatus: install ok installed\nPriority: optional\n\
Architecture: amd64\nMulti-Arch: same\nSource: glibc\nVersion: 2.36-9+deb12u4\n\
Description: GNU C Library\n multi-line\n .\n text\n\n\
Package: bash\nEssential: yes\nStatus: install ok installed\nArchitecture: amd64\n\
Source: bash (5.2.15-2)\nVersion: 5.2.15-2+b8\n\n\
Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
Package: bsdutils\nStatus: install ok installed\nArchitecture: amd64\n\
Source: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\n";

    #[test]
    fn status_gives_installed_packages_with_their_source() {
        let p = parse_status(STATUS, Path::new("status")).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "bsdutils", "libc6"]);
        assert_eq!(
            p[0].source,
            Some(Source { name: "bash".into(), version: Some("5.2.15-2".into()) })
        );
        assert_eq!(p[1].version, "1:2.38.1-5+deb12u3");
        assert_eq!(p[2].source, Some(Source { name: "glibc".into(), version: None }));
        assert_eq!(p[2].arch, "amd64");
    }

    #[test]
    fn malformed_status_names_the_file_the_line_and_the_package() {
        let err = |text: &str| parse_status(text, Path::new("/r/var/lib/dpkg/status")).unwrap_err();
        let e = err("Package: a\nStatus: install ok installed\nVersion: 1\n").to_string();
        assert!(e.contains("/r/var/lib/dpkg/status") && e.contains("line 1"), "{e}");
        assert!(e.contains("a: no Version or Architecture"), "{e}");
        let e = err("Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
Status: install ok installed\nVersion: 2\n")
        .to_string();
        assert!(e.contains("line 6") && e.contains("without Package"), "{e}");
        let e = err("Package: a\nStatus: install ok installed\nVersion: 1 2\nArchitecture: all\n")
            .to_string();
        assert!(e.contains("not a token"), "{e}");
        let e = err("Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\
Source: b (1\n")
        .to_string();
        assert!(e.contains("a: Source \"b (1\""), "{e}");
        // Hostile bytes never reach a purl unchecked.
        let e =
            err("Package: a&b=c\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\
Source: x (1)(2)\n")
            .to_string();
        assert!(e.contains("Source"), "{e}");
    }

    #[test]
    fn deb_manifest_decodes_epochs_and_rejects_junk() {
        let sha = "a".repeat(64);
        let text = format!(
            "{sha}  bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb\n{sha}  bash_5.2.15-2+b8_amd64.deb\n"
        );
        let m = parse_deb_manifest(&text, Path::new("debs.sha256")).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.contains_key(&("bsdutils".into(), "1:2.38.1-5+deb12u3".into(), "amd64".into())));
        for bad in ["x  a_1_amd64.deb", &format!("{sha} a_1_amd64.deb"), &format!("{sha}  a_1.deb")]
        {
            let e = parse_deb_manifest(bad, Path::new("/c/debs.sha256")).unwrap_err().to_string();
            assert!(e.contains("/c/debs.sha256") && e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn dep5_short_names_become_spdx_expressions() {
        let f = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nLicense: GPL-2+\n\nFiles: a\nLicense: GPL-1+ or Artistic\n\nFiles: b\n\
License: LGPLv2.1+\n\nFiles: c\nLicense: Expat\n\nFiles: d\nLicense: public-domain\n\n\
Files: e\nLicense: GPL-2+ with Autoconf exception\n\nLicense: GPL-2+\n text of it\n\n\
Files: f\nLicense: Permission to use, copy and modify\n";
        assert_eq!(
            dep5_licence(f).unwrap(),
            "(GPL-1.0-or-later OR Artistic-1.0) AND GPL-2.0-or-later AND \
LGPL-2.1-or-later AND LicenseRef-GPL-2-plus-with-Autoconf-exception AND \
LicenseRef-public-domain AND MIT"
        );
        assert_eq!(dep5_licence("This is not DEP-5.\nLicense: GPL-2\n"), None);
        assert_eq!(gnu_id("GPL-2").as_deref(), Some("GPL-2.0-only"));
        assert_eq!(gnu_id("GPLv3+").as_deref(), Some("GPL-3.0-or-later"));
        assert_eq!(gnu_id("GFDL-1.3").as_deref(), Some("GFDL-1.3-only"));
        assert_eq!(gnu_id("GPL"), None);
        assert_eq!(licence_ref("a b+/c"), "LicenseRef-a-b-plus-c");
        assert_eq!(licence_expression("GPL-2 or"), None);
    }
}
