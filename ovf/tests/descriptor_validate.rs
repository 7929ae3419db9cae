//! Validation rules, one small descriptor per rule, and hostile inputs.

use ovf::descriptor::validate::{
    check_file_sizes, check_files_in_dir, validate, Diagnostic, Options, Severity,
};
use ovf::descriptor::{Envelope, ParseError};

const BASE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1" ovf:size="4"/>
  </References>
  <DiskSection>
    <Info>disks</Info>
    <Disk ovf:capacity="CAPACITY" ovf:capacityAllocationUnits="UNITS" ovf:diskId="vmdisk1" ovf:fileRef="FILEREF"/>
  </DiskSection>
  <NetworkSection>
    <Info>nets</Info>
    <Network ovf:name="VM Network"/>
  </NetworkSection>
  <VirtualSystem ovf:id="vm">
    <Info>vm</Info>
    <ProductSection>
      <Info>p</Info>
      PROPERTIES
    </ProductSection>
    <VirtualHardwareSection>
      <Info>hw</Info>
      <System><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:HostResource>HOSTRESOURCE</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>PARENT</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>DUPID</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="CONFIGKEY" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

fn doc(edits: &[(&str, &str)]) -> String {
    let mut s = BASE
        .replace("CAPACITY", "20")
        .replace("UNITS", "byte * 2^30")
        .replace("FILEREF", "file1")
        .replace("HOSTRESOURCE", "ovf:/disk/vmdisk1")
        .replace("PARENT", "3")
        .replace("DUPID", "5")
        .replace("CONFIGKEY", "firmware");
    for (from, to) in edits {
        assert!(s.contains(from), "edit target {from:?} missing");
        s = s.replacen(from, to, 1);
    }
    s.replace("PROPERTIES", "")
}

fn diags(xml: &str, strict: bool) -> Vec<Diagnostic> {
    let env = Envelope::parse(xml).unwrap_or_else(|e| panic!("{e}"));
    validate(&env, &Options { strict })
}

fn errors(xml: &str) -> Vec<String> {
    diags(xml, false).into_iter().filter(Diagnostic::is_error).map(|d| d.to_string()).collect()
}

/// Exactly one error, containing `needle`, on `line`.
fn one_error(xml: &str, needle: &str, line: u32) {
    let errs: Vec<_> = diags(xml, false).into_iter().filter(Diagnostic::is_error).collect();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains(needle), "{:?} lacks {needle:?}", errs[0].message);
    assert_eq!(errs[0].line, line, "{:?}", errs[0]);
}

#[test]
fn base_document_is_clean() {
    assert_eq!(diags(&doc(&[]), true), vec![]);
}

#[test]
fn dangling_references() {
    one_error(
        &doc(&[("ovf:fileRef=\"file1\"", "ovf:fileRef=\"nope\"")]),
        "ovf:fileRef \"nope\"",
        11,
    );
    one_error(
        &doc(&[("ovf:/disk/vmdisk1", "ovf:/disk/vmdisk9")]),
        "HostResource \"ovf:/disk/vmdisk9\"",
        29,
    );
    one_error(&doc(&[("<rasd:Parent>3<", "<rasd:Parent>42<")]), "Parent 42", 29);
    one_error(
        &doc(&[("ovf:fileRef=\"file1\"", "ovf:fileRef=\"file1\" ovf:parentRef=\"vmdisk7\"")]),
        "ovf:parentRef \"vmdisk7\"",
        11,
    );
    // An unknown network is a warning (vCenter maps networks at deploy time).
    let d = diags(&doc(&[("<rasd:Connection>VM Network<", "<rasd:Connection>Other<")]), false);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Warning);
}

#[test]
fn duplicate_ids() {
    one_error(
        &doc(&[("<rasd:InstanceID>5<", "<rasd:InstanceID>1<")]),
        "InstanceID 1 is already used",
        30,
    );
    let xml =
        doc(&[("</References>", "<File ovf:href=\"disk2.vmdk\" ovf:id=\"file1\"/></References>")]);
    assert!(
        errors(&xml).iter().any(|e| e.contains("ovf:id \"file1\" is already used")),
        "{:?}",
        errors(&xml)
    );
}

#[test]
fn capacity_and_units() {
    one_error(&doc(&[("ovf:capacity=\"20\"", "ovf:capacity=\"0\"")]), "capacity 0", 11);
    one_error(
        &doc(&[("ovf:capacity=\"20\"", "ovf:capacity=\"20GB\"")]),
        "is not a non-negative integer",
        11,
    );
    one_error(&doc(&[("byte * 2^30", "bytes * 1024")]), "is not a byte unit", 11);
    one_error(
        &doc(&[("ovf:capacity=\"20\"", "ovf:capacity=\"${size}\"")]),
        "property \"size\"",
        11,
    );
    // A declared property makes ${size} fine.
    let ok = doc(&[
        ("ovf:capacity=\"20\"", "ovf:capacity=\"${size}\""),
        ("PROPERTIES", "<Property ovf:key=\"size\" ovf:type=\"uint16\" ovf:value=\"20\"/>"),
    ]);
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn unsupported_by_vsphere_is_a_warning_or_strict_error() {
    for (edit, needle) in [
        (("<rasd:ResourceType>6<", "<rasd:ResourceType>35<"), "ResourceType 35"),
        (("VirtualSCSI", "megaraid"), "ResourceSubType \"megaraid\""),
        (
            ("vmw:key=\"firmware\" vmw:value=\"efi\"", "vmw:key=\"bogus.setting\" vmw:value=\"1\""),
            "\"bogus.setting\"",
        ),
    ] {
        let xml = doc(&[edit]);
        let lax = diags(&xml, false);
        assert_eq!(lax.len(), 1, "{lax:#?}");
        assert_eq!(lax[0].severity, Severity::Warning);
        assert!(lax[0].message.contains(needle), "{}", lax[0]);
        let strict = diags(&xml, true);
        assert_eq!(strict.len(), 1);
        assert_eq!(strict[0].severity, Severity::Error);
    }
}

#[test]
fn corpus_unsupported_items_name_instance_3() {
    for name in ["unsupported-resourcetype.ovf", "unsupported-resourcesubtype.ovf"] {
        let path =
            format!("{}/../../shared/fixtures/ovf-corpus/{name}", env!("CARGO_MANIFEST_DIR"));
        let env = Envelope::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        let strict: Vec<_> =
            validate(&env, &Options::strict()).into_iter().filter(Diagnostic::is_error).collect();
        assert_eq!(strict.len(), 1, "{name}: {strict:#?}");
        assert!(strict[0].message.starts_with("InstanceID 3:"), "{}", strict[0]);
        assert_eq!(strict[0].element, "Item");
        assert_eq!(strict[0].line, 45);
        assert!(validate(&env, &Options::default()).iter().all(|d| !d.is_error()));
    }
}

#[test]
fn property_types_and_defaults() {
    let prop = |p: &str| doc(&[("PROPERTIES", p)]);
    for (p, needle) in [
        (r#"<Property ovf:key="n" ovf:type="uint8" ovf:value="300"/>"#, "out of range for uint8"),
        (r#"<Property ovf:key="b" ovf:type="boolean" ovf:value="maybe"/>"#, "not a boolean"),
        (r#"<Property ovf:key="t" ovf:type="color" ovf:value="red"/>"#, "ovf:type \"color\""),
        (
            r#"<Property ovf:key="r" ovf:type="string" ovf:qualifiers="ValueMap{&quot;lb&quot;,&quot;worker&quot;}" ovf:value="db"/>"#,
            "not in ValueMap",
        ),
        (
            r#"<Property ovf:key="h" ovf:type="string" ovf:qualifiers="MaxLen(3)" ovf:value="long"/>"#,
            "longer than MaxLen(3)",
        ),
        (
            r#"<Property ovf:key="i" ovf:type="sint8" ovf:value="1"><Value ovf:value="-200"/></Property>"#,
            "out of range for sint8",
        ),
        (
            r#"<Property ovf:key="d" ovf:type="string"/><Property ovf:key="d" ovf:type="string"/>"#,
            "key \"d\" is already declared",
        ),
        (r#"<Property ovf:key="a b" ovf:type="string"/>"#, "whitespace"),
        (r#"<Property ovf:key="q" ovf:type="string" ovf:qualifiers="MaxLen(x)"/>"#, "MaxLen(x)"),
    ] {
        let errs = errors(&prop(p));
        assert_eq!(errs.len(), 1, "{p}: {errs:?}");
        assert!(errs[0].contains(needle), "{p}: {errs:?}");
        assert!(
            errs[0].starts_with("21: <Property>") || errs[0].starts_with("21: <Value>"),
            "{errs:?}"
        );
    }
    // Valid ones.
    for p in [
        r#"<Property ovf:key="n" ovf:type="uint8" ovf:value="255"/>"#,
        r#"<Property ovf:key="b" ovf:type="boolean" ovf:value="false"/>"#,
        r#"<Property ovf:key="r" ovf:type="string" ovf:qualifiers="ValueMap{&quot;lb&quot;,&quot;worker&quot;}" ovf:value="lb"/>"#,
        r#"<Property ovf:key="p" ovf:type="string" ovf:password="true" ovf:qualifiers="MinLen(8)" ovf:value=""/>"#,
    ] {
        assert_eq!(errors(&prop(p)), Vec::<String>::new(), "{p}");
    }
    // A dot in a key: DSP0243 forbids it, vSphere accepts it.
    let dotted = prop(r#"<Property ovf:key="guestinfo.x" ovf:type="string"/>"#);
    assert!(errors(&dotted).is_empty());
    let strict = diags(&dotted, true);
    assert_eq!(strict.len(), 1);
    assert_eq!(strict[0].severity, Severity::Warning, "vSphere accepts dotted keys");
    assert!(strict[0].message.contains("DSP0243"));
}

#[test]
fn file_sizes_against_real_files() {
    let xml = doc(&[]);
    let env = Envelope::parse(&xml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Missing: fine unless required.
    assert!(check_files_in_dir(&env, dir.path(), false).is_empty());
    let missing = check_files_in_dir(&env, dir.path(), true);
    assert_eq!(missing.len(), 1);
    assert!(missing[0].message.contains("missing"));
    std::fs::write(dir.path().join("disk1.vmdk"), b"12345").unwrap();
    let wrong = check_files_in_dir(&env, dir.path(), false);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert_eq!(wrong[0].line, 7);
    assert!(wrong[0].message.contains("ovf:size is 4 but the file has 5 bytes"), "{}", wrong[0]);
    std::fs::write(dir.path().join("disk1.vmdk"), b"1234").unwrap();
    assert!(check_files_in_dir(&env, dir.path(), true).is_empty());
    assert!(check_file_sizes(&env, |h| (h == "disk1.vmdk").then_some(4), true).is_empty());
}

#[test]
fn parse_errors_name_element_and_line() {
    let err = Envelope::parse(&doc(&[("ovf:href=\"disk1.vmdk\" ", "")])).unwrap_err();
    assert_eq!(err.line(), 7);
    assert_eq!(err.element(), Some("File"));
    assert_eq!(err.to_string(), "line 7: <File>: missing ovf:href");
    let err = Envelope::parse("<Envelope xmlns=\"urn:nope\"/>").unwrap_err();
    assert!(matches!(err, ParseError::UnknownNamespace { .. }), "{err}");
    let err = Envelope::parse("<html/>").unwrap_err();
    assert!(err.to_string().contains("not an OVF Envelope"));
    let err =
        Envelope::parse(&doc(&[("ovf:required=\"false\"", "ovf:required=\"maybe\"")])).unwrap_err();
    assert!(err.to_string().contains("not a boolean"), "{err}");
}

#[test]
fn hostile_inputs() {
    let bomb = "<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]>\n<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">&b;</Envelope>";
    let err = Envelope::parse(bomb).unwrap_err();
    assert_eq!(err.line(), 2);
    let deep = format!(
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">{}",
        "<x>".repeat(10_000)
    );
    assert!(Envelope::parse(&deep).unwrap_err().to_string().contains("not a readable XML"));
    let big = vec![b' '; ovf::descriptor::MAX_DESCRIPTOR_SIZE + 1];
    assert!(Envelope::from_bytes(&big).is_err());
    assert!(Envelope::from_bytes(b"<Envelope \xff/>").is_err());
    // UTF-16 with a BOM and a UTF-8 BOM are read.
    let xml = doc(&[]);
    let utf16: Vec<u8> =
        [0xFF, 0xFE].into_iter().chain(xml.encode_utf16().flat_map(u16::to_le_bytes)).collect();
    let a = Envelope::from_bytes(&utf16).unwrap();
    let b = Envelope::from_bytes(&[b"\xEF\xBB\xBF".as_slice(), xml.as_bytes()].concat()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn unknown_content_survives_a_round_trip() {
    let xml = doc(&[
        ("<NetworkSection>", "<vnd:Thing xmlns:vnd=\"urn:vendor\" vnd:a=\"1\"><vnd:Sub>t</vnd:Sub></vnd:Thing><NetworkSection>"),
        ("<Network ovf:name=\"VM Network\"/>", "<Network ovf:name=\"VM Network\" vnd2:x=\"y\" xmlns:vnd2=\"urn:v2\"/>"),
        ("<rasd:InstanceID>3</rasd:InstanceID>", "<rasd:InstanceID>3</rasd:InstanceID><rasd:Caption>c</rasd:Caption><vmw:CoresPerSocket ovf:required=\"false\">2</vmw:CoresPerSocket>"),
    ]);
    let env = Envelope::parse(&xml).unwrap();
    let out = env.to_xml();
    for needle in [
        "<vnd:Thing",
        "vnd:a=\"1\"",
        "<vnd:Sub>t</vnd:Sub>",
        "vnd2:x=\"y\"",
        "<rasd:Caption>c</rasd:Caption>",
        "<vmw:CoresPerSocket ovf:required=\"false\">2</vmw:CoresPerSocket>",
    ] {
        assert!(out.contains(needle), "{needle} missing from\n{out}");
    }
    assert_eq!(Envelope::parse(&out).unwrap(), env);
}

#[test]
fn size_is_settable_through_the_api() {
    let mut env = Envelope::parse(&doc(&[])).unwrap();
    env.file_mut("file1").unwrap().size = Some(123_456);
    let back = Envelope::parse(&env.to_xml()).unwrap();
    assert_eq!(back.file("file1").unwrap().size, Some(123_456));
    // A bad ovf:size that was kept verbatim is replaced, not duplicated.
    let mut bad = Envelope::parse(&doc(&[("ovf:size=\"4\"", "ovf:size=\"-1\"")])).unwrap();
    assert_eq!(bad.file("file1").unwrap().size, None);
    assert!(diags(&doc(&[("ovf:size=\"4\"", "ovf:size=\"-1\"")]), true)
        .iter()
        .any(|d| d.message.contains("ovf:size \"-1\"")));
    bad.files_mut()[0].size = Some(9);
    let out = bad.to_xml();
    assert_eq!(out.matches("ovf:size=").count(), 1, "{out}");
    assert_eq!(Envelope::parse(&out).unwrap().files()[0].size, Some(9));
}

#[test]
fn undeclared_ovf_prefix_survives_a_round_trip() {
    // Found by fuzzing: `xmlns:ovf` mangled, so every `ovf:` attribute is an undeclared
    // prefix; the writer must not bind `ovf` where the source left it unbound.
    let xml = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" vowxmlns:ovf="x">
  <References><File ovf:href="a.vmdk" ovf:id="f"/></References>
  <VirtualSystemCollection ovf:id="c"><Info>i</Info>
    <RandomSection ovf:required="false"><Info ovf:msgid="m">t</Info></RandomSection>
  </VirtualSystemCollection>
</Envelope>"#;
    let env = Envelope::parse(xml).unwrap();
    let out = env.to_xml();
    assert_eq!(Envelope::parse(&out).unwrap(), env, "{out}");
}
