//! LEB128 unsigned varints and zig-zag signed varints, as used inside record batches.

use crate::error::ProtoError;

pub(crate) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, zigzag(v));
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Bytes [`put_u64`] writes for `v`.
pub(crate) fn len_u64(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes [`put_i64`] writes for `v`.
pub(crate) fn len_i64(v: i64) -> usize {
    len_u64(zigzag(v))
}

/// Reads a varint from the front of `buf`, advancing it.
pub(crate) fn get_u64(buf: &mut &[u8]) -> Result<u64, ProtoError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(ProtoError::Malformed(
            "varint runs past the end of the record",
        ))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError::Malformed("varint longer than 10 bytes"))
}

pub(crate) fn get_i64(buf: &mut &[u8]) -> Result<i64, ProtoError> {
    let v = get_u64(buf)?;
    Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(u in any::<u64>(), i in any::<i64>()) {
            let mut out = Vec::new();
            put_u64(&mut out, u);
            prop_assert_eq!(out.len(), len_u64(u));
            put_i64(&mut out, i);
            prop_assert_eq!(out.len(), len_u64(u) + len_i64(i));
            let mut s = out.as_slice();
            prop_assert_eq!(get_u64(&mut s).unwrap(), u);
            prop_assert_eq!(get_i64(&mut s).unwrap(), i);
            prop_assert!(s.is_empty());
        }
    }

    #[test]
    fn truncated_is_an_error() {
        let mut s: &[u8] = &[0x80, 0x80];
        assert!(get_u64(&mut s).is_err());
    }
}
