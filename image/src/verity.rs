//! dm-verity hash trees, written and checked without the kernel or cryptsetup: format
//! version 1 ("normal", salt first) with the 512-byte superblock `veritysetup format`
//! writes, sha256, 4096-byte data and hash blocks. The builder makes the tree of the `/usr`
//! partition with [`format`]; `capstan image check` recomputes it with [`verify`] and names
//! the first block that does not match. `veritysetup verify` is the oracle in the tests.
//!
//! Layout of the hash device: block 0 holds the superblock (the rest of the block is zero),
//! then the tree's levels from the top (one block) down to level 0 (the digests of the data
//! blocks). Each hash block holds 128 digests of `sha256(salt || block)`, zero-padded; the
//! root hash is the digest of the top block. This is the layout the kernel's `dm-verity`
//! computes from `hash_start_block = 1` (drivers/md/dm-verity-target.c, `verity_ctr`).

use std::io::Read;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// A sha256 digest.
pub const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;
/// Salt length the builder uses (veritysetup's default too).
pub const SALT_LEN: usize = 32;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const ALGORITHM: &str = "sha256";

/// What can go wrong reading or checking a hash tree. Blocks are numbered from the start of
/// their device (data blocks of the data device, hash blocks of the hash device, 4096 bytes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerityError {
    /// Reading the data or hash device failed.
    #[error("reading the {what}")]
    Io {
        /// Which device.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hash device does not start with a superblock this module writes.
    #[error("verity superblock: {0}")]
    Superblock(String),
    /// The top hash block does not hash to the root hash given.
    #[error("verity root hash mismatch: the hash tree's top block (hash block {block}) hashes to {found}, the boot entry says {expected}")]
    RootHash {
        /// Hash device block of the top level.
        block: u64,
        /// The root hash given (hex).
        expected: String,
        /// What the top block hashes to (hex).
        found: String,
    },
    /// A hash block does not match its digest in the level above.
    #[error("verity hash block {block} (level {level}) does not match the level above")]
    HashBlock {
        /// Hash device block.
        block: u64,
        /// Tree level (0 holds the data blocks' digests).
        level: usize,
    },
    /// A data block does not match its digest.
    #[error(
        "verity data block {block} (byte {offset} of the data device) does not match the hash tree"
    )]
    DataBlock {
        /// Data device block.
        block: u64,
        /// Its byte offset on the data device.
        offset: u64,
    },
}

/// The parameters of one tree (what the superblock records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The hash device's UUID (superblock).
    pub uuid: Uuid,
    /// The salt.
    pub salt: Vec<u8>,
    /// Number of data blocks covered.
    pub data_blocks: u64,
}

/// A made tree: the hash device's bytes and the root hash.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Superblock block, then the levels, top first.
    pub hash_device: Vec<u8>,
    /// sha256 of the top block (salted).
    pub root_hash: [u8; DIGEST],
}

impl Tree {
    /// The root hash in lower-case hex (what `usrhash=` carries).
    pub fn root_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
}

impl Params {
    /// Blocks per level, level 0 (data digests) first; empty for a single data block (its
    /// own digest is the root hash), as the kernel computes `levels`.
    pub fn levels(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut n = self.data_blocks;
        while n > 1 {
            n = n.div_ceil(PER_BLOCK);
            out.push(n);
        }
        out
    }

    /// Hash device block where level `level` starts (block 0 is the superblock).
    fn level_start(&self, levels: &[u64], level: usize) -> u64 {
        1 + levels[level + 1..].iter().sum::<u64>()
    }

    /// Bytes of the hash device (superblock block included).
    pub fn hash_device_bytes(&self) -> u64 {
        (1 + self.levels().iter().sum::<u64>()) * BLOCK
    }

    /// The 512-byte superblock, as `veritysetup format` writes it (lib/verity/verity.c,
    /// `struct verity_sb`), little-endian.
    pub fn superblock(&self) -> [u8; 512] {
        let mut sb = [0u8; 512];
        sb[0..8].copy_from_slice(SIGNATURE);
        sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal (salt first)
        sb[16..32].copy_from_slice(self.uuid.as_bytes());
        sb[32..32 + ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
        sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        sb[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        sb
    }

    /// Reads a superblock this module (or `veritysetup format` with our parameters) wrote.
    pub fn parse_superblock(sb: &[u8]) -> Result<Self, VerityError> {
        let bad = |why: String| VerityError::Superblock(why);
        if sb.len() < 512 || &sb[0..8] != SIGNATURE {
            return Err(bad("no \"verity\" signature at the start of the hash device".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(8) != 1 || u32_at(12) != 1 {
            return Err(bad(format!(
                "version {} hash type {}, expected 1 and 1",
                u32_at(8),
                u32_at(12)
            )));
        }
        let alg = sb[32..64].split(|&b| b == 0).next().unwrap_or_default();
        if alg != ALGORITHM.as_bytes() {
            return Err(bad(format!(
                "algorithm {:?}, expected sha256",
                String::from_utf8_lossy(alg)
            )));
        }
        if u32_at(64) != BLOCK as u32 || u32_at(68) != BLOCK as u32 {
            return Err(bad(format!("block sizes {}/{}, expected 4096", u32_at(64), u32_at(68))));
        }
        let salt_len = u16::from_le_bytes([sb[80], sb[81]]) as usize;
        if salt_len > 256 {
            return Err(bad(format!("salt of {salt_len} bytes (at most 256)")));
        }
        Ok(Self {
            uuid: Uuid::from_slice(&sb[16..32]).expect("16 bytes"),
            salt: sb[88..88 + salt_len].to_vec(),
            data_blocks: u64::from_le_bytes(sb[72..80].try_into().expect("8 bytes")),
        })
    }

    /// The device-mapper table line for `dmsetup create --table` (sizes in 512-byte sectors):
    /// what the initramfs's `/init` computes from the superblock (its test compares them).
    #[cfg(test)]
    pub fn table(&self, data_dev: &str, hash_dev: &str, root_hex: &str) -> String {
        format!(
            "0 {} verity 1 {data_dev} {hash_dev} {BLOCK} {BLOCK} {} 1 {ALGORITHM} {root_hex} {}",
            self.data_blocks * (BLOCK / 512),
            self.data_blocks,
            hex::encode(&self.salt)
        )
    }

    fn digest(&self, block: &[u8]) -> [u8; DIGEST] {
        let mut h = Sha256::new();
        h.update(&self.salt);
        h.update(block);
        h.finalize().into()
    }

    /// The digests of the data blocks read from `data` (exactly `data_blocks` blocks).
    fn data_digests(&self, data: &mut impl Read) -> Result<Vec<[u8; DIGEST]>, VerityError> {
        let mut block = vec![0u8; BLOCK as usize];
        let mut out = Vec::with_capacity(self.data_blocks as usize);
        for _ in 0..self.data_blocks {
            data.read_exact(&mut block)
                .map_err(|source| VerityError::Io { what: "data device", source })?;
            out.push(self.digest(&block));
        }
        Ok(out)
    }
}

/// Packs digests into zero-padded hash blocks.
fn pack(digests: &[[u8; DIGEST]]) -> Vec<u8> {
    let blocks = (digests.len() as u64).div_ceil(PER_BLOCK);
    let mut out = vec![0u8; (blocks * BLOCK) as usize];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

/// Makes the tree of `params.data_blocks` blocks read from `data`.
pub fn format(params: &Params, data: &mut impl Read) -> Result<Tree, VerityError> {
    if params.salt.len() > 256 || params.data_blocks == 0 {
        return Err(VerityError::Superblock("salt over 256 bytes or no data blocks".into()));
    }
    let levels = params.levels();
    let mut digests = params.data_digests(data)?;
    let mut hash_device = vec![0u8; params.hash_device_bytes() as usize];
    hash_device[..512].copy_from_slice(&params.superblock());
    for level in 0..levels.len() {
        let packed = pack(&digests);
        debug_assert_eq!(packed.len() as u64, levels[level] * BLOCK);
        let at = (params.level_start(&levels, level) * BLOCK) as usize;
        hash_device[at..at + packed.len()].copy_from_slice(&packed);
        digests = packed.chunks(BLOCK as usize).map(|b| params.digest(b)).collect();
    }
    Ok(Tree { hash_device, root_hash: digests[0] })
}

/// Checks `data` against the hash device `hash` (superblock included) and the root hash
/// `root_hex`, top down as the kernel does: the top block against the root hash, each level
/// against the one above, then every data block. Returns the parameters read from the
/// superblock; the error names the first block that does not match.
pub fn verify(hash: &[u8], data: &mut impl Read, root_hex: &str) -> Result<Params, VerityError> {
    let params = Params::parse_superblock(hash)?;
    // Level 0 alone takes a digest per data block: bound the count before any arithmetic.
    if params.data_blocks == 0 || params.data_blocks > hash.len() as u64 / DIGEST as u64 {
        return Err(VerityError::Superblock(format!(
            "{} data blocks cannot be covered by a hash device of {} bytes",
            params.data_blocks,
            hash.len()
        )));
    }
    if (hash.len() as u64) < params.hash_device_bytes() {
        return Err(VerityError::Superblock(format!(
            "the hash device holds {} bytes, a tree of {} data blocks needs {}",
            hash.len(),
            params.data_blocks,
            params.hash_device_bytes()
        )));
    }
    let levels = params.levels();
    let block_at = |b: u64| &hash[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
    // The digests each level's blocks must have, from the level above (the root for the top).
    let mut expected: Vec<u8> =
        hex::decode(root_hex).ok().filter(|r| r.len() == DIGEST).ok_or_else(|| {
            VerityError::Superblock(format!("root hash {root_hex:?} is not 64 hex digits"))
        })?;
    for level in (0..levels.len()).rev() {
        let start = params.level_start(&levels, level);
        for i in 0..levels[level] {
            let got = params.digest(block_at(start + i));
            if expected[(i as usize) * DIGEST..(i as usize + 1) * DIGEST] != got {
                if level + 1 == levels.len() {
                    return Err(VerityError::RootHash {
                        block: start,
                        expected: root_hex.to_string(),
                        found: hex::encode(got),
                    });
                }
                return Err(VerityError::HashBlock { block: start + i, level });
            }
        }
        expected =
            hash[(start * BLOCK) as usize..((start + levels[level]) * BLOCK) as usize].to_vec();
    }
    let mut block = vec![0u8; BLOCK as usize];
    for b in 0..params.data_blocks {
        data.read_exact(&mut block)
            .map_err(|source| VerityError::Io { what: "data device", source })?;
        let got = params.digest(&block);
        if expected[(b as usize) * DIGEST..(b as usize + 1) * DIGEST] != got {
            if levels.is_empty() {
                return Err(VerityError::RootHash {
                    block: 0,
                    expected: root_hex.to_string(),
                    found: hex::encode(got),
                });
            }
            return Err(VerityError::DataBlock { block: b, offset: b * BLOCK });
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests;
