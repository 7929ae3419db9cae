//! The OVF environment (`ovf-env.xml`) that vSphere hands a guest.
//!
//! vCenter writes this document at every power-on of a VM deployed from an OVF with a
//! ProductSection and an `ovf:transport` (on a CD-ROM labelled `OVF ENV` for `iso`, in
//! `guestinfo.ovfEnv` for `com.vmware.guestInfo`). It carries the platform, the values of the
//! ProductSection properties (`oe:key`/`oe:value`) and, from VMware, the VM's network adapters:
//!
//! ```xml
//! <Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
//!      xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
//!      xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
//!   <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.3</Version>
//!     <Vendor>VMware, Inc.</Vendor><Locale>en</Locale></PlatformSection>
//!   <PropertySection><Property oe:key="hostname" oe:value="node-1"/></PropertySection>
//!   <ve:EthernetAdapterSection>
//!     <ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network" ve:unitNumber="7"/>
//!   </ve:EthernetAdapterSection>
//! </Environment>
//! ```
//!
//! Reading is lenient about spelling (default namespace, `oe:` prefixes, no namespace at all)
//! and strict about safety and ambiguity: no DOCTYPE (entity expansion), at most
//! [`MAX_ENV_SIZE`] bytes, and a key given twice is an error naming the key, because the guest
//! cannot know which value the operator meant.
//!
//! ```
//! let env = ovf::env::Environment::new()
//!     .with_property("hostname", "node-1")
//!     .with_adapter(ovf::env::EthernetAdapter::new("00:50:56:aa:bb:cc").network("VM Network"));
//! let back = ovf::env::Environment::parse(&env.to_xml()).unwrap();
//! assert_eq!(back.property("hostname"), Some("node-1"));
//! ```

use crate::xml::{self, Element, Name, XmlError};

/// The OVF environment namespace (both the default namespace and `oe:`).
pub const ENV_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";
/// VMware's extension namespace (`ve:`).
pub const VE_NS: &str = "http://www.vmware.com/schema/ovfenv";
/// The XML Schema instance namespace (vSphere declares it).
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The largest environment document [`Environment::parse`] accepts (1 MiB, the size of the
/// whole VMX guestinfo store).
pub const MAX_ENV_SIZE: usize = 1 << 20;

/// The hypervisor platform (`PlatformSection`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    /// `Kind`, e.g. `VMware ESXi`.
    pub kind: Option<String>,
    /// `Version`, e.g. `8.0.3`.
    pub version: Option<String>,
    /// `Vendor`, e.g. `VMware, Inc.`.
    pub vendor: Option<String>,
    /// `Locale`, e.g. `en`.
    pub locale: Option<String>,
    /// `TimeZone` (minutes from UTC, as written).
    pub timezone: Option<String>,
}

/// One `Property oe:key=… oe:value=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The property key (the ProductSection key, with `class.` and `.instance` if any).
    pub key: String,
    /// The value as the operator or vCenter set it.
    pub value: String,
}

/// One `ve:Adapter` of the `ve:EthernetAdapterSection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetAdapter {
    /// `ve:mac`, as written by vSphere (e.g. `00:50:56:aa:bb:cc`).
    pub mac: String,
    /// `ve:network`: the port group name.
    pub network: Option<String>,
    /// `ve:unitNumber`: the PCI slot-derived unit number.
    pub unit_number: Option<u32>,
}

impl EthernetAdapter {
    /// An adapter with a MAC address only.
    pub fn new(mac: impl Into<String>) -> Self {
        EthernetAdapter { mac: mac.into(), network: None, unit_number: None }
    }

    /// Sets the network (port group) name.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Sets the unit number.
    pub fn unit_number(mut self, unit: u32) -> Self {
        self.unit_number = Some(unit);
        self
    }
}

/// Another entity of a vApp (`Entity oe:id=…`): the properties of a sibling VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entity {
    /// `oe:id` of the sibling.
    pub id: String,
    /// Its properties.
    pub properties: Vec<Property>,
}

/// A parsed or to-be-written OVF environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// `oe:id`: the VirtualSystem id this environment is for (vSphere writes `""` for a VM).
    pub id: Option<String>,
    /// `ve:vCenterId`: the managed-object id vCenter gave the VM.
    pub vcenter_id: Option<String>,
    /// The platform section, if present.
    pub platform: Option<Platform>,
    /// The properties, in document order (keys are unique).
    pub properties: Vec<Property>,
    /// The VMware network adapters, in document order.
    pub ethernet_adapters: Vec<EthernetAdapter>,
    /// Sibling entities of a vApp.
    pub entities: Vec<Entity>,
}

/// Why an OVF environment was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// Not well-formed, too large, or carries a DOCTYPE.
    #[error("ovf-env: not a readable XML document")]
    Xml(#[source] XmlError),
    /// The root element is not `Environment`.
    #[error("ovf-env: line {line}: root element is <{found}>, expected <Environment>")]
    NotEnvironment {
        /// Where.
        line: u32,
        /// What it was.
        found: String,
    },
    /// A required attribute is missing.
    #[error("ovf-env: line {line}: <{element}> has no {attr} attribute")]
    MissingAttr {
        /// Where.
        line: u32,
        /// Which element.
        element: &'static str,
        /// Which attribute.
        attr: &'static str,
    },
    /// The same key is given twice.
    #[error("ovf-env: line {line}: property {key:?} is set twice (first on line {first_line})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The second occurrence.
        line: u32,
        /// The first occurrence.
        first_line: u32,
    },
    /// An attribute value has the wrong shape.
    #[error("ovf-env: line {line}: {attr}={value:?} is not {expected}")]
    BadValue {
        /// Where.
        line: u32,
        /// Which attribute.
        attr: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl EnvError {
    /// The line the error points at (0 when it concerns the whole document).
    pub fn line(&self) -> u32 {
        match self {
            EnvError::Xml(e) => e.line(),
            EnvError::NotEnvironment { line, .. }
            | EnvError::MissingAttr { line, .. }
            | EnvError::DuplicateKey { line, .. }
            | EnvError::BadValue { line, .. } => *line,
        }
    }
}

/// Element names are matched by local name when they are in the environment namespace, the VMware
/// namespace or no namespace: writers disagree on prefixes, never on local names.
fn is_env_elem(e: &Element, local: &str) -> bool {
    e.name.local == local
        && match e.name.ns.as_deref() {
            None => true,
            Some(ns) => ns == ENV_NS || ns == VE_NS,
        }
}

/// An attribute by local name: first in the preferred namespace, then unprefixed, then any.
fn attr<'a>(e: &'a Element, ns: &str, local: &str) -> Option<&'a str> {
    e.attr(Some(ns), local)
        .or_else(|| e.attr(None, local))
        .or_else(|| e.attrs.iter().find(|a| a.name.local == local).map(|a| a.value.as_str()))
}

fn parse_properties(section: &Element) -> Result<Vec<Property>, EnvError> {
    let mut props: Vec<(Property, u32)> = Vec::new();
    for p in section.elements().filter(|e| is_env_elem(e, "Property")) {
        let line = p.line.0;
        let key = attr(p, ENV_NS, "key").ok_or(EnvError::MissingAttr {
            line,
            element: "Property",
            attr: "oe:key",
        })?;
        // vSphere always writes oe:value; a missing one means the empty string.
        let value = attr(p, ENV_NS, "value").unwrap_or("");
        if let Some((_, first_line)) = props.iter().find(|(q, _)| q.key == key) {
            return Err(EnvError::DuplicateKey {
                key: key.to_string(),
                line,
                first_line: *first_line,
            });
        }
        props.push((Property { key: key.to_string(), value: value.to_string() }, line));
    }
    Ok(props.into_iter().map(|(p, _)| p).collect())
}

impl Environment {
    /// An empty environment with `oe:id=""`, as vSphere writes for a single VM.
    pub fn new() -> Self {
        Environment { id: Some(String::new()), ..Environment::default() }
    }

    /// Builder-style: adds (or replaces) a property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_property(key, value);
        self
    }

    /// Builder-style: sets the platform section.
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Builder-style: adds a network adapter.
    pub fn with_adapter(mut self, adapter: EthernetAdapter) -> Self {
        self.ethernet_adapters.push(adapter);
        self
    }

    /// Sets a property, replacing the value of an existing key (keys stay unique).
    pub fn set_property(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.properties.iter_mut().find(|p| p.key == key) {
            Some(p) => p.value = value,
            None => self.properties.push(Property { key, value }),
        }
    }

    /// The value of property `key`, if set.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }

    /// Reads bytes as delivered (UTF-8, or UTF-16 with a byte-order mark) and parses them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Environment, EnvError> {
        if bytes.len() > MAX_ENV_SIZE {
            return Err(EnvError::Xml(XmlError::TooLarge {
                size: bytes.len(),
                limit: MAX_ENV_SIZE,
            }));
        }
        let text = xml::decode(bytes).map_err(EnvError::Xml)?;
        Environment::parse(&text)
    }

    /// Parses an `ovf-env.xml` document.
    pub fn parse(input: &str) -> Result<Environment, EnvError> {
        let root = xml::parse(input, MAX_ENV_SIZE).map_err(EnvError::Xml)?;
        if !is_env_elem(&root, "Environment") {
            return Err(EnvError::NotEnvironment {
                line: root.line.0,
                found: root.name.qualified(),
            });
        }
        let mut env = Environment {
            id: attr(&root, ENV_NS, "id").map(str::to_string),
            vcenter_id: attr(&root, VE_NS, "vCenterId").map(str::to_string),
            ..Environment::default()
        };
        let mut seen_props: Option<u32> = None;
        for child in root.elements() {
            if is_env_elem(child, "PlatformSection") {
                let field = |name: &str| {
                    child
                        .elements()
                        .find(|e| is_env_elem(e, name))
                        .map(|e| e.text().trim().to_string())
                };
                env.platform = Some(Platform {
                    kind: field("Kind"),
                    version: field("Version"),
                    vendor: field("Vendor"),
                    locale: field("Locale"),
                    timezone: field("TimeZone"),
                });
            } else if is_env_elem(child, "PropertySection") {
                let props = parse_properties(child)?;
                if let Some(first) = seen_props {
                    // Two sections: keys must still be unique across them.
                    for p in props {
                        if env.property(&p.key).is_some() {
                            return Err(EnvError::DuplicateKey {
                                key: p.key,
                                line: child.line.0,
                                first_line: first,
                            });
                        }
                        env.properties.push(p);
                    }
                } else {
                    seen_props = Some(child.line.0);
                    env.properties = props;
                }
            } else if is_env_elem(child, "EthernetAdapterSection") {
                for a in child.elements().filter(|e| is_env_elem(e, "Adapter")) {
                    let line = a.line.0;
                    let mac = attr(a, VE_NS, "mac").ok_or(EnvError::MissingAttr {
                        line,
                        element: "ve:Adapter",
                        attr: "ve:mac",
                    })?;
                    let unit_number = match attr(a, VE_NS, "unitNumber") {
                        None => None,
                        Some(v) => {
                            Some(v.trim().parse::<u32>().map_err(|_| EnvError::BadValue {
                                line,
                                attr: "ve:unitNumber",
                                value: v.to_string(),
                                expected: "a non-negative integer",
                            })?)
                        }
                    };
                    env.ethernet_adapters.push(EthernetAdapter {
                        mac: mac.to_string(),
                        network: attr(a, VE_NS, "network").map(str::to_string),
                        unit_number,
                    });
                }
            } else if is_env_elem(child, "Entity") {
                let id = attr(child, ENV_NS, "id").ok_or(EnvError::MissingAttr {
                    line: child.line.0,
                    element: "Entity",
                    attr: "oe:id",
                })?;
                let mut properties = Vec::new();
                for section in child.elements().filter(|e| is_env_elem(e, "PropertySection")) {
                    properties.extend(parse_properties(section)?);
                }
                env.entities.push(Entity { id: id.to_string(), properties });
            }
            // Anything else (vendor sections) carries nothing a guest needs from us.
        }
        Ok(env)
    }

    /// Writes the document as vSphere does (default namespace, `oe:`/`ve:` prefixed attributes).
    pub fn to_xml(&self) -> String {
        let oe = |local: &str| Name::new(ENV_NS, Some("oe"), local);
        let ve = |local: &str| Name::new(VE_NS, Some("ve"), local);
        let env_el = |local: &str| Element::new(Name::new(ENV_NS, None, local));
        let mut root = env_el("Environment");
        root.ns_decls.0 = vec![
            (None, ENV_NS.to_string()),
            (Some("xsi".into()), XSI_NS.to_string()),
            (Some("oe".into()), ENV_NS.to_string()),
            (Some("ve".into()), VE_NS.to_string()),
        ];
        if let Some(id) = &self.id {
            root = root.with_attr(oe("id"), id.clone());
        }
        if let Some(id) = &self.vcenter_id {
            root = root.with_attr(ve("vCenterId"), id.clone());
        }
        if let Some(p) = &self.platform {
            let mut s = env_el("PlatformSection");
            for (name, v) in [
                ("Kind", &p.kind),
                ("Version", &p.version),
                ("Vendor", &p.vendor),
                ("Locale", &p.locale),
                ("TimeZone", &p.timezone),
            ] {
                if let Some(v) = v {
                    s = s.with_child(env_el(name).with_text(v.clone()));
                }
            }
            root = root.with_child(s);
        }
        let props = |props: &[Property]| {
            let mut s = env_el("PropertySection");
            for p in props {
                s = s.with_child(
                    env_el("Property")
                        .with_attr(oe("key"), p.key.clone())
                        .with_attr(oe("value"), p.value.clone()),
                );
            }
            s
        };
        root = root.with_child(props(&self.properties));
        if !self.ethernet_adapters.is_empty() {
            let mut s = Element::new(ve("EthernetAdapterSection"));
            for a in &self.ethernet_adapters {
                let mut e = Element::new(ve("Adapter")).with_attr(ve("mac"), a.mac.clone());
                if let Some(n) = &a.network {
                    e = e.with_attr(ve("network"), n.clone());
                }
                if let Some(u) = a.unit_number {
                    e = e.with_attr(ve("unitNumber"), u.to_string());
                }
                s = s.with_child(e);
            }
            root = root.with_child(s);
        }
        for ent in &self.entities {
            root = root.with_child(
                env_el("Entity")
                    .with_attr(oe("id"), ent.id.clone())
                    .with_child(props(&ent.properties)),
            );
        }
        xml::write_document(&root)
    }
}
