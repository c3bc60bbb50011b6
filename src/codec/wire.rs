//! Minimal protobuf wire-format reader and writer helpers for the scanner and encoder.

use super::CodecError;

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const START_GROUP: u8 = 3;
pub const END_GROUP: u8 = 4;
pub const FIXED32: u8 = 5;

/// Deepest nesting of groups skipped (prost's recursion limit is 100 too).
const MAX_GROUP_DEPTH: u32 = 100;

/// A varint of more than one byte at `pos` of `buf` (`base`: `buf`'s offset in the
/// payload, for errors): its value and the position after it.
#[inline(never)]
fn varint_slow(buf: &[u8], mut pos: usize, base: usize) -> Result<(u64, usize), CodecError> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Err(CodecError::Truncated(base + pos));
        };
        pos += 1;
        let invalid = |what| CodecError::Invalid {
            at: base + pos,
            what,
        };
        if shift == 63 && b > 1 {
            return Err(invalid("varint overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, pos));
        }
        shift += 7;
        if shift > 63 {
            return Err(invalid("varint longer than 10 bytes"));
        }
    }
}

/// A forward-only cursor over a protobuf message body.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the whole payload, for error positions.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute offset in the payload of the cursor.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Reads a varint. Most varints in OTLP (field keys, lengths of attributes and
    /// short strings) fit in one byte: that case is inlined, the rest is not. The
    /// slow path takes the bytes and the position, not the cursor, so callers' loops
    /// keep the cursor in registers (a `&mut self` call out of line made the
    /// compiler keep it in memory, and every field paid a store and a reload).
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => {
                let (value, pos) = varint_slow(self.buf, self.pos, self.base)?;
                self.pos = pos;
                Ok(value)
            }
        }
    }

    /// Reads a field key: `(field number, wire type)`.
    #[inline]
    pub fn key(&mut self) -> Result<(u32, u8), CodecError> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.invalid("field number out of range"));
        }
        Ok((field as u32, (k & 7) as u8))
    }

    /// The next `N` bytes.
    #[inline]
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let end = self.pos + N;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(CodecError::Truncated(self.offset()));
        };
        self.pos = end;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, CodecError> {
        self.fixed().map(u64::from_le_bytes)
    }

    #[inline]
    pub fn fixed32(&mut self) -> Result<u32, CodecError> {
        self.fixed().map(u32::from_le_bytes)
    }

    /// Reads a length-delimited field and returns `(start offset within buf, bytes)`.
    #[inline]
    pub fn len_delimited(&mut self) -> Result<(usize, &'a [u8]), CodecError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= self.buf.len())
            .ok_or(CodecError::Truncated(self.offset()))?;
        self.pos = end;
        Ok((start, &self.buf[start..end]))
    }

    /// Skips field `field` of the given wire type, including (deprecated) groups,
    /// which prost skips too.
    #[inline]
    pub fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), CodecError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed64().map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => {
                let end = self.pos + 4;
                if end > self.buf.len() {
                    return Err(CodecError::Truncated(self.offset()));
                }
                self.pos = end;
                Ok(())
            }
            START_GROUP => self.skip_group(field, 1),
            END_GROUP => Err(self.invalid("end of group without its start")),
            _ => Err(self.invalid("unsupported wire type")),
        }
    }

    /// Skips the rest of group `field`, up to its matching end.
    #[inline(never)]
    fn skip_group(&mut self, field: u32, depth: u32) -> Result<(), CodecError> {
        if depth > MAX_GROUP_DEPTH {
            return Err(self.invalid("groups nested too deep"));
        }
        loop {
            if self.at_end() {
                return Err(CodecError::Truncated(self.offset()));
            }
            let (f, wt) = self.key()?;
            match wt {
                END_GROUP if f == field => return Ok(()),
                END_GROUP => return Err(self.invalid("end of group does not match its start")),
                START_GROUP => self.skip_group(f, depth + 1)?,
                _ => self.skip(f, wt)?,
            }
        }
    }

    pub fn invalid(&self, what: &'static str) -> CodecError {
        CodecError::Invalid {
            at: self.offset(),
            what,
        }
    }

    /// Fails unless the field has the expected wire type.
    pub fn expect(&self, got: u8, want: u8) -> Result<(), CodecError> {
        if got == want {
            Ok(())
        } else {
            Err(self.invalid("unexpected wire type for field"))
        }
    }
}

/// Encoded size of a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Size of a length-delimited field with a one-byte key and `len` bytes of body.
pub fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes the key and length of a length-delimited field (field numbers < 16).
pub fn put_len_header(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push((field << 3) | LEN);
    put_varint(out, len as u64);
}

/// Writes a whole length-delimited field.
pub fn put_len_field(out: &mut Vec<u8>, field: u8, body: &[u8]) {
    put_len_header(out, field, body.len());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "value {v}");
            assert_eq!(Reader::new(&out, 0).varint(), Ok(v));
        }
    }

    #[test]
    fn truncated_varint_is_an_error() {
        assert_eq!(
            Reader::new(&[0x80, 0x80], 0).varint(),
            Err(CodecError::Truncated(2))
        );
    }

    #[test]
    fn overlong_length_is_truncated_not_panic() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert!(matches!(
            Reader::new(&out, 0).len_delimited(),
            Err(CodecError::Truncated(_))
        ));
    }

    #[test]
    fn groups_are_skipped_to_their_matching_end() {
        // Field 5 group holding a varint field and a nested group 6, then field 1.
        let bytes = [0x2b, 0x08, 0x01, 0x33, 0x34, 0x2c, 0x08, 0x07];
        let mut r = Reader::new(&bytes, 0);
        let (f, wt) = r.key().expect("key");
        assert_eq!((f, wt), (5, START_GROUP));
        r.skip(f, wt).expect("group skipped");
        assert_eq!(r.key(), Ok((1, VARINT)));
        let unmatched = [0x2b, 0x34];
        let mut r = Reader::new(&unmatched, 0);
        let (f, wt) = r.key().expect("key");
        assert!(
            r.skip(f, wt).is_err(),
            "end of group 6 does not close group 5"
        );
        let unterminated = [0x2b, 0x08, 0x01];
        let mut r = Reader::new(&unterminated, 0);
        let (f, wt) = r.key().expect("key");
        assert!(matches!(r.skip(f, wt), Err(CodecError::Truncated(_))));
        let deep = [0x2b; 200];
        let mut r = Reader::new(&deep, 0);
        let (f, wt) = r.key().expect("key");
        assert!(r.skip(f, wt).is_err(), "no unbounded recursion");
    }
}
