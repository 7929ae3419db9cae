//! Building descriptors for templates: the hardware, disks and properties of one VM, written
//! the way vCenter and ovftool expect them (capacity as `byte * 2^N`, CIM ResourceType codes,
//! controllers referenced by InstanceID, disks by `ovf:/disk/<id>`).
//!
//! ```
//! use ovf::descriptor::builder::*;
//! use ovf::descriptor::PropertyType;
//! let env = VmBuilder::new("capstan-node")
//!     .os("debian12_64Guest", 96)
//!     .cpus(2)
//!     .memory_mib(4096)
//!     .firmware(Firmware::Efi)
//!     .disk(DiskSpec::new("capstan-node-disk1.vmdk", 20 << 30))
//!     .nic(NicSpec::new("VM Network"))
//!     .cdrom()
//!     .transport("com.vmware.guestInfo iso")
//!     .product(ProductInfo { product: "Capstan node".into(), vendor: "Capstan".into(),
//!         version: "1.0".into(), ..ProductInfo::default() })
//!     .property(ProductProperty::new("hostname", PropertyType::String)
//!         .label("Hostname").category("Identity"))
//!     .build();
//! let xml = env.to_xml();
//! assert!(xml.contains(r#"ovf:capacityAllocationUnits="byte * 2^30""#));
//! assert!(ovf::descriptor::validate::validate(&env, &Default::default()).iter()
//!     .all(|d| !d.is_error()));
//! ```

use super::*;
use crate::xml::Name;

/// A ProductSection property to write, as the agent's config schema describes it.
///
/// `category` groups properties in the deploy wizard: the builder writes a `Category` element
/// before the first property of each run of properties with the same category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductProperty {
    /// `ovf:key` (the environment carries it as `class.key` when the section has a class).
    pub key: String,
    /// `ovf:type`.
    pub ty: PropertyType,
    /// `ovf:qualifiers`, e.g. `MinLen(1) MaxLen(63)` or `ValueMap{"lb","worker"}`.
    pub qualifiers: Option<String>,
    /// `ovf:value`: the default.
    pub default: Option<String>,
    /// `ovf:userConfigurable`: shown in the deploy wizard.
    pub user_configurable: bool,
    /// `Label`.
    pub label: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// The wizard category heading.
    pub category: Option<String>,
    /// `ovf:password`: masked in the wizard.
    pub password: bool,
}

impl ProductProperty {
    /// A user-configurable property with no default.
    pub fn new(key: impl Into<String>, ty: PropertyType) -> Self {
        ProductProperty {
            key: key.into(),
            ty,
            qualifiers: None,
            default: None,
            user_configurable: true,
            label: None,
            description: None,
            category: None,
            password: false,
        }
    }

    /// Sets the label.
    pub fn label(mut self, s: impl Into<String>) -> Self {
        self.label = Some(s.into());
        self
    }

    /// Sets the description.
    pub fn description(mut self, s: impl Into<String>) -> Self {
        self.description = Some(s.into());
        self
    }

    /// Sets the category.
    pub fn category(mut self, s: impl Into<String>) -> Self {
        self.category = Some(s.into());
        self
    }

    /// Sets the default value.
    pub fn default_value(mut self, s: impl Into<String>) -> Self {
        self.default = Some(s.into());
        self
    }

    /// Sets the qualifiers.
    pub fn qualifiers(mut self, s: impl Into<String>) -> Self {
        self.qualifiers = Some(s.into());
        self
    }

    /// Marks it a password.
    pub fn password(mut self) -> Self {
        self.password = true;
        self
    }

    /// Converts to the descriptor model.
    pub fn to_property(&self) -> Property {
        Property {
            key: self.key.clone(),
            ty: self.ty.as_str().to_string(),
            qualifiers: self.qualifiers.clone(),
            value: self.default.clone(),
            user_configurable: Some(self.user_configurable),
            password: self.password.then_some(true),
            label: self.label.as_deref().map(Msg::new),
            description: self.description.as_deref().map(Msg::new),
            values: Vec::new(),
            extra: Extra::default(),
        }
    }
}

/// Turns properties into ProductSection entries, with a `Category` heading per run.
pub fn product_entries(props: &[ProductProperty]) -> Vec<ProductEntry> {
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for p in props {
        if let Some(c) = p.category.as_deref() {
            if current != Some(c) {
                out.push(ProductEntry::Category(Msg::new(c)));
            }
        }
        current = p.category.as_deref();
        out.push(ProductEntry::Property(p.to_property()));
    }
    out
}

/// CIM ResourceType codes (DSP1041 / CIM_ResourceAllocationSettingData).
pub mod resource_type {
    /// Other (vSphere: VMCI, SATA controller with a subtype, NVMe, …).
    pub const OTHER: u32 = 1;
    /// Processor.
    pub const PROCESSOR: u32 = 3;
    /// Memory.
    pub const MEMORY: u32 = 4;
    /// IDE controller.
    pub const IDE_CONTROLLER: u32 = 5;
    /// Parallel SCSI HBA.
    pub const SCSI_CONTROLLER: u32 = 6;
    /// Ethernet adapter.
    pub const ETHERNET_ADAPTER: u32 = 10;
    /// Floppy drive.
    pub const FLOPPY: u32 = 14;
    /// CD drive.
    pub const CD_DRIVE: u32 = 15;
    /// DVD drive.
    pub const DVD_DRIVE: u32 = 16;
    /// Disk drive.
    pub const DISK_DRIVE: u32 = 17;
    /// Other storage device (vSphere: SATA/AHCI controller).
    pub const OTHER_STORAGE: u32 = 20;
    /// Serial port.
    pub const SERIAL_PORT: u32 = 21;
    /// Parallel port.
    pub const PARALLEL_PORT: u32 = 22;
    /// USB controller.
    pub const USB_CONTROLLER: u32 = 23;
    /// Graphics controller.
    pub const GRAPHICS: u32 = 24;
    /// Sound card (CIM 2.x; vSphere does not import it).
    pub const SOUND_CARD: u32 = 35;
}

/// VM firmware (`vmw:Config firmware`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (no `firmware` setting written).
    #[default]
    Bios,
    /// UEFI.
    Efi,
    /// UEFI with Secure Boot.
    EfiSecureBoot,
}

/// The SCSI controller model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScsiController {
    /// VMware Paravirtual (`VirtualSCSI`, Linux driver `vmw_pvscsi`).
    #[default]
    ParaVirtual,
    /// LSI Logic Parallel (`lsilogic`).
    LsiLogic,
    /// LSI Logic SAS (`lsilogicsas`).
    LsiLogicSas,
}

impl ScsiController {
    /// The `rasd:ResourceSubType`.
    pub fn subtype(self) -> &'static str {
        match self {
            ScsiController::ParaVirtual => "VirtualSCSI",
            ScsiController::LsiLogic => "lsilogic",
            ScsiController::LsiLogicSas => "lsilogicsas",
        }
    }
}

/// The NIC model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NicType {
    /// VMXNET3 (Linux driver `vmxnet3`).
    #[default]
    Vmxnet3,
    /// Intel E1000.
    E1000,
    /// Intel E1000e.
    E1000e,
}

impl NicType {
    /// The `rasd:ResourceSubType`.
    pub fn subtype(self) -> &'static str {
        match self {
            NicType::Vmxnet3 => "VmxNet3",
            NicType::E1000 => "E1000",
            NicType::E1000e => "E1000e",
        }
    }
}

/// A disk to attach to the SCSI controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The file name in the OVA (`ovf:href`).
    pub href: String,
    /// Virtual capacity in bytes.
    pub capacity_bytes: u64,
    /// `ovf:size` of the file, when known now (`ova pack` fills it otherwise).
    pub file_size: Option<u64>,
    /// `ovf:populatedSize`, when known.
    pub populated_size: Option<u64>,
}

impl DiskSpec {
    /// A streamOptimized VMDK of `capacity_bytes`.
    pub fn new(href: impl Into<String>, capacity_bytes: u64) -> Self {
        DiskSpec { href: href.into(), capacity_bytes, file_size: None, populated_size: None }
    }
}

/// A NIC on a named network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The OVF network (`rasd:Connection`), declared in the NetworkSection.
    pub network: String,
    /// The model.
    pub ty: NicType,
}

impl NicSpec {
    /// A VMXNET3 NIC on `network`.
    pub fn new(network: impl Into<String>) -> Self {
        NicSpec { network: network.into(), ty: NicType::Vmxnet3 }
    }
}

/// Product identity for the ProductSection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductInfo {
    /// `ovf:class` (environment keys become `class.key`); none by default.
    pub class: Option<String>,
    /// `Product`.
    pub product: String,
    /// `Vendor`.
    pub vendor: String,
    /// `Version`.
    pub version: String,
    /// `FullVersion`.
    pub full_version: Option<String>,
    /// `ProductUrl`.
    pub product_url: Option<String>,
}

/// Builds a single-VM descriptor.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    name: String,
    os_type: String,
    os_id: u32,
    hw_version: String,
    cpus: u32,
    cores_per_socket: Option<u32>,
    memory_mib: u64,
    firmware: Firmware,
    scsi: ScsiController,
    disks: Vec<DiskSpec>,
    nics: Vec<NicSpec>,
    cdrom: bool,
    transport: Option<String>,
    configs: Vec<VmwConfig>,
    extra_configs: Vec<VmwConfig>,
    product: Option<ProductInfo>,
    properties: Vec<ProductProperty>,
    annotation: Option<String>,
    eula: Option<String>,
}

impl VmBuilder {
    /// A VM named `name` with 1 vCPU, 1 GiB, BIOS, hardware version `vmx-19`, 64-bit Linux.
    pub fn new(name: impl Into<String>) -> Self {
        VmBuilder {
            name: name.into(),
            os_type: "other5xLinux64Guest".into(),
            os_id: 101,
            hw_version: "vmx-19".into(),
            cpus: 1,
            cores_per_socket: None,
            memory_mib: 1024,
            firmware: Firmware::Bios,
            scsi: ScsiController::ParaVirtual,
            disks: Vec::new(),
            nics: Vec::new(),
            cdrom: false,
            transport: None,
            configs: Vec::new(),
            extra_configs: Vec::new(),
            product: None,
            properties: Vec::new(),
            annotation: None,
            eula: None,
        }
    }

    /// Guest OS: vSphere guest id (`vmw:osType`) and CIM OS code (`ovf:id`; 96 Debian 64-bit,
    /// 101 other Linux 64-bit).
    pub fn os(mut self, os_type: impl Into<String>, cim_id: u32) -> Self {
        self.os_type = os_type.into();
        self.os_id = cim_id;
        self
    }

    /// Virtual hardware version, e.g. `vmx-19` (vSphere 7.0U2+).
    pub fn hardware_version(mut self, v: impl Into<String>) -> Self {
        self.hw_version = v.into();
        self
    }

    /// Number of vCPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Cores per socket (`vmw:CoresPerSocket`).
    pub fn cores_per_socket(mut self, n: u32) -> Self {
        self.cores_per_socket = Some(n);
        self
    }

    /// Memory in MiB.
    pub fn memory_mib(mut self, n: u64) -> Self {
        self.memory_mib = n;
        self
    }

    /// Firmware.
    pub fn firmware(mut self, f: Firmware) -> Self {
        self.firmware = f;
        self
    }

    /// SCSI controller model for the disks.
    pub fn scsi(mut self, c: ScsiController) -> Self {
        self.scsi = c;
        self
    }

    /// Adds a disk (units 0, 1, … on the SCSI controller).
    pub fn disk(mut self, d: DiskSpec) -> Self {
        self.disks.push(d);
        self
    }

    /// Adds a NIC.
    pub fn nic(mut self, n: NicSpec) -> Self {
        self.nics.push(n);
        self
    }

    /// Adds a CD-ROM drive on IDE 1 (needed for the `iso` OVF environment transport).
    pub fn cdrom(mut self) -> Self {
        self.cdrom = true;
        self
    }

    /// `ovf:transport`: `iso`, `com.vmware.guestInfo`, or both space-separated.
    pub fn transport(mut self, t: impl Into<String>) -> Self {
        self.transport = Some(t.into());
        self
    }

    /// Adds a `vmw:Config` setting (see [`super::validate::VMW_CONFIG_KEYS`]).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push(VmwConfig::new(key, value));
        self
    }

    /// Adds a `vmw:ExtraConfig` VMX setting.
    pub fn extra_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_configs.push(VmwConfig::new(key, value));
        self
    }

    /// Sets the product identity (a ProductSection is written when this or a property is set).
    pub fn product(mut self, p: ProductInfo) -> Self {
        self.product = Some(p);
        self
    }

    /// Adds a ProductSection property.
    pub fn property(mut self, p: ProductProperty) -> Self {
        self.properties.push(p);
        self
    }

    /// Adds ProductSection properties.
    pub fn properties(mut self, ps: impl IntoIterator<Item = ProductProperty>) -> Self {
        self.properties.extend(ps);
        self
    }

    /// Sets the annotation.
    pub fn annotation(mut self, s: impl Into<String>) -> Self {
        self.annotation = Some(s.into());
        self
    }

    /// Sets a EULA.
    pub fn eula(mut self, s: impl Into<String>) -> Self {
        self.eula = Some(s.into());
        self
    }

    /// Builds the envelope.
    pub fn build(self) -> Envelope {
        let (files, disk_section) = self.disk_section();
        let sections = vec![disk_section, self.network_section()];
        let vs_sections = self.system_sections();
        Envelope {
            ovf_ns: OVF_NS.to_string(),
            ns_decls: write::standard_decls(OVF_NS),
            references: Some(References { files, extra: Extra::default() }),
            sections,
            content: Some(Content::System(VirtualSystem {
                id: Some(self.name.clone()),
                info: Some("A virtual machine".into()),
                name: Some(Msg::new(self.name.as_str())),
                sections: vs_sections,
                extra: Extra::default(),
            })),
            trailing: Vec::new(),
            extra: Extra::default(),
        }
    }

    /// The files and the DiskSection: one streamOptimized VMDK per disk.
    fn disk_section(&self) -> (Vec<File>, Section) {
        let mut files = Vec::new();
        let mut disks = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let file_id = format!("file{}", i + 1);
            let disk_id = format!("vmdisk{}", i + 1);
            files.push(File {
                id: file_id.clone(),
                href: d.href.clone(),
                size: d.file_size,
                ..File::default()
            });
            let (capacity, units) = capacity_with_units(d.capacity_bytes);
            disks.push(Disk {
                disk_id,
                file_ref: Some(file_id),
                capacity: capacity.to_string(),
                capacity_units: Some(units),
                format: Some(VMDK_STREAM_OPTIMIZED.to_string()),
                populated_size: d.populated_size,
                parent_ref: None,
                extra: Extra::default(),
            });
        }
        let section = Section::Disk(DiskSection {
            info: Some("Virtual disk information".into()),
            disks,
            extra: Extra::default(),
        });
        (files, section)
    }

    /// The NetworkSection: each network the NICs connect to, once, in NIC order.
    fn network_section(&self) -> Section {
        let mut network_names: Vec<&str> = Vec::new();
        for n in &self.nics {
            if !network_names.contains(&n.network.as_str()) {
                network_names.push(&n.network);
            }
        }
        Section::Network(NetworkSection {
            info: Some("The list of logical networks".into()),
            networks: network_names
                .iter()
                .map(|n| Network {
                    name: n.to_string(),
                    description: Some(Msg::new(format!("The {n} network"))),
                    extra: Extra::default(),
                })
                .collect(),
            extra: Extra::default(),
        })
    }

    /// The VirtualSystem's sections: OS, hardware, product, annotation, EULA.
    fn system_sections(&self) -> Vec<Section> {
        let mut vs_sections = vec![Section::OperatingSystem(OperatingSystemSection {
            id: Some(self.os_id.to_string()),
            version: None,
            os_type: Some(self.os_type.clone()),
            info: Some("The kind of installed guest operating system".into()),
            description: None,
            extra: Extra::default(),
        })];
        vs_sections.push(Section::VirtualHardware(self.hardware()));
        if self.product.is_some() || !self.properties.is_empty() {
            let p = self.product.clone().unwrap_or_default();
            let opt = |s: &str| (!s.is_empty()).then(|| Msg::new(s));
            vs_sections.push(Section::Product(ProductSection {
                class: p.class.clone(),
                instance: None,
                info: Some("Information about the installed software".into()),
                product: opt(&p.product),
                vendor: opt(&p.vendor),
                version: opt(&p.version),
                full_version: p.full_version.as_deref().map(Msg::new),
                product_url: p.product_url.as_deref().map(Msg::new),
                vendor_url: None,
                app_url: None,
                entries: product_entries(&self.properties),
                extra: Extra::default(),
            }));
        }
        if let Some(a) = &self.annotation {
            vs_sections.push(Section::Annotation(AnnotationSection {
                info: Some("A human-readable annotation".into()),
                annotation: Some(Msg::new(a.as_str())),
                extra: Extra::default(),
            }));
        }
        if let Some(l) = &self.eula {
            vs_sections.push(Section::Eula(EulaSection {
                info: Some("End User License Agreement".into()),
                license: Some(Msg::new(l.as_str())),
                extra: Extra::default(),
            }));
        }
        vs_sections
    }

    fn hardware(&self) -> VirtualHardwareSection {
        let mut items = Items::default();
        self.compute_items(&mut items);
        self.storage_items(&mut items);
        self.nic_items(&mut items);
        let mut system = CimFields::default();
        let vssd = |f: &mut CimFields, k: &str, v: &str| f.set(VSSD_NS, "vssd", k, v);
        vssd(&mut system, "ElementName", "Virtual Hardware Family");
        vssd(&mut system, "InstanceID", "0");
        vssd(&mut system, "VirtualSystemIdentifier", &self.name);
        vssd(&mut system, "VirtualSystemType", &self.hw_version);

        let mut configs = Vec::new();
        match self.firmware {
            Firmware::Bios => {}
            Firmware::Efi => configs.push(VmwConfig::new("firmware", "efi")),
            Firmware::EfiSecureBoot => {
                configs.push(VmwConfig::new("firmware", "efi"));
                configs.push(VmwConfig::new("bootOptions.efiSecureBootEnabled", "true"));
            }
        }
        configs.extend(self.configs.iter().cloned());
        VirtualHardwareSection {
            id: None,
            transport: self.transport.clone(),
            info: Some("Virtual hardware requirements".into()),
            system: Some(system),
            items: items.items,
            configs,
            extra_configs: self.extra_configs.clone(),
            extra: Extra::default(),
        }
    }
}

impl VmBuilder {
    /// The CPU and memory items.
    fn compute_items(&self, items: &mut Items) {
        let cpus = self.cpus;
        let cores = self.cores_per_socket;
        items.add(resource_type::PROCESSOR, &format!("{cpus} virtual CPU(s)"), &mut |f| {
            rasd(f, "AllocationUnits", "hertz * 10^6");
            rasd(f, "Description", "Number of Virtual CPUs");
            rasd(f, "VirtualQuantity", &cpus.to_string());
            if let Some(c) = cores {
                let mut e = Element::new(Name::new(VMW_NS, Some("vmw"), "CoresPerSocket"))
                    .with_text(c.to_string());
                e.attrs.push(Attr {
                    name: Name::new(OVF_NS, Some("ovf"), "required"),
                    value: "false".into(),
                });
                f.extra.elements.push(e);
            }
        });
        let mem = self.memory_mib;
        items.add(resource_type::MEMORY, &format!("{mem}MB of memory"), &mut |f| {
            rasd(f, "AllocationUnits", "byte * 2^20");
            rasd(f, "Description", "Memory Size");
            rasd(f, "VirtualQuantity", &mem.to_string());
        });
    }

    /// The SCSI controller (with disks), the IDE controller (with a CD-ROM), the disks and the
    /// CD-ROM drive.
    fn storage_items(&self, items: &mut Items) {
        let scsi = self.scsi;
        let scsi_id = (!self.disks.is_empty()).then(|| {
            items.add(resource_type::SCSI_CONTROLLER, "SCSI Controller 0", &mut |f| {
                rasd(f, "Address", "0");
                rasd(f, "Description", "SCSI Controller");
                rasd(f, "ResourceSubType", scsi.subtype());
            })
        });
        let ide_id = self.cdrom.then(|| {
            items.add(resource_type::IDE_CONTROLLER, "IDE Controller 1", &mut |f| {
                rasd(f, "Address", "1");
                rasd(f, "Description", "IDE Controller");
            })
        });
        for (i, _) in self.disks.iter().enumerate() {
            let parent = scsi_id.unwrap_or(0).to_string();
            items.add(resource_type::DISK_DRIVE, &format!("Hard Disk {}", i + 1), &mut |f| {
                rasd(f, "AddressOnParent", &i.to_string());
                rasd(f, "HostResource", &format!("ovf:/disk/vmdisk{}", i + 1));
                rasd(f, "Parent", &parent);
            });
        }
        if let Some(ide) = ide_id {
            items.add(resource_type::CD_DRIVE, "CD/DVD Drive 1", &mut |f| {
                rasd(f, "AddressOnParent", "0");
                rasd(f, "AutomaticAllocation", "false");
                rasd(f, "Parent", &ide.to_string());
                rasd(f, "ResourceSubType", "vmware.cdrom.remotepassthrough");
            });
        }
    }

    /// One Ethernet adapter per NIC.
    fn nic_items(&self, items: &mut Items) {
        for (i, n) in self.nics.iter().enumerate() {
            items.add(
                resource_type::ETHERNET_ADAPTER,
                &format!("Network adapter {}", i + 1),
                &mut |f| {
                    rasd(f, "AddressOnParent", &(7 + i).to_string());
                    rasd(f, "AutomaticAllocation", "true");
                    rasd(f, "Connection", &n.network);
                    rasd(f, "ResourceSubType", n.ty.subtype());
                },
            );
        }
    }
}

/// The hardware items being built, numbered from InstanceID 1 in the order they are added.
#[derive(Default)]
struct Items {
    items: Vec<Item>,
    next_id: u32,
}

impl Items {
    /// Adds an item of ResourceType `rt` and returns its InstanceID.
    fn add(&mut self, rt: u32, name: &str, f: &mut dyn FnMut(&mut CimFields)) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let mut fields = CimFields::default();
        rasd(&mut fields, "ElementName", name);
        rasd(&mut fields, "InstanceID", &id.to_string());
        rasd(&mut fields, "ResourceType", &rt.to_string());
        f(&mut fields);
        self.items.push(Item { fields, ..Item::default() });
        id
    }
}

fn rasd(f: &mut CimFields, k: &str, v: &str) {
    if k == "HostResource" || k == "Connection" {
        f.push_sorted(RASD_NS, "rasd", k, v);
    } else {
        f.set(RASD_NS, "rasd", k, v);
    }
}

/// The capacity in the largest unit of `byte * 2^(10k)` that represents it exactly.
pub fn capacity_with_units(bytes: u64) -> (u64, String) {
    for p in [40u32, 30, 20, 10] {
        let unit = 1u64 << p;
        if bytes >= unit && bytes % unit == 0 {
            return (bytes / unit, byte_units(p));
        }
    }
    (bytes, byte_units(0))
}
