//! The boot state as the boot script keeps it on the `bootstate` partition
//! (docs/image.md): two copies of one U-Boot environment block, copy 0 at
//! offset 0 and copy 1 at 64 KiB. A block is a little-endian CRC-32 of the
//! rest of the block, then `key=value` pairs each ended by a NUL, then NUL
//! padding to 16 KiB.
//!
//! Deliberately small: enough for the rig's tests to read what U-Boot wrote
//! and to plant states for the boot chooser to find. The box's own reader
//! and writer are in the `image` crate.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::disk::{self, Extent as _};
use crate::Error;

/// Length of one copy: U-Boot's `env export -c -s 0x4000`, `mkenvimage -s 0x4000`.
pub const BLOCK_SIZE: usize = 0x4000;

/// Offsets of copy 0 and copy 1 in the partition.
pub const COPY_OFFSETS: [u64; 2] = [0, 0x1_0000];

/// The label of the partition, as docs/image.md and genimage.cfg name it.
pub const PARTITION: &str = "bootstate";

/// Variables of one block, by name.
pub type Vars = BTreeMap<String, String>;

/// Checks the CRC and splits the pairs. The pairs end at the first empty
/// one (two NULs in a row), as U-Boot's `env import` reads them.
pub fn decode(block: &[u8]) -> Result<Vars, Error> {
    if block.len() != BLOCK_SIZE {
        return Err(Error::BootState(format!(
            "block of {} bytes, not {BLOCK_SIZE}",
            block.len()
        )));
    }
    let (crc, data) = block.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(Error::BootState(format!(
            "crc {stored:#010x} stored, {computed:#010x} computed"
        )));
    }

    let mut vars = Vars::new();
    for pair in data.split(|b| *b == 0) {
        if pair.is_empty() {
            return Ok(vars);
        }
        let pair = std::str::from_utf8(pair)
            .map_err(|_| Error::BootState("variable is not UTF-8".into()))?;
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::BootState(format!("no '=' in {pair:?}")))?;
        vars.insert(name.to_string(), value.to_string());
    }
    Err(Error::BootState("no end of the variables".into()))
}

/// A block holding `vars` in the given order, NUL-padded, with its CRC.
pub fn encode(vars: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
    let mut block = vec![0u8; 4];
    for (name, value) in vars {
        block.extend_from_slice(format!("{name}={value}").as_bytes());
        block.push(0);
    }
    // One more NUL must fit: it ends the list.
    if block.len() >= BLOCK_SIZE {
        return Err(Error::BootState("variables do not fit in a block".into()));
    }
    block.resize(BLOCK_SIZE, 0);
    let crc = crc32fast::hash(&block[4..]);
    block[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(block)
}

/// The block the boot script writes for this state: its three variables in
/// U-Boot's export order.
pub fn encode_state(order: &str, a_left: u8, b_left: u8) -> Result<Vec<u8>, Error> {
    encode(&[
        ("BOOT_A_LEFT", &a_left.to_string()),
        ("BOOT_B_LEFT", &b_left.to_string()),
        ("BOOT_ORDER", order),
    ])
}

/// The variables [`encode_state`] writes, for comparing with [`decode`]'s.
pub fn state_vars(order: &str, a_left: u8, b_left: u8) -> Vars {
    Vars::from([
        ("BOOT_A_LEFT".to_string(), a_left.to_string()),
        ("BOOT_B_LEFT".to_string(), b_left.to_string()),
        ("BOOT_ORDER".to_string(), order.to_string()),
    ])
}

/// The raw bytes of copy `copy` (0 or 1) in the disk image.
pub fn read_copy(disk_image: &Path, copy: usize) -> Result<Vec<u8>, Error> {
    let offset = copy_offset(disk_image, copy)?;
    let mut file = std::fs::File::open(disk_image)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut block = vec![0u8; BLOCK_SIZE];
    file.read_exact(&mut block)?;
    Ok(block)
}

/// Overwrites copy `copy` (0 or 1) in the disk image with `block`.
pub fn write_copy(disk_image: &Path, copy: usize, block: &[u8]) -> Result<(), Error> {
    let offset = copy_offset(disk_image, copy)?;
    let mut file = OpenOptions::new().write(true).open(disk_image)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(block)?;
    file.sync_all()?;
    Ok(())
}

/// Both copies decoded, copy 0 first.
/// Panics unless both copies on `disk_image` hold exactly `BOOT_ORDER=order`,
/// `BOOT_A_LEFT=a_left`, `BOOT_B_LEFT=b_left`.
pub fn assert_both(disk_image: &Path, order: &str, a_left: u8, b_left: u8) {
    let copies = read_both(disk_image).expect("read the boot state");
    for (copy, state) in copies.into_iter().enumerate() {
        let vars = state.unwrap_or_else(|e| panic!("boot state copy {copy}: {e}"));
        assert_eq!(
            vars,
            state_vars(order, a_left, b_left),
            "boot state copy {copy}"
        );
    }
}

pub fn read_both(disk_image: &Path) -> Result<[Result<Vars, Error>; 2], Error> {
    Ok([
        decode(&read_copy(disk_image, 0)?),
        decode(&read_copy(disk_image, 1)?),
    ])
}

fn copy_offset(disk_image: &Path, copy: usize) -> Result<u64, Error> {
    let within = *COPY_OFFSETS
        .get(copy)
        .ok_or_else(|| Error::BootState(format!("no copy {copy}")))?;
    let partition = disk::find(disk_image, PARTITION)?;
    if within + BLOCK_SIZE as u64 > partition.byte_len() {
        return Err(Error::Disk(format!(
            "partition {PARTITION} is {} bytes, too small for copy {copy}",
            partition.byte_len()
        )));
    }
    Ok(partition.offset() + within)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The factory state as `mkenvimage -s 0x4000 -p 0x00` writes it, and
    /// the state with one try of slot A used as U-Boot 2023.01's
    /// `env export -c -s 0x4000` wrote it in the rig: the CRCs the tools gave.
    const FACTORY_CRC: u32 = 0x1d8a_2160;
    const A_TRIED_ONCE_CRC: u32 = 0x989d_05a6;

    #[test]
    fn encodes_as_mkenvimage_and_u_boot_do() {
        let factory = encode_state("A B", 3, 3).expect("encode the factory state");
        assert_eq!(factory.len(), BLOCK_SIZE);
        assert_eq!(factory[..4], FACTORY_CRC.to_le_bytes());
        assert_eq!(
            &factory[4..48],
            b"BOOT_A_LEFT=3\0BOOT_B_LEFT=3\0BOOT_ORDER=A B\0\0"
        );
        assert!(factory[48..].iter().all(|b| *b == 0));

        let tried = encode_state("A B", 2, 3).expect("encode");
        assert_eq!(tried[..4], A_TRIED_ONCE_CRC.to_le_bytes());
    }

    #[test]
    fn decodes_what_it_encodes() {
        let vars = decode(&encode_state("B A", 0, 2).expect("encode")).expect("decode");
        assert_eq!(vars.len(), 3);
        assert_eq!(vars["BOOT_ORDER"], "B A");
        assert_eq!(vars["BOOT_A_LEFT"], "0");
        assert_eq!(vars["BOOT_B_LEFT"], "2");
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() {
        let mut block = encode_state("A B", 3, 3).expect("encode");
        block[BLOCK_SIZE - 1] ^= 1;
        let error = decode(&block).expect_err("bad crc");
        assert!(error.to_string().contains("crc"), "{error}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xa5; BLOCK_SIZE]).is_err());
        assert!(decode(&[0u8; BLOCK_SIZE]).is_err());

        // A valid CRC over bytes that are no variables.
        let mut block = vec![0xffu8; BLOCK_SIZE];
        let crc = crc32fast::hash(&block[4..]);
        block[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&block).is_err());
    }

    #[test]
    fn too_many_variables_do_not_fit() {
        let long = "x".repeat(BLOCK_SIZE);
        assert!(encode(&[("BIG", &long)]).is_err());
    }
}
