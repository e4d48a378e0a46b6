//! The one thing the box reads from an ext4 superblock: how large the file
//! system is, to tell whether `data` still has to grow into its partition.

use crate::error::GptError;

/// Where the superblock starts on the partition.
pub const SUPERBLOCK_OFFSET: u64 = 1024;

/// Bytes of the superblock to read.
pub const SUPERBLOCK_LEN: usize = 1024;

const MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;

/// Block size of at most 64 KiB: `s_log_block_size` 0 to 6.
const MAX_LOG_BLOCK_SIZE: u32 = 6;

/// The size of an ext2/3/4 file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks in the file system.
    pub blocks: u64,
}

impl Size {
    /// Reads the superblock (the [`SUPERBLOCK_LEN`] bytes at
    /// [`SUPERBLOCK_OFFSET`] of the partition).
    pub fn parse(superblock: &[u8]) -> Result<Self, GptError> {
        let sb = superblock
            .get(..SUPERBLOCK_LEN)
            .ok_or(GptError::Truncated)?;
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != MAGIC {
            return Err(GptError::NotExt4);
        }
        let log = u32_at(sb, 0x18);
        if log > MAX_LOG_BLOCK_SIZE {
            return Err(GptError::NotExt4);
        }
        let mut blocks = u64::from(u32_at(sb, 0x04));
        if u32_at(sb, 0x60) & INCOMPAT_64BIT != 0 {
            blocks |= u64::from(u32_at(sb, 0x150)) << 32;
        }
        Ok(Self {
            block_size: 1024 << log,
            blocks,
        })
    }

    /// Bytes in the file system.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A real superblock, from the e2fsprogs `mkfs.ext4` the image build uses.
    #[test]
    fn reads_the_size_mkfs_made() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("data.ext4");
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "data"])
            .arg(&path)
            .arg("24M")
            .stdout(std::process::Stdio::null())
            .status();
        let Ok(status) = made else {
            panic!("mkfs.ext4 not found (package e2fsprogs)");
        };
        assert!(status.success());
        let bytes = std::fs::read(&path).expect("mkfs output");
        let sb = &bytes[SUPERBLOCK_OFFSET as usize..][..SUPERBLOCK_LEN];
        let size = Size::parse(sb).expect("a real superblock");
        assert_eq!(size.block_size, 4096);
        assert_eq!(size.bytes(), 24 << 20);
    }

    #[test]
    fn not_ext4_is_named() {
        assert_eq!(Size::parse(&[0; 1024]), Err(GptError::NotExt4));
        assert_eq!(Size::parse(&[0; 10]), Err(GptError::Truncated));
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x18] = 40;
        assert_eq!(Size::parse(&sb), Err(GptError::NotExt4));
    }
}
