//! The schema's generated artefacts: the committed reference page is fresh, the OVF
//! properties survive the ovf crate's writer, parser and validator, every default
//! passes its own type and qualifiers, and `config schema`/`config check` behave.

use std::path::Path;
use std::process::Command;

use capstan_agent::schema;
use ovf::descriptor::builder::VmBuilder;
use ovf::descriptor::validate::{check_value, validate, Options, Qualifiers, Severity};

const BIN: &str = env!("CARGO_BIN_EXE_capstan-agent");

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn committed_config_reference_is_fresh() {
    let path = repo_file("docs/config-reference.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = schema::markdown();
    assert!(
        committed == generated,
        "docs/config-reference.md is stale: regenerate it with\n  \
         cargo run -p capstan-agent -- config schema --markdown > docs/config-reference.md"
    );
    // And the binary prints the same.
    let out = Command::new(BIN).args(["config", "schema", "--markdown"]).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), generated);
}

#[test]
fn ovf_properties_pass_the_ovf_crate_round_trip_and_strict_validation() {
    for profile in ["node", "lb"] {
        let props = schema::ovf_properties(profile);
        assert!(props.len() > 20, "{profile}: {}", props.len());
        for p in &props {
            let q = Qualifiers::parse(p.qualifiers.as_deref().unwrap_or(""))
                .unwrap_or_else(|e| panic!("{}: qualifiers: {e}", p.key));
            let d = p.default.as_deref().unwrap_or("");
            if !d.is_empty() {
                check_value(p.ty, &q, d)
                    .unwrap_or_else(|e| panic!("{profile} {}: default {d:?}: {e}", p.key));
            }
            // An empty default must be acceptable (the operator may leave it unset).
            if d.is_empty() {
                check_value(p.ty, &q, "").unwrap_or_else(|e| {
                    panic!("{profile} {}: empty value refused by its own qualifiers: {e}", p.key)
                });
            }
            assert!(p.key.starts_with("capstan."));
            let path = &p.key["capstan.".len()..];
            let s = schema::lookup(path).unwrap_or_else(|| panic!("{path} not in schema"));
            assert_eq!(p.password, s.secret, "{path}");
        }
        let env = VmBuilder::new(format!("capstan-{profile}")).properties(props.clone()).build();
        let xml = env.to_xml();
        let back = ovf::descriptor::Envelope::parse(&xml).expect("our descriptor parses");
        let diags = validate(&back, &Options::default());
        let errors: Vec<_> = diags.iter().filter(|d| d.severity == Severity::Error).collect();
        assert!(errors.is_empty(), "{profile}: {errors:#?}");
        // Strict mode only objects to the dots in keys: the key naming (`capstan.a.b`) is fixed
        // by design and vSphere accepts it.
        let strict = validate(&back, &Options::strict());
        for d in strict.iter().filter(|d| d.severity == Severity::Error) {
            assert!(d.message.contains("contains '.'"), "{profile}: {d:?}");
        }
        let vs = back.virtual_systems();
        let keys: Vec<String> = vs[0]
            .products()
            .flat_map(|ps| ps.properties().map(|p| p.key.clone()).collect::<Vec<_>>())
            .collect();
        let want: Vec<String> = props.iter().map(|p| p.key.clone()).collect();
        assert_eq!(keys, want, "{profile}: properties survive the round trip in order");
    }
}

#[test]
fn config_schema_formats() {
    let out = Command::new(BIN).args(["config", "schema", "--json"]).output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["version"], 1);
    let settings = j["settings"].as_array().unwrap();
    let vip = settings.iter().find(|s| s["path"] == "lb.vip").unwrap();
    assert_eq!(vip["guestinfo"], "guestinfo.capstan.lb.vip");
    assert_eq!(vip["profiles"][0], "lb");
    let out =
        Command::new(BIN).args(["config", "schema", "--ovf", "--profile", "lb"]).output().unwrap();
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.starts_with("<ProductSection"));
    assert!(xml.contains(r#"ovf:key="capstan.lb.vrrp.secret""#));
    let out = Command::new(BIN)
        .args(["config", "schema", "--ovf", "--profile", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile"));
}

#[test]
fn config_check_accepts_good_files_and_names_bad_keys() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("agent.toml");
    std::fs::write(
        &good,
        "version = 1\nrole = \"lb\"\nntp.servers = [\"pool.ntp.org\"]\n[net.nic0]\ndhcp4 = true\n\
         [lb]\nvip = \"10.0.0.100/24\"\napi.token = \"0123456789abcdef0123\"\n[lb.vrrp]\nsecret = \"s3cret\"\npriority = 150\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all valid"));

    let bad = t.path().join("bad.toml");
    std::fs::write(
        &bad,
        "hostname = \"under_score\"\nbogus = 1\n[net.nic0]\nmtu = 70000\n[lb.vrrp]\npriority = 300\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for k in ["hostname", "bogus", "net.nic0.mtu", "lb.vrrp.priority"] {
        assert!(err.contains(&format!(": {k}: ")), "no line for {k}: {err}");
    }

    let syntax = t.path().join("syntax.toml");
    std::fs::write(&syntax, "version = 2\n").unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(&syntax).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 2 is not supported"));
}
