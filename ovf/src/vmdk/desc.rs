//! The embedded text descriptor of a streamOptimized extent.

use std::fmt::Write as _;
use std::str::FromStr;

/// The virtual disk controller a disk was made for (`ddb.adapterType`). It also decides the
/// legacy CHS geometry written next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AdapterType {
    /// `ide`: geometry 16 heads, 63 sectors.
    Ide,
    /// `buslogic`.
    BusLogic,
    /// `lsilogic`, what VMware's tools write by default (also right for PVSCSI disks).
    #[default]
    LsiLogic,
    /// `legacyESX`.
    LegacyEsx,
}

impl AdapterType {
    /// The descriptor spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::BusLogic => "buslogic",
            AdapterType::LsiLogic => "lsilogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }
}

impl std::fmt::Display for AdapterType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An adapter type name that VMware does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VMDK adapter type {0:?} (expected ide, buslogic, lsilogic or legacyESX)")]
pub struct UnknownAdapterType(pub String);

impl FromStr for AdapterType {
    type Err = UnknownAdapterType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ide" => Ok(AdapterType::Ide),
            "buslogic" => Ok(AdapterType::BusLogic),
            "lsilogic" => Ok(AdapterType::LsiLogic),
            "legacyESX" => Ok(AdapterType::LegacyEsx),
            other => Err(UnknownAdapterType(other.to_string())),
        }
    }
}

/// What goes into the descriptor besides the capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescriptorParams<'a> {
    pub cid: u32,
    pub capacity_sectors: u64,
    pub extent_name: &'a str,
    pub adapter: AdapterType,
    pub hw_version: u32,
    pub long_content_id: u128,
    pub tools_version: &'a str,
}

/// Renders the descriptor in the order and spelling VMware's stream writers use.
pub(crate) fn render(p: &DescriptorParams<'_>) -> String {
    let (heads, sectors, max_cyl) = match p.adapter {
        AdapterType::Ide => (16u64, 63u64, 16383u64),
        _ => (255, 63, 65535),
    };
    let cylinders = p.capacity_sectors.div_ceil(heads * sectors).min(max_cyl);
    let mut s = String::new();
    // Infallible: writing into a String.
    let _ = write!(
        s,
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {cap} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{sectors}\"\n\
         ddb.longContentID = \"{lcid:032x}\"\n\
         ddb.toolsInstallType = \"4\"\n\
         ddb.toolsVersion = \"{tools}\"\n\
         ddb.virtualHWVersion = \"{hw}\"\n",
        cid = p.cid,
        cap = p.capacity_sectors,
        name = p.extent_name,
        adapter = p.adapter,
        lcid = p.long_content_id,
        tools = p.tools_version,
        hw = p.hw_version,
    );
    s
}

/// Looks up `key` in descriptor text: `key=value` or `key = "value"` lines.
pub(crate) fn lookup<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_has_vmware_keys_and_geometry() {
        let text = render(&DescriptorParams {
            cid: 0x1234abcd,
            capacity_sectors: 41943040,
            extent_name: "disk.vmdk",
            adapter: AdapterType::LsiLogic,
            hw_version: 4,
            long_content_id: 0xabc,
            tools_version: "2147483647",
        });
        assert_eq!(lookup(&text, "CID"), Some("1234abcd"));
        assert_eq!(lookup(&text, "createType"), Some("streamOptimized"));
        assert_eq!(lookup(&text, "ddb.adapterType"), Some("lsilogic"));
        assert_eq!(lookup(&text, "ddb.geometry.cylinders"), Some("2611"));
        assert_eq!(lookup(&text, "ddb.toolsInstallType"), Some("4"));
        assert_eq!(lookup(&text, "ddb.virtualHWVersion"), Some("4"));
        assert!(text.contains("RW 41943040 SPARSE \"disk.vmdk\"\n"));
        assert_eq!("legacyESX".parse::<AdapterType>(), Ok(AdapterType::LegacyEsx));
        assert!("pvscsi".parse::<AdapterType>().is_err());
    }
}
