//! The boot firmware an image is laid out for: the builder writes it, the lab boots with it,
//! `ova inspect` reports it.

/// Boot firmware of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// UEFI with systemd-boot on the ESP.
    Efi,
    /// Legacy BIOS.
    Bios,
}
