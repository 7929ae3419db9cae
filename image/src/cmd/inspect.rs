//! `capstan ova inspect FILE.ova|FILE.ovf [--json]`: hardware, disks, networks and properties
//! of a descriptor, read from a bare `.ovf` or from the first member of an `.ova`. The firmware
//! shown is `capstan lab run`'s decision (`lab::firmware::from_descriptor`), never a reading of
//! its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ovf::descriptor::{
    parse_byte_units, Content, Envelope, Item, ProductEntry, Section, VirtualHardwareSection,
    VirtualSystem,
};
use serde_json::{json, Value};

use crate::firmware::Firmware;
use crate::lab::firmware::{self, Decision};

/// Arguments of `capstan ova inspect` (dispatched here by `cmd::ova`).
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The `.ova` archive or `.ovf` descriptor to inspect.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `capstan ova inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = &args.file;
    let is_ova = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ova"));
    let (name, bytes) = if is_ova {
        let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        ovf::ova::read_descriptor(std::io::BufReader::new(f))
            .with_context(|| format!("{}: reading the descriptor member", path.display()))?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        (path.display().to_string(), bytes)
    };
    let env =
        Envelope::from_bytes(&bytes).with_context(|| format!("{}: {name}", path.display()))?;
    // The lab's own decision, so inspect never shows a firmware `capstan lab run` would not
    // boot; a bad value fails here with the lab's message.
    let firmware = firmware::from_descriptor(&env, &path.display().to_string())?;
    let report = describe(&env, &name, &firmware);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `inspect` shows, as JSON (the text form is rendered from it, so both say the same).
/// `firmware` is [`firmware::from_descriptor`]'s decision for the whole descriptor.
pub(crate) fn describe(env: &Envelope, descriptor: &str, firmware: &Decision) -> Value {
    let files: Vec<Value> =
        env.files().iter().map(|f| json!({"id": f.id, "href": f.href, "size": f.size})).collect();
    let disks: Vec<Value> = env
        .disks()
        .map(|d| {
            let unit = d.capacity_units.as_deref().map_or(Some(1), parse_byte_units);
            let bytes =
                d.capacity.trim().parse::<u64>().ok().zip(unit).and_then(|(c, u)| c.checked_mul(u));
            let file = d.file_ref.as_deref().and_then(|r| env.file(r)).map(|f| f.href.clone());
            json!({
                "id": d.disk_id,
                "capacity": d.capacity,
                "capacity_units": d.capacity_units,
                "capacity_bytes": bytes,
                "file": file,
                "format": d.format,
                "populated_size": d.populated_size,
            })
        })
        .collect();
    let networks: Vec<Value> = env
        .networks()
        .map(|n| json!({"name": n.name, "description": n.description.as_ref().map(|m| &m.text)}))
        .collect();
    let configurations: Vec<Value> = env
        .configurations()
        .map(|c| {
            json!({"id": c.id, "default": c.default, "label": c.label.as_ref().map(|m| &m.text)})
        })
        .collect();
    let systems: Vec<Value> = match &env.content {
        None => Vec::new(),
        Some(c) => c.systems().into_iter().map(|vs| system(vs, firmware.firmware)).collect(),
    };
    let mut products: Vec<Value> = Vec::new();
    if let Some(c) = &env.content {
        collect_products(c, &mut products);
    }
    json!({
        "descriptor": descriptor,
        "ovf_namespace": env.ovf_ns,
        "firmware": firmware.firmware,
        "firmware_from": firmware.from,
        "files": files,
        "disks": disks,
        "networks": networks,
        "deployment_options": configurations,
        "virtual_systems": systems,
        "products": products,
    })
}

fn collect_products(c: &Content, out: &mut Vec<Value>) {
    let owner = c.id().unwrap_or("").to_string();
    for s in c.sections() {
        if let Section::Product(p) = s {
            let mut category: Option<String> = None;
            let mut props = Vec::new();
            for e in &p.entries {
                match e {
                    ProductEntry::Category(m) => category = Some(m.text.clone()),
                    ProductEntry::Property(prop) => props.push(json!({
                        "key": prop.key,
                        "env_key": p.env_key(prop),
                        "type": prop.ty,
                        "qualifiers": prop.qualifiers,
                        "default": prop.value,
                        "user_configurable": prop.user_configurable.unwrap_or(false),
                        "password": prop.password.unwrap_or(false),
                        "label": prop.label.as_ref().map(|m| &m.text),
                        "description": prop.description.as_ref().map(|m| &m.text),
                        "category": category,
                    })),
                }
            }
            out.push(json!({
                "virtual_system": owner,
                "class": p.class,
                "instance": p.instance,
                "product": p.product.as_ref().map(|m| &m.text),
                "vendor": p.vendor.as_ref().map(|m| &m.text),
                "version": p.version.as_ref().map(|m| &m.text),
                "full_version": p.full_version.as_ref().map(|m| &m.text),
                "properties": props,
            }));
        }
    }
    if let Content::Collection(col) = c {
        for m in &col.contents {
            collect_products(m, out);
        }
    }
}

fn kind_of(item: &Item) -> &'static str {
    match item.resource_type() {
        Some(1) => "other",
        Some(3) => "cpu",
        Some(4) => "memory",
        Some(5) => "ide-controller",
        Some(6) => "scsi-controller",
        Some(10) => "ethernet",
        Some(14) => "floppy",
        Some(15) => "cdrom",
        Some(16) => "dvd",
        Some(17) => "disk",
        Some(20) => "storage-controller",
        Some(21) => "serial",
        Some(22) => "parallel",
        Some(23) => "usb-controller",
        Some(24) => "video",
        Some(35) => "sound",
        _ => "unknown",
    }
}

fn hardware(h: &VirtualHardwareSection, firmware: Firmware) -> Value {
    let sys = h.system.as_ref();
    let mut cpus = None;
    let mut memory_mib = None;
    let mut devices = Vec::new();
    for item in &h.items {
        let q = item.fields.get("VirtualQuantity");
        match item.resource_type() {
            Some(3) if item.configuration.is_none() => {
                cpus = q.and_then(|v| v.parse::<u64>().ok());
            }
            Some(4) if item.configuration.is_none() => {
                let unit =
                    item.fields.get("AllocationUnits").map_or(Some(1 << 20), parse_byte_units);
                memory_mib = q
                    .and_then(|v| v.parse::<u64>().ok())
                    .zip(unit)
                    .and_then(|(n, u)| n.checked_mul(u))
                    .map(|b| b >> 20);
            }
            _ => {}
        }
        devices.push(json!({
            "instance_id": item.instance_id(),
            "kind": kind_of(item),
            "resource_type": item.fields.get("ResourceType"),
            "subtype": item.resource_subtype(),
            "name": item.fields.element_name(),
            "parent": item.parent(),
            "address_on_parent": item.fields.get("AddressOnParent"),
            "host_resources": item.host_resources().collect::<Vec<_>>(),
            "connections": item.connections().collect::<Vec<_>>(),
            "configuration": item.configuration,
        }));
    }
    json!({
        "id": h.id,
        "hardware_version": sys.and_then(|s| s.get("VirtualSystemType")),
        "transport": h.transport,
        "cpus": cpus,
        "memory_mib": memory_mib,
        "firmware": firmware,
        "devices": devices,
        "config": h.configs.iter().map(|c| json!({"key": c.key, "value": c.value})).collect::<Vec<_>>(),
        "extra_config": h.extra_configs.iter().map(|c| json!({"key": c.key, "value": c.value})).collect::<Vec<_>>(),
    })
}

fn system(vs: &VirtualSystem, firmware: Firmware) -> Value {
    let os = vs.operating_system();
    json!({
        "id": vs.id,
        "name": vs.name.as_ref().map(|m| &m.text),
        "os": os.map(|o| json!({"id": o.id, "os_type": o.os_type, "description": o.description.as_ref().map(|m| &m.text)})),
        "hardware": vs.hardware().map(|h| hardware(h, firmware)).collect::<Vec<_>>(),
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human form of [`describe`].
pub(crate) fn render_text(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "descriptor: {}", s(&r["descriptor"]));
    let _ = writeln!(o, "firmware: {} ({})", s(&r["firmware"]), s(&r["firmware_from"]));
    for vs in r["virtual_systems"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "virtual system {} ({})", s(&vs["id"]), s(&vs["name"]));
        if !vs["os"].is_null() {
            let _ = writeln!(o, "  os: {} (cim {})", s(&vs["os"]["os_type"]), s(&vs["os"]["id"]));
        }
        for hw in vs["hardware"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "  hardware {}: {} cpu, {} MiB, firmware {}, transport {}",
                s(&hw["hardware_version"]),
                s(&hw["cpus"]),
                s(&hw["memory_mib"]),
                s(&hw["firmware"]),
                s(&hw["transport"])
            );
            for d in hw["devices"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "{}", device_line(d));
            }
            for c in hw["config"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "    config {} = {}", s(&c["key"]), s(&c["value"]));
            }
            for c in hw["extra_config"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "    extraConfig {} = {}", s(&c["key"]), s(&c["value"]));
            }
        }
    }
    let _ = writeln!(o, "disks:");
    for d in r["disks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {}: {} bytes, file {}",
            s(&d["id"]),
            s(&d["capacity_bytes"]),
            s(&d["file"])
        );
    }
    let _ = writeln!(o, "files:");
    for f in r["files"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  {}: {} ({} bytes)", s(&f["id"]), s(&f["href"]), s(&f["size"]));
    }
    let _ = writeln!(o, "networks:");
    for n in r["networks"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  {}", s(&n["name"]));
    }
    for c in r["deployment_options"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "deployment option {} ({})", s(&c["id"]), s(&c["label"]));
    }
    for p in r["products"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "product {} {} {} (system {})",
            s(&p["vendor"]),
            s(&p["product"]),
            s(&p["version"]),
            s(&p["virtual_system"])
        );
        for prop in p["properties"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "{}", property_line(prop));
        }
    }
    o
}

/// One device of a hardware section: `[id] kind name (subtype) on parent:address -> ...`.
fn device_line(d: &Value) -> String {
    use std::fmt::Write;
    let mut line = format!("    [{}] {} {}", s(&d["instance_id"]), s(&d["kind"]), s(&d["name"]));
    if !d["subtype"].is_null() {
        let _ = write!(line, " ({})", s(&d["subtype"]));
    }
    if !d["parent"].is_null() {
        let _ = write!(line, " on {}:{}", s(&d["parent"]), s(&d["address_on_parent"]));
    }
    for h in d["host_resources"].as_array().into_iter().flatten() {
        let _ = write!(line, " -> {}", s(h));
    }
    for c in d["connections"].as_array().into_iter().flatten() {
        let _ = write!(line, " network {:?}", s(c));
    }
    if !d["configuration"].is_null() {
        let _ = write!(line, " [configuration {}]", s(&d["configuration"]));
    }
    line
}

/// One product property: `key : type = default [configurable] "label" in "category"`; a
/// password's default is never shown.
fn property_line(prop: &Value) -> String {
    use std::fmt::Write;
    let mut line = format!("  {} : {}", s(&prop["env_key"]), s(&prop["type"]));
    if !prop["default"].is_null() {
        let shown = if prop["password"] == Value::Bool(true) {
            "****".to_string()
        } else {
            format!("{:?}", s(&prop["default"]))
        };
        let _ = write!(line, " = {shown}");
    }
    if prop["user_configurable"] == Value::Bool(true) {
        line.push_str(" [configurable]");
    }
    if !prop["label"].is_null() {
        let _ = write!(line, " \"{}\"", s(&prop["label"]));
    }
    if !prop["category"].is_null() {
        let _ = write!(line, " in {:?}", s(&prop["category"]));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovf::descriptor::builder::VmBuilder;

    #[test]
    fn inspect_shows_the_lab_decision() {
        for (values, want) in [
            (&["efi"][..], Some(Firmware::Efi)),
            (&[][..], Some(Firmware::Bios)),
            (&["bios"][..], Some(Firmware::Bios)),
            (&["efi", "efi"][..], Some(Firmware::Efi)),
            (&["efi\nbios"][..], None),
            (&["efi", "bios", "efi"][..], None),
        ] {
            let mut b = VmBuilder::new("vm");
            for v in values {
                b = b.config("firmware", *v);
            }
            // Through XML, as inspect and lab read it.
            let env = Envelope::from_bytes(b.build().to_xml().as_bytes()).unwrap();
            let decided = firmware::from_descriptor(&env, "t.ovf");
            assert_eq!(decided.as_ref().ok().map(|d| d.firmware), want, "{values:?}");
            let Ok(d) = decided else { continue };
            let r = describe(&env, "t.ovf", &d);
            let name = serde_json::to_value(d.firmware).unwrap();
            assert_eq!(r["firmware"], name, "{values:?}");
            assert_eq!(r["firmware_from"], d.from.as_str());
            assert_eq!(r["virtual_systems"][0]["hardware"][0]["firmware"], name);
            let text = render_text(&r);
            assert!(text.contains(&format!("firmware: {} ({})", s(&name), d.from)), "{text}");
        }
    }
}
