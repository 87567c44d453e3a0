//! Zig-zag varints as used inside Kafka v2 records (protobuf's `sint32`/`sint64` encoding).

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("varint runs past the end of the buffer")]
    Truncated,
    #[error("varint is longer than {0} bytes")]
    TooLong(usize),
    #[error("varint value does not fit in 32 bits")]
    Overflow,
}

pub fn put_varlong(buf: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub fn put_varint(buf: &mut Vec<u8>, value: i32) {
    put_varlong(buf, i64::from(value));
}

/// Reads a zig-zag varlong from the front of `buf`, advancing it.
pub fn get_varlong(buf: &mut &[u8]) -> Result<i64, VarintError> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(VarintError::Truncated);
        };
        *buf = rest;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(VarintError::TooLong(10))
}

/// Reads a zig-zag varint that must fit in an `i32`.
pub fn get_varint(buf: &mut &[u8]) -> Result<i32, VarintError> {
    let v = get_varlong(buf)?;
    i32::try_from(v).map_err(|_| VarintError::Overflow)
}

/// How many bytes `put_varlong(value)` writes.
pub fn varlong_len(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        for (value, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf, bytes, "encoding of {value}");
        }
    }

    #[test]
    fn truncated_and_overlong_are_errors() {
        assert_eq!(get_varlong(&mut &[0x80u8][..]), Err(VarintError::Truncated));
        assert_eq!(
            get_varlong(&mut &[0xffu8; 11][..]),
            Err(VarintError::TooLong(10))
        );
        let mut buf = Vec::new();
        put_varlong(&mut buf, i64::from(i32::MAX) + 1);
        assert_eq!(get_varint(&mut &buf[..]), Err(VarintError::Overflow));
    }

    proptest! {
        #[test]
        fn roundtrip(value: i64) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            prop_assert_eq!(buf.len(), varlong_len(value));
            let mut slice = &buf[..];
            prop_assert_eq!(get_varlong(&mut slice), Ok(value));
            prop_assert!(slice.is_empty());
        }
    }
}
