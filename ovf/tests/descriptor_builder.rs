//! The builder's output, pinned by a golden document, and the API the template builder and the
//! agent schema use.

use ovf::descriptor::builder::{
    capacity_with_units, product_entries, DiskSpec, Firmware, NicSpec, ProductInfo,
    ProductProperty, VmBuilder,
};
use ovf::descriptor::validate::{validate, Options};
use ovf::descriptor::{Envelope, ProductEntry, PropertyType};

fn node() -> Envelope {
    VmBuilder::new("capstan-node")
        .os("debian12_64Guest", 96)
        .cpus(2)
        .cores_per_socket(2)
        .memory_mib(4096)
        .firmware(Firmware::Efi)
        .disk(DiskSpec::new("capstan-node-disk1.vmdk", 20 << 30))
        .nic(NicSpec::new("VM Network"))
        .cdrom()
        .transport("com.vmware.guestInfo iso")
        .extra_config("guest_rpc.auth.cloud-init.set", "FALSE")
        .product(ProductInfo {
            product: "Capstan node".into(),
            vendor: "Capstan".into(),
            version: "1.0".into(),
            ..ProductInfo::default()
        })
        .property(
            ProductProperty::new("hostname", PropertyType::String)
                .label("Hostname")
                .description("Host name of the node")
                .category("Identity")
                .qualifiers("MinLen(1) MaxLen(63)"),
        )
        .property(
            ProductProperty::new("role", PropertyType::String)
                .category("Identity")
                .qualifiers("ValueMap{\"lb\",\"control-plane\",\"worker\"}")
                .default_value("worker"),
        )
        .property(
            ProductProperty::new("join_token", PropertyType::String).password().category("Cluster"),
        )
        .annotation("Built by capstan")
        .build()
}

const GOLDEN: &str = include_str!("descriptor_builder.golden.ovf");

#[test]
fn builder_output_matches_golden() {
    let xml = node().to_xml();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/descriptor_builder.golden.ovf"),
            &xml,
        )
        .unwrap();
    }
    assert_eq!(xml, GOLDEN, "run with UPDATE_GOLDEN=1 and review the diff");
}

#[test]
fn builder_output_is_valid_and_round_trips() {
    let env = node();
    let diags = validate(&env, &Options::strict());
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(Envelope::parse(&env.to_xml()).unwrap(), env);
    let vs = env.virtual_systems()[0];
    let hw = vs.hardware().next().unwrap();
    let disk = hw.items.iter().find(|i| i.resource_type() == Some(17)).unwrap();
    let scsi = hw.items.iter().find(|i| i.resource_type() == Some(6)).unwrap();
    assert_eq!(disk.parent(), scsi.instance_id());
    assert_eq!(scsi.resource_subtype(), Some("VirtualSCSI"));
    assert_eq!(disk.host_resources().collect::<Vec<_>>(), ["ovf:/disk/vmdisk1"]);
    let cd = hw.items.iter().find(|i| i.resource_type() == Some(15)).unwrap();
    let ide = hw.items.iter().find(|i| i.resource_type() == Some(5)).unwrap();
    assert_eq!(cd.parent(), ide.instance_id());
    let nic = hw.items.iter().find(|i| i.resource_type() == Some(10)).unwrap();
    assert_eq!(nic.resource_subtype(), Some("VmxNet3"));
    assert_eq!(nic.connections().collect::<Vec<_>>(), ["VM Network"]);
    assert_eq!(hw.configs[0].key, "firmware");
    assert_eq!(hw.configs[0].value, "efi");
    let d = env.disks().next().unwrap();
    assert_eq!((d.capacity.as_str(), d.capacity_units.as_deref()), ("20", Some("byte * 2^30")));
}

#[test]
fn capacity_units_pick_the_largest_exact_unit() {
    assert_eq!(capacity_with_units(20 << 30), (20, "byte * 2^30".to_string()));
    assert_eq!(capacity_with_units(1536 << 20), (1536, "byte * 2^20".to_string()));
    assert_eq!(capacity_with_units(3 << 40), (3, "byte * 2^40".to_string()));
    assert_eq!(capacity_with_units(1000), (1000, "byte".to_string()));
    assert_eq!(capacity_with_units(4096), (4, "byte * 2^10".to_string()));
}

#[test]
fn categories_head_each_run_of_properties() {
    let props = [
        ProductProperty::new("a", PropertyType::String).category("One"),
        ProductProperty::new("b", PropertyType::Boolean).category("One"),
        ProductProperty::new("c", PropertyType::Uint16),
        ProductProperty::new("d", PropertyType::String).category("Two"),
    ];
    let kinds: Vec<String> = product_entries(&props)
        .iter()
        .map(|e| match e {
            ProductEntry::Category(m) => format!("#{}", m.text),
            ProductEntry::Property(p) => format!("{}:{}", p.key, p.ty),
        })
        .collect();
    assert_eq!(kinds, ["#One", "a:string", "b:boolean", "c:uint16", "#Two", "d:string"]);
}

#[test]
fn vsphere_reads_what_we_write_back_as_environment_keys() {
    let env = node();
    let vs = env.virtual_systems()[0];
    let p = vs.products().next().unwrap();
    let keys: Vec<String> = p.properties().map(|q| p.env_key(q)).collect();
    assert_eq!(keys, ["hostname", "role", "join_token"]);
    assert_eq!(p.properties().nth(2).unwrap().password, Some(true));
}
