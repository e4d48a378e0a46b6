//! U-Boot environment blocks: the byte format of one boot state copy.
//!
//! A block is a little-endian CRC-32 (IEEE) of the rest of the block, then
//! `name=value` entries each ended by a NUL, then an empty entry (a second
//! NUL) and padding to the block size. That is what U-Boot's
//! `env export -c -s <size>` writes and `env import -c` reads, and what
//! `mkenvimage -s <size>` writes from a text file (with 0xff padding unless
//! given `-p 0`). The CRC covers the padding, so any padding byte reads back;
//! this module writes NUL padding, as `env export` does.

use crate::error::BootStateError;

/// Size of one block: `0x4000`, as in docs/image.md.
pub const BLOCK_SIZE: usize = 0x4000;

/// Bytes of the CRC in front of the variables.
const CRC_LEN: usize = 4;

/// One variable: name and value, in block order.
pub type Variable = (String, String);

/// Reads the variables of one block, in the order they are stored.
///
/// The block must be exactly [`BLOCK_SIZE`] bytes. Entries after the closing
/// empty entry are padding and are not looked at.
pub fn decode_block(block: &[u8]) -> Result<Vec<Variable>, BootStateError> {
    if block.len() != BLOCK_SIZE {
        return Err(BootStateError::WrongLength {
            expected: BLOCK_SIZE,
            got: block.len(),
        });
    }
    let (crc, data) = block.split_at(CRC_LEN);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(BootStateError::CrcMismatch { stored, computed });
    }
    parse_entries(data)
}

/// Writes `vars` into one block of [`BLOCK_SIZE`] bytes, in the order given.
pub fn encode_block<N, V>(vars: &[(N, V)]) -> Result<Vec<u8>, BootStateError>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    let mut block = vec![0; BLOCK_SIZE];
    let capacity = BLOCK_SIZE - CRC_LEN;
    // Each entry is `name=value\0`; one more NUL closes the list.
    let needed = vars
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 2)
        .sum::<usize>()
        + 1;
    if needed > capacity {
        return Err(BootStateError::TooLarge { needed, capacity });
    }
    let mut at = CRC_LEN;
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        check_encodable(name, value)?;
        for part in [name.as_bytes(), b"=", value.as_bytes(), b"\0"] {
            block[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }
    let crc = crc32fast::hash(&block[CRC_LEN..]);
    block[..CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(block)
}

/// Splits the data after the CRC into entries up to the empty entry.
fn parse_entries(data: &[u8]) -> Result<Vec<Variable>, BootStateError> {
    let mut vars: Vec<Variable> = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &data[offset..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(BootStateError::Unterminated);
        };
        if len == 0 {
            return Ok(vars);
        }
        let var = parse_entry(&rest[..len]).ok_or(BootStateError::MalformedEntry {
            offset: CRC_LEN + offset,
        })?;
        if vars.iter().any(|(name, _)| *name == var.0) {
            return Err(BootStateError::DuplicateVariable(var.0));
        }
        vars.push(var);
        offset += len + 1;
    }
}

/// Parses `name=value`; the name is what comes before the first `=`.
fn parse_entry(entry: &[u8]) -> Option<Variable> {
    let text = std::str::from_utf8(entry).ok()?;
    let (name, value) = text.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    Some((name.to_owned(), value.to_owned()))
}

fn check_encodable(name: &str, value: &str) -> Result<(), BootStateError> {
    if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
        return Err(BootStateError::Unencodable(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<Variable> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn round_trips_in_order() {
        let list = vars(&[("b", "2"), ("a", "x=y"), ("fileaddr", "")]);
        let block = encode_block(&list).expect("fits");
        assert_eq!(block.len(), BLOCK_SIZE);
        assert_eq!(decode_block(&block), Ok(list));
    }

    #[test]
    fn layout_is_crc_entries_then_nul_padding() {
        let block = encode_block(&[("k", "v")]).expect("fits");
        assert_eq!(&block[4..9], b"k=v\0\0");
        assert!(block[9..].iter().all(|&b| b == 0));
        let crc = crc32fast::hash(&block[4..]);
        assert_eq!(block[..4], crc.to_le_bytes());
    }

    #[test]
    fn empty_environment_round_trips() {
        let block = encode_block::<&str, &str>(&[]).expect("fits");
        assert_eq!(decode_block(&block), Ok(Vec::new()));
    }

    #[test]
    fn any_flipped_bit_fails_the_crc() {
        let block = encode_block(&[("BOOT_ORDER", "A B")]).expect("fits");
        for at in [0, 3, 4, 10, BLOCK_SIZE - 1] {
            let mut bad = block.clone();
            bad[at] ^= 0x10;
            assert!(matches!(
                decode_block(&bad),
                Err(BootStateError::CrcMismatch { .. })
            ));
        }
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert_eq!(
            decode_block(&[0; 10]),
            Err(BootStateError::WrongLength {
                expected: BLOCK_SIZE,
                got: 10
            })
        );
    }

    #[test]
    fn entries_without_closing_entry_are_rejected() {
        let mut block = vec![b'x'; BLOCK_SIZE];
        block[5] = b'=';
        let crc = crc32fast::hash(&block[4..]);
        block[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_block(&block), Err(BootStateError::Unterminated));
    }

    #[test]
    fn malformed_and_duplicate_entries_are_rejected() {
        let with_data = |data: &[u8]| {
            let mut block = vec![0; BLOCK_SIZE];
            block[4..4 + data.len()].copy_from_slice(data);
            let crc = crc32fast::hash(&block[4..]);
            block[..4].copy_from_slice(&crc.to_le_bytes());
            decode_block(&block)
        };
        assert_eq!(
            with_data(b"a=1\0novalue\0"),
            Err(BootStateError::MalformedEntry { offset: 8 })
        );
        assert_eq!(
            with_data(b"=1\0"),
            Err(BootStateError::MalformedEntry { offset: 4 })
        );
        assert_eq!(
            with_data(b"a=\xff\0"),
            Err(BootStateError::MalformedEntry { offset: 4 })
        );
        assert_eq!(
            with_data(b"a=1\0a=2\0"),
            Err(BootStateError::DuplicateVariable("a".to_owned()))
        );
    }

    #[test]
    fn unencodable_and_oversized_variables_are_refused() {
        assert!(matches!(
            encode_block(&[("a=b", "1")]),
            Err(BootStateError::Unencodable(_))
        ));
        assert!(matches!(
            encode_block(&[("a", "1\0")]),
            Err(BootStateError::Unencodable(_))
        ));
        let big = "x".repeat(BLOCK_SIZE);
        assert!(matches!(
            encode_block(&[("a", big.as_str())]),
            Err(BootStateError::TooLarge { .. })
        ));
        // Exactly full: 4 + "a=" + value + NUL + closing NUL == BLOCK_SIZE.
        let full = "x".repeat(BLOCK_SIZE - 4 - 4);
        let block = encode_block(&[("a", full.as_str())]).expect("fits exactly");
        assert_eq!(decode_block(&block).expect("valid").len(), 1);
    }
}
