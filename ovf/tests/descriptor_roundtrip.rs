//! Property test: descriptors generated through the model (builder output plus random unknown
//! elements, attributes and awkward strings) survive write → parse unchanged, and what the
//! builder makes validates without errors.

use ovf::descriptor::builder::{
    DiskSpec, Firmware, NicSpec, NicType, ProductInfo, ProductProperty, ScsiController, VmBuilder,
};
use ovf::descriptor::validate::{validate, Options};
use ovf::descriptor::{Content, Envelope, PropertyType, Section};
use ovf::xml::{Attr, Element, Name};
use proptest::prelude::*;

/// Text that XML can carry: printable ASCII, markup characters, quotes, non-ASCII, newlines.
fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 &<>\"'=;:/.,_\\-\u{e9}\u{4e2d}\u{1f600}\n\t]{0,24}")
        .unwrap()
        // Whitespace-only text between tags is not content in XML.
        .prop_map(|s| if s.trim().is_empty() { String::new() } else { s })
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,11}"
}

fn ptype() -> impl Strategy<Value = PropertyType> {
    proptest::sample::select(PropertyType::ALL.to_vec())
}

fn property() -> impl Strategy<Value = ProductProperty> {
    (
        ident(),
        ptype(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(proptest::sample::select(vec!["Network", "Identity", "Cluster"])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, ty, label, description, category, user, password)| ProductProperty {
            key,
            ty,
            qualifiers: None,
            // A default valid for every type.
            default: match ty {
                PropertyType::String => Some("v".into()),
                PropertyType::Boolean => Some("true".into()),
                PropertyType::Real32 | PropertyType::Real64 => Some("1.5".into()),
                _ => Some("7".into()),
            },
            user_configurable: user,
            label,
            description,
            category: category.map(str::to_string),
            password,
        })
}

/// A random vendor element with attributes, text and a nested child, in its own namespace.
fn unknown_element() -> impl Strategy<Value = Element> {
    (ident(), ident(), text(), text(), any::<bool>()).prop_map(
        |(local, attr, value, body, nest)| {
            let ns = "http://example.com/vendor";
            let mut e = Element::new(Name::new(ns, Some("vnd"), &local))
                .with_attr(Name::new(ns, Some("vnd"), &attr), value)
                .with_attr(Name::local("plain"), "x");
            if nest {
                e = e.with_child(Element::new(Name::new(ns, Some("vnd"), "Inner")).with_text("in"));
            } else if !body.is_empty() {
                e = e.with_text(body);
            }
            e
        },
    )
}

prop_compose! {
    fn envelope()(
        name in ident(),
        cpus in 1u32..128,
        mem in 1u64..(1 << 22),
        disks in proptest::collection::vec((ident(), 1u64..u64::MAX / 2, proptest::option::of(any::<u64>())), 0..4),
        nics in proptest::collection::vec((ident(), 0usize..3), 0..4),
        cdrom in any::<bool>(),
        firmware in proptest::sample::select(vec![Firmware::Bios, Firmware::Efi, Firmware::EfiSecureBoot]),
        scsi in proptest::sample::select(vec![ScsiController::ParaVirtual, ScsiController::LsiLogic, ScsiController::LsiLogicSas]),
        transport in proptest::option::of(proptest::sample::select(vec!["iso", "com.vmware.guestInfo", "iso com.vmware.guestInfo"])),
        props in proptest::collection::vec(property(), 0..6),
        annotation in proptest::option::of(text()),
        extra_config in proptest::collection::vec((ident(), text()), 0..3),
        unknown in proptest::collection::vec(unknown_element(), 0..3),
        root_attr in proptest::option::of(text()),
    ) -> Envelope {
        let mut b = VmBuilder::new(name).cpus(cpus).memory_mib(mem).firmware(firmware).scsi(scsi);
        for (i, (href, cap, size)) in disks.into_iter().enumerate() {
            let mut d = DiskSpec::new(format!("{href}-{i}.vmdk"), cap);
            d.file_size = size;
            b = b.disk(d);
        }
        for (net, ty) in nics {
            let mut n = NicSpec::new(net);
            n.ty = [NicType::Vmxnet3, NicType::E1000, NicType::E1000e][ty];
            b = b.nic(n);
        }
        if cdrom { b = b.cdrom(); }
        if let Some(t) = transport { b = b.transport(t); }
        // Keys must be unique within a ProductSection.
        let mut seen = std::collections::HashSet::new();
        let props: Vec<_> = props.into_iter().filter(|p| seen.insert(p.key.clone())).collect();
        if !props.is_empty() {
            b = b.product(ProductInfo { product: "P & <Q>".into(), vendor: "V".into(), version: "1".into(), ..Default::default() });
        }
        b = b.properties(props);
        if let Some(a) = annotation { b = b.annotation(a); }
        for (k, v) in extra_config { b = b.extra_config(format!("guestinfo.{k}"), v); }
        let mut env = b.build();
        if let Some(Content::System(vs)) = env.content.as_mut() {
            vs.sections.extend(unknown.iter().cloned().map(Section::Other));
            vs.extra.elements.clear();
        }
        if let Some(v) = root_attr {
            env.extra.attrs.push(Attr { name: Name::new("http://www.vmware.com/schema/ovf", Some("vmw"), "buildId"), value: v });
        }
        env
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn write_then_parse_is_identity(env in envelope()) {
        let xml = env.to_xml();
        prop_assert!(xml.contains("<VirtualSystem ovf:id="), "{}", xml);
        let back = Envelope::parse(&xml).map_err(|e| TestCaseError::fail(format!("{e}\n{xml}")))?;
        prop_assert_eq!(&back, &env, "{}", xml);
        // Writing is deterministic.
        prop_assert_eq!(back.to_xml(), xml);
    }

    #[test]
    fn built_descriptors_validate(env in envelope()) {
        let diags = validate(&env, &Options::strict());
        let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
        prop_assert!(errors.is_empty(), "{:?}\n{}", errors, env.to_xml());
    }

    #[test]
    fn parser_never_panics_on_mutated_documents(env in envelope(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = env.to_xml().into_bytes();
        let i = cut.index(bytes.len());
        bytes[i] = byte;
        // Any result is fine; a panic is not. What parses must round-trip.
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = validate(&env, &Options::strict());
            let again = Envelope::parse(&env.to_xml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, env);
        }
    }
}
