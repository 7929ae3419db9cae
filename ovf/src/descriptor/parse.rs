//! Element tree → typed [`Envelope`].
//!
//! The parser only fails on what makes the document unusable as a model: bad XML, a root that
//! is not an OVF `Envelope`, a modeled attribute whose value cannot be represented (an
//! `ovf:size` that is not a number). Everything else that is wrong but representable (a
//! dangling reference, a duplicate id) is left to [`super::validate`], which reports all
//! problems at once.

use super::*;
use crate::xml::{self, Name, Node, XmlError};

/// The largest descriptor accepted (64 MiB; real descriptors are well under 1 MiB).
pub const MAX_DESCRIPTOR_SIZE: usize = 64 << 20;

/// Why a descriptor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not readable XML (syntax, encoding, size, DOCTYPE).
    #[error("not a readable XML document")]
    Xml(#[source] XmlError),
    /// The root element is not an OVF `Envelope`.
    #[error("line {line}: <{found}>: root element is not an OVF Envelope")]
    NotEnvelope {
        /// Where.
        line: u32,
        /// The root as written.
        found: String,
    },
    /// The root is an `Envelope` in a namespace that is not OVF 0.9, 1.x or 2.0.
    #[error("line {line}: <Envelope>: namespace {ns:?} is not an OVF envelope namespace")]
    UnknownNamespace {
        /// Where.
        line: u32,
        /// The namespace found (empty: none).
        ns: String,
    },
    /// A required attribute is missing.
    #[error("line {line}: <{element}>: missing {attr}")]
    Missing {
        /// Where.
        line: u32,
        /// Element name.
        element: String,
        /// Attribute name.
        attr: String,
    },
    /// A modeled attribute's value has the wrong shape.
    #[error("line {line}: <{element}>: {attr}={value:?} is not {expected}")]
    BadValue {
        /// Where.
        line: u32,
        /// Element name.
        element: String,
        /// Attribute name.
        attr: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl ParseError {
    /// The line the error points at (0: the whole input).
    pub fn line(&self) -> u32 {
        match self {
            ParseError::Xml(e) => e.line(),
            ParseError::NotEnvelope { line, .. }
            | ParseError::UnknownNamespace { line, .. }
            | ParseError::Missing { line, .. }
            | ParseError::BadValue { line, .. } => *line,
        }
    }

    /// The element the error is about, when there is one.
    pub fn element(&self) -> Option<&str> {
        match self {
            ParseError::Xml(_) => None,
            ParseError::NotEnvelope { found, .. } => Some(found),
            ParseError::UnknownNamespace { .. } => Some("Envelope"),
            ParseError::Missing { element, .. } | ParseError::BadValue { element, .. } => {
                Some(element)
            }
        }
    }
}

impl Envelope {
    /// Reads a descriptor from bytes: UTF-8 (BOM optional) or UTF-16 with a byte-order mark.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, ParseError> {
        if bytes.len() > MAX_DESCRIPTOR_SIZE {
            return Err(ParseError::Xml(XmlError::TooLarge {
                size: bytes.len(),
                limit: MAX_DESCRIPTOR_SIZE,
            }));
        }
        let text = xml::decode(bytes).map_err(ParseError::Xml)?;
        Envelope::parse(&text)
    }

    /// Parses a descriptor.
    pub fn parse(input: &str) -> Result<Envelope, ParseError> {
        let root = xml::parse(input, MAX_DESCRIPTOR_SIZE).map_err(ParseError::Xml)?;
        Envelope::from_element(root)
    }

    /// Builds the typed model from an element tree (the root must be `Envelope`).
    pub fn from_element(root: Element) -> Result<Envelope, ParseError> {
        if root.name.local != "Envelope" {
            return Err(ParseError::NotEnvelope {
                line: root.line.0,
                found: root.name.qualified(),
            });
        }
        let ovf_ns = match root.name.ns.as_deref() {
            Some(ns @ (OVF_NS | OVF2_NS | OVF09_NS)) => ns.to_string(),
            // Some ovftool-era documents forgot the default namespace and write unprefixed
            // elements with `ovf:` attributes; read them as OVF in no namespace.
            None if root.name.prefix.is_none() => String::new(),
            other => {
                return Err(ParseError::UnknownNamespace {
                    line: root.line.0,
                    ns: other.unwrap_or("").to_string(),
                })
            }
        };
        let cx = Cx { ovf: &ovf_ns };
        let ns_decls = root.ns_decls.clone();
        let (attrs, children, line) = split(root);
        let mut env = Envelope {
            ovf_ns: ovf_ns.clone(),
            ns_decls,
            references: None,
            sections: Vec::new(),
            content: None,
            trailing: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for child in children {
            if env.content.is_some() {
                env.trailing.push(child);
            } else if cx.is(&child, "References") && env.references.is_none() {
                env.references = Some(cx.references(child)?);
            } else if let Some(content) = cx.content(&child)? {
                env.content = Some(content);
            } else {
                env.sections.push(cx.section(child)?);
            }
        }
        Ok(env)
    }
}

/// Takes an element apart: attributes, child elements, line.
fn split(e: Element) -> (Vec<Attr>, Vec<Element>, Line) {
    let children = e
        .children
        .into_iter()
        .filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
        .collect();
    (e.attrs, children, e.line)
}

/// Parsing context: the document's OVF namespace.
struct Cx<'a> {
    ovf: &'a str,
}

impl Cx<'_> {
    /// `true` when `e` is OVF element `local`.
    fn is(&self, e: &Element, local: &str) -> bool {
        e.name.local == local && self.is_ovf_ns(e)
    }

    /// OVF elements are in the document's OVF namespace, or in no namespace: ovftool-era
    /// documents declare only `xmlns:ovf` and write `<References>`, `<Section>`, `<Info>` bare.
    fn is_ovf_ns(&self, e: &Element) -> bool {
        match e.name.ns.as_deref() {
            None => e.name.prefix.is_none(),
            Some(ns) => ns == self.ovf,
        }
    }

    /// Removes and returns OVF attribute `local`: in the document's namespace, unprefixed as
    /// some writers do, or in another OVF version's namespace.
    fn take(&self, attrs: &mut Vec<Attr>, local: &str) -> Option<String> {
        let pos = attrs
            .iter()
            .position(|a| a.name.local == local && a.name.ns.as_deref() == Some(self.ovf))
            .or_else(|| attrs.iter().position(|a| a.name.local == local && a.name.ns.is_none()))
            .or_else(|| {
                attrs.iter().position(|a| {
                    a.name.local == local
                        && matches!(a.name.ns.as_deref(), Some(OVF_NS | OVF2_NS | OVF09_NS))
                })
            })?;
        Some(attrs.remove(pos).value)
    }

    /// Like `take_u64`, but a value that is not a byte count stays in `attrs` (verbatim, for
    /// validation to report) instead of failing the parse: vCenter-era tools wrote `-1`.
    fn take_u64_lenient(&self, attrs: &mut Vec<Attr>, local: &str) -> Option<u64> {
        let before = attrs.clone();
        let v = self.take(attrs, local)?;
        match v.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                *attrs = before;
                None
            }
        }
    }

    fn take_ns(attrs: &mut Vec<Attr>, ns: &str, local: &str) -> Option<String> {
        let pos =
            attrs.iter().position(|a| a.name.local == local && a.name.ns.as_deref() == Some(ns))?;
        Some(attrs.remove(pos).value)
    }

    fn required(
        &self,
        attrs: &mut Vec<Attr>,
        local: &str,
        element: &str,
        line: Line,
    ) -> Result<String, ParseError> {
        self.take(attrs, local).ok_or_else(|| ParseError::Missing {
            line: line.0,
            element: element.to_string(),
            attr: format!("ovf:{local}"),
        })
    }

    fn take_bool(
        &self,
        attrs: &mut Vec<Attr>,
        local: &str,
        element: &str,
        line: Line,
    ) -> Result<Option<bool>, ParseError> {
        match self.take(attrs, local) {
            None => Ok(None),
            Some(v) => parse_bool(&v).map(Some).ok_or(ParseError::BadValue {
                line: line.0,
                element: element.to_string(),
                attr: format!("ovf:{local}"),
                value: v,
                expected: "a boolean (true, false, 1, 0)",
            }),
        }
    }

    /// A localizable text element.
    fn msg(&self, e: &Element) -> Msg {
        Msg {
            text: e.text(),
            msgid: e
                .attr(Some(self.ovf), "msgid")
                .or_else(|| e.attr(None, "msgid"))
                .map(str::to_string),
        }
    }

    /// `true` if `e` can be modeled as a `Msg` without losing anything.
    fn is_plain_msg(&self, e: &Element) -> bool {
        e.elements().next().is_none()
            && e.attrs.iter().all(|a| {
                a.name.local == "msgid"
                    && (a.name.ns.is_none() || a.name.ns.as_deref() == Some(self.ovf))
            })
            && e.attrs.len() <= 1
    }

    /// Pulls the leading `Info` (and for content, `Name`) out of the children.
    fn take_msg(&self, children: &mut Vec<Element>, local: &str) -> Option<Msg> {
        let pos = children.iter().position(|c| self.is(c, local) && self.is_plain_msg(c))?;
        // Only if no earlier sibling has the same name (keep duplicates verbatim).
        if children[..pos].iter().any(|c| self.is(c, local)) {
            return None;
        }
        Some(self.msg(&children.remove(pos)))
    }

    fn references(&self, e: Element) -> Result<References, ParseError> {
        let (attrs, children, line) = split(e);
        let mut refs =
            References { files: Vec::new(), extra: Extra { attrs, elements: Vec::new(), line } };
        for c in children {
            if self.is(&c, "File") {
                refs.files.push(self.file(c)?);
            } else {
                refs.extra.elements.push(c);
            }
        }
        Ok(refs)
    }

    fn file(&self, e: Element) -> Result<File, ParseError> {
        let (mut attrs, children, line) = split(e);
        Ok(File {
            id: self.required(&mut attrs, "id", "File", line)?,
            href: self.required(&mut attrs, "href", "File", line)?,
            size: self.take_u64_lenient(&mut attrs, "size"),
            compression: self.take(&mut attrs, "compression"),
            chunk_size: self.take_u64_lenient(&mut attrs, "chunkSize"),
            extra: Extra { attrs, elements: children, line },
        })
    }

    /// The section kind of `e`: its OVF local name, or the `xsi:type` of a 0.9 `<Section>`.
    fn section_kind<'e>(&self, e: &'e Element) -> Option<&'e str> {
        if !self.is_ovf_ns(e) {
            return None;
        }
        if e.name.local == "Section" {
            let ty = e.attr(Some(XSI_NS), "type")?;
            let local = ty.rsplit(':').next()?;
            return local.strip_suffix("_Type");
        }
        Some(&e.name.local)
    }

    fn content(&self, e: &Element) -> Result<Option<Content>, ParseError> {
        let kind = if self.is(e, "VirtualSystem") {
            "VirtualSystem"
        } else if self.is(e, "VirtualSystemCollection") {
            "VirtualSystemCollection"
        } else if self.is(e, "Content") {
            // OVF 0.9: <Content xsi:type="ovf:VirtualSystem_Type">.
            match e.attr(Some(XSI_NS), "type").and_then(|t| t.rsplit(':').next()) {
                Some("VirtualSystem_Type") => "VirtualSystem",
                Some("VirtualSystemCollection_Type") => "VirtualSystemCollection",
                _ => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let (mut attrs, mut children, line) = split(e.clone());
        let id = self.take(&mut attrs, "id");
        let info = self.take_msg(&mut children, "Info");
        let name = self.take_msg(&mut children, "Name");
        let extra = Extra { attrs, elements: Vec::new(), line };
        if kind == "VirtualSystem" {
            let mut sections = Vec::with_capacity(children.len());
            for c in children {
                sections.push(self.section(c)?);
            }
            Ok(Some(Content::System(VirtualSystem { id, info, name, sections, extra })))
        } else {
            let mut col = VirtualSystemCollection {
                id,
                info,
                name,
                sections: Vec::new(),
                contents: Vec::new(),
                extra,
            };
            for c in children {
                match self.content(&c)? {
                    Some(content) => col.contents.push(content),
                    None => col.sections.push(self.section(c)?),
                }
            }
            Ok(Some(Content::Collection(col)))
        }
    }

    fn section(&self, e: Element) -> Result<Section, ParseError> {
        let Some(kind) = self.section_kind(&e) else {
            return Ok(Section::Other(e));
        };
        Ok(match kind {
            "DiskSection" => Section::Disk(self.disk_section(e)?),
            "NetworkSection" => Section::Network(self.network_section(e)?),
            "DeploymentOptionSection" => Section::DeploymentOption(self.deployment(e)?),
            "OperatingSystemSection" => Section::OperatingSystem(self.os_section(e)),
            "VirtualHardwareSection" => Section::VirtualHardware(self.hardware(e)?),
            "ProductSection" => Section::Product(self.product(e)?),
            "AnnotationSection" => {
                let (attrs, mut children, line) = split(e);
                Section::Annotation(AnnotationSection {
                    info: self.take_msg(&mut children, "Info"),
                    annotation: self.take_msg(&mut children, "Annotation"),
                    extra: Extra { attrs, elements: children, line },
                })
            }
            "EulaSection" => {
                let (attrs, mut children, line) = split(e);
                Section::Eula(EulaSection {
                    info: self.take_msg(&mut children, "Info"),
                    license: self.take_msg(&mut children, "License"),
                    extra: Extra { attrs, elements: children, line },
                })
            }
            _ => Section::Other(e),
        })
    }

    fn disk_section(&self, e: Element) -> Result<DiskSection, ParseError> {
        let (attrs, mut children, line) = split(e);
        let info = self.take_msg(&mut children, "Info");
        let mut s = DiskSection {
            info,
            disks: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for c in children {
            if self.is(&c, "Disk") {
                let (mut attrs, elements, line) = split(c);
                s.disks.push(Disk {
                    disk_id: self.required(&mut attrs, "diskId", "Disk", line)?,
                    file_ref: self.take(&mut attrs, "fileRef"),
                    capacity: self.required(&mut attrs, "capacity", "Disk", line)?,
                    capacity_units: self.take(&mut attrs, "capacityAllocationUnits"),
                    format: self.take(&mut attrs, "format"),
                    populated_size: self.take_u64_lenient(&mut attrs, "populatedSize"),
                    parent_ref: self.take(&mut attrs, "parentRef"),
                    extra: Extra { attrs, elements, line },
                });
            } else {
                s.extra.elements.push(c);
            }
        }
        Ok(s)
    }

    fn network_section(&self, e: Element) -> Result<NetworkSection, ParseError> {
        let (attrs, mut children, line) = split(e);
        let info = self.take_msg(&mut children, "Info");
        let mut s = NetworkSection {
            info,
            networks: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for c in children {
            if self.is(&c, "Network") {
                let (mut attrs, mut elements, line) = split(c);
                s.networks.push(Network {
                    name: self.required(&mut attrs, "name", "Network", line)?,
                    description: self.take_msg(&mut elements, "Description"),
                    extra: Extra { attrs, elements, line },
                });
            } else {
                s.extra.elements.push(c);
            }
        }
        Ok(s)
    }

    fn deployment(&self, e: Element) -> Result<DeploymentOptionSection, ParseError> {
        let (attrs, mut children, line) = split(e);
        let info = self.take_msg(&mut children, "Info");
        let mut s = DeploymentOptionSection {
            info,
            configurations: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for c in children {
            if self.is(&c, "Configuration") {
                let (mut attrs, mut elements, line) = split(c);
                s.configurations.push(Configuration {
                    id: self.required(&mut attrs, "id", "Configuration", line)?,
                    default: self.take_bool(&mut attrs, "default", "Configuration", line)?,
                    label: self.take_msg(&mut elements, "Label"),
                    description: self.take_msg(&mut elements, "Description"),
                    extra: Extra { attrs, elements, line },
                });
            } else {
                s.extra.elements.push(c);
            }
        }
        Ok(s)
    }

    fn os_section(&self, e: Element) -> OperatingSystemSection {
        let (mut attrs, mut children, line) = split(e);
        OperatingSystemSection {
            id: self.take(&mut attrs, "id"),
            version: self.take(&mut attrs, "version"),
            os_type: Self::take_ns(&mut attrs, VMW_NS, "osType"),
            info: self.take_msg(&mut children, "Info"),
            description: self.take_msg(&mut children, "Description"),
            extra: Extra { attrs, elements: children, line },
        }
    }

    fn vmw_config(&self, e: Element) -> Result<VmwConfig, ParseError> {
        let element = e.name.qualified();
        let (mut attrs, elements, line) = split(e);
        let key = Self::take_ns(&mut attrs, VMW_NS, "key").ok_or(ParseError::Missing {
            line: line.0,
            element: element.clone(),
            attr: "vmw:key".into(),
        })?;
        Ok(VmwConfig {
            key,
            value: Self::take_ns(&mut attrs, VMW_NS, "value").unwrap_or_default(),
            required: self.take_bool(&mut attrs, "required", &element, line)?,
            extra: Extra { attrs, elements, line },
        })
    }

    fn is_vmw_config(e: &Element, local: &str) -> bool {
        e.name.is(VMW_NS, local) && e.attr(Some(VMW_NS), "key").is_some()
    }

    fn cim_fields(
        &self,
        e: Element,
        with_configs: bool,
    ) -> Result<(CimFields, Vec<VmwConfig>), ParseError> {
        let (attrs, children, line) = split(e);
        let mut fields =
            CimFields { fields: Vec::new(), extra: Extra { attrs, elements: Vec::new(), line } };
        let mut configs = Vec::new();
        for c in children {
            let is_cim = c.name.ns.as_deref().is_some_and(is_cim_ns);
            if is_cim && c.elements().next().is_none() {
                fields.fields.push(CimField {
                    value: c.text(),
                    name: c.name,
                    attrs: c.attrs,
                    line: c.line,
                });
            } else if with_configs && Self::is_vmw_config(&c, "Config") {
                configs.push(self.vmw_config(c)?);
            } else {
                fields.extra.elements.push(c);
            }
        }
        Ok((fields, configs))
    }

    fn hardware(&self, e: Element) -> Result<VirtualHardwareSection, ParseError> {
        let (mut attrs, mut children, line) = split(e);
        let mut s = VirtualHardwareSection {
            id: self.take(&mut attrs, "id"),
            transport: self.take(&mut attrs, "transport"),
            info: self.take_msg(&mut children, "Info"),
            extra: Extra { attrs, elements: Vec::new(), line },
            ..VirtualHardwareSection::default()
        };
        for c in children {
            let item_kind = if self.is(&c, "Item") {
                Some(ItemKind::Item)
            } else if self.is(&c, "StorageItem") {
                Some(ItemKind::StorageItem)
            } else if self.is(&c, "EthernetPortItem") {
                Some(ItemKind::EthernetPortItem)
            } else {
                None
            };
            if let Some(kind) = item_kind {
                let element = kind.local_name();
                let (mut attrs, children, line) = split(c);
                let configuration = self.take(&mut attrs, "configuration");
                let bound = self.take(&mut attrs, "bound");
                let required = self.take_bool(&mut attrs, "required", element, line)?;
                let mut rebuilt = Element::new(Name::local(element));
                rebuilt.attrs = attrs;
                rebuilt.children = children.into_iter().map(Node::Element).collect();
                rebuilt.line = line;
                let (fields, configs) = self.cim_fields(rebuilt, true)?;
                s.items.push(Item { kind, configuration, bound, required, fields, configs });
            } else if self.is(&c, "System") && s.system.is_none() && s.items.is_empty() {
                // vmw:Config inside System is not standard; it stays verbatim in `extra`.
                let (fields, _) = self.cim_fields(c, false)?;
                s.system = Some(fields);
            } else if Self::is_vmw_config(&c, "Config") {
                s.configs.push(self.vmw_config(c)?);
            } else if Self::is_vmw_config(&c, "ExtraConfig") {
                s.extra_configs.push(self.vmw_config(c)?);
            } else {
                s.extra.elements.push(c);
            }
        }
        Ok(s)
    }

    fn product(&self, e: Element) -> Result<ProductSection, ParseError> {
        let (mut attrs, mut children, line) = split(e);
        let mut s = ProductSection {
            class: self.take(&mut attrs, "class"),
            instance: self.take(&mut attrs, "instance"),
            info: self.take_msg(&mut children, "Info"),
            product: self.take_msg(&mut children, "Product"),
            vendor: self.take_msg(&mut children, "Vendor"),
            version: self.take_msg(&mut children, "Version"),
            full_version: self.take_msg(&mut children, "FullVersion"),
            product_url: self.take_msg(&mut children, "ProductUrl"),
            vendor_url: self.take_msg(&mut children, "VendorUrl"),
            app_url: self.take_msg(&mut children, "AppUrl"),
            entries: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for c in children {
            if self.is(&c, "Category") && self.is_plain_msg(&c) {
                s.entries.push(ProductEntry::Category(self.msg(&c)));
            } else if self.is(&c, "Property") {
                s.entries.push(ProductEntry::Property(self.property(c)?));
            } else {
                s.extra.elements.push(c);
            }
        }
        Ok(s)
    }

    fn property(&self, e: Element) -> Result<Property, ParseError> {
        let (mut attrs, mut children, line) = split(e);
        let key = self.required(&mut attrs, "key", "Property", line)?;
        let ty = self.required(&mut attrs, "type", "Property", line)?;
        let mut p = Property {
            key,
            ty,
            qualifiers: self.take(&mut attrs, "qualifiers"),
            value: self.take(&mut attrs, "value"),
            user_configurable: self.take_bool(&mut attrs, "userConfigurable", "Property", line)?,
            password: self.take_bool(&mut attrs, "password", "Property", line)?,
            label: self.take_msg(&mut children, "Label"),
            description: self.take_msg(&mut children, "Description"),
            values: Vec::new(),
            extra: Extra { attrs, elements: Vec::new(), line },
        };
        for c in children {
            if self.is(&c, "Value") && c.elements().next().is_none() {
                let (mut attrs, _, line) = split(c);
                p.values.push(PropertyValue {
                    value: self.required(&mut attrs, "value", "Value", line)?,
                    configuration: self.take(&mut attrs, "configuration"),
                    extra: Extra { attrs, elements: Vec::new(), line },
                });
            } else {
                p.extra.elements.push(c);
            }
        }
        Ok(p)
    }
}

/// `xs:boolean`.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}
