#![no_main]
//! Fuzz target: the guestinfo decode pipeline (`<key>.encoding`, base64, gzip sniffing and
//! bounded inflation, the 64 KiB limit, `## template: jinja` rendering with cloud-init's
//! instance data, and metadata parsing). Nothing may panic, hang or allocate without bound.
use capstan_agent::sources::{encoding, jinja, parse_metadata};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: &[Option<&str>] = &[
    None,
    Some(""),
    Some("base64"),
    Some("b64"),
    Some("gzip+base64"),
    Some("gz+b64"),
    Some("bogus"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, value)) = data.split_first() else {
        return;
    };
    let enc = ENCODINGS[usize::from(sel) % ENCODINGS.len()];
    let Ok(enc) = encoding::Encoding::parse(enc) else {
        return;
    };
    let Ok(Some(text)) = encoding::decode(value, enc) else {
        return;
    };
    assert!(text.len() <= encoding::INFLATED_LIMIT);
    // The decoded text as metadata, then as a jinja user-data over that metadata.
    let meta = parse_metadata(&text).unwrap_or_default();
    let vars = jinja::instance_data(&meta, "iid-fuzz", "fuzz-host");
    let templ = if jinja::is_jinja_template(&text) {
        text
    } else {
        format!("## template: jinja\n{text}")
    };
    let _ = jinja::render(&templ, &vars);
});
