//! Hostile and malformed `heartbeat.*` settings through the real binary (`config check`, the
//! schema's one validation path, which `run` shares): each refusal names the source and the
//! key, a secret never appears in the message, and every form of PEM a vApp property can
//! carry is accepted.

mod common;

use std::path::Path;
use std::process::Command;

use common::{b64, BIN};

struct Material {
    ca: String,
    cert: String,
    key: String,
    other_key: String,
}

fn material() -> Material {
    let ca = rcgen::generate_simple_self_signed(vec!["hub".into()]).unwrap();
    let node = rcgen::generate_simple_self_signed(vec!["iid-1".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["iid-2".into()]).unwrap();
    Material {
        ca: ca.cert.pem(),
        cert: node.cert.pem(),
        key: node.key_pair.serialize_pem(),
        other_key: other.key_pair.serialize_pem(),
    }
}

/// A TOML basic string of `v` (newlines escaped).
fn q(v: &str) -> String {
    serde_json::to_string(v).unwrap()
}

/// Runs `config check` on `[heartbeat]` with `keys`; returns (exit code, stderr).
fn check(dir: &Path, keys: &[(&str, String)]) -> (i32, String) {
    let mut toml = String::from("version = 1\n[heartbeat]\n");
    for (k, v) in keys {
        toml.push_str(&format!("{k} = {}\n", q(v)));
    }
    let f = dir.join("agent.toml");
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(&f).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn url() -> (&'static str, String) {
    ("url", "https://hub.example:7443".into())
}

#[test]
fn every_pem_form_is_accepted() {
    let t = tempfile::tempdir().unwrap();
    let m = material();
    let forms = |pem: &str| {
        vec![
            pem.to_owned(),
            b64(pem.as_bytes()),
            pem.replace('\n', " "),
            pem.trim().replace('\n', "\\n"),
            pem.replace('\n', "\r\n"),
        ]
    };
    for (i, (ca, (cert, key))) in
        forms(&m.ca).into_iter().zip(forms(&m.cert).into_iter().zip(forms(&m.key))).enumerate()
    {
        let keys = [url(), ("ca", ca), ("client-cert", cert), ("client-key", key)];
        let (code, err) = check(t.path(), &keys);
        assert_eq!(code, 0, "form {i}: {err}");
    }
    let token = [url(), ("ca", m.ca.clone()), ("token", "tok-0123456789abcdef".into())];
    assert_eq!(check(t.path(), &token).0, 0);
    // Unset URL: the rest may stay (a template's defaults), nothing is required.
    assert_eq!(check(t.path(), &[("interval", "30s".into())]).0, 0);
}

/// `heartbeat.*` keys (without the prefix) and their values.
type Settings<'a> = Vec<(&'a str, String)>;

#[test]
fn hostile_values_are_refused_naming_the_key_without_showing_secrets() {
    let t = tempfile::tempdir().unwrap();
    let m = material();
    let key_body = m.key.lines().nth(1).unwrap().to_owned();
    let ca = || ("ca", m.ca.clone());
    let cases: Vec<(Settings, Vec<String>)> = vec![
        (vec![("url", "http://hub.example:7443".into()), ca(), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.url: ".into(), "is not https://".into()]),
        (vec![url(), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.url: ".into(), "heartbeat.ca is not".into()]),
        (vec![url(), ca()], vec!["neither heartbeat.client-cert".into()]),
        (vec![url(), ca(), ("client-key", m.key.clone())],
            vec!["heartbeat.client-key: ".into(), "heartbeat.client-cert is not".into()]),
        (vec![url(), ca(), ("client-cert", m.cert.clone())],
            vec!["heartbeat.client-cert: ".into(), "heartbeat.client-key is not".into()]),
        (vec![url(), ("ca", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----".into()), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.ca: ".into(), "malformed".into()]),
        (vec![url(), ("ca", m.ca[..m.ca.len() - 30].to_owned()), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.ca: ".into(), "malformed".into()]),
        (vec![url(), ("ca", "hunter2".into()), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.ca: ".into(), "no CERTIFICATE block".into()]),
        (vec![url(), ("ca", m.key.clone()), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.ca: ".into(), "PRIVATE KEY block where CERTIFICATE".into()]),
        (vec![url(), ("ca", "A".repeat(20_000)), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.ca: ".into(), "more than 16384".into()]),
        (vec![url(), ca(), ("client-cert", m.cert.clone()), ("client-key", m.other_key.clone())],
            vec!["heartbeat.client-key: ".into(), "does not belong".into()]),
        (vec![url(), ca(), ("client-cert", m.cert.clone()), ("client-key", m.cert.clone())],
            vec!["heartbeat.client-key: ".into(), "secret, not shown".into()]),
        (vec![url(), ca(), ("client-cert", m.cert.clone()),
              ("client-key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----".into())],
            vec!["heartbeat.client-key: ".into(), "encrypted".into()]),
        (vec![url(), ca(), ("client-cert", m.cert.clone()), ("client-key", format!("{}{}", m.key, m.key))],
            vec!["heartbeat.client-key: ".into(), "more than one private key".into()]),
        (vec![url(), ca(), ("token", "short".into())],
            vec!["heartbeat.token: ".into(), "length 5 is outside 16-256 (secret, not shown)".into()]),
        (vec![url(), ca(), ("token", "tok 0123456789abcdef".into())],
            vec!["heartbeat.token: ".into(), "has a space".into()]),
        (vec![url(), ca(), ("token", "tok\u{1b}[31m0123456789abcdef".into())],
            vec!["heartbeat.token: ".into(), "control".into()]),
        (vec![("url", "https://hub.example/\u{0}".into()), ca(), ("token", "tok-0123456789abcdef".into())],
            vec!["heartbeat.url: ".into()]),
        (vec![url(), ca(), ("token", "tok-0123456789abcdef".into()), ("interval", "0s".into())],
            vec!["heartbeat.interval: ".into()]),
    ];
    for (i, (keys, want)) in cases.iter().enumerate() {
        let (code, err) = check(t.path(), keys);
        assert_eq!(code, 1, "case {i} was accepted: {keys:?}");
        for w in want {
            assert!(err.contains(w.as_str()), "case {i}: no {w:?} in:\n{err}");
        }
        for secret in ["tok-0123456789abcdef", "tok 0123", "\"short\""] {
            assert!(!err.contains(secret), "case {i}: secret shown:\n{err}");
        }
        assert!(!err.contains(&key_body), "case {i}: key material shown:\n{err}");
    }
}
