//! Lowercase hex for key ids and digests, the only spelling the formats allow.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes exactly `2 * N` lowercase hex digits.
pub(crate) fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_digits() {
        let bytes = [0x00, 0x7f, 0x80, 0xff, 0x1a];
        let text = encode(&bytes);
        assert_eq!(text, "007f80ff1a");
        assert_eq!(decode_array::<5>(&text), Some(bytes));
        assert_eq!(decode_array::<5>("007F80ff1a"), None);
        assert_eq!(decode_array::<5>("007f80ff1"), None);
        assert_eq!(decode_array::<2>("0g00"), None);
    }
}
