//! The partition table of a disk image: enough of GPT to find a partition by
//! its label and to check the layout docs/image.md fixes.
//!
//! Only the primary table is read, with 512-byte sectors, which is what
//! genimage writes for the box. Header and table CRCs are not checked: the
//! images read here come from genimage a moment earlier, and U-Boot and the
//! kernel, which do check them, are what the tests exercise.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::Path;
use std::process::Command;

use crate::Error;

/// The sector size of every image the rig builds.
pub const SECTOR: u64 = 512;

/// The GPT attribute bit firmware reads as "legacy BIOS bootable"; U-Boot's
/// distro boot looks for its script on the partitions that carry it.
pub const LEGACY_BOOTABLE: u64 = 1 << 2;

/// One entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as U-Boot (`virtio 0:3`) and the kernel (`vda3`) count.
    pub number: u32,
    /// The GPT partition name, the label docs/image.md gives it.
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
}

impl Partition {
    /// Byte offset of the partition in the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_legacy_bootable(&self) -> bool {
        self.attributes & LEGACY_BOOTABLE != 0
    }
}

/// The used entries of the disk image's partition table, in table order.
pub fn partitions(disk: &Path) -> Result<Vec<Partition>, Error> {
    parse_gpt(&mut File::open(disk)?)
}

/// The partition named `name`.
pub fn find(disk: &Path, name: &str) -> Result<Partition, Error> {
    partitions(disk)?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::Disk(format!("no partition named {name:?}")))
}

/// Makes the disk image `bytes` long, as writing it to a larger card does:
/// the new space reads as zeros and the backup table stays where it was.
pub fn enlarge(disk: &Path, bytes: u64) -> Result<(), Error> {
    File::options().write(true).open(disk)?.set_len(bytes)?;
    Ok(())
}

/// `sfdisk --verify` (util-linux): both tables, their CRCs, the backup at
/// the last sector, and partitions inside the usable area.
pub fn verify_table(disk: &Path) -> Result<(), Error> {
    let out = Command::new("sfdisk").arg("--verify").arg(disk).output()?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !text.contains("No errors detected") {
        return Err(Error::Disk(format!("sfdisk --verify: {text}")));
    }
    Ok(())
}

/// Copies partition `part` of `disk` to `dest`, checks the ext4 file system
/// in the copy with e2fsck (replaying its journal first, as a mount after a
/// power cut does), and returns its size in bytes as dumpe2fs reports it.
pub fn check_ext4(disk: &Path, part: &Partition, dest: &Path) -> Result<u64, Error> {
    let mut from = File::open(disk)?;
    from.seek(SeekFrom::Start(part.offset()))?;
    let mut to = File::create(dest)?;
    std::io::copy(&mut from.take(part.len()), &mut to)?;
    to.flush()?;
    // 0: clean; 1: errors corrected, which is what replaying a journal
    // reports. A second pass must find nothing.
    for (flags, worst) in [("-fy", 1), ("-fn", 0)] {
        let out = Command::new("e2fsck").arg(flags).arg(dest).output()?;
        let code = out.status.code().unwrap_or(i32::MAX);
        if code > worst {
            return Err(Error::Disk(format!(
                "e2fsck {flags} exited {code}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let out = Command::new("dumpe2fs").arg("-h").arg(dest).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Disk(format!("dumpe2fs -h shows no {name:?}")))
    };
    Ok(field("Block count:")? * field("Block size:")?)
}

/// Reads the primary GPT header at LBA 1 and the entries it points to.
pub fn parse_gpt<R: Read + Seek>(disk: &mut R) -> Result<Vec<Partition>, Error> {
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut header)?;
    if &header[..8] != b"EFI PART" {
        return Err(Error::Disk("no GPT signature at LBA 1".into()));
    }
    let entries_lba = le_u64(&header[72..80]);
    let count = le_u32(&header[80..84]);
    let entry_size = le_u32(&header[84..88]) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(Error::Disk(format!(
            "implausible table: {count} entries of {entry_size} bytes"
        )));
    }

    let mut table = vec![0u8; count as usize * entry_size];
    disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    disk.read_exact(&mut table)?;
    let mut found = Vec::new();
    for (index, entry) in table.chunks_exact(entry_size).enumerate() {
        // An all-zero type GUID marks an unused entry.
        if entry[..16].iter().all(|b| *b == 0) {
            continue;
        }
        found.push(Partition {
            number: index as u32 + 1,
            name: utf16_name(&entry[56..128]),
            first_lba: le_u64(&entry[32..40]),
            last_lba: le_u64(&entry[40..48]),
            attributes: le_u64(&entry[48..56]),
        });
    }
    Ok(found)
}

fn utf16_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A disk with a GPT header at LBA 1 and four 128-byte entries at LBA 2,
    /// of which entries 1 and 3 are used.
    fn synthetic_disk() -> Vec<u8> {
        let mut disk = vec![0u8; 8 * SECTOR as usize];
        let header = &mut disk[512..604];
        header[..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&4u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());

        let entry = |disk: &mut Vec<u8>, index: usize, name: &str, first: u64, attrs: u64| {
            let at = 1024 + index * 128;
            disk[at] = 0xaf; // any non-zero type GUID
            disk[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
            disk[at + 40..at + 48].copy_from_slice(&(first + 7).to_le_bytes());
            disk[at + 48..at + 56].copy_from_slice(&attrs.to_le_bytes());
            for (i, unit) in name.encode_utf16().enumerate() {
                disk[at + 56 + 2 * i..at + 58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        };
        entry(&mut disk, 0, "boot", 2048, LEGACY_BOOTABLE);
        entry(&mut disk, 2, "kernel_a", 4096, 0);
        disk
    }

    #[test]
    fn reads_used_entries_with_their_numbers() {
        let parts = parse_gpt(&mut Cursor::new(synthetic_disk())).expect("parse the table");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].name, "boot");
        assert!(parts[0].is_legacy_bootable());
        assert_eq!(parts[0].offset(), 2048 * 512);
        assert_eq!(parts[0].len(), 8 * 512);
        assert_eq!(parts[1].number, 3);
        assert_eq!(parts[1].name, "kernel_a");
        assert!(!parts[1].is_legacy_bootable());
    }

    #[test]
    fn a_disk_without_gpt_is_an_error() {
        let error = parse_gpt(&mut Cursor::new(vec![0u8; 4096])).expect_err("no signature");
        assert!(error.to_string().contains("GPT"), "{error}");
        assert!(parse_gpt(&mut Cursor::new(vec![0u8; 100])).is_err());
    }
}
