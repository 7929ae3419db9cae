//! Property: any manifest we render parses back to the same entries, and parsing arbitrary
//! text never panics (it either parses or names a line).

use ovf::manifest::{Algorithm, Manifest, ManifestError};
use proptest::prelude::*;

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::Sha1), Just(Algorithm::Sha256), Just(Algorithm::Sha512)]
}

fn name() -> impl Strategy<Value = String> {
    // Relative names with spaces, parentheses, dots, unicode and subfolders.
    "[a-zA-Z0-9 ()._é-]{1,20}(/[a-zA-Z0-9._-]{1,10})?"
        .prop_filter("no dot-dot or empty components", |n| ovf::manifest::check_name(n).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn render_then_parse_is_identity(
        entries in proptest::collection::vec((algorithm(), name(), any::<[u8; 64]>()), 0..12)
    ) {
        let mut m = Manifest::default();
        let mut seen = std::collections::HashSet::new();
        for (alg, name, bytes) in entries {
            if seen.insert(name.clone()) {
                m.push(alg, name, bytes[..alg.digest_len()].to_vec());
            }
        }
        let text = m.render();
        for line in text.lines() {
            prop_assert!(line.contains(")= "), "{}", line);
        }
        prop_assert_eq!(Manifest::parse(&text).unwrap(), m);
    }

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_a_line(text in "\\PC{0,200}(\n\\PC{0,80}){0,5}") {
        match Manifest::parse(&text) {
            Ok(m) => prop_assert!(m.entries.len() <= text.lines().count()),
            Err(ManifestError::Line { line, .. }) | Err(ManifestError::Duplicate { line, .. }) => {
                prop_assert!(line >= 1 && line <= text.split('\n').count());
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
