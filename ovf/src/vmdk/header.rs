//! The on-disk structures of a sparse VMDK extent: the 512-byte header (and its footer copy)
//! and the stream markers, as laid out in VMware's "Virtual Disk Format 5.0".

use super::VmdkError;

/// One sector, the unit of every offset and length in a sparse extent.
pub const SECTOR: u64 = 512;
/// `KDMV` read as a little-endian u32.
pub const MAGIC: u32 = 0x564d_444b;
/// `gdOffset` value meaning "the grain directory is found through the footer".
pub const GD_AT_END: u64 = u64::MAX;

/// Header flag: the newline-detection characters are valid.
pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
/// Header flag: a redundant grain directory is present.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Header flag: zeroed-grain GTEs (value 1) are used.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Header flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: the extent carries markers (grain markers with an embedded LBA).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// The flags VMware's own stream writers set (and that we write): 0x30001.
pub const STREAM_FLAGS: u32 = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS;
/// `compressAlgorithm` for DEFLATE (zlib-wrapped, RFC 1950).
pub const COMPRESS_DEFLATE: u16 = 1;

/// Metadata marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Metadata marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Metadata marker type: the grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Metadata marker type: the footer (a header copy) follows.
pub const MARKER_FOOTER: u32 = 3;

/// The fields of a sparse extent header (`SparseExtentHeader`), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version: 1, 2 or 3 (streamOptimized writers use 3).
    pub version: u32,
    /// Feature flags (`FLAG_*`).
    pub flags: u32,
    /// Disk capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors (128 = 64 KiB for every VMware writer).
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0 when there is none).
    pub descriptor_offset: u64,
    /// Length of the embedded descriptor area in sectors.
    pub descriptor_size: u64,
    /// Grain table entries per grain table (512).
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory (0 when there is none).
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while a writer had the extent open.
    pub unclean_shutdown: bool,
    /// `compressAlgorithm` (1 = DEFLATE).
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Encodes the header into one 512-byte sector.
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        // The newline-detection characters: a transfer that mangles line endings shows here.
        b[73] = b'\n';
        b[74] = b' ';
        b[75] = b'\r';
        b[76] = b'\n';
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Decodes and sanity-checks a header sector. Limits keep a hostile header from making a
    /// reader allocate or loop without bound.
    pub fn decode(b: &[u8; 512]) -> Result<Self, VmdkError> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(VmdkError::BadMagic { found: magic });
        }
        let h = SparseHeader {
            version: u32_at(4),
            flags: u32_at(8),
            capacity: u64_at(12),
            grain_size: u64_at(20),
            descriptor_offset: u64_at(28),
            descriptor_size: u64_at(36),
            num_gtes_per_gt: u32_at(44),
            rgd_offset: u64_at(48),
            gd_offset: u64_at(56),
            overhead: u64_at(64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        let bad = |field: &'static str, value: u64, reason: &'static str| {
            Err(VmdkError::BadHeader { field, value, reason })
        };
        if !(1..=3).contains(&h.version) {
            return bad("version", h.version.into(), "only versions 1 to 3 exist");
        }
        if h.flags & FLAG_VALID_NEWLINE != 0 && &b[73..77] != b"\n \r\n" {
            return bad(
                "singleEndLineChar",
                b[73].into(),
                "the newline-detection bytes are mangled (was the file transferred in text mode?)",
            );
        }
        if !h.grain_size.is_power_of_two() || h.grain_size > MAX_GRAIN_SECTORS {
            return bad(
                "grainSize",
                h.grain_size,
                "must be a power of two of at most 2048 sectors",
            );
        }
        if !h.num_gtes_per_gt.is_power_of_two() || !(128..=65536).contains(&h.num_gtes_per_gt) {
            return bad(
                "numGTEsPerGT",
                h.num_gtes_per_gt.into(),
                "must be a power of two between 128 and 65536",
            );
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return bad("capacity", h.capacity, "larger than 256 TiB");
        }
        if h.overhead == 0 || h.overhead > MAX_OVERHEAD_SECTORS {
            return bad(
                "overHead",
                h.overhead,
                "the first grain must start between sector 1 and 2^24",
            );
        }
        if h.descriptor_size > MAX_DESCRIPTOR_SECTORS {
            return bad(
                "descriptorSize",
                h.descriptor_size,
                "an embedded descriptor is at most 1 MiB",
            );
        }
        Ok(h)
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity * SECTOR
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }
}

/// The largest grain a reader accepts (1 MiB); VMware writes 64 KiB.
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// The largest capacity a reader accepts: 256 TiB (vSphere's limit is 62 TiB).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 39;
/// The latest first-grain sector a reader accepts.
pub const MAX_OVERHEAD_SECTORS: u64 = 1 << 24;
/// The largest embedded descriptor a reader accepts (1 MiB).
pub const MAX_DESCRIPTOR_SECTORS: u64 = 2048;

/// Encodes a metadata marker sector (`val` sectors of metadata of `kind` follow it).
pub fn metadata_marker(val: u64, kind: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..8].copy_from_slice(&val.to_le_bytes());
    // b[8..12] (size) stays 0: that is what tells a metadata marker from a grain marker.
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: STREAM_FLAGS,
            capacity: 2048,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        }
    }

    #[test]
    fn header_round_trips_and_matches_vmware_layout() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[0..4], b"KDMV");
        assert_eq!(&b[8..12], &[1, 0, 3, 0], "flags 0x30001");
        assert_eq!(&b[73..77], b"\n \r\n");
        assert_eq!(SparseHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn hostile_headers_are_rejected_with_the_field_named() {
        let mut b = sample().encode();
        b[20..28].copy_from_slice(&100u64.to_le_bytes());
        let err = SparseHeader::decode(&b).unwrap_err().to_string();
        assert!(err.contains("grainSize"), "{err}");

        let mut b = sample().encode();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = SparseHeader::decode(&b).unwrap_err().to_string();
        assert!(err.contains("capacity"), "{err}");

        let mut b = sample().encode();
        b[75] = b'\n';
        let err = SparseHeader::decode(&b).unwrap_err().to_string();
        assert!(err.contains("newline"), "{err}");

        let mut b = sample().encode();
        b[0] = b'X';
        assert!(matches!(SparseHeader::decode(&b), Err(VmdkError::BadMagic { .. })));
    }
}
