//! Typed [`Envelope`] → element tree → text.
//!
//! Modeled fields are written in the order the OVF schema wants them, followed by what was kept
//! verbatim. Namespaces come from the root's declarations; the XML writer declares whatever an
//! element needs and is not in scope, so built and edited models always write valid XML.

use super::*;
use crate::xml::{self, Name, Node};

/// Standard namespace declarations for a new OVF 1.x document.
pub(crate) fn standard_decls(ovf: &str) -> NsDecls {
    NsDecls(
        [
            (None, ovf),
            (Some("ovf"), ovf),
            (Some("cim"), CIM_NS),
            (Some("rasd"), RASD_NS),
            (Some("vmw"), VMW_NS),
            (Some("vssd"), VSSD_NS),
            (Some("xsi"), XSI_NS),
        ]
        .into_iter()
        .map(|(p, u)| (p.map(str::to_string), u.to_string()))
        .collect(),
    )
}

struct W<'a> {
    ovf: &'a str,
}

impl W<'_> {
    fn el(&self, local: &str) -> Element {
        if self.ovf.is_empty() {
            Element::new(Name::local(local))
        } else {
            Element::new(Name::new(self.ovf, None, local))
        }
    }

    fn an(&self, local: &str) -> Name {
        Name::new(self.attr_ns(), Some("ovf"), local)
    }

    /// The namespace of `ovf:` attributes (OVF 1 for documents without a namespace).
    fn attr_ns(&self) -> &str {
        if self.ovf.is_empty() {
            OVF_NS
        } else {
            self.ovf
        }
    }

    /// Unmodeled attributes, minus any that a set typed field now replaces.
    fn extra_attrs(&self, extra: &Extra, typed: &[(&str, bool)]) -> Vec<Attr> {
        extra
            .attrs
            .iter()
            .filter(|a| {
                !typed.iter().any(|(local, set)| {
                    *set && a.name.local == *local
                        && (a.name.ns.is_none() || a.name.ns.as_deref() == Some(self.attr_ns()))
                })
            })
            .cloned()
            .collect()
    }

    fn attr(&self, e: &mut Element, local: &str, v: Option<&str>) {
        if let Some(v) = v {
            e.attrs.push(Attr { name: self.an(local), value: v.to_string() });
        }
    }

    fn bool_attr(&self, e: &mut Element, local: &str, v: Option<bool>) {
        self.attr(e, local, v.map(|b| if b { "true" } else { "false" }));
    }

    fn msg(&self, e: &mut Element, local: &str, m: Option<&Msg>) {
        if let Some(m) = m {
            let mut c = self.el(local);
            self.attr(&mut c, "msgid", m.msgid.as_deref());
            if !m.text.is_empty() {
                c.children.push(Node::Text(m.text.clone()));
            }
            e.children.push(Node::Element(c));
        }
    }

    /// Starts an element for a section, as `<Section xsi:type>` if it was read that way.
    fn section_el(&self, kind: &str, extra: &Extra) -> Element {
        let legacy = extra
            .attr(Some(XSI_NS), "type")
            .and_then(|t| t.rsplit(':').next())
            .is_some_and(|t| t.strip_suffix("_Type") == Some(kind));
        let mut e = self.el(if legacy { "Section" } else { kind });
        e.line = extra.line;
        e
    }

    fn finish(&self, mut e: Element, extra: &Extra) -> Element {
        e.attrs.extend(extra.attrs.iter().cloned());
        e.children.extend(extra.elements.iter().cloned().map(Node::Element));
        e
    }

    fn envelope(&self, env: &Envelope) -> Element {
        let mut root = self.el("Envelope");
        root.ns_decls = if env.ns_decls.0.is_empty() && !self.ovf.is_empty() {
            standard_decls(self.ovf)
        } else {
            env.ns_decls.clone()
        };
        root.attrs.extend(env.extra.attrs.iter().cloned());
        if let Some(r) = &env.references {
            root.children.push(Node::Element(self.references(r)));
        }
        for s in &env.sections {
            root.children.push(Node::Element(self.section(s)));
        }
        if let Some(c) = &env.content {
            root.children.push(Node::Element(self.content(c)));
        }
        root.children.extend(env.trailing.iter().cloned().map(Node::Element));
        root.children.extend(env.extra.elements.iter().cloned().map(Node::Element));
        root
    }

    fn references(&self, r: &References) -> Element {
        let mut e = self.el("References");
        for f in &r.files {
            let mut fe = self.el("File");
            self.attr(&mut fe, "href", Some(&f.href));
            self.attr(&mut fe, "id", Some(&f.id));
            self.attr(&mut fe, "size", f.size.map(|s| s.to_string()).as_deref());
            self.attr(&mut fe, "compression", f.compression.as_deref());
            self.attr(&mut fe, "chunkSize", f.chunk_size.map(|s| s.to_string()).as_deref());
            let mut extra = f.extra.clone();
            extra.attrs = self.extra_attrs(
                &f.extra,
                &[("size", f.size.is_some()), ("chunkSize", f.chunk_size.is_some())],
            );
            e.children.push(Node::Element(self.finish(fe, &extra)));
        }
        self.finish(e, &r.extra)
    }

    fn content(&self, c: &Content) -> Element {
        match c {
            Content::System(v) => {
                let mut e = self.content_el("VirtualSystem", &v.extra);
                self.attr(&mut e, "id", v.id.as_deref());
                self.msg(&mut e, "Info", v.info.as_ref());
                self.msg(&mut e, "Name", v.name.as_ref());
                for s in &v.sections {
                    e.children.push(Node::Element(self.section(s)));
                }
                self.finish(e, &v.extra)
            }
            Content::Collection(col) => {
                let mut e = self.content_el("VirtualSystemCollection", &col.extra);
                self.attr(&mut e, "id", col.id.as_deref());
                self.msg(&mut e, "Info", col.info.as_ref());
                self.msg(&mut e, "Name", col.name.as_ref());
                for s in &col.sections {
                    e.children.push(Node::Element(self.section(s)));
                }
                for c in &col.contents {
                    e.children.push(Node::Element(self.content(c)));
                }
                self.finish(e, &col.extra)
            }
        }
    }

    fn content_el(&self, kind: &str, extra: &Extra) -> Element {
        let legacy = extra
            .attr(Some(XSI_NS), "type")
            .and_then(|t| t.rsplit(':').next())
            .is_some_and(|t| t.strip_suffix("_Type") == Some(kind));
        let mut e = self.el(if legacy { "Content" } else { kind });
        e.line = extra.line;
        e
    }

    fn section(&self, s: &Section) -> Element {
        match s {
            Section::Other(e) => e.clone(),
            Section::Disk(d) => {
                let mut e = self.section_el("DiskSection", &d.extra);
                self.msg(&mut e, "Info", d.info.as_ref());
                for disk in &d.disks {
                    let mut de = self.el("Disk");
                    self.attr(&mut de, "capacity", Some(&disk.capacity));
                    self.attr(&mut de, "capacityAllocationUnits", disk.capacity_units.as_deref());
                    self.attr(&mut de, "diskId", Some(&disk.disk_id));
                    self.attr(&mut de, "fileRef", disk.file_ref.as_deref());
                    self.attr(&mut de, "format", disk.format.as_deref());
                    self.attr(&mut de, "parentRef", disk.parent_ref.as_deref());
                    self.attr(
                        &mut de,
                        "populatedSize",
                        disk.populated_size.map(|s| s.to_string()).as_deref(),
                    );
                    let mut extra = disk.extra.clone();
                    extra.attrs = self.extra_attrs(
                        &disk.extra,
                        &[("populatedSize", disk.populated_size.is_some())],
                    );
                    e.children.push(Node::Element(self.finish(de, &extra)));
                }
                self.finish(e, &d.extra)
            }
            Section::Network(n) => {
                let mut e = self.section_el("NetworkSection", &n.extra);
                self.msg(&mut e, "Info", n.info.as_ref());
                for net in &n.networks {
                    let mut ne = self.el("Network");
                    self.attr(&mut ne, "name", Some(&net.name));
                    self.msg(&mut ne, "Description", net.description.as_ref());
                    e.children.push(Node::Element(self.finish(ne, &net.extra)));
                }
                self.finish(e, &n.extra)
            }
            Section::DeploymentOption(d) => {
                let mut e = self.section_el("DeploymentOptionSection", &d.extra);
                self.msg(&mut e, "Info", d.info.as_ref());
                for c in &d.configurations {
                    let mut ce = self.el("Configuration");
                    self.attr(&mut ce, "id", Some(&c.id));
                    self.bool_attr(&mut ce, "default", c.default);
                    self.msg(&mut ce, "Label", c.label.as_ref());
                    self.msg(&mut ce, "Description", c.description.as_ref());
                    e.children.push(Node::Element(self.finish(ce, &c.extra)));
                }
                self.finish(e, &d.extra)
            }
            Section::OperatingSystem(o) => {
                let mut e = self.section_el("OperatingSystemSection", &o.extra);
                self.attr(&mut e, "id", o.id.as_deref());
                self.attr(&mut e, "version", o.version.as_deref());
                if let Some(t) = &o.os_type {
                    e.attrs.push(Attr {
                        name: Name::new(VMW_NS, Some("vmw"), "osType"),
                        value: t.clone(),
                    });
                }
                self.msg(&mut e, "Info", o.info.as_ref());
                self.msg(&mut e, "Description", o.description.as_ref());
                self.finish(e, &o.extra)
            }
            Section::VirtualHardware(h) => self.hardware(h),
            Section::Product(p) => self.product(p),
            Section::Annotation(a) => {
                let mut e = self.section_el("AnnotationSection", &a.extra);
                self.msg(&mut e, "Info", a.info.as_ref());
                self.msg(&mut e, "Annotation", a.annotation.as_ref());
                self.finish(e, &a.extra)
            }
            Section::Eula(a) => {
                let mut e = self.section_el("EulaSection", &a.extra);
                self.msg(&mut e, "Info", a.info.as_ref());
                self.msg(&mut e, "License", a.license.as_ref());
                self.finish(e, &a.extra)
            }
        }
    }

    fn cim(&self, mut e: Element, f: &CimFields, configs: &[VmwConfig]) -> Element {
        for field in &f.fields {
            let mut fe = Element::new(field.name.clone());
            fe.attrs = field.attrs.clone();
            fe.line = field.line;
            if !field.value.is_empty() {
                fe.children.push(Node::Text(field.value.clone()));
            }
            e.children.push(Node::Element(fe));
        }
        for c in configs {
            e.children.push(Node::Element(vmw_config_element(c, "Config", self.ovf)));
        }
        self.finish(e, &f.extra)
    }

    fn hardware(&self, h: &VirtualHardwareSection) -> Element {
        let mut e = self.section_el("VirtualHardwareSection", &h.extra);
        self.attr(&mut e, "id", h.id.as_deref());
        self.attr(&mut e, "transport", h.transport.as_deref());
        self.msg(&mut e, "Info", h.info.as_ref());
        if let Some(sys) = &h.system {
            let se = self.cim(self.el("System"), sys, &[]);
            e.children.push(Node::Element(se));
        }
        for item in &h.items {
            let mut ie = self.el(item.kind.local_name());
            self.attr(&mut ie, "bound", item.bound.as_deref());
            self.attr(&mut ie, "configuration", item.configuration.as_deref());
            self.bool_attr(&mut ie, "required", item.required);
            let ie = self.cim(ie, &item.fields, &item.configs);
            e.children.push(Node::Element(ie));
        }
        for c in &h.configs {
            e.children.push(Node::Element(vmw_config_element(c, "Config", self.ovf)));
        }
        for c in &h.extra_configs {
            e.children.push(Node::Element(vmw_config_element(c, "ExtraConfig", self.ovf)));
        }
        self.finish(e, &h.extra)
    }

    fn product(&self, p: &ProductSection) -> Element {
        let mut e = self.section_el("ProductSection", &p.extra);
        self.attr(&mut e, "class", p.class.as_deref());
        self.attr(&mut e, "instance", p.instance.as_deref());
        self.msg(&mut e, "Info", p.info.as_ref());
        self.msg(&mut e, "Product", p.product.as_ref());
        self.msg(&mut e, "Vendor", p.vendor.as_ref());
        self.msg(&mut e, "Version", p.version.as_ref());
        self.msg(&mut e, "FullVersion", p.full_version.as_ref());
        self.msg(&mut e, "ProductUrl", p.product_url.as_ref());
        self.msg(&mut e, "VendorUrl", p.vendor_url.as_ref());
        self.msg(&mut e, "AppUrl", p.app_url.as_ref());
        // Icons and unknown children go before the properties, where the schema puts Icon.
        e.children.extend(p.extra.elements.iter().cloned().map(Node::Element));
        for entry in &p.entries {
            match entry {
                ProductEntry::Category(c) => self.msg(&mut e, "Category", Some(c)),
                ProductEntry::Property(prop) => {
                    let mut pe = self.el("Property");
                    self.attr(&mut pe, "key", Some(&prop.key));
                    self.attr(&mut pe, "type", Some(&prop.ty));
                    self.attr(&mut pe, "qualifiers", prop.qualifiers.as_deref());
                    self.attr(&mut pe, "value", prop.value.as_deref());
                    self.bool_attr(&mut pe, "userConfigurable", prop.user_configurable);
                    self.bool_attr(&mut pe, "password", prop.password);
                    self.msg(&mut pe, "Label", prop.label.as_ref());
                    self.msg(&mut pe, "Description", prop.description.as_ref());
                    for v in &prop.values {
                        let mut ve = self.el("Value");
                        self.attr(&mut ve, "value", Some(&v.value));
                        self.attr(&mut ve, "configuration", v.configuration.as_deref());
                        pe.children.push(Node::Element(self.finish(ve, &v.extra)));
                    }
                    e.children.push(Node::Element(self.finish(pe, &prop.extra)));
                }
            }
        }
        e.attrs.extend(p.extra.attrs.iter().cloned());
        e
    }
}

/// A `vmw:Config`/`vmw:ExtraConfig` element.
pub(crate) fn vmw_config_element(c: &VmwConfig, local: &str, ovf: &str) -> Element {
    let ovf = if ovf.is_empty() { OVF_NS } else { ovf };
    let mut e = Element::new(Name::new(VMW_NS, Some("vmw"), local));
    e.line = c.extra.line;
    if let Some(r) = c.required {
        e.attrs.push(Attr {
            name: Name::new(ovf, Some("ovf"), "required"),
            value: if r { "true" } else { "false" }.into(),
        });
    }
    e.attrs.push(Attr { name: Name::new(VMW_NS, Some("vmw"), "key"), value: c.key.clone() });
    e.attrs.push(Attr { name: Name::new(VMW_NS, Some("vmw"), "value"), value: c.value.clone() });
    e.attrs.extend(c.extra.attrs.iter().cloned());
    e.children.extend(c.extra.elements.iter().cloned().map(Node::Element));
    e
}

impl Envelope {
    /// The descriptor as an element tree.
    pub fn to_element(&self) -> Element {
        W { ovf: &self.ovf_ns }.envelope(self)
    }

    /// The descriptor as a UTF-8 document.
    pub fn to_xml(&self) -> String {
        xml::write_document(&self.to_element())
    }
}
