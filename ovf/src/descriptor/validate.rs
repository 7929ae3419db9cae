//! What vCenter and ovftool reject, found before an import fails halfway.
//!
//! [`validate()`] returns every problem as a [`Diagnostic`] (severity, line, element, message)
//! instead of stopping at the first. Errors are structural: a reference to something that does
//! not exist, a duplicate id, a capacity that is not a number of bytes, a property default its
//! own type rejects. Warnings are for what is well-formed OVF but not supported by vSphere (an
//! unknown ResourceType or ResourceSubType, an unknown `vmw:Config` key) or what DSP0243 forbids
//! and vSphere tolerates; [`Options::strict`] makes those errors too.
//!
//! [`check_file_sizes`] compares `ovf:size` with the real files, through a lookup so that it works
//! for a directory, an OVA being read, or a test.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use super::*;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// vCenter/ovftool would reject the descriptor (or it is self-contradictory).
    Error,
    /// Well-formed but not supported by vSphere, or tolerated off-spec.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Source line (0 when the model was built, not parsed).
    pub line: u32,
    /// The element concerned, e.g. `Item` or `Disk`.
    pub element: String,
    /// What is wrong, naming the ids involved.
    pub message: String,
}

impl Diagnostic {
    /// `true` for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `LINE: <element>: message` (warnings prefixed with `warning: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        write!(f, "{}: <{}>: {}", self.line, self.element, self.message)
    }
}

/// Validation options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Treat "unsupported by vSphere" warnings as errors.
    pub strict: bool,
}

impl Options {
    /// Strict mode.
    pub fn strict() -> Self {
        Options { strict: true }
    }
}

/// ResourceType codes vSphere imports (see [`super::builder::resource_type`]).
pub const SUPPORTED_RESOURCE_TYPES: &[u32] =
    &[1, 3, 4, 5, 6, 10, 14, 15, 16, 17, 20, 21, 22, 23, 24];

/// ResourceSubType values vSphere knows (compared case-insensitively). A list such as
/// `buslogic lsilogic` is supported when one of its members is.
pub const SUPPORTED_RESOURCE_SUBTYPES: &[&str] = &[
    // IDE
    "piix3",
    "piix4",
    // SCSI
    "lsilogic",
    "buslogic",
    "lsilogicsas",
    "virtualscsi",
    // SATA, NVMe
    "ahci",
    "vmware.sata.ahci",
    "vmware.nvme.controller",
    // NICs
    "e1000",
    "e1000e",
    "pcnet32",
    "vmxnet",
    "vmxnet2",
    "vmxnet3",
    "vmxnet3vrdma",
    "sriovethernetcard",
    // CD, floppy
    "vmware.cdrom.remotepassthrough",
    "vmware.cdrom.remoteatapi",
    "vmware.cdrom.atapi",
    "vmware.cdrom.iso",
    "vmware.cdrom.passthrough",
    "vmware.floppy.remotedevice",
    "vmware.floppy.device",
    "vmware.floppy.image",
    // USB
    "vmware.usb.ehci",
    "vmware.usb.xhci",
    // Other devices
    "vmware.vmci",
    "vmware.vtpm",
    "vmware.nvdimm.device",
    "vmware.nvdimm.controller",
    "vmware.pci.passthrough",
    "vmware.pci.passthrough-vmiop",
    "vmware.pci.passthrough-ah",
    "vmware.pci.passthrough-dvx",
    "vmware.soundcard.ensoniq1371",
    "vmware.soundcard.hdaudio",
    "vmware.soundcard.sb16",
    "ensoniq1371",
    "vmware.serialport.device",
    "vmware.serialport.file",
    "vmware.serialport.pipe",
    "vmware.serialport.uri",
    "vmware.parallelport.device",
    "vmware.parallelport.file",
    "vmware.precisionclock",
    "vmware.watchdogtimer",
];

/// VM-level `vmw:Config` keys vSphere accepts (paths into `VirtualMachineConfigSpec`). vCenter
/// refuses an import with any other key.
pub const VMW_CONFIG_KEYS: &[&str] = &[
    "firmware",
    "uuid",
    "nestedHVEnabled",
    "memoryHotAddEnabled",
    "cpuHotAddEnabled",
    "cpuHotRemoveEnabled",
    "virtualSMCPresent",
    "virtualICH7MPresent",
    "vPMCEnabled",
    "simultaneousThreads",
    "sevEnabled",
    "sevSnpEnabled",
    "tdxEnabled",
    "motherboardLayout",
    "guestAutoLockEnabled",
    "maxMksConnections",
    "messageBusTunnelEnabled",
    "vmxStatsCollectionEnabled",
    "bootOptions.efiSecureBootEnabled",
    "bootOptions.bootDelay",
    "bootOptions.bootRetryEnabled",
    "bootOptions.bootRetryDelay",
    "bootOptions.enterBIOSSetup",
    "bootOptions.networkBootProtocol",
    "flags.vbsEnabled",
    "flags.vvtdEnabled",
    "flags.enableLogging",
    "flags.diskUuidEnabled",
    "flags.virtualMmuUsage",
    "flags.virtualExecUsage",
    "tools.syncTimeWithHost",
    "tools.syncTimeWithHostAllowed",
    "tools.afterPowerOn",
    "tools.afterResume",
    "tools.beforeGuestShutdown",
    "tools.beforeGuestStandby",
    "tools.beforeGuestReboot",
    "tools.toolsUpgradePolicy",
    "powerOpInfo.powerOffType",
    "powerOpInfo.resetType",
    "powerOpInfo.suspendType",
    "powerOpInfo.standbyAction",
    "cpuAllocation.shares.shares",
    "cpuAllocation.shares.level",
    "cpuAllocation.reservation",
    "cpuAllocation.limit",
    "memoryAllocation.shares.shares",
    "memoryAllocation.shares.level",
    "memoryAllocation.reservation",
    "memoryAllocation.limit",
    "latencySensitivity.level",
    "sgxInfo.flcMode",
    "sgxInfo.epcSize",
    "sgxInfo.lePubKeyHash",
    "sgxInfo.requireAttestation",
];

/// `ovf:transport` values vSphere delivers the OVF environment by.
pub const TRANSPORTS: &[&str] = &["iso", "com.vmware.guestInfo"];

struct V<'a> {
    env: &'a Envelope,
    opts: Options,
    out: Vec<Diagnostic>,
}

impl V<'_> {
    fn push(&mut self, severity: Severity, line: Line, element: &str, message: String) {
        self.out.push(Diagnostic { severity, line: line.0, element: element.to_string(), message });
    }

    fn error(&mut self, line: Line, element: &str, message: String) {
        self.push(Severity::Error, line, element, message);
    }

    fn warn(&mut self, line: Line, element: &str, message: String) {
        self.push(Severity::Warning, line, element, message);
    }

    /// A warning, or an error in strict mode.
    fn unsupported(&mut self, line: Line, element: &str, message: String) {
        let sev = if self.opts.strict { Severity::Error } else { Severity::Warning };
        self.push(sev, line, element, message);
    }
}

/// Validates a descriptor. Never panics, whatever the model holds.
pub fn validate(env: &Envelope, opts: &Options) -> Vec<Diagnostic> {
    let mut v = V { env, opts: *opts, out: Vec::new() };
    v.envelope();
    v.out.sort_by_key(|d| d.line);
    v.out
}

impl<'a> V<'a> {
    fn envelope(&mut self) {
        let env = self.env;
        let file_ids = self.references();
        let (disk_ids, config_ids, networks) = self.envelope_sections();
        for disk in env.disks() {
            self.disk(disk, &disk_ids);
        }

        let cx = RefCx {
            files: file_ids.keys().copied().collect(),
            disks: disk_ids.keys().copied().collect(),
            configs: config_ids,
            networks,
        };
        match &env.content {
            None => self.warn(
                env.extra.line,
                "Envelope",
                "no VirtualSystem or VirtualSystemCollection: nothing to deploy".into(),
            ),
            Some(c) => {
                let mut ids = HashMap::new();
                self.content(c, &cx, &mut ids);
            }
        }
        self.trailing_content();
    }

    /// `References`: unique, non-empty ids and hrefs that an OVA can hold; the file ids by
    /// their line.
    fn references(&mut self) -> HashMap<&'a str, Line> {
        let env = self.env;
        let mut file_ids: HashMap<&str, Line> = HashMap::new();
        let mut hrefs: HashMap<&str, Line> = HashMap::new();
        for f in env.files() {
            let line = f.extra.line;
            if f.id.trim().is_empty() {
                self.error(line, "File", "ovf:id is empty".into());
            }
            if let Some(first) = file_ids.insert(&f.id, line) {
                self.error(
                    line,
                    "File",
                    format!("ovf:id {:?} is already used on line {first}", f.id),
                );
            }
            if f.href.trim().is_empty() {
                self.error(line, "File", format!("file {:?} has an empty ovf:href", f.id));
            } else if let Some(first) = hrefs.insert(&f.href, line) {
                self.error(
                    line,
                    "File",
                    format!("ovf:href {:?} is already referenced on line {first}", f.href),
                );
            }
            if f.href.split(['/', '\\']).any(|c| c == "..") || f.href.starts_with('/') {
                self.unsupported(
                    line,
                    "File",
                    format!(
                        "ovf:href {:?} points outside the package directory (an OVA cannot hold it)",
                        f.href
                    ),
                );
            }
            for attr in ["size", "chunkSize"] {
                if let Some(v) = ovf_attr(&f.extra, attr) {
                    self.unsupported(
                        line,
                        "File",
                        format!("file {:?}: ovf:{attr} {v:?} is not a byte count", f.id),
                    );
                }
            }
            if f.chunk_size == Some(0) {
                self.error(line, "File", format!("file {:?} has ovf:chunkSize 0", f.id));
            }
        }

        file_ids
    }

    /// The envelope-level sections: disk ids, configuration ids and network names (each
    /// declared once), and sections that belong inside a VirtualSystem.
    fn envelope_sections(
        &mut self,
    ) -> (HashMap<&'a str, Line>, HashSet<&'a str>, HashSet<&'a str>) {
        let env = self.env;
        let mut disk_ids: HashMap<&str, Line> = HashMap::new();
        let mut config_ids: HashSet<&str> = HashSet::new();
        let mut networks: HashSet<&str> = HashSet::new();
        for s in &env.sections {
            match s {
                Section::Disk(d) => {
                    for disk in &d.disks {
                        if let Some(first) = disk_ids.insert(&disk.disk_id, disk.extra.line) {
                            self.error(
                                disk.extra.line,
                                "Disk",
                                format!(
                                    "ovf:diskId {:?} is already used on line {first}",
                                    disk.disk_id
                                ),
                            );
                        }
                    }
                }
                Section::Network(n) => {
                    for net in &n.networks {
                        if !networks.insert(&net.name) {
                            self.warn(
                                net.extra.line,
                                "Network",
                                format!("network {:?} is declared twice", net.name),
                            );
                        }
                    }
                }
                Section::DeploymentOption(d) => {
                    let mut defaults = 0;
                    for c in &d.configurations {
                        if !config_ids.insert(&c.id) {
                            self.error(
                                c.extra.line,
                                "Configuration",
                                format!("configuration {:?} is declared twice", c.id),
                            );
                        }
                        if c.default == Some(true) {
                            defaults += 1;
                        }
                    }
                    if defaults > 1 {
                        self.error(
                            d.extra.line,
                            "DeploymentOptionSection",
                            format!("{defaults} configurations are marked ovf:default"),
                        );
                    }
                }
                Section::OperatingSystem(_) | Section::VirtualHardware(_) => self.error(
                    s.line(),
                    s.kind(),
                    "belongs in a VirtualSystem, not at envelope level".into(),
                ),
                Section::Product(_) | Section::Eula(_) | Section::Annotation(_) => self.warn(
                    s.line(),
                    s.kind(),
                    "belongs in a VirtualSystem or VirtualSystemCollection; at envelope level \
                     vSphere ignores it"
                        .into(),
                ),
                Section::Other(e) => self.stray(e),
            }
        }
        (disk_ids, config_ids, networks)
    }

    /// A second content element after the first (the model keeps it as trailing XML).
    fn trailing_content(&mut self) {
        let env = self.env;
        for t in &env.trailing {
            if matches!(
                t.name.local.as_str(),
                "VirtualSystem" | "VirtualSystemCollection" | "Content"
            ) && (t.name.ns.is_none() || t.name.ns.as_deref() == Some(env.ovf_ns.as_str()))
            {
                self.error(
                    t.line,
                    &t.name.local,
                    "an Envelope holds one content element; this is a second one".into(),
                );
            }
        }
    }
}

impl V<'_> {
    fn disk(&mut self, disk: &Disk, disk_ids: &HashMap<&str, Line>) {
        let line = disk.extra.line;
        let id = &disk.disk_id;
        if let Some(f) = disk.file_ref.as_deref().filter(|f| !f.is_empty()) {
            if self.env.file(f).is_none() {
                self.error(
                    line,
                    "Disk",
                    format!("disk {id:?}: ovf:fileRef {f:?} is not a File in References"),
                );
            }
        }
        if let Some(p) = &disk.parent_ref {
            if p == id {
                self.error(line, "Disk", format!("disk {id:?} is its own ovf:parentRef"));
            } else if !disk_ids.contains_key(p.as_str()) {
                self.error(line, "Disk", format!("disk {id:?}: ovf:parentRef {p:?} is not a Disk"));
            }
        }
        let unit = match &disk.capacity_units {
            None => Some(1),
            Some(u) => {
                let m = parse_byte_units(u);
                if m.is_none() {
                    self.error(
                        line,
                        "Disk",
                        format!(
                            "disk {id:?}: ovf:capacityAllocationUnits {u:?} is not a byte unit \
                             (expected e.g. \"byte * 2^30\")"
                        ),
                    );
                }
                m
            }
        };
        let cap = disk.capacity.trim();
        if let Some(v) = ovf_attr(&disk.extra, "populatedSize") {
            self.unsupported(
                line,
                "Disk",
                format!("disk {id:?}: ovf:populatedSize {v:?} is not a byte count"),
            );
        }
        if let Some(prop) = cap.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            let known = all_products(self.env).any(|p| p.properties().any(|q| q.key == prop));
            if !known {
                self.error(
                    line,
                    "Disk",
                    format!("disk {id:?}: ovf:capacity refers to property {prop:?}, which no ProductSection declares"),
                );
            }
            return;
        }
        match cap.parse::<u64>() {
            Err(_) => self.error(
                line,
                "Disk",
                format!(
                    "disk {id:?}: ovf:capacity {:?} is not a non-negative integer",
                    disk.capacity
                ),
            ),
            Ok(0) => self.error(line, "Disk", format!("disk {id:?} has capacity 0")),
            Ok(n) => {
                let Some(unit) = unit else { return };
                match n.checked_mul(unit) {
                    None => self.error(
                        line,
                        "Disk",
                        format!("disk {id:?}: capacity {n} × {unit} bytes overflows 64 bits"),
                    ),
                    Some(bytes) => {
                        if let Some(pop) = disk.populated_size {
                            if pop > bytes {
                                self.warn(
                                    line,
                                    "Disk",
                                    format!("disk {id:?}: ovf:populatedSize {pop} exceeds the capacity of {bytes} bytes"),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn content<'c>(&mut self, c: &'c Content, cx: &RefCx, ids: &mut HashMap<&'c str, Line>) {
        let (kind, extra) = match c {
            Content::System(v) => ("VirtualSystem", &v.extra),
            Content::Collection(col) => ("VirtualSystemCollection", &col.extra),
        };
        match c.id() {
            None => self.error(extra.line, kind, "has no ovf:id".into()),
            Some(id) if id.trim().is_empty() => {
                self.error(extra.line, kind, "ovf:id is empty".into())
            }
            Some(id) => {
                if let Some(first) = ids.insert(id, extra.line) {
                    // ovftool and vCenter accept it (the fixtures import), but the ids no longer
                    // tell the members apart in the OVF environment.
                    self.unsupported(
                        extra.line,
                        kind,
                        format!("ovf:id {id:?} is already used on line {first}"),
                    );
                }
            }
        }
        let mut products: HashMap<(String, String), Line> = HashMap::new();
        let mut os_seen = false;
        let mut hw_seen = 0usize;
        for s in c.sections() {
            match s {
                Section::Disk(_) | Section::Network(_) | Section::DeploymentOption(_) => self
                    .error(
                        s.line(),
                        s.kind(),
                        format!("belongs at envelope level, not in a {kind}"),
                    ),
                Section::VirtualHardware(h) => {
                    if kind == "VirtualSystemCollection" {
                        self.error(
                            s.line(),
                            s.kind(),
                            "a VirtualSystemCollection has no hardware".into(),
                        );
                    }
                    hw_seen += 1;
                    self.hardware(h, cx);
                }
                Section::OperatingSystem(_) => {
                    if os_seen {
                        self.error(
                            s.line(),
                            s.kind(),
                            format!("a {kind} has one OperatingSystemSection; this is a second"),
                        );
                    }
                    os_seen = true;
                }
                Section::Product(p) => {
                    let k = (
                        p.class.clone().unwrap_or_default(),
                        p.instance.clone().unwrap_or_default(),
                    );
                    if let Some(first) = products.insert(k.clone(), p.extra.line) {
                        self.error(
                            p.extra.line,
                            "ProductSection",
                            format!(
                                "a ProductSection with class {:?} and instance {:?} already exists on line {first}",
                                k.0, k.1
                            ),
                        );
                    }
                    self.product(p, cx);
                }
                Section::Other(e) => self.stray(e),
                Section::Annotation(_) | Section::Eula(_) => {}
            }
        }
        match c {
            Content::System(v) => {
                if hw_seen == 0 {
                    self.error(
                        v.extra.line,
                        "VirtualSystem",
                        format!(
                            "VirtualSystem {:?} has no VirtualHardwareSection",
                            v.id.as_deref().unwrap_or("")
                        ),
                    );
                }
            }
            Content::Collection(col) => {
                for member in &col.contents {
                    self.content(member, cx, ids);
                }
            }
        }
    }

    /// An element kept verbatim that looks like OVF but could not be read as such.
    fn stray(&mut self, e: &Element) {
        const CORE: &[&str] = &[
            "References",
            "DiskSection",
            "NetworkSection",
            "DeploymentOptionSection",
            "VirtualSystem",
            "VirtualSystemCollection",
            "OperatingSystemSection",
            "VirtualHardwareSection",
            "ProductSection",
            "AnnotationSection",
            "EulaSection",
        ];
        let ovf = self.env.ovf_ns.as_str();
        match e.name.ns.as_deref() {
            // VMware writes OVF 2 sections (ovf2:PlacementGroupSection) into 1.x documents;
            // a core element of the document's own version in another namespace is a mix-up.
            Some(ns @ (OVF_NS | OVF2_NS | OVF09_NS))
                if ns != ovf && CORE.contains(&e.name.local.as_str()) =>
            {
                self.error(
                    e.line,
                    &e.name.local,
                    format!("is in OVF namespace {ns:?} but the Envelope is in {ovf:?}"),
                )
            }
            ns if (ns.is_none() || ns == Some(ovf))
                && matches!(e.name.local.as_str(), "Content" | "Section")
                && e.attr(Some(XSI_NS), "type").is_none() =>
            {
                self.error(
                    e.line,
                    &e.name.local,
                    "has no xsi:type (in the XML Schema instance namespace) naming what it is"
                        .into(),
                )
            }
            _ => {}
        }
    }

    fn hardware(&mut self, h: &VirtualHardwareSection, cx: &RefCx) {
        if h.items.is_empty() {
            self.warn(
                h.extra.line,
                "VirtualHardwareSection",
                "has no Items (no CPU, memory or devices)".into(),
            );
        }
        if let Some(t) = &h.transport {
            for tr in t.split_whitespace() {
                if !TRANSPORTS.contains(&tr) {
                    self.warn(
                        h.extra.line,
                        "VirtualHardwareSection",
                        format!(
                            "ovf:transport {tr:?} is not one vSphere provides (iso, com.vmware.guestInfo)"
                        ),
                    );
                }
            }
        }
        // InstanceIDs: unique per configuration (an item without ovf:configuration is in all)
        // and per ovf:bound (min/normal/max items of a range share their InstanceID).
        let mut seen: HashMap<&str, (Line, Option<&str>)> = HashMap::new();
        let mut bounds: HashMap<(&str, &str), Line> = HashMap::new();
        for item in &h.items {
            let el = item.kind.local_name();
            let line = item.line();
            let Some(id) = item.instance_id() else {
                self.error(line, el, "has no rasd:InstanceID".into());
                continue;
            };
            if let Some(b) = item.bound.as_deref().filter(|b| *b != "normal") {
                if let Some(first) = bounds.insert((id, b), line) {
                    self.error(
                        line,
                        el,
                        format!("InstanceID {id} has a second ovf:bound={b:?} item (first on line {first})"),
                    );
                }
                continue;
            }
            if let Some((first, conf)) = seen.get(id) {
                // An item with ovf:configuration overrides the unconditional item with the same
                // InstanceID in that configuration; two items clash only when both apply to
                // the same configuration.
                let clash = match (conf, item.configuration.as_deref()) {
                    (Some(a), Some(b)) => {
                        let a: HashSet<&str> = a.split_whitespace().collect();
                        b.split_whitespace().any(|x| a.contains(x))
                    }
                    (None, None) => true,
                    _ => false,
                };
                if clash {
                    self.error(
                        line,
                        el,
                        format!("InstanceID {id} is already used on line {first}"),
                    );
                }
            } else {
                seen.insert(id, (line, item.configuration.as_deref()));
            }
        }
        for item in &h.items {
            self.item(item, &seen, cx);
        }
        for c in &h.configs {
            if c.key.trim().is_empty() {
                self.error(c.extra.line, "vmw:Config", "vmw:key is empty".into());
            } else if !VMW_CONFIG_KEYS.contains(&c.key.as_str()) {
                self.unsupported(
                    c.extra.line,
                    "vmw:Config",
                    format!("vmw:key {:?} is not a VM setting vSphere accepts", c.key),
                );
            }
            if c.key == "firmware" && !matches!(c.value.as_str(), "efi" | "bios") {
                self.error(
                    c.extra.line,
                    "vmw:Config",
                    format!("firmware {:?} is not \"efi\" or \"bios\"", c.value),
                );
            }
        }
        for c in &h.extra_configs {
            if c.key.trim().is_empty() {
                self.error(c.extra.line, "vmw:ExtraConfig", "vmw:key is empty".into());
            }
        }
    }

    fn item(&mut self, item: &Item, ids: &HashMap<&str, (Line, Option<&str>)>, cx: &RefCx) {
        let el = item.kind.local_name();
        let line = item.line();
        let who = match item.instance_id() {
            Some(id) => format!("InstanceID {id}"),
            None => "item".to_string(),
        };
        let rt = self.item_type(item, line, el, &who);
        self.item_parent(item, ids, line, el, &who);
        self.item_references(item, cx, line, el, &who);
        self.item_quantities(item, rt, line, el, &who);
    }

    /// ResourceType (a number vSphere supports) and ResourceSubType; the type, if it parses.
    fn item_type(&mut self, item: &Item, line: Line, el: &str, who: &str) -> Option<u32> {
        // StorageItem/EthernetPortItem (OVF 2) carry their type in their element name.
        let rt_field = item.fields.get("ResourceType");
        let rt = match rt_field {
            None if item.kind == ItemKind::Item => {
                self.error(line, el, format!("{who} has no rasd:ResourceType"));
                None
            }
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(line, el, format!("{who}: ResourceType {v:?} is not a number"));
                    None
                }
            },
        };
        if let Some(n) = rt {
            if !SUPPORTED_RESOURCE_TYPES.contains(&n) {
                self.unsupported(
                    line,
                    el,
                    format!("{who}: ResourceType {n} is not supported by vSphere"),
                );
            }
        }
        if let Some(st) = item.resource_subtype().filter(|s| !s.is_empty()) {
            let known = st
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .any(|s| SUPPORTED_RESOURCE_SUBTYPES.iter().any(|k| k.eq_ignore_ascii_case(s)));
            if !known {
                self.unsupported(
                    line,
                    el,
                    format!("{who}: ResourceSubType {st:?} is not supported by vSphere"),
                );
            }
        }
        rt
    }

    /// Parent: the InstanceID of another item of the section (vSphere adds a missing NVDIMM
    /// controller itself).
    fn item_parent(
        &mut self,
        item: &Item,
        ids: &HashMap<&str, (Line, Option<&str>)>,
        line: Line,
        el: &str,
        who: &str,
    ) {
        if let Some(p) = item.parent() {
            let nvdimm = item
                .resource_subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("vmware.nvdimm.device"));
            if !ids.contains_key(p) && nvdimm {
                // vSphere adds the NVDIMM controller itself when a VM has NVDIMMs.
                self.warn(
                    line,
                    el,
                    format!("{who}: Parent {p} is missing; vSphere will add an NVDIMM controller"),
                );
            } else if !ids.contains_key(p) {
                self.error(
                    line,
                    el,
                    format!("{who}: Parent {p} is not the InstanceID of an item in this VirtualHardwareSection"),
                );
            } else if item.instance_id() == Some(p) {
                self.error(line, el, format!("{who} is its own Parent"));
            }
        }
    }

    /// HostResource, Connection and ovf:configuration name a disk, file, network or
    /// configuration the envelope declares.
    fn item_references(&mut self, item: &Item, cx: &RefCx, line: Line, el: &str, who: &str) {
        for hr in item.host_resources() {
            if let Some(d) = hr.strip_prefix("ovf:/disk/") {
                if !cx.disks.contains(d) {
                    self.error(
                        line,
                        el,
                        format!("{who}: HostResource {hr:?} names no Disk in the DiskSection"),
                    );
                }
            } else if let Some(f) = hr.strip_prefix("ovf:/file/") {
                if !cx.files.contains(f) {
                    self.error(
                        line,
                        el,
                        format!("{who}: HostResource {hr:?} names no File in References"),
                    );
                }
            }
        }
        for c in item.connections() {
            if !c.is_empty() && !cx.networks.contains(c) {
                self.warn(
                    line,
                    el,
                    format!("{who}: Connection {c:?} is not a network of the NetworkSection"),
                );
            }
        }
        if let Some(conf) = &item.configuration {
            for c in conf.split_whitespace() {
                if !cx.configs.contains(c) {
                    self.error(
                        line,
                        el,
                        format!("{who}: ovf:configuration {c:?} is not a Configuration of the DeploymentOptionSection"),
                    );
                }
            }
        }
    }

    /// Memory units and CPU/memory quantities that vSphere reads as numbers.
    fn item_quantities(&mut self, item: &Item, rt: Option<u32>, line: Line, el: &str, who: &str) {
        if rt == Some(4) {
            if let Some(u) = item.fields.get("AllocationUnits") {
                if parse_byte_units(u).is_none() {
                    self.error(
                        line,
                        el,
                        format!("{who}: memory AllocationUnits {u:?} is not a byte unit"),
                    );
                }
            }
        }
        if matches!(rt, Some(3 | 4)) {
            if let Some(q) = item.fields.get("VirtualQuantity") {
                if q.parse::<u64>().is_err() {
                    self.error(
                        line,
                        el,
                        format!("{who}: VirtualQuantity {q:?} is not a non-negative integer"),
                    );
                }
            }
        }
    }

    fn product(&mut self, p: &ProductSection, cx: &RefCx) {
        let mut keys: HashMap<&str, Line> = HashMap::new();
        for prop in p.properties() {
            let line = prop.extra.line;
            let key = prop.key.as_str();
            if key.trim().is_empty() {
                self.error(line, "Property", "ovf:key is empty".into());
                continue;
            }
            if let Some(first) = keys.insert(key, line) {
                self.error(
                    line,
                    "Property",
                    format!("key {key:?} is already declared on line {first}"),
                );
            }
            if key.contains(char::is_whitespace) || key.contains(':') {
                self.error(line, "Property", format!("key {key:?} contains whitespace or ':'"));
            } else if key.contains('.') {
                // A warning even in strict mode: strict is about what vSphere rejects, and
                // vSphere (and VMware's own appliances, `guestinfo.*`) use dotted keys.
                self.warn(
                    line,
                    "Property",
                    format!("key {key:?} contains '.', which DSP0243 forbids in property keys (vSphere accepts it)"),
                );
            }
            let ty = match resolve_type(&prop.ty) {
                Ok((t, None)) => t,
                Ok((t, Some(note))) => {
                    self.unsupported(
                        line,
                        "Property",
                        format!("key {key:?}: ovf:type {:?} {note}", prop.ty),
                    );
                    t
                }
                Err(()) => {
                    self.error(
                        line,
                        "Property",
                        format!(
                            "key {key:?}: ovf:type {:?} is not a property type (string, boolean, \
                             uint8..sint64, real32, real64)",
                            prop.ty
                        ),
                    );
                    continue;
                }
            };
            let quals = match Qualifiers::parse(prop.qualifiers.as_deref().unwrap_or("")) {
                Ok(q) => q,
                Err(e) => {
                    self.error(line, "Property", format!("key {key:?}: ovf:qualifiers: {e}"));
                    Qualifiers::default()
                }
            };
            for q in &quals.other {
                if !VMWARE_QUALIFIERS.contains(&q.as_str()) {
                    self.unsupported(
                        line,
                        "Property",
                        format!("key {key:?}: qualifier {q:?} is neither OVF's nor VMware's"),
                    );
                }
            }
            if let Some(v) = &prop.value {
                // An empty default means "no value yet": vCenter asks the deployer.
                if !v.is_empty() {
                    if let Err(e) = check_value(ty, &quals, v) {
                        self.error(line, "Property", format!("key {key:?}: default {v:?} {e}"));
                    }
                }
            }
            for val in &prop.values {
                if val.value.is_empty() {
                    continue;
                }
                if let Err(e) = check_value(ty, &quals, &val.value) {
                    self.error(
                        val.extra.line,
                        "Value",
                        format!("key {key:?}: value {:?} {e}", val.value),
                    );
                }
                if let Some(c) = &val.configuration {
                    if !cx.configs.contains(c.as_str()) {
                        self.error(
                            val.extra.line,
                            "Value",
                            format!("key {key:?}: ovf:configuration {c:?} is not a Configuration"),
                        );
                    }
                }
            }
        }
    }
}

/// Every ProductSection in the content tree (VirtualSystems and collections).
fn all_products(env: &Envelope) -> impl Iterator<Item = &ProductSection> {
    let mut stack: Vec<&Content> = env.content.iter().collect();
    let mut out = Vec::new();
    while let Some(c) = stack.pop() {
        out.extend(c.sections().iter().filter_map(|s| match s {
            Section::Product(p) => Some(p),
            _ => None,
        }));
        if let Content::Collection(col) = c {
            stack.extend(col.contents.iter());
        }
    }
    out.into_iter()
}

/// An unmodeled OVF attribute kept verbatim (a typed field could not hold its value).
fn ovf_attr<'a>(extra: &'a Extra, local: &str) -> Option<&'a str> {
    extra
        .attrs
        .iter()
        .find(|a| {
            a.name.local == local
                && matches!(a.name.ns.as_deref(), None | Some(OVF_NS | OVF2_NS | OVF09_NS))
        })
        .map(|a| a.value.as_str())
}

/// VMware's own property qualifiers (`vmw:qualifiers` spellings that reach `ovf:qualifiers`).
pub const VMWARE_QUALIFIERS: &[&str] = &["Ip", "Subnet", "SearchPath", "Expression", "Netmask"];

/// Maps `ovf:type` to a type to check values with; `Some(note)` when vSphere accepts it but
/// DSP0243 does not (VMware's `int`/`real`, capitalized names).
fn resolve_type(ty: &str) -> Result<(PropertyType, Option<&'static str>), ()> {
    if let Ok(t) = ty.parse::<PropertyType>() {
        return Ok((t, None));
    }
    if let Some(t) =
        PropertyType::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(ty.trim()))
    {
        return Ok((t, Some("is not spelled in lower case as OVF requires")));
    }
    match ty.trim() {
        "int" => Ok((
            PropertyType::Sint64,
            Some("is VMware's vApp type, not an OVF type (use sint32/uint32...)"),
        )),
        "real" => {
            Ok((PropertyType::Real64, Some("is VMware's vApp type, not an OVF type (use real64)")))
        }
        _ => Err(()),
    }
}

struct RefCx<'a> {
    files: HashSet<&'a str>,
    disks: HashSet<&'a str>,
    configs: HashSet<&'a str>,
    networks: HashSet<&'a str>,
}

/// The property qualifiers OVF defines (DSP0243 9.5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qualifiers {
    /// `MinLen(n)`.
    pub min_len: Option<usize>,
    /// `MaxLen(n)`.
    pub max_len: Option<usize>,
    /// `ValueMap{"a","b"}`: the allowed values (`..` ranges kept as written).
    pub value_map: Option<Vec<String>>,
    /// `MinValue(n)`.
    pub min_value: Option<i128>,
    /// `MaxValue(n)`.
    pub max_value: Option<i128>,
    /// Qualifiers OVF does not define (VMware's `Ip`, `Subnet`, …), as written.
    pub other: Vec<String>,
}

impl Qualifiers {
    /// Parses a qualifier string such as `MinLen(1) MaxLen(64)` or `ValueMap{"a", "b"}`.
    pub fn parse(s: &str) -> Result<Qualifiers, String> {
        let mut q = Qualifiers::default();
        let mut rest = s.trim();
        while !rest.is_empty() {
            rest = rest.trim_start_matches([',', ' ', '\t', '\n', '\r']);
            if rest.is_empty() {
                break;
            }
            let word_end = rest.find([',', ' ', '(', '{']).unwrap_or(rest.len());
            let Some(name_end) = rest.find(['(', '{']).filter(|&i| i == word_end) else {
                // A bare word such as VMware's `Ip` or `Subnet`.
                q.other.push(rest[..word_end].to_string());
                rest = &rest[word_end..];
                continue;
            };
            let name = rest[..name_end].trim();
            let close = if rest.as_bytes()[name_end] == b'(' { ')' } else { '}' };
            let body_end = rest[name_end + 1..]
                .find(close)
                .map(|i| name_end + 1 + i)
                .ok_or_else(|| format!("{name}: missing '{close}'"))?;
            let body = rest[name_end + 1..body_end].trim();
            let num = |body: &str| {
                body.parse::<i128>()
                    .or_else(|_| match body.parse::<f64>() {
                        // `MinValue(1.0)` on a real property: bound by the integer part.
                        Ok(f) if f.is_finite() => Ok(f as i128),
                        _ => Err(()),
                    })
                    .map_err(|_| format!("{name}({body}): not a number"))
            };
            match name {
                "MinLen" => q.min_len = Some(num(body)?.try_into().map_err(|_| "MinLen < 0")?),
                "MaxLen" => q.max_len = Some(num(body)?.try_into().map_err(|_| "MaxLen < 0")?),
                "MinValue" => q.min_value = Some(num(body)?),
                "MaxValue" => q.max_value = Some(num(body)?),
                "ValueMap" => {
                    q.value_map = Some(
                        body.split(',').map(|v| v.trim().trim_matches('"').to_string()).collect(),
                    )
                }
                other => q.other.push(format!("{other}({body})")),
            }
            rest = &rest[body_end + 1..];
        }
        Ok(q)
    }
}

/// Checks one value against a type and qualifiers; the error completes "value … ".
pub fn check_value(ty: PropertyType, q: &Qualifiers, v: &str) -> Result<(), String> {
    match ty {
        PropertyType::String => {}
        PropertyType::Boolean => {
            if !matches!(v, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") {
                return Err("is not a boolean (true or false)".into());
            }
        }
        PropertyType::Real32 | PropertyType::Real64 => {
            if v.trim().parse::<f64>().is_err() {
                return Err(format!("is not a {ty} number"));
            }
        }
        _ => {
            let (lo, hi) = ty.int_range().unwrap_or((i128::MIN, i128::MAX));
            let n: i128 = v.trim().parse().map_err(|_| format!("is not an integer ({ty})"))?;
            if n < lo || n > hi {
                return Err(format!("is out of range for {ty} ({lo}..={hi})"));
            }
            if let Some(min) = q.min_value {
                if n < min {
                    return Err(format!("is below MinValue({min})"));
                }
            }
            if let Some(max) = q.max_value {
                if n > max {
                    return Err(format!("is above MaxValue({max})"));
                }
            }
        }
    }
    let len = v.chars().count();
    if let Some(min) = q.min_len {
        if len < min && ty == PropertyType::String {
            return Err(format!("is shorter than MinLen({min})"));
        }
    }
    if let Some(max) = q.max_len {
        if len > max {
            return Err(format!("is longer than MaxLen({max})"));
        }
    }
    if let Some(map) = &q.value_map {
        let allowed = map.iter().any(|m| {
            if m == v {
                return true;
            }
            // Integer ranges `a..b` as DSP0004 allows in ValueMaps.
            if let (Some((a, b)), Ok(n)) = (m.split_once(".."), v.trim().parse::<i128>()) {
                let a = a.trim().parse::<i128>().unwrap_or(i128::MIN);
                let b = b.trim().parse::<i128>().unwrap_or(i128::MAX);
                return a <= n && n <= b;
            }
            false
        });
        if !allowed {
            return Err(format!("is not in ValueMap{{{}}}", map.join(",")));
        }
    }
    Ok(())
}

/// Compares each `File`'s `ovf:size` with the real size from `size_of(href)`; `None` from the
/// lookup means the file is missing (an error only when `require_present`). Compressed and chunked files are skipped (their size on
/// disk is not the transfer size).
pub fn check_file_sizes(
    env: &Envelope,
    size_of: impl Fn(&str) -> Option<u64>,
    require_present: bool,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for f in env.files() {
        if f.compression.is_some() || f.chunk_size.is_some() {
            continue;
        }
        let line = f.extra.line.0;
        match (size_of(&f.href), f.size) {
            (None, _) if !require_present => {}
            (None, _) => out.push(Diagnostic {
                severity: Severity::Error,
                line,
                element: "File".into(),
                message: format!("file {:?} ({}) is missing", f.id, f.href),
            }),
            (Some(real), Some(declared)) if real != declared => out.push(Diagnostic {
                severity: Severity::Error,
                line,
                element: "File".into(),
                message: format!(
                    "file {:?} ({}): ovf:size is {declared} but the file has {real} bytes",
                    f.id, f.href
                ),
            }),
            _ => {}
        }
    }
    out
}

/// [`check_file_sizes`] against files next to the descriptor in `dir`.
pub fn check_files_in_dir(env: &Envelope, dir: &Path, require_present: bool) -> Vec<Diagnostic> {
    let lookup = |href: &str| {
        // Only plain relative paths; URLs and escapes are reported by `validate`.
        if href.contains("://") || href.split(['/', '\\']).any(|c| c == "..") {
            return None;
        }
        std::fs::metadata(dir.join(href)).ok().filter(|m| m.is_file()).map(|m| m.len())
    };
    check_file_sizes(env, lookup, require_present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_and_values() {
        let q = Qualifiers::parse("MinLen(1) MaxLen(3)").unwrap();
        assert_eq!((q.min_len, q.max_len), (Some(1), Some(3)));
        assert!(check_value(PropertyType::String, &q, "abcd").is_err());
        assert!(check_value(PropertyType::String, &q, "").is_err());
        assert!(check_value(PropertyType::String, &q, "ab").is_ok());
        let q = Qualifiers::parse("ValueMap{\"a\", \"b\"}").unwrap();
        assert!(check_value(PropertyType::String, &q, "a").is_ok());
        assert!(check_value(PropertyType::String, &q, "c").is_err());
        let q = Qualifiers::parse("ValueMap{\"1..10\"}").unwrap();
        assert!(check_value(PropertyType::Uint8, &q, "5").is_ok());
        assert!(check_value(PropertyType::Uint8, &q, "11").is_err());
        let none = Qualifiers::default();
        assert!(check_value(PropertyType::Uint8, &none, "300").is_err());
        assert!(check_value(PropertyType::Sint8, &none, "-128").is_ok());
        assert!(check_value(PropertyType::Boolean, &none, "maybe").is_err());
        assert!(check_value(PropertyType::Real64, &none, "1.5").is_ok());
        assert_eq!(Qualifiers::parse("Bogus(1) Ip").unwrap().other, ["Bogus(1)", "Ip"]);
        assert!(Qualifiers::parse("MaxLen(x)").is_err());
        assert!(Qualifiers::parse("MaxLen(3").is_err());
    }
}
