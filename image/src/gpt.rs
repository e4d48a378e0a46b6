//! Growing the last partition of a GUID partition table to the end of the
//! medium, which is how `data` comes to fill a partner's SD card or disk.
//!
//! The factory image is a few hundred MiB; the card it is written to is
//! usually far larger. On first boot the box moves the backup table to the
//! real end of the medium and extends `data` up to it. [`Table::parse`]
//! reads one copy of the table (header sector and entry array, CRCs
//! checked); [`Table::grow`] gives the sector writes in the order that keeps
//! a power cut harmless:
//!
//! 1. the new backup entry array, then the new backup header, at the end of
//!    the medium; a cut here leaves the old primary table, valid and in
//!    charge, and the next boot starts over;
//! 2. the primary entry array, then the primary header (one sector, written
//!    last); a cut between the two leaves a primary whose entry CRC fails,
//!    and every reader (the kernel, U-Boot, this module) then takes the new
//!    backup at the last sector, which already describes the grown table;
//! 3. a zeroed sector where the old backup header was, now inside `data`, so
//!    no stale table is left for a later reader to find.
//!
//! `gpt` and similar crates read and write whole tables but do not promise
//! this order, which is the point here; the format itself is small.

use crate::error::GptError;

/// `EFI PART`, the first eight bytes of a header.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";

/// The revision every current writer uses (1.0).
const REVISION: u32 = 0x0001_0000;

/// Bytes of the header that carry fields; the rest of its sector is zero.
const HEADER_FIELDS_LEN: usize = 92;

/// An entry array larger than this is not one this box was made with.
pub const MAX_ENTRIES_LEN: usize = 1 << 20;

/// The grown partition ends on a boundary of this many bytes, as partition
/// tools align starts; flash erases in blocks of about this size.
const ALIGN_BYTES: u64 = 1 << 20;

/// Where the header fields sit.
mod field {
    pub(super) const HEADER_SIZE: usize = 12;
    pub(super) const HEADER_CRC: usize = 16;
    pub(super) const MY_LBA: usize = 24;
    pub(super) const ALTERNATE_LBA: usize = 32;
    pub(super) const FIRST_USABLE: usize = 40;
    pub(super) const LAST_USABLE: usize = 48;
    pub(super) const ENTRIES_LBA: usize = 72;
    pub(super) const ENTRY_COUNT: usize = 80;
    pub(super) const ENTRY_SIZE: usize = 84;
    pub(super) const ENTRIES_CRC: usize = 88;
}

/// Where the fields of one partition entry sit.
mod entry {
    pub(super) const TYPE_GUID: std::ops::Range<usize> = 0..16;
    pub(super) const FIRST_LBA: usize = 32;
    pub(super) const LAST_LBA: usize = 40;
    pub(super) const ATTRIBUTES: usize = 48;
    pub(super) const NAME: std::ops::Range<usize> = 56..128;
    pub(super) const MIN_SIZE: usize = 128;
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition number the kernel gives it: its index in the array plus one.
    pub number: u32,
    /// The GPT name (UTF-16 in the table).
    pub name: String,
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits (bit 2: legacy BIOS bootable, where U-Boot's distro
    /// boot looks for its script).
    pub attributes: u64,
}

impl Partition {
    /// Length in sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba + 1 - self.first_lba
    }
}

/// One copy of the table: its header sector and its entry array.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<u8>,
    entries: Vec<u8>,
}

/// The sector writes that grow a partition, in the order they must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    /// The partition as it will be.
    pub partition: Partition,
    /// Its last sector before.
    pub old_last_lba: u64,
    /// `(sector, bytes)`, each synced before the next is written.
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Table {
    /// Reads a header sector (`sector_size` bytes from LBA 1, or from the
    /// last sector for the backup).
    ///
    /// Returns the entry array's location and length, for the caller to
    /// read it and hand both to [`Table::parse`].
    pub fn entries_location(header_sector: &[u8]) -> Result<(u64, usize), GptError> {
        let header = check_header(header_sector)?;
        Ok((u64_at(header, field::ENTRIES_LBA), entries_len(header)?))
    }

    /// Checks one copy: signature, revision, sizes, header CRC, entry CRC.
    pub fn parse(header_sector: &[u8], entries: &[u8]) -> Result<Self, GptError> {
        let header = check_header(header_sector)?;
        let len = entries_len(header)?;
        let entries = entries.get(..len).ok_or(GptError::Truncated)?;
        if crc32fast::hash(entries) != u32_at(header, field::ENTRIES_CRC) {
            return Err(GptError::EntriesCrc);
        }
        Ok(Self {
            header: header.to_vec(),
            entries: entries.to_vec(),
        })
    }

    /// This copy's own sector: 1 for the primary, the last one for the backup.
    pub fn my_lba(&self) -> u64 {
        u64_at(&self.header, field::MY_LBA)
    }

    /// The last sector a partition may use.
    pub fn last_usable_lba(&self) -> u64 {
        u64_at(&self.header, field::LAST_USABLE)
    }

    /// Every used entry, in array order.
    pub fn partitions(&self) -> Vec<Partition> {
        let size = entry_size(&self.header);
        self.entries
            .chunks_exact(size)
            .zip(1u32..)
            .filter(|(raw, _)| raw[entry::TYPE_GUID].iter().any(|&b| b != 0))
            .map(|(raw, number)| Partition {
                number,
                name: utf16_name(&raw[entry::NAME]),
                first_lba: u64_at(raw, entry::FIRST_LBA),
                last_lba: u64_at(raw, entry::LAST_LBA),
                attributes: u64_at(raw, entry::ATTRIBUTES),
            })
            .collect()
    }

    /// Plans growing the partition called `name` to the end of a medium of
    /// `disk_sectors` sectors of `sector_size` bytes.
    ///
    /// `None` when there is nothing to do: the table is the primary, its
    /// backup already sits at the last sector, and the partition cannot
    /// grow by a whole alignment step. A table read from the backup copy
    /// always gets a plan, which rewrites the primary from it.
    pub fn grow(
        &self,
        name: &str,
        disk_sectors: u64,
        sector_size: usize,
    ) -> Result<Option<GrowPlan>, GptError> {
        let parts = self.partitions();
        let target = parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| GptError::NoPartition(name.to_owned()))?;
        if parts.iter().any(|p| p.last_lba > target.last_lba) {
            return Err(GptError::NotLast(name.to_owned()));
        }
        let sector = u64::try_from(sector_size).map_err(|_| GptError::Geometry)?;
        let entry_sectors = u64::try_from(self.entries.len().div_ceil(sector_size))
            .map_err(|_| GptError::Geometry)?;
        let backup_lba = disk_sectors.checked_sub(1).ok_or(GptError::Geometry)?;
        let backup_entries_lba = backup_lba
            .checked_sub(entry_sectors)
            .ok_or(GptError::Geometry)?;
        let last_usable = backup_entries_lba
            .checked_sub(1)
            .ok_or(GptError::Geometry)?;
        let old_backup_lba = u64_at(&self.header, field::ALTERNATE_LBA);
        let (primary_entries_lba, old_backup_lba) = if self.my_lba() == 1 {
            (u64_at(&self.header, field::ENTRIES_LBA), old_backup_lba)
        } else {
            // Read from the backup: the primary's array follows its header.
            (2, self.my_lba())
        };
        if last_usable < self.last_usable_lba() || backup_lba < old_backup_lba {
            return Err(GptError::Shrunk);
        }

        let align = (ALIGN_BYTES / sector).max(1);
        let aligned_end = (last_usable + 1) / align * align;
        let new_last = if aligned_end > target.last_lba + 1 {
            aligned_end - 1
        } else {
            target.last_lba
        };
        let from_backup = self.my_lba() != 1;
        if !from_backup && new_last == target.last_lba && old_backup_lba == backup_lba {
            return Ok(None);
        }

        let mut entries = self.entries.clone();
        let at = (target.number as usize - 1) * entry_size(&self.header) + entry::LAST_LBA;
        entries[at..at + 8].copy_from_slice(&new_last.to_le_bytes());
        let entries_crc = crc32fast::hash(&entries);

        let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
            let mut h = self.header.clone();
            put_u64(&mut h, field::MY_LBA, my_lba);
            put_u64(&mut h, field::ALTERNATE_LBA, alternate_lba);
            put_u64(&mut h, field::LAST_USABLE, last_usable);
            put_u64(&mut h, field::ENTRIES_LBA, entries_lba);
            put_u32(&mut h, field::ENTRIES_CRC, entries_crc);
            seal(&mut h);
            h
        };
        let padded = |bytes: Vec<u8>| {
            let mut bytes = bytes;
            bytes.resize(bytes.len().div_ceil(sector_size) * sector_size, 0);
            bytes
        };

        let mut writes = vec![
            (backup_entries_lba, padded(entries.clone())),
            (
                backup_lba,
                padded(header(backup_lba, 1, backup_entries_lba)),
            ),
            (primary_entries_lba, padded(entries)),
            (1, padded(header(1, backup_lba, primary_entries_lba))),
        ];
        if old_backup_lba != backup_lba {
            writes.push((old_backup_lba, vec![0; sector_size]));
        }
        Ok(Some(GrowPlan {
            partition: Partition {
                last_lba: new_last,
                ..target.clone()
            },
            old_last_lba: target.last_lba,
            writes,
        }))
    }
}

/// The header's fields, checked; `sector` is the whole header sector.
fn check_header(sector: &[u8]) -> Result<&[u8], GptError> {
    if sector.len() < HEADER_FIELDS_LEN {
        return Err(GptError::Truncated);
    }
    if &sector[..8] != SIGNATURE {
        return Err(GptError::Signature);
    }
    if u32_at(sector, 8) != REVISION {
        return Err(GptError::Revision(u32_at(sector, 8)));
    }
    let size = u32_at(sector, field::HEADER_SIZE) as usize;
    if !(HEADER_FIELDS_LEN..=sector.len()).contains(&size) {
        return Err(GptError::HeaderSize(size));
    }
    let header = &sector[..size];
    let mut zeroed = header.to_vec();
    put_u32(&mut zeroed, field::HEADER_CRC, 0);
    if crc32fast::hash(&zeroed) != u32_at(header, field::HEADER_CRC) {
        return Err(GptError::HeaderCrc);
    }
    if u64_at(header, field::FIRST_USABLE) > u64_at(header, field::LAST_USABLE) {
        return Err(GptError::Geometry);
    }
    entries_len(header)?;
    Ok(header)
}

fn entries_len(header: &[u8]) -> Result<usize, GptError> {
    let size = entry_size(header);
    let count = u32_at(header, field::ENTRY_COUNT) as usize;
    if size < entry::MIN_SIZE || !size.is_power_of_two() {
        return Err(GptError::EntrySize(size));
    }
    count
        .checked_mul(size)
        .filter(|&len| len > 0 && len <= MAX_ENTRIES_LEN)
        .ok_or(GptError::EntriesLength)
}

fn entry_size(header: &[u8]) -> usize {
    u32_at(header, field::ENTRY_SIZE) as usize
}

/// Recomputes the header CRC over the header with its CRC field zero.
fn seal(header: &mut [u8]) {
    put_u32(header, field::HEADER_CRC, 0);
    let crc = crc32fast::hash(header);
    put_u32(header, field::HEADER_CRC, crc);
}

fn utf16_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTOR: usize = 512;
    const ENTRIES: u32 = 128;
    /// 64 MiB in sectors: a factory image.
    const FACTORY_SECTORS: u64 = 64 * 2048;

    /// A factory-style table: `boot` at 1 MiB, `data` after it up to the
    /// last usable sector, as genimage lays it out. Returns the whole disk.
    fn factory_disk(sectors: u64) -> Vec<u8> {
        let mut disk = vec![0u8; usize::try_from(sectors).expect("small test disk") * SECTOR];
        let entry_sectors = u64::from(ENTRIES) * 128 / SECTOR as u64;
        let last_usable = sectors - 2 - entry_sectors;
        let mut entries = vec![0u8; ENTRIES as usize * 128];
        for (i, (name, first, last)) in [("boot", 2048, 4095), ("data", 4096, last_usable)]
            .into_iter()
            .enumerate()
        {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 0xaf; // any non-zero type GUID
            e[16] = i as u8 + 1;
            put_u64(e, entry::FIRST_LBA, first);
            put_u64(e, entry::LAST_LBA, last);
            for (j, unit) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        let mut header = vec![0u8; HEADER_FIELDS_LEN];
        header[..8].copy_from_slice(SIGNATURE);
        put_u32(&mut header, 8, REVISION);
        put_u32(&mut header, field::HEADER_SIZE, HEADER_FIELDS_LEN as u32);
        put_u64(&mut header, field::FIRST_USABLE, 34);
        put_u64(&mut header, field::LAST_USABLE, last_usable);
        put_u32(&mut header, field::ENTRY_COUNT, ENTRIES);
        put_u32(&mut header, field::ENTRY_SIZE, 128);
        put_u32(&mut header, field::ENTRIES_CRC, crc32fast::hash(&entries));
        for (my, alternate, entries_lba) in [
            (1, sectors - 1, 2),
            (sectors - 1, 1, sectors - 1 - entry_sectors),
        ] {
            let mut h = header.clone();
            put_u64(&mut h, field::MY_LBA, my);
            put_u64(&mut h, field::ALTERNATE_LBA, alternate);
            put_u64(&mut h, field::ENTRIES_LBA, entries_lba);
            seal(&mut h);
            write_at(&mut disk, entries_lba, &entries);
            write_at(&mut disk, my, &h);
        }
        disk
    }

    fn write_at(disk: &mut [u8], lba: u64, bytes: &[u8]) {
        let at = usize::try_from(lba).expect("small test disk") * SECTOR;
        disk[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn sector(disk: &[u8], lba: u64) -> &[u8] {
        let at = usize::try_from(lba).expect("small test disk") * SECTOR;
        &disk[at..at + SECTOR]
    }

    fn read_copy(disk: &[u8], header_lba: u64) -> Result<Table, GptError> {
        let header = sector(disk, header_lba);
        let (lba, len) = Table::entries_location(header)?;
        let at = usize::try_from(lba).expect("small test disk") * SECTOR;
        Table::parse(header, &disk[at..at + len])
    }

    fn last_sector(disk: &[u8]) -> u64 {
        (disk.len() / SECTOR) as u64 - 1
    }

    /// The factory disk written to a medium of `sectors`.
    fn flashed(sectors: u64) -> Vec<u8> {
        let mut disk = factory_disk(FACTORY_SECTORS);
        disk.resize(
            usize::try_from(sectors).expect("small test disk") * SECTOR,
            0,
        );
        disk
    }

    fn apply(disk: &mut [u8], writes: &[(u64, Vec<u8>)]) {
        for (lba, bytes) in writes {
            write_at(disk, *lba, bytes);
        }
    }

    #[test]
    fn factory_table_reads_back_from_both_copies() {
        let disk = factory_disk(FACTORY_SECTORS);
        let primary = read_copy(&disk, 1).expect("primary table");
        let backup = read_copy(&disk, last_sector(&disk)).expect("backup table");
        assert_eq!(primary.partitions(), backup.partitions());
        let names: Vec<_> = primary.partitions().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["boot", "data"]);
    }

    #[test]
    fn grows_data_to_the_aligned_end_and_moves_the_backup() {
        let sectors = 256 * 2048 + 77; // 256 MiB and a ragged tail
        let mut disk = flashed(sectors);
        let table = read_copy(&disk, 1).expect("primary table");
        let plan = table
            .grow("data", sectors, SECTOR)
            .expect("growable")
            .expect("a plan");
        assert_eq!(plan.partition.number, 2);
        assert_eq!(plan.old_last_lba, FACTORY_SECTORS - 34);
        assert_eq!((plan.partition.last_lba + 1) % 2048, 0);
        assert!(plan.partition.last_lba <= sectors - 34);
        assert!(plan.partition.last_lba > sectors - 34 - 2048);
        apply(&mut disk, &plan.writes);

        let primary = read_copy(&disk, 1).expect("primary table");
        let backup = read_copy(&disk, sectors - 1).expect("backup table");
        assert_eq!(primary.partitions(), backup.partitions());
        assert_eq!(primary.partitions()[1], plan.partition);
        assert_eq!(primary.partitions()[0].last_lba, 4095, "boot untouched");
        assert_eq!(primary.last_usable_lba(), sectors - 34);
        // The old backup header is gone.
        assert_eq!(
            Table::entries_location(sector(&disk, FACTORY_SECTORS - 1)),
            Err(GptError::Signature)
        );
        // Done once; nothing more to do after.
        assert_eq!(primary.grow("data", sectors, SECTOR), Ok(None));
    }

    #[test]
    fn a_cut_at_any_write_leaves_a_readable_table_and_the_next_run_finishes() {
        let sectors = 128 * 2048;
        let pristine = flashed(sectors);
        let plan = read_copy(&pristine, 1)
            .expect("primary table")
            .grow("data", sectors, SECTOR)
            .expect("growable")
            .expect("a plan");
        for done in 0..=plan.writes.len() {
            let mut disk = pristine.clone();
            apply(&mut disk, &plan.writes[..done]);
            // What a reader does: the primary, else the backup at the end.
            let table = read_copy(&disk, 1)
                .or_else(|_| read_copy(&disk, sectors - 1))
                .unwrap_or_else(|e| panic!("no valid table after {done} writes: {e}"));
            let data = table.partitions()[1].clone();
            assert!(
                data.last_lba == plan.old_last_lba || data == plan.partition,
                "after {done} writes: {data:?}"
            );
            if let Some(again) = table.grow("data", sectors, SECTOR).expect("growable") {
                assert_eq!(again.partition, plan.partition);
                apply(&mut disk, &again.writes);
            }
            let primary = read_copy(&disk, 1).expect("primary table");
            assert_eq!(
                primary.partitions()[1],
                plan.partition,
                "after {done} writes"
            );
            assert_eq!(primary.grow("data", sectors, SECTOR), Ok(None));
        }
    }

    #[test]
    fn same_size_medium_needs_nothing() {
        let disk = factory_disk(FACTORY_SECTORS);
        let table = read_copy(&disk, 1).expect("primary table");
        // data already ends at the last usable sector; an aligned end is
        // below that, so nothing grows.
        assert_eq!(table.grow("data", FACTORY_SECTORS, SECTOR), Ok(None));
    }

    #[test]
    fn refuses_what_it_must_not_touch() {
        let disk = flashed(128 * 2048);
        let table = read_copy(&disk, 1).expect("primary table");
        assert_eq!(
            table.grow("boot", 128 * 2048, SECTOR),
            Err(GptError::NotLast("boot".into()))
        );
        assert_eq!(
            table.grow("logs", 128 * 2048, SECTOR),
            Err(GptError::NoPartition("logs".into()))
        );
        assert_eq!(
            table.grow("data", FACTORY_SECTORS - 2048, SECTOR),
            Err(GptError::Shrunk)
        );
    }

    #[test]
    fn corrupt_headers_and_entries_are_named() {
        let disk = factory_disk(FACTORY_SECTORS);
        let header = sector(&disk, 1).to_vec();
        let entries = &disk[2 * SECTOR..34 * SECTOR];

        let mut bad = header.clone();
        bad[0] = b'X';
        assert_eq!(Table::parse(&bad, entries).err(), Some(GptError::Signature));
        let mut bad = header.clone();
        bad[field::LAST_USABLE] ^= 1;
        assert_eq!(Table::parse(&bad, entries).err(), Some(GptError::HeaderCrc));
        let mut bad_entries = entries.to_vec();
        bad_entries[100] ^= 1;
        assert_eq!(
            Table::parse(&header, &bad_entries).err(),
            Some(GptError::EntriesCrc)
        );
        assert_eq!(
            Table::parse(&header, &entries[..100]).err(),
            Some(GptError::Truncated)
        );
        assert_eq!(
            Table::parse(&header[..50], entries).err(),
            Some(GptError::Truncated)
        );
        let mut bad = header.clone();
        put_u32(&mut bad, field::ENTRY_COUNT, u32::MAX);
        seal(&mut bad[..HEADER_FIELDS_LEN]);
        assert_eq!(
            Table::parse(&bad, entries).err(),
            Some(GptError::EntriesLength)
        );
        let mut bad = header;
        put_u32(&mut bad, field::ENTRY_SIZE, 100);
        seal(&mut bad[..HEADER_FIELDS_LEN]);
        assert_eq!(
            Table::parse(&bad, entries).err(),
            Some(GptError::EntrySize(100))
        );
    }
}
