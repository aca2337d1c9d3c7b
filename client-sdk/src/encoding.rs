//! The length-prefixed binary encoding of everything that is hashed or signed.
//!
//! Every variable-length item is written as a 4-byte big-endian length followed
//! by the bytes; integers are big-endian and fixed-size. Each structure starts
//! with a domain-separation tag (itself length-prefixed) naming its purpose and
//! version, so that bytes made for one purpose (a disclosure, an envelope, a
//! share stamp, ...) can never be taken for another. The layouts are specified
//! in `docs/PROTOCOL.md`.

use thiserror::Error;

/// Domain tag of a disclosure (the bytes whose SHA-256 is a field digest).
pub const TAG_DISCLOSURE: &str = "samverkan/v1/disclosure";
/// Domain tag of the envelope signing input.
pub const TAG_ENVELOPE: &str = "samverkan/v1/envelope";

/// Builds an encoding.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts an encoding with its domain tag.
    pub fn with_tag(tag: &str) -> Self {
        let mut w = Self::default();
        w.bytes(tag.as_bytes());
        w
    }

    /// A length-prefixed byte string.
    ///
    /// Every item this crate writes is bounded far below 4 GiB (the broker
    /// refuses larger payloads long before); a longer item would be a bug, and
    /// its length is saturated rather than wrapped so the result can never
    /// verify against a correct encoder.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// A single byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian two's-complement i64.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Fixed-size bytes without a length prefix (digests, keys).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// A list count, as a big-endian u32.
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The finished bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end in the middle of an item.
    #[error("truncated: {0} expected at byte {1}")]
    Truncated(&'static str, usize),
    /// Bytes remain after the last item.
    #[error("{0} unexpected bytes after the last item")]
    Trailing(usize),
    /// The domain tag is not the expected one.
    #[error("domain tag is not `{expected}`")]
    WrongTag {
        /// The tag that was expected.
        expected: &'static str,
    },
    /// A string is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// Reads an encoding made by [`Writer`].
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading and checks the domain tag.
    pub fn with_tag(buf: &'a [u8], tag: &'static str) -> Result<Self, DecodeError> {
        let mut r = Self { buf, pos: 0 };
        if r.bytes("domain tag")? != tag.as_bytes() {
            return Err(DecodeError::WrongTag { expected: tag });
        }
        Ok(r)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeError::Truncated(what, self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)?;
        self.take(len as usize, what)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| DecodeError::NotUtf8(what))
    }

    /// A big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Fails if bytes remain.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let mut w = Writer::with_tag("t");
        w.str("abc").u32(7);
        let bytes = w.finish();
        assert_eq!(bytes, b"\0\0\0\x01t\0\0\0\x03abc\0\0\0\x07");
        let mut r = Reader::with_tag(&bytes, "t").unwrap();
        assert_eq!(r.str("s").unwrap(), "abc");
        assert_eq!(r.u32("n").unwrap(), 7);
        r.finish().unwrap();

        assert!(matches!(
            Reader::with_tag(&bytes, "u"),
            Err(DecodeError::WrongTag { .. })
        ));
        let mut r = Reader::with_tag(&bytes[..8], "t").unwrap();
        assert!(matches!(r.str("s"), Err(DecodeError::Truncated(..))));
        let mut long = bytes.clone();
        long.push(0);
        let mut r = Reader::with_tag(&long, "t").unwrap();
        r.str("s").unwrap();
        r.u32("n").unwrap();
        assert_eq!(r.finish(), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn huge_length_is_truncation_not_overflow() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1];
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        assert!(matches!(r.bytes("x"), Err(DecodeError::Truncated(..))));
    }
}
