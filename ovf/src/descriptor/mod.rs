//! The OVF descriptor (`.ovf`): model, parser, writer, validation and builder.
//!
//! An [`Envelope`] is a typed view of a descriptor: References, the envelope-level sections
//! (DiskSection, NetworkSection, DeploymentOptionSection, …) and the content — one
//! [`VirtualSystem`] or a [`VirtualSystemCollection`] of them, each with its own sections
//! (OperatingSystemSection, VirtualHardwareSection, ProductSection, AnnotationSection,
//! EulaSection, …). Anything this crate does not model — vendor sections, unknown elements
//! and attributes, namespace declarations — is kept as generic [`Element`]s and [`Attr`]s in
//! place, so a descriptor we did not write survives [`Envelope::parse`] →
//! [`Envelope::to_xml`] → [`Envelope::parse`] with the same meaning (`==` on the model).
//!
//! OVF 1.x (`http://schemas.dmtf.org/ovf/envelope/1`), 2.0 (`…/envelope/2`) and VMware's 0.9
//! (`http://www.vmware.com/schema/ovf/1/envelope`, with `<Section xsi:type="…">`) are read; a
//! document keeps its namespace when written back.
//!
//! - [`Envelope::parse`] and [`Envelope::from_bytes`] read (hostile-input safe: no DOCTYPE,
//!   size cap, line numbers in every error).
//! - [`Envelope::to_xml`] writes.
//! - [`builder`] builds a descriptor for a template (units, ResourceType codes, references).
//! - [`validate`] finds what vCenter and ovftool reject, as [`validate::Diagnostic`]s.
//!
//! ```
//! use ovf::descriptor::Envelope;
//! let mut env = Envelope::parse(r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
//!     xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
//!   <References><File ovf:id="file1" ovf:href="disk.vmdk"/></References>
//! </Envelope>"#).unwrap();
//! env.file_mut("file1").unwrap().size = Some(1024);
//! assert!(env.to_xml().contains(r#"ovf:size="1024""#));
//! ```

use crate::xml::{Attr, Element, Line, NsDecls};

pub mod builder;
mod parse;
pub mod validate;
mod write;

pub use parse::{ParseError, MAX_DESCRIPTOR_SIZE};

/// OVF 1.x envelope namespace.
pub const OVF_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// OVF 2.0 envelope namespace.
pub const OVF2_NS: &str = "http://schemas.dmtf.org/ovf/envelope/2";
/// VMware's pre-standard OVF 0.9 namespace.
pub const OVF09_NS: &str = "http://www.vmware.com/schema/ovf/1/envelope";
/// CIM ResourceAllocationSettingData (`rasd:`).
pub const RASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
/// CIM VirtualSystemSettingData (`vssd:`).
pub const VSSD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
/// CIM StorageAllocationSettingData (`sasd:`).
pub const SASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData";
/// CIM EthernetPortAllocationSettingData (`epasd:`).
pub const EPASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData";
/// CIM common types (`cim:`).
pub const CIM_NS: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
/// VMware's OVF extensions (`vmw:`).
pub const VMW_NS: &str = "http://www.vmware.com/schema/ovf";
/// XML Schema instance (`xsi:`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// `true` for the CIM schema namespaces that hold Item/System fields (rasd, vssd, sasd, epasd).
///
/// Matched loosely (`…/wbem/wscim/1/…`) because real documents carry mangled variants of
/// these URIs and still mean CIM fields.
pub fn is_cim_ns(ns: &str) -> bool {
    ns.starts_with("http://schemas.dmtf.org/wbem/wscim/1/") && ns != CIM_NS
}

/// A localizable string: text plus the `ovf:msgid` that looks it up in a string bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msg {
    /// The text as written (default locale).
    pub text: String,
    /// `ovf:msgid`, if any.
    pub msgid: Option<String>,
}

impl Msg {
    /// A message with no msgid.
    pub fn new(text: impl Into<String>) -> Self {
        Msg { text: text.into(), msgid: None }
    }
}

impl From<&str> for Msg {
    fn from(s: &str) -> Self {
        Msg::new(s)
    }
}

/// What every modeled element keeps besides its typed fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    /// Attributes not modeled (e.g. `ovf:required`, vendor attributes), in document order.
    pub attrs: Vec<Attr>,
    /// Child elements not modeled, in document order.
    pub elements: Vec<Element>,
    /// Where the element started in the source (0 if built).
    pub line: Line,
}

impl Extra {
    /// The value of an unmodeled attribute by namespace and local name.
    pub fn attr(&self, ns: Option<&str>, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.local == local && a.name.ns.as_deref() == ns)
            .map(|a| a.value.as_str())
    }
}

/// A parsed or built OVF descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The OVF namespace of the document ([`OVF_NS`], [`OVF2_NS`] or [`OVF09_NS`]; empty for
    /// the few documents written with no namespace at all).
    pub ovf_ns: String,
    /// Namespace declarations on the root, written back as they were.
    pub ns_decls: NsDecls,
    /// `References`, if present.
    pub references: Option<References>,
    /// Envelope-level sections in document order (DiskSection, NetworkSection, …).
    pub sections: Vec<Section>,
    /// The content: a VirtualSystem or VirtualSystemCollection.
    pub content: Option<Content>,
    /// Elements after the content (`Strings` bundles, a second content element, …).
    pub trailing: Vec<Element>,
    /// Unmodeled attributes (`xml:lang`, `vmw:buildId`, …) and where the root was.
    pub extra: Extra,
}

/// `References`: the files that travel with the descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// The `File` elements in order.
    pub files: Vec<File>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// One `File` of `References`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct File {
    /// `ovf:id`, referred to by `Disk ovf:fileRef` and `ovf:/file/<id>`.
    pub id: String,
    /// `ovf:href`: relative path (or URL) of the file.
    pub href: String,
    /// `ovf:size` in bytes; vCenter rejects a value that differs from the real file. (A value
    /// that is not a byte count stays in `extra.attrs`, where validation reports it; setting
    /// this field replaces it.)
    pub size: Option<u64>,
    /// `ovf:compression` (`gzip`), if the file is compressed in transit.
    pub compression: Option<String>,
    /// `ovf:chunkSize`, if the file is split into chunks.
    pub chunk_size: Option<u64>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// A section, at envelope or virtual-system level.
// Sections are few per document; boxing the large variants would only make matching noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// `DiskSection` (envelope level).
    Disk(DiskSection),
    /// `NetworkSection` (envelope level).
    Network(NetworkSection),
    /// `DeploymentOptionSection` (envelope level).
    DeploymentOption(DeploymentOptionSection),
    /// `OperatingSystemSection`.
    OperatingSystem(OperatingSystemSection),
    /// `VirtualHardwareSection`.
    VirtualHardware(VirtualHardwareSection),
    /// `ProductSection`.
    Product(ProductSection),
    /// `AnnotationSection`.
    Annotation(AnnotationSection),
    /// `EulaSection`.
    Eula(EulaSection),
    /// Any other section or element, kept verbatim.
    Other(Element),
}

impl Section {
    /// The element name of the section as OVF spells it (`DiskSection`, …).
    pub fn kind(&self) -> &str {
        match self {
            Section::Disk(_) => "DiskSection",
            Section::Network(_) => "NetworkSection",
            Section::DeploymentOption(_) => "DeploymentOptionSection",
            Section::OperatingSystem(_) => "OperatingSystemSection",
            Section::VirtualHardware(_) => "VirtualHardwareSection",
            Section::Product(_) => "ProductSection",
            Section::Annotation(_) => "AnnotationSection",
            Section::Eula(_) => "EulaSection",
            Section::Other(e) => &e.name.local,
        }
    }

    /// The source line of the section.
    pub fn line(&self) -> Line {
        match self {
            Section::Disk(s) => s.extra.line,
            Section::Network(s) => s.extra.line,
            Section::DeploymentOption(s) => s.extra.line,
            Section::OperatingSystem(s) => s.extra.line,
            Section::VirtualHardware(s) => s.extra.line,
            Section::Product(s) => s.extra.line,
            Section::Annotation(s) => s.extra.line,
            Section::Eula(s) => s.extra.line,
            Section::Other(e) => e.line,
        }
    }
}

/// `DiskSection`: the virtual disks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSection {
    /// `Info`.
    pub info: Option<Msg>,
    /// The `Disk` elements.
    pub disks: Vec<Disk>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// One `Disk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disk {
    /// `ovf:diskId`, referred to by `ovf:/disk/<id>`.
    pub disk_id: String,
    /// `ovf:fileRef`: the `File` holding the disk (none for an empty disk).
    pub file_ref: Option<String>,
    /// `ovf:capacity` as written: an integer, or `${property}` naming a ProductSection property.
    pub capacity: String,
    /// `ovf:capacityAllocationUnits`, e.g. `byte * 2^30` (bytes when absent).
    pub capacity_units: Option<String>,
    /// `ovf:format`, e.g. the streamOptimized VMDK URI.
    pub format: Option<String>,
    /// `ovf:populatedSize`: bytes actually used.
    pub populated_size: Option<u64>,
    /// `ovf:parentRef`: the disk this one is a delta of.
    pub parent_ref: Option<String>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// The format URI of a streamOptimized VMDK.
pub const VMDK_STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// `NetworkSection`: the logical networks the VMs connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSection {
    /// `Info`.
    pub info: Option<Msg>,
    /// The `Network` elements.
    pub networks: Vec<Network>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// One `Network`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `ovf:name`, referred to by `rasd:Connection`.
    pub name: String,
    /// `Description`.
    pub description: Option<Msg>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// `DeploymentOptionSection`: named configurations (sizes) a deployer picks from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentOptionSection {
    /// `Info`.
    pub info: Option<Msg>,
    /// The `Configuration` elements.
    pub configurations: Vec<Configuration>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// One `Configuration` of a DeploymentOptionSection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// `ovf:id`, referred to by `ovf:configuration` attributes.
    pub id: String,
    /// `ovf:default`.
    pub default: Option<bool>,
    /// `Label`.
    pub label: Option<Msg>,
    /// `Description`.
    pub description: Option<Msg>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// `OperatingSystemSection`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatingSystemSection {
    /// `ovf:id`: the CIM operating system code (e.g. 101 for 64-bit Linux) as written.
    pub id: Option<String>,
    /// `ovf:version`.
    pub version: Option<String>,
    /// `vmw:osType`: vSphere's guest id (e.g. `debian12_64Guest`).
    pub os_type: Option<String>,
    /// `Info`.
    pub info: Option<Msg>,
    /// `Description`.
    pub description: Option<Msg>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// `VirtualHardwareSection`: the VM's hardware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualHardwareSection {
    /// `ovf:id`, when a VM has several hardware sections.
    pub id: Option<String>,
    /// `ovf:transport`: how the OVF environment reaches the guest (`iso`,
    /// `com.vmware.guestInfo`, space-separated).
    pub transport: Option<String>,
    /// `Info`.
    pub info: Option<Msg>,
    /// `System` (vssd fields: ElementName, InstanceID, VirtualSystemType, …).
    pub system: Option<CimFields>,
    /// The `Item`, `StorageItem` and `EthernetPortItem` elements in order.
    pub items: Vec<Item>,
    /// `vmw:Config` elements (VM-level settings such as `firmware`).
    pub configs: Vec<VmwConfig>,
    /// `vmw:ExtraConfig` elements (VMX key/values).
    pub extra_configs: Vec<VmwConfig>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// An ordered list of CIM fields (`rasd:*`, `vssd:*`, …) of an Item or System.
///
/// Kept as a list rather than a struct of options because the CIM classes have dozens of fields
/// and writers use many of them; accessors name the common ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CimFields {
    /// The fields in document order.
    pub fields: Vec<CimField>,
    /// Unmodeled attributes and non-CIM children (e.g. `vmw:Config`, `vmw:CoresPerSocket`).
    pub extra: Extra,
}

/// One CIM field: `<rasd:ResourceType>10</rasd:ResourceType>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CimField {
    /// The namespace (rasd, vssd, sasd, epasd URI) and local name.
    pub name: crate::xml::Name,
    /// The text value.
    pub value: String,
    /// Attributes on the field (e.g. `ovf:required`, `xsi:nil`).
    pub attrs: Vec<Attr>,
    /// Where.
    pub line: Line,
}

impl CimFields {
    /// The first value of field `local` (any CIM namespace, ASCII case-insensitive because some
    /// writers spell `InstanceId`), trimmed.
    pub fn get(&self, local: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name.local.eq_ignore_ascii_case(local))
            .map(|f| f.value.trim())
    }

    /// The field `local` itself (for its line and attributes).
    pub fn field(&self, local: &str) -> Option<&CimField> {
        self.fields.iter().find(|f| f.name.local.eq_ignore_ascii_case(local))
    }

    /// All values of a repeatable field (`Connection`, `HostResource`), trimmed.
    pub fn get_all<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.local.eq_ignore_ascii_case(local))
            .map(|f| f.value.trim())
    }

    /// Sets field `local` in namespace `ns` (replacing the first existing value), keeping the
    /// alphabetical order the CIM schemas require for new fields.
    pub fn set(&mut self, ns: &str, prefix: &str, local: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(f) = self.fields.iter_mut().find(|f| f.name.local == local) {
            f.value = value;
            return;
        }
        self.push_sorted(ns, prefix, local, value);
    }

    /// Adds a value for a repeatable field, in alphabetical position.
    pub fn push_sorted(&mut self, ns: &str, prefix: &str, local: &str, value: impl Into<String>) {
        let at = self
            .fields
            .iter()
            .position(|f| f.name.local.as_str() > local)
            .unwrap_or(self.fields.len());
        self.fields.insert(
            at,
            CimField {
                name: crate::xml::Name::new(ns, Some(prefix), local),
                value: value.into(),
                attrs: Vec::new(),
                line: Line(0),
            },
        );
    }

    /// `InstanceID`.
    pub fn instance_id(&self) -> Option<&str> {
        self.get("InstanceID")
    }

    /// `ElementName`.
    pub fn element_name(&self) -> Option<&str> {
        self.get("ElementName")
    }
}

/// Which element an item was written as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ItemKind {
    /// `Item` (rasd).
    #[default]
    Item,
    /// `StorageItem` (sasd, OVF 2.0).
    StorageItem,
    /// `EthernetPortItem` (epasd, OVF 2.0).
    EthernetPortItem,
}

impl ItemKind {
    /// The element's local name.
    pub fn local_name(self) -> &'static str {
        match self {
            ItemKind::Item => "Item",
            ItemKind::StorageItem => "StorageItem",
            ItemKind::EthernetPortItem => "EthernetPortItem",
        }
    }
}

/// One virtual hardware item: a CPU, memory, controller, disk, NIC, CD drive, …
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    /// `Item`, `StorageItem` or `EthernetPortItem`.
    pub kind: ItemKind,
    /// `ovf:configuration`: the deployment options this item applies to (space-separated).
    pub configuration: Option<String>,
    /// `ovf:bound`: `min`, `max` or `normal` for range items.
    pub bound: Option<String>,
    /// `ovf:required`.
    pub required: Option<bool>,
    /// The rasd/sasd/epasd fields; other children (`vmw:Config`, …) are in `fields.extra`.
    pub fields: CimFields,
    /// `vmw:Config` children (device-level settings such as `slotInfo.pciSlotNumber`).
    pub configs: Vec<VmwConfig>,
}

impl Item {
    /// `rasd:InstanceID`.
    pub fn instance_id(&self) -> Option<&str> {
        self.fields.instance_id()
    }

    /// `rasd:ResourceType` as a number, if it is one.
    pub fn resource_type(&self) -> Option<u32> {
        self.fields.get("ResourceType")?.parse().ok()
    }

    /// `rasd:ResourceSubType`.
    pub fn resource_subtype(&self) -> Option<&str> {
        self.fields.get("ResourceSubType")
    }

    /// `rasd:Parent`: the InstanceID of the controller this device hangs off.
    pub fn parent(&self) -> Option<&str> {
        self.fields.get("Parent")
    }

    /// `rasd:HostResource` values (`ovf:/disk/<id>`, `ovf:/file/<id>`).
    pub fn host_resources(&self) -> impl Iterator<Item = &str> {
        self.fields.get_all("HostResource")
    }

    /// `rasd:Connection` values (network names).
    pub fn connections(&self) -> impl Iterator<Item = &str> {
        self.fields.get_all("Connection")
    }

    /// The source line of the item.
    pub fn line(&self) -> Line {
        self.fields.extra.line
    }
}

/// `vmw:Config` / `vmw:ExtraConfig`: a VMware key/value setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmwConfig {
    /// `vmw:key`.
    pub key: String,
    /// `vmw:value`.
    pub value: String,
    /// `ovf:required`.
    pub required: Option<bool>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

impl VmwConfig {
    /// A setting that vCenter may ignore (`ovf:required="false"`), as VMware's tools write them.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        VmwConfig {
            key: key.into(),
            value: value.into(),
            required: Some(false),
            extra: Extra::default(),
        }
    }
}

/// `ProductSection`: product identity and the properties a deployer fills in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductSection {
    /// `ovf:class`: prefix of property keys in the environment (`class.key`).
    pub class: Option<String>,
    /// `ovf:instance`: suffix of property keys in the environment (`key.instance`).
    pub instance: Option<String>,
    /// `Info`.
    pub info: Option<Msg>,
    /// `Product`.
    pub product: Option<Msg>,
    /// `Vendor`.
    pub vendor: Option<Msg>,
    /// `Version` (short).
    pub version: Option<Msg>,
    /// `FullVersion`.
    pub full_version: Option<Msg>,
    /// `ProductUrl`.
    pub product_url: Option<Msg>,
    /// `VendorUrl`.
    pub vendor_url: Option<Msg>,
    /// `AppUrl`.
    pub app_url: Option<Msg>,
    /// `Category` and `Property` elements, in order (a Category heads the properties after it).
    pub entries: Vec<ProductEntry>,
    /// Unmodeled attributes and children (e.g. `Icon`).
    pub extra: Extra,
}

impl ProductSection {
    /// The properties, in order.
    pub fn properties(&self) -> impl Iterator<Item = &Property> {
        self.entries.iter().filter_map(|e| match e {
            ProductEntry::Property(p) => Some(p),
            ProductEntry::Category(_) => None,
        })
    }

    /// The key under which the OVF environment carries property `p` of this section.
    pub fn env_key(&self, p: &Property) -> String {
        let mut k = String::new();
        if let Some(c) = self.class.as_deref().filter(|c| !c.is_empty()) {
            k.push_str(c);
            k.push('.');
        }
        k.push_str(&p.key);
        if let Some(i) = self.instance.as_deref().filter(|i| !i.is_empty()) {
            k.push('.');
            k.push_str(i);
        }
        k
    }
}

/// An entry of a ProductSection.
#[allow(clippy::large_enum_variant)] // see `Section`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEntry {
    /// `Category`: a heading for the properties that follow.
    Category(Msg),
    /// `Property`.
    Property(Property),
}

/// A ProductSection `Property` as read from a descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Property {
    /// `ovf:key`.
    pub key: String,
    /// `ovf:type` as written (`string`, `boolean`, `uint8`, …; see [`PropertyType`]).
    pub ty: String,
    /// `ovf:qualifiers` (`MinLen(1)`, `MaxLen(64)`, `ValueMap{"a","b"}`, …).
    pub qualifiers: Option<String>,
    /// `ovf:value`: the default.
    pub value: Option<String>,
    /// `ovf:userConfigurable`.
    pub user_configurable: Option<bool>,
    /// `ovf:password`: the deploy wizard masks it.
    pub password: Option<bool>,
    /// `Label`.
    pub label: Option<Msg>,
    /// `Description`.
    pub description: Option<Msg>,
    /// `Value` children: per-configuration defaults.
    pub values: Vec<PropertyValue>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

impl Property {
    /// The type, if it is one OVF defines.
    pub fn property_type(&self) -> Option<PropertyType> {
        self.ty.trim().parse().ok()
    }
}

/// A `Value ovf:value=… ovf:configuration=…` child of a Property.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValue {
    /// `ovf:value`.
    pub value: String,
    /// `ovf:configuration`.
    pub configuration: Option<String>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// The property types OVF defines (CIM intrinsic types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PropertyType {
    /// `string`.
    String,
    /// `boolean`: `true` or `false`.
    Boolean,
    /// `uint8`.
    Uint8,
    /// `sint8`.
    Sint8,
    /// `uint16`.
    Uint16,
    /// `sint16`.
    Sint16,
    /// `uint32`.
    Uint32,
    /// `sint32`.
    Sint32,
    /// `uint64`.
    Uint64,
    /// `sint64`.
    Sint64,
    /// `real32`.
    Real32,
    /// `real64`.
    Real64,
}

impl PropertyType {
    /// Every type, for generators and docs.
    pub const ALL: [PropertyType; 12] = [
        PropertyType::String,
        PropertyType::Boolean,
        PropertyType::Uint8,
        PropertyType::Sint8,
        PropertyType::Uint16,
        PropertyType::Sint16,
        PropertyType::Uint32,
        PropertyType::Sint32,
        PropertyType::Uint64,
        PropertyType::Sint64,
        PropertyType::Real32,
        PropertyType::Real64,
    ];

    /// The `ovf:type` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Boolean => "boolean",
            PropertyType::Uint8 => "uint8",
            PropertyType::Sint8 => "sint8",
            PropertyType::Uint16 => "uint16",
            PropertyType::Sint16 => "sint16",
            PropertyType::Uint32 => "uint32",
            PropertyType::Sint32 => "sint32",
            PropertyType::Uint64 => "uint64",
            PropertyType::Sint64 => "sint64",
            PropertyType::Real32 => "real32",
            PropertyType::Real64 => "real64",
        }
    }

    /// Inclusive integer range of an integer type.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            PropertyType::Uint8 => (0, u8::MAX.into()),
            PropertyType::Sint8 => (i8::MIN.into(), i8::MAX.into()),
            PropertyType::Uint16 => (0, u16::MAX.into()),
            PropertyType::Sint16 => (i16::MIN.into(), i16::MAX.into()),
            PropertyType::Uint32 => (0, u32::MAX.into()),
            PropertyType::Sint32 => (i32::MIN.into(), i32::MAX.into()),
            PropertyType::Uint64 => (0, u64::MAX.into()),
            PropertyType::Sint64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }
}

impl std::fmt::Display for PropertyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PropertyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PropertyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown property type {s:?}"))
    }
}

/// `AnnotationSection`: a free-text note shown in vCenter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnotationSection {
    /// `Info`.
    pub info: Option<Msg>,
    /// `Annotation`.
    pub annotation: Option<Msg>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// `EulaSection`: a licence the deployer must accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EulaSection {
    /// `Info`.
    pub info: Option<Msg>,
    /// `License`.
    pub license: Option<Msg>,
    /// Unmodeled attributes and children.
    pub extra: Extra,
}

/// The content of an envelope or collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A `VirtualSystem`.
    System(VirtualSystem),
    /// A `VirtualSystemCollection` (a vApp).
    Collection(VirtualSystemCollection),
}

impl Content {
    /// `ovf:id`.
    pub fn id(&self) -> Option<&str> {
        match self {
            Content::System(v) => v.id.as_deref(),
            Content::Collection(c) => c.id.as_deref(),
        }
    }

    /// The sections of this content element.
    pub fn sections(&self) -> &[Section] {
        match self {
            Content::System(v) => &v.sections,
            Content::Collection(c) => &c.sections,
        }
    }

    /// Every VirtualSystem under this content, depth first.
    pub fn systems(&self) -> Vec<&VirtualSystem> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(c) = stack.pop() {
            match c {
                Content::System(v) => out.push(v),
                Content::Collection(col) => stack.extend(col.contents.iter().rev()),
            }
        }
        out
    }
}

/// `VirtualSystem`: one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualSystem {
    /// `ovf:id` (required by OVF; `None` when a document lacks it).
    pub id: Option<String>,
    /// `Info`.
    pub info: Option<Msg>,
    /// `Name`.
    pub name: Option<Msg>,
    /// The sections in order.
    pub sections: Vec<Section>,
    /// Unmodeled attributes and where the element was.
    pub extra: Extra,
}

impl VirtualSystem {
    /// The VirtualHardwareSections of this VM.
    pub fn hardware(&self) -> impl Iterator<Item = &VirtualHardwareSection> {
        self.sections.iter().filter_map(|s| match s {
            Section::VirtualHardware(h) => Some(h),
            _ => None,
        })
    }

    /// The ProductSections of this VM.
    pub fn products(&self) -> impl Iterator<Item = &ProductSection> {
        self.sections.iter().filter_map(|s| match s {
            Section::Product(p) => Some(p),
            _ => None,
        })
    }

    /// The OperatingSystemSection, if any.
    pub fn operating_system(&self) -> Option<&OperatingSystemSection> {
        self.sections.iter().find_map(|s| match s {
            Section::OperatingSystem(o) => Some(o),
            _ => None,
        })
    }
}

/// `VirtualSystemCollection`: a vApp of VMs (and nested collections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualSystemCollection {
    /// `ovf:id`.
    pub id: Option<String>,
    /// `Info`.
    pub info: Option<Msg>,
    /// `Name`.
    pub name: Option<Msg>,
    /// The sections in order.
    pub sections: Vec<Section>,
    /// The members.
    pub contents: Vec<Content>,
    /// Unmodeled attributes and where the element was.
    pub extra: Extra,
}

impl Envelope {
    /// The `File` with `ovf:id` = `id`.
    pub fn file(&self, id: &str) -> Option<&File> {
        self.references.as_ref()?.files.iter().find(|f| f.id == id)
    }

    /// The `File` with `ovf:id` = `id`, to change (e.g. fill `size`).
    pub fn file_mut(&mut self, id: &str) -> Option<&mut File> {
        self.references.as_mut()?.files.iter_mut().find(|f| f.id == id)
    }

    /// All referenced files, in References order.
    pub fn files(&self) -> &[File] {
        self.references.as_ref().map_or(&[], |r| &r.files)
    }

    /// All referenced files, to change.
    pub fn files_mut(&mut self) -> &mut [File] {
        match self.references.as_mut() {
            Some(r) => &mut r.files,
            None => &mut [],
        }
    }

    /// The envelope-level DiskSection's disks.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.sections.iter().flat_map(|s| match s {
            Section::Disk(d) => d.disks.as_slice(),
            _ => &[],
        })
    }

    /// The envelope-level NetworkSection's networks.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.sections.iter().flat_map(|s| match s {
            Section::Network(n) => n.networks.as_slice(),
            _ => &[],
        })
    }

    /// The deployment options (configurations).
    pub fn configurations(&self) -> impl Iterator<Item = &Configuration> {
        self.sections.iter().flat_map(|s| match s {
            Section::DeploymentOption(d) => d.configurations.as_slice(),
            _ => &[],
        })
    }

    /// Every VirtualSystem of the descriptor, depth first.
    pub fn virtual_systems(&self) -> Vec<&VirtualSystem> {
        self.content.as_ref().map(Content::systems).unwrap_or_default()
    }
}

/// Parses a capacity unit string (`byte`, `byte * 2^30`, `KiloBytes`, `MegaBytes`, …) into a
/// multiplier in bytes.
pub fn parse_byte_units(units: &str) -> Option<u64> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = compact.to_ascii_lowercase();
    // Named units that VMware and VirtualBox write.
    let named = match lower.as_str() {
        "byte" | "bytes" => Some(1),
        "kilobytes" | "kb" => Some(1 << 10),
        "megabytes" | "mb" => Some(1 << 20),
        "gigabytes" | "gb" => Some(1 << 30),
        "terabytes" | "tb" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    // DSP0004 programmatic units: byte * 2^N, byte * 10^N, products thereof.
    let rest = lower.strip_prefix("byte")?;
    let mut mult: u64 = 1;
    for factor in rest.split('*').skip(1) {
        let (base, exp) = factor.split_once('^').unwrap_or((factor, "1"));
        let base: u64 = base.parse().ok()?;
        let exp: u32 = exp.parse().ok()?;
        mult = mult.checked_mul(base.checked_pow(exp)?)?;
    }
    if !rest.is_empty() && !rest.starts_with('*') {
        return None;
    }
    Some(mult)
}

/// The `byte * 2^N` spelling for a power-of-two multiplier (1 → `byte`).
pub fn byte_units(power_of_two: u32) -> String {
    if power_of_two == 0 {
        "byte".to_string()
    } else {
        format!("byte * 2^{power_of_two}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_byte_units("byte"), Some(1));
        assert_eq!(parse_byte_units("byte * 2^30"), Some(1 << 30));
        assert_eq!(parse_byte_units("byte*2^20"), Some(1 << 20));
        assert_eq!(parse_byte_units("byte * 10^3"), Some(1000));
        assert_eq!(parse_byte_units("MegaBytes"), Some(1 << 20));
        assert_eq!(parse_byte_units("hertz * 10^6"), None);
        assert_eq!(parse_byte_units("byte * 2^99"), None);
        assert_eq!(parse_byte_units("bytes2"), None);
        assert_eq!(byte_units(30), "byte * 2^30");
        assert_eq!(parse_byte_units(&byte_units(20)), Some(1 << 20));
    }
}
