//! The whole OVF corpus (`../shared/fixtures/ovf-corpus`, 957 real descriptors): every positive
//! descriptor parses, validates without errors and survives parse → write → parse unchanged in
//! meaning; every negative one is handled without a panic, and what is rejected says where.

use std::path::{Path, PathBuf};

use ovf::descriptor::validate::{validate, Options, Severity};
use ovf::descriptor::Envelope;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/ovf-corpus")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ovf")) {
            out.push(p);
        }
    }
}

/// The corpus README's rule for deliberately broken descriptors.
pub fn is_negative(path: &Path) -> bool {
    let s = path.to_string_lossy();
    let name = path.file_name().unwrap().to_string_lossy().to_lowercase();
    s.contains("/Neg/")
        || ["invalid", "neg-", "negative", "corrupted"]
            .iter()
            .any(|m| s.to_lowercase().contains(m) || name.contains(m))
}

/// Saved as `.ovf` but are HTTP 404 pages, not descriptors (upstream fixture accident). They
/// are "positive" by name only; the test asserts they are rejected as such.
const NOT_DESCRIPTORS: &[&str] = &[
    "external/DeleteHDTestdata/PvScsis_old/descriptor.ovf",
    "external/DeleteHDTestdata/SasPvScsi_old/descriptor.ovf",
    "external/DeleteHDTestdata/Sass_old/descriptor.ovf",
];

/// An error with its causes, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn corpus() -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(&corpus_dir(), &mut files);
    assert_eq!(files.len(), 957, "the corpus should hold 957 descriptors");
    files
}

#[test]
fn positives_parse_validate_and_round_trip() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in corpus().into_iter().filter(|p| !is_negative(p)) {
        let rel = path.strip_prefix(corpus_dir()).unwrap().display().to_string();
        let bytes = std::fs::read(&path).unwrap();
        if NOT_DESCRIPTORS.contains(&rel.as_str()) {
            let err = Envelope::from_bytes(&bytes).unwrap_err();
            assert_eq!(err.to_string(), "line 1: <HTML>: root element is not an OVF Envelope");
            continue;
        }
        let env = match Envelope::from_bytes(&bytes) {
            Ok(env) => env,
            Err(e) => {
                failures.push(format!("{rel}: parse: {}", chain(&e)));
                continue;
            }
        };
        for d in validate(&env, &Options::default()) {
            if d.severity == Severity::Error {
                failures.push(format!("{rel}: {d}"));
            }
        }
        let written = env.to_xml();
        match Envelope::parse(&written) {
            Ok(again) => {
                if again != env {
                    failures.push(format!("{rel}: round trip changed the model"));
                }
                // A second write is byte-identical (the writer is deterministic).
                if again.to_xml() != written {
                    failures.push(format!("{rel}: second write differs"));
                }
            }
            Err(e) => failures.push(format!("{rel}: re-parse: {e}")),
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} positive descriptors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked + NOT_DESCRIPTORS.len(), 809, "positives found");
}

#[test]
fn negatives_never_panic_and_rejections_say_where() {
    let mut rejected = 0;
    let mut total = 0;
    for path in corpus().into_iter().filter(|p| is_negative(p)) {
        total += 1;
        let bytes = std::fs::read(&path).unwrap();
        match Envelope::from_bytes(&bytes) {
            Err(e) => {
                rejected += 1;
                let msg = chain(&e);
                assert!(
                    e.line() > 0 || msg.contains("UTF"),
                    "{}: rejection without a line: {msg}",
                    path.display()
                );
            }
            Ok(env) => {
                let diags = validate(&env, &Options::strict());
                if diags.iter().any(|d| d.severity == Severity::Error) {
                    rejected += 1;
                } else {
                    eprintln!("accepted negative: {}", path.display());
                }
                for d in &diags {
                    assert!(!d.message.is_empty());
                    assert!(!d.element.is_empty(), "{}: {d}", path.display());
                }
                // Whatever parses also round-trips.
                let again = Envelope::parse(&env.to_xml()).unwrap();
                assert_eq!(again, env, "{}", path.display());
            }
        }
    }
    eprintln!("negatives: {rejected} of {total} rejected");
    assert!(total >= 140, "only {total} negatives found");
}
