//! An OVA made by `capstan ova pack` goes through the vCenter API flow in vcsim: import,
//! mark as template, clone; `govc import.spec` lists the ProductSection properties. The same
//! OVA signed by `capstan ova sign` (`.ovf`, `.mf`, `.cert`, disk) imports too.
//!
//! vcsim checks OVF structure loosely and never reads the disk: this proves the API flow;
//! the VMDK and manifest are checked by qemu-img and `capstan ova verify` elsewhere.

use std::path::Path;
use std::process::Command;

use capstan_e2e::{capstan_bin, run, Vcsim};

const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:id="file1" ovf:href="capstan-node-disk1.vmdk"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="capstan-node">
    <Info>A Capstan node template</Info>
    <Name>capstan-node</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian12_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo iso">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>capstan-node</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-15</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <ProductSection ovf:class="capstan">
      <Info>Capstan node configuration</Info>
      <Product>Capstan node</Product>
      <Category>Identity</Category>
      <Property ovf:key="hostname" ovf:type="string" ovf:userConfigurable="true" ovf:value="node">
        <Label>Hostname</Label>
        <Description>Host name of the node</Description>
      </Property>
      <Property ovf:key="role" ovf:type="string" ovf:qualifiers="ValueMap{&quot;worker&quot;,&quot;control-plane&quot;,&quot;lb&quot;}" ovf:userConfigurable="true" ovf:value="worker">
        <Label>Role</Label>
      </Property>
      <Property ovf:key="heartbeat_interval" ovf:type="uint16" ovf:userConfigurable="true" ovf:value="10">
        <Label>Heartbeat interval (s)</Label>
      </Property>
    </ProductSection>
  </VirtualSystem>
</Envelope>
"#;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `capstan-node.ova` in `dir`: a 16 MiB disk with some content as a streamOptimized VMDK,
/// packed with the descriptor above and verified.
fn packed_ova(dir: &Path) -> std::path::PathBuf {
    let capstan = capstan_bin();
    let raw = dir.join("disk.raw");
    let mut data = vec![0u8; 16 << 20];
    for (i, b) in data.iter_mut().enumerate().take(3 << 20) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    let vmdk = dir.join("capstan-node-disk1.vmdk");
    run(Command::new(&capstan).args(["vmdk", "convert", s(&raw), s(&vmdk)])).unwrap();
    let ovf = dir.join("capstan-node.ovf");
    std::fs::write(&ovf, OVF).unwrap();
    let ova = dir.join("capstan-node.ova");
    run(Command::new(&capstan).args(["ova", "pack", "--ovf", s(&ovf), "-o", s(&ova)])).unwrap();
    run(Command::new(&capstan).args(["ova", "verify", s(&ova)])).unwrap();
    ova
}

/// `govc import.ova` of `ova` as VM `name` into vcsim's default pool and datastore.
fn import_ova(sim: &Vcsim, name: &str, ova: &Path) {
    sim.govc(&["import.ova", "-pool", Vcsim::POOL, "-ds", Vcsim::DS, "-name", name, s(ova)])
        .unwrap();
}

#[test]
fn a_signed_ova_imports_in_vcsim() {
    let dir = tempfile::tempdir().unwrap();
    let ova = packed_ova(dir.path());
    let (key, cert, signed) =
        (dir.path().join("k.pem"), dir.path().join("c.pem"), dir.path().join("signed.ova"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-days",
        "2",
        "-subj",
        "/CN=Capstan vcsim test",
    ]))
    .unwrap();
    run(Command::new(capstan_bin()).args([
        "ova",
        "sign",
        s(&ova),
        "--key",
        s(&key),
        "--cert",
        s(&cert),
        "-o",
        s(&signed),
    ]))
    .unwrap();
    let out =
        run(Command::new(capstan_bin()).args(["ova", "verify", "--require-signature", s(&signed)]))
            .unwrap();
    assert!(out.contains("signer       CN=Capstan vcsim test"), "{out}");

    let sim = Vcsim::start().expect("vcsim (built by ../shared/tools/vcsim.sh) must run");
    import_ova(&sim, "capstan-signed", &signed);
    let found = sim.govc(&["find", "/", "-type", "m", "-name", "capstan-signed"]).unwrap();
    assert!(found.contains("capstan-signed"), "imported VM not found: {found}");
}

#[test]
fn capstan_ova_imports_templates_and_clones_in_vcsim() {
    let dir = tempfile::tempdir().unwrap();
    let ova = packed_ova(dir.path());

    let sim = Vcsim::start().expect("vcsim (built by ../shared/tools/vcsim.sh) must run");

    // import.spec reads the descriptor inside the OVA and lists the user-configurable
    // properties as PropertyMapping keys.
    let spec = sim.govc(&["import.spec", s(&ova)]).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let keys: Vec<&str> = spec["PropertyMapping"]
        .as_array()
        .unwrap_or_else(|| panic!("no PropertyMapping in {spec}"))
        .iter()
        .filter_map(|p| p["Key"].as_str())
        .collect();
    for want in ["hostname", "role", "heartbeat_interval"] {
        assert!(
            keys.iter().any(|k| *k == want || k.ends_with(&format!(".{want}"))),
            "property {want} missing from import.spec: {keys:?}"
        );
    }

    import_ova(&sim, "capstan-node", &ova);
    sim.govc(&["vm.markastemplate", "capstan-node"]).unwrap();
    let info = sim.govc(&["vm.info", "-json", "capstan-node"]).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let vms = info["VirtualMachines"]
        .as_array()
        .or_else(|| info["virtualMachines"].as_array())
        .unwrap_or_else(|| panic!("no VirtualMachines in {info}"));
    let template = &vms[0]["Config"]["Template"];
    let template = if template.is_null() { &vms[0]["config"]["template"] } else { template };
    assert_eq!(template, &serde_json::Value::Bool(true), "not a template");

    sim.govc(&[
        "vm.clone",
        "-vm",
        "capstan-node",
        "-pool",
        Vcsim::POOL,
        "-ds",
        Vcsim::DS,
        "-on=false",
        "capstan-node-clone1",
    ])
    .unwrap();
    let found = sim.govc(&["find", "/", "-type", "m", "-name", "capstan-node-clone1"]).unwrap();
    assert!(found.contains("capstan-node-clone1"), "clone not found: {found}");
}
