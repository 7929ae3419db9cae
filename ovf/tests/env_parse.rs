//! The OVF environment reader and writer, on real and hostile documents.

use ovf::env::{EnvError, Environment, EthernetAdapter, Platform, MAX_ENV_SIZE};

fn fixture(name: &str) -> String {
    let path = format!("{}/../../shared/fixtures/ovf-env/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn reads_cloud_init_example() {
    let env = Environment::parse(&fixture("cloud-init-example.xml")).unwrap();
    assert_eq!(env.id.as_deref(), Some("WebTier"));
    let p = env.platform.as_ref().unwrap();
    assert_eq!(p.kind.as_deref(), Some("ESX Server"));
    assert_eq!(p.version.as_deref(), Some("3.0.1"));
    assert_eq!(p.vendor.as_deref(), Some("VMware, Inc."));
    assert_eq!(p.locale.as_deref(), Some("en_US"));
    let keys: Vec<_> = env.properties.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "instance-id",
            "seedfrom",
            "public-keys",
            "hostname",
            "user-data",
            "password",
            "network-config"
        ]
    );
    assert_eq!(env.property("instance-id"), Some("i-abcdefg"));
    assert_eq!(env.property("hostname"), Some("ubuntuhost"));
    assert!(env.property("public-keys").unwrap().ends_with("smoser@brickies"));
    assert_eq!(env.property("nope"), None);
    // And what we write reads back the same.
    assert_eq!(Environment::parse(&env.to_xml()).unwrap(), env);
}

/// What vCenter 8 writes to the `OVF ENV` CD-ROM / guestinfo.ovfEnv.
const VSPHERE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1234">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.3</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
         <Property oe:key="capstan.role" oe:value="worker"/>
         <Property oe:key="capstan.hostname" oe:value="node-1"/>
         <Property oe:key="capstan.ssh_keys" oe:value="ssh-ed25519 AAAA a@b &amp; &quot;c&quot;"/>
   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:a1:b2:c3" ve:network="VM Network" ve:unitNumber="7"/>
      <ve:Adapter ve:mac="00:50:56:a1:b2:c4" ve:network="storage" ve:unitNumber="8"/>
   </ve:EthernetAdapterSection>
</Environment>
"#;

#[test]
fn reads_what_vsphere_writes() {
    let env = Environment::parse(VSPHERE).unwrap();
    assert_eq!(env.id.as_deref(), Some(""));
    assert_eq!(env.vcenter_id.as_deref(), Some("vm-1234"));
    assert_eq!(env.property("capstan.role"), Some("worker"));
    assert_eq!(env.property("capstan.ssh_keys"), Some("ssh-ed25519 AAAA a@b & \"c\""));
    assert_eq!(
        env.ethernet_adapters,
        vec![
            EthernetAdapter::new("00:50:56:a1:b2:c3").network("VM Network").unit_number(7),
            EthernetAdapter::new("00:50:56:a1:b2:c4").network("storage").unit_number(8),
        ]
    );
    assert_eq!(Environment::parse(&env.to_xml()).unwrap(), env);
}

#[test]
fn reads_unprefixed_and_prefixed_spellings() {
    // No namespace at all.
    let bare = r#"<Environment id="x"><PropertySection><Property key="a" value="1"/></PropertySection>
        <EthernetAdapterSection><Adapter mac="00:50:56:00:00:01"/></EthernetAdapterSection></Environment>"#;
    let env = Environment::parse(bare).unwrap();
    assert_eq!(env.id.as_deref(), Some("x"));
    assert_eq!(env.property("a"), Some("1"));
    assert_eq!(env.ethernet_adapters[0].mac, "00:50:56:00:00:01");
    // Everything prefixed with oe:, no default namespace.
    let prefixed = r#"<oe:Environment xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
        <oe:PropertySection><oe:Property oe:key="a" oe:value="2"/></oe:PropertySection></oe:Environment>"#;
    assert_eq!(Environment::parse(prefixed).unwrap().property("a"), Some("2"));
    // A property without a value is the empty string.
    let novalue = r#"<Environment xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection><Property oe:key="k"/></PropertySection></Environment>"#;
    assert_eq!(Environment::parse(novalue).unwrap().property("k"), Some(""));
}

#[test]
fn reads_vapp_entities() {
    let doc = r#"<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="web">
      <PropertySection><Property oe:key="ip" oe:value="10.0.0.2"/></PropertySection>
      <Entity oe:id="db"><PropertySection><Property oe:key="ip" oe:value="10.0.0.3"/></PropertySection></Entity>
    </Environment>"#;
    let env = Environment::parse(doc).unwrap();
    assert_eq!(env.property("ip"), Some("10.0.0.2"));
    assert_eq!(env.entities[0].id, "db");
    assert_eq!(env.entities[0].properties[0].value, "10.0.0.3");
    assert_eq!(Environment::parse(&env.to_xml()).unwrap(), env);
}

#[test]
fn duplicate_key_is_an_error_naming_the_key_and_lines() {
    let doc = "<Environment xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\">\n<PropertySection>\n<Property oe:key=\"hostname\" oe:value=\"a\"/>\n<Property oe:key=\"hostname\" oe:value=\"b\"/>\n</PropertySection></Environment>";
    let err = Environment::parse(doc).unwrap_err();
    assert_eq!(err, EnvError::DuplicateKey { key: "hostname".into(), line: 4, first_line: 3 });
    assert!(err.to_string().contains("\"hostname\""), "{err}");
    assert!(err.to_string().contains("line 4"), "{err}");
}

#[test]
fn hostile_documents_are_refused() {
    let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<Environment><PropertySection><Property key="a" value="&lol2;"/></PropertySection></Environment>"#;
    let err = Environment::parse(billion_laughs).unwrap_err();
    assert_eq!(err.line(), 2);
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("DOCTYPE"), "{chain}");

    // External entity without a DOCTYPE: an unknown entity, refused with its line.
    let xxe = "<Environment>\n<PropertySection><Property key=\"a\" value=\"&xxe;\"/></PropertySection></Environment>";
    let err = Environment::parse(xxe).unwrap_err();
    assert_eq!(err.line(), 2, "{err:?}");

    let huge = format!(
        "<Environment><PropertySection><Property key=\"a\" value=\"{}\"/></PropertySection></Environment>",
        "x".repeat(MAX_ENV_SIZE)
    );
    assert!(matches!(Environment::parse(&huge).unwrap_err(), EnvError::Xml(_)));
    assert!(Environment::from_bytes(huge.as_bytes()).is_err());

    for (doc, line) in [
        ("<Environment>\n<PropertySection>\n<Property value=\"1\"/></PropertySection></Environment>", 3),
        ("<NotEnv/>", 1),
        ("<Environment>\n<EthernetAdapterSection><Adapter mac=\"m\" unitNumber=\"-1\"/></EthernetAdapterSection></Environment>", 2),
        ("<Environment>\n<EthernetAdapterSection><Adapter network=\"n\"/></EthernetAdapterSection></Environment>", 2),
        ("<Environment>\n<PropertySection>", 2),
        ("", 1),
    ] {
        let err = Environment::parse(doc).unwrap_err();
        assert_eq!(err.line(), line, "{doc}: {err}");
        assert!(err.to_string().starts_with("ovf-env"), "{err}");
    }
}

#[test]
fn writes_a_document_vsphere_style_and_from_utf16() {
    let env = Environment::new()
        .with_platform(Platform {
            kind: Some("VMware ESXi".into()),
            version: Some("8.0.3".into()),
            vendor: Some("VMware, Inc.".into()),
            locale: Some("en".into()),
            timezone: None,
        })
        .with_property("k", "v <&> \"q\"\nline2")
        .with_property("k", "replaced")
        .with_adapter(EthernetAdapter::new("00:50:56:00:00:01").unit_number(7));
    let xml = env.to_xml();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\""), "{xml}");
    assert!(xml.contains("<Property oe:key=\"k\" oe:value=\"replaced\"/>"), "{xml}");
    assert!(
        xml.contains("<ve:Adapter ve:mac=\"00:50:56:00:00:01\" ve:unitNumber=\"7\"/>"),
        "{xml}"
    );
    assert!(xml.contains("<Kind>VMware ESXi</Kind>"), "{xml}");
    let back = Environment::parse(&xml).unwrap();
    assert_eq!(back, env);

    let special = Environment::new().with_property("k", "v <&> \"q\"\nline2\ttab");
    assert_eq!(Environment::parse(&special.to_xml()).unwrap(), special);

    let utf16: Vec<u8> =
        [0xFF, 0xFE].into_iter().chain(xml.encode_utf16().flat_map(u16::to_le_bytes)).collect();
    assert_eq!(Environment::from_bytes(&utf16).unwrap(), env);
}

mod roundtrip {
    use ovf::env::{Entity, Environment, EthernetAdapter, Platform, Property};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 &<>\"'=;:/._\\-\u{e9}\n\t]{0,20}"
    }

    fn elem_text() -> impl Strategy<Value = Option<String>> {
        // Element text is trimmed when read (vSphere pretty-prints the platform section).
        proptest::option::of("[a-zA-Z0-9&<>., -]{0,12}".prop_map(|s| s.trim().to_string()))
    }

    prop_compose! {
        fn environment()(
            id in proptest::option::of(text()),
            vc in proptest::option::of(text()),
            platform in proptest::option::of((elem_text(), elem_text(), elem_text(), elem_text())),
            props in proptest::collection::btree_map("[a-z][a-z0-9._-]{0,10}", text(), 0..8),
            adapters in proptest::collection::vec(("[0-9a-f:]{17}", proptest::option::of(text()), proptest::option::of(any::<u32>())), 0..3),
            entity in proptest::option::of(("[a-z]{1,8}", text())),
        ) -> Environment {
            Environment {
                id,
                vcenter_id: vc,
                platform: platform.map(|(kind, version, vendor, locale)| Platform { kind, version, vendor, locale, timezone: None }),
                properties: props.into_iter().map(|(key, value)| Property { key, value }).collect(),
                ethernet_adapters: adapters.into_iter().map(|(mac, network, unit_number)| EthernetAdapter { mac, network, unit_number }).collect(),
                entities: entity.into_iter().map(|(id, v)| Entity { id, properties: vec![Property { key: "k".into(), value: v }] }).collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn write_then_parse_is_identity(env in environment()) {
            let xml = env.to_xml();
            let back = Environment::parse(&xml).map_err(|e| TestCaseError::fail(format!("{e}\n{xml}")))?;
            prop_assert_eq!(back, env);
        }
    }
}
