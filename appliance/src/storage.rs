//! Growing `data` to fill the medium, run by the system start on every boot.
//!
//! The factory image carries a small `data` partition; the card or disk it
//! is written to is larger. [`grow_data`] moves the backup partition table
//! to the real end of the medium and extends `data` (the last partition) up
//! to it, in the power-cut-safe order of [`image::gpt`], tells the kernel
//! the new size, then grows the mounted ext4 file system online. Once it
//! fills the medium, every later call finds nothing to do, so a cut at any
//! point is finished by the next boot.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use image::ext4;
use image::gpt::{Partition, Table};
use image::GptError;

use crate::sys;

/// The GPT name of the partition that grows (docs/image.md).
pub const DATA_LABEL: &str = "data";

/// Sysfs counts sizes and starts in units of 512 bytes, whatever the disk's
/// own sector size.
const SYSFS_UNIT: u64 = 512;

/// Why `data` could not be grown.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// Reading or writing the disk, or asking the kernel, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The partition table or the file system header cannot be used.
    #[error("{what}: {source}")]
    Format {
        /// What was being read.
        what: String,
        /// The error.
        source: GptError,
    },
    /// The device given is not what the table calls `data`, or the mount
    /// point is not its file system.
    #[error("{0}")]
    Mismatch(String),
}

/// Sizes before and after, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// The partition before.
    pub partition_before: u64,
    /// The partition after.
    pub partition_after: u64,
    /// The file system before.
    pub fs_before: u64,
    /// The file system after.
    pub fs_after: u64,
}

impl Grown {
    /// Whether anything changed.
    pub fn grew(&self) -> bool {
        self.partition_after != self.partition_before || self.fs_after != self.fs_before
    }
}

/// Grows the partition `device` (e.g. `/dev/vda7`, named `data` in the
/// GPT) to the end of its disk, and the ext4 file system mounted from it
/// at `mountpoint` to the partition. `sys` is normally `/sys`.
pub fn grow_data(sys: &Path, device: &Path, mountpoint: &Path) -> Result<Grown, GrowError> {
    let disk = Disk::of_partition(sys, device)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.node)
        .map_err(io_error(format!("opening {}", disk.node.display())))?;
    let table = read_table(&file, &disk)?;
    let current = table
        .partitions()
        .into_iter()
        .find(|p| p.name == DATA_LABEL)
        .ok_or_else(|| format_error("partition table", GptError::NoPartition(DATA_LABEL.into())))?;
    if current.number != disk.partition_number {
        return Err(GrowError::Mismatch(format!(
            "{} is partition {} of {}, the table names partition {} '{DATA_LABEL}'",
            device.display(),
            disk.partition_number,
            disk.node.display(),
            current.number
        )));
    }
    let partition_before = current.sectors() * disk.sector_size;
    let plan = table
        .grow(DATA_LABEL, disk.sectors, disk.sector_usize()?)
        .map_err(|e| format_error("growing the partition table", e))?;
    let partition = match plan {
        Some(plan) => {
            for (lba, bytes) in &plan.writes {
                file.write_all_at(bytes, lba * disk.sector_size)
                    .and_then(|()| file.sync_data())
                    .map_err(io_error(format!(
                        "writing sector {lba} of {}",
                        disk.node.display()
                    )))?;
            }
            plan.partition
        }
        None => current,
    };
    let partition_after = partition.sectors() * disk.sector_size;
    tell_kernel(&file, &disk, &partition, device)?;

    let (fs_before, fs_after) = grow_file_system(device, mountpoint, partition_after)?;
    Ok(Grown {
        partition_before,
        partition_after,
        fs_before,
        fs_after,
    })
}

/// The disk a partition lives on, as sysfs describes it.
struct Disk {
    node: PathBuf,
    sys_dir: PathBuf,
    partition_number: u32,
    sector_size: u64,
    sectors: u64,
}

impl Disk {
    fn of_partition(sys: &Path, device: &Path) -> Result<Self, GrowError> {
        let name = device
            .file_name()
            .ok_or_else(|| GrowError::Mismatch(format!("{} is not a device", device.display())))?;
        let part_dir = fs::canonicalize(sys.join("class/block").join(name))
            .map_err(io_error(format!("finding {} in sysfs", device.display())))?;
        let partition_number = read_number(&part_dir.join("partition"))?;
        let sys_dir = part_dir
            .parent()
            .ok_or_else(|| GrowError::Mismatch(format!("{} has no disk", device.display())))?
            .to_path_buf();
        let disk_name = sys_dir.file_name().unwrap_or_default();
        let node = device.with_file_name(disk_name);
        let sector_size = read_number(&sys_dir.join("queue/logical_block_size")).unwrap_or(512);
        let bytes = read_number(&sys_dir.join("size"))? * SYSFS_UNIT;
        Ok(Self {
            node,
            sys_dir,
            partition_number: u32::try_from(partition_number)
                .map_err(|_| GrowError::Mismatch("partition number out of range".into()))?,
            sector_size,
            sectors: bytes / sector_size,
        })
    }

    fn sector_usize(&self) -> Result<usize, GrowError> {
        usize::try_from(self.sector_size)
            .map_err(|_| GrowError::Mismatch("sector size out of range".into()))
    }
}

/// The primary table, or, when it does not check out, the backup at the
/// last sector (as the kernel and U-Boot fall back to it).
fn read_table(file: &File, disk: &Disk) -> Result<Table, GrowError> {
    let primary = read_copy(file, disk, 1);
    primary.or_else(|primary_error| {
        let last = disk.sectors.saturating_sub(1);
        read_copy(file, disk, last).map_err(|backup_error| {
            format_error(
                &format!(
                    "partition table of {} (primary: {primary_error}; backup)",
                    disk.node.display()
                ),
                backup_error,
            )
        })
    })
}

fn read_copy(file: &File, disk: &Disk, lba: u64) -> Result<Table, GptError> {
    let read = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)
            .map(|()| buf)
            .map_err(|_| GptError::Truncated)
    };
    let sector = usize::try_from(disk.sector_size).map_err(|_| GptError::Geometry)?;
    let header = read(lba * disk.sector_size, sector)?;
    let (entries_lba, len) = Table::entries_location(&header)?;
    let entries = read(entries_lba * disk.sector_size, len)?;
    Table::parse(&header, &entries)
}

/// Makes the kernel's idea of the partition match the table, if it differs.
fn tell_kernel(
    file: &File,
    disk: &Disk,
    partition: &Partition,
    device: &Path,
) -> Result<(), GrowError> {
    let name = device.file_name().unwrap_or_default();
    let kernel_bytes = read_number(&disk.sys_dir.join(name).join("size"))? * SYSFS_UNIT;
    let bytes = partition.sectors() * disk.sector_size;
    if kernel_bytes == bytes {
        return Ok(());
    }
    sys::resize_partition(
        file,
        partition.number,
        partition.first_lba * disk.sector_size,
        bytes,
    )
    .map_err(io_error(format!(
        "telling the kernel {} is now {bytes} bytes",
        device.display()
    )))
}

/// Grows the file system mounted at `mountpoint` to `partition_bytes`;
/// returns its size before and after.
fn grow_file_system(
    device: &Path,
    mountpoint: &Path,
    partition_bytes: u64,
) -> Result<(u64, u64), GrowError> {
    let node = fs::metadata(device).map_err(io_error(format!("{}", device.display())))?;
    let mounted =
        fs::metadata(mountpoint).map_err(io_error(format!("{}", mountpoint.display())))?;
    if !node.file_type().is_block_device() || node.rdev() != mounted.dev() {
        return Err(GrowError::Mismatch(format!(
            "{} is not mounted from {}",
            mountpoint.display(),
            device.display()
        )));
    }
    let partition =
        File::open(device).map_err(io_error(format!("opening {}", device.display())))?;
    let mut superblock = vec![0u8; ext4::SUPERBLOCK_LEN];
    partition
        .read_exact_at(&mut superblock, ext4::SUPERBLOCK_OFFSET)
        .map_err(io_error(format!(
            "reading the superblock of {}",
            device.display()
        )))?;
    let size = ext4::Size::parse(&superblock)
        .map_err(|e| format_error(&format!("file system on {}", device.display()), e))?;
    let target_blocks = partition_bytes / size.block_size;
    if target_blocks <= size.blocks {
        return Ok((size.bytes(), size.bytes()));
    }
    let dir =
        File::open(mountpoint).map_err(io_error(format!("opening {}", mountpoint.display())))?;
    sys::resize_ext4(&dir, target_blocks).map_err(io_error(format!(
        "growing the file system on {} to {target_blocks} blocks",
        mountpoint.display()
    )))?;
    Ok((size.bytes(), target_blocks * size.block_size))
}

fn read_number(path: &Path) -> Result<u64, GrowError> {
    let text = fs::read_to_string(path).map_err(io_error(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|_| {
        GrowError::Mismatch(format!(
            "{}: not a number: {:?}",
            path.display(),
            text.trim()
        ))
    })
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> GrowError {
    move |source| GrowError::Io { what, source }
}

fn format_error(what: &str, source: GptError) -> GrowError {
    GrowError::Format {
        what: what.to_owned(),
        source,
    }
}
