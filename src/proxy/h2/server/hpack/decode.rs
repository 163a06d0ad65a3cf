//! Decoding clients' header blocks (RFC 7541 §3, §6), into fields handed out one by one.

use std::collections::VecDeque;

use bytes::Bytes;

use super::huffman;
use super::{STATIC, TABLE_SIZE};

/// A header block that cannot be decoded: a COMPRESSION_ERROR for the whole connection
/// (RFC 9113 §4.3), since the two ends' tables may no longer agree.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("a header block ends inside a field")]
    Truncated,
    #[error("an integer in a header block is too large")]
    Overflow,
    #[error("a header block refers to table index {0}, which does not exist")]
    BadIndex(usize),
    #[error("a string in a header block has broken Huffman coding")]
    Huffman,
    #[error("a dynamic table size update of {0} exceeds the {TABLE_SIZE} allowed, or comes after a field")]
    BadSizeUpdate(usize),
}

/// One entry of the dynamic table (the value shared with the requests that use it).
struct Entry {
    name: Box<[u8]>,
    value: Bytes,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.name
    }
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// A decoded value: borrowed, with a way to own it that copies only Huffman-coded ones.
pub enum Value<'a> {
    Static(&'static str),
    /// A plain literal: a range of the block.
    Block(&'a Bytes, usize, usize),
    Table(&'a Bytes),
    /// Huffman-decoded.
    Scratch(&'a [u8]),
}

impl Value<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Static(s) => s.as_bytes(),
            Value::Block(b, from, to) => &b[*from..*to],
            Value::Table(b) => b,
            Value::Scratch(s) => s,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        match self {
            Value::Static(s) => Bytes::from_static(s.as_bytes()),
            Value::Block(b, from, to) => b.slice(*from..*to),
            Value::Table(b) => Bytes::clone(b),
            Value::Scratch(s) => Bytes::copy_from_slice(s),
        }
    }
}

/// The decoding context of one connection.
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// Huffman-decoded name and value of the current field.
    scratch: (Vec<u8>, Vec<u8>),
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            scratch: (Vec::new(), Vec::new()),
        }
    }
}

/// Where a string of the block was decoded to.
#[derive(Clone, Copy)]
enum Str {
    /// A range of the block itself.
    Raw(usize, usize),
    /// The field's scratch buffer (Huffman-decoded, or a copied name).
    Scratch,
}

impl Decoder {
    /// Entries in the dynamic table.
    #[cfg(test)]
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Decodes a whole header block, calling `field` with each name and value in order.
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut field: impl FnMut(&[u8], Value<'_>),
    ) -> Result<(), HpackError> {
        // Out of `self` for the block, so strings in it and the table can be used at once.
        let mut scratch = std::mem::take(&mut self.scratch);
        let decoded = self.fields(block, &mut scratch, &mut field);
        self.scratch = scratch;
        decoded
    }

    fn fields(
        &mut self,
        block: &Bytes,
        scratch: &mut (Vec<u8>, Vec<u8>),
        field: &mut impl FnMut(&[u8], Value<'_>),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(block, &mut at, 7)?;
                self.with_entry(index, |n, v| field(n, v))?;
                fields_seen = true;
                continue;
            }
            if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only at the start of a block.
                let size = integer(block, &mut at, 5)?;
                if fields_seen || size > TABLE_SIZE {
                    return Err(HpackError::BadSizeUpdate(size));
                }
                self.max = size;
                self.evict(0);
                continue;
            }
            fields_seen = true;
            // Literals: with incremental indexing (01), without (0000), never (0001).
            let (prefix, index_it) = if b & 0xc0 == 0x40 {
                (6, true)
            } else {
                (4, false)
            };
            let name_index = integer(block, &mut at, prefix)?;
            let (names, values) = (&mut scratch.0, &mut scratch.1);
            let name = if name_index == 0 {
                string(block, &mut at, names)?
            } else if index_it {
                // Copied: the name may be in the table, which changes below.
                names.clear();
                names.extend_from_slice(self.name_of(name_index)?);
                Str::Scratch
            } else {
                let value = string(block, &mut at, values)?;
                field(self.name_of(name_index)?, value_of(block, value, values));
                continue;
            };
            let value = string(block, &mut at, values)?;
            let n = resolve(block, name, names);
            field(n, value_of(block, value, values));
            if index_it {
                self.insert(n, resolve(block, value, values));
            }
        }
        Ok(())
    }

    fn name_of(&self, index: usize) -> Result<&[u8], HpackError> {
        match index {
            1..=61 => Ok(STATIC[index - 1].0.as_bytes()),
            _ => self
                .table
                .get(index.wrapping_sub(62))
                .map(Entry::name)
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn with_entry(&self, index: usize, f: impl FnOnce(&[u8], Value<'_>)) -> Result<(), HpackError> {
        match index {
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                f(n.as_bytes(), Value::Static(v));
                Ok(())
            }
            _ => {
                let e = self
                    .table
                    .get(index.wrapping_sub(62))
                    .ok_or(HpackError::BadIndex(index))?;
                f(e.name(), Value::Table(&e.value));
                Ok(())
            }
        }
    }

    /// Adds a field at the front of the table, evicting from the back (§4.4).
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        // Copied, not sliced: an entry may live as long as the connection, and a slice
        // would keep the whole read buffer it came in.
        let entry = Entry {
            name: name.into(),
            value: Bytes::copy_from_slice(value),
        };
        let size = entry.size();
        if size > self.max {
            // An entry larger than the table empties it (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Evicts until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }
}

fn value_of<'a>(block: &'a Bytes, s: Str, scratch: &'a [u8]) -> Value<'a> {
    match s {
        Str::Raw(a, b) => Value::Block(block, a, b),
        Str::Scratch => Value::Scratch(scratch),
    }
}

fn resolve<'a>(block: &'a [u8], s: Str, scratch: &'a [u8]) -> &'a [u8] {
    match s {
        Str::Raw(a, b) => &block[a..b],
        Str::Scratch => scratch,
    }
}

/// Reads a string literal (§5.2) at `at`; a Huffman-coded one is decoded into `scratch`.
fn string(block: &[u8], at: &mut usize, scratch: &mut Vec<u8>) -> Result<Str, HpackError> {
    let huff = block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*at..end).ok_or(HpackError::Truncated)?;
    let start = *at;
    *at = end;
    if !huff {
        return Ok(Str::Raw(start, end));
    }
    scratch.clear();
    huffman::decode(raw, scratch).map_err(|_| HpackError::Huffman)?;
    Ok(Str::Scratch)
}

/// Reads an integer with an `n`-bit prefix (§5.1) at `at`.
fn integer(block: &[u8], at: &mut usize, n: u8) -> Result<usize, HpackError> {
    let max = (1usize << n) - 1;
    let first = usize::from(*block.get(*at).ok_or(HpackError::Truncated)?) & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    for shift in (0..28).step_by(7) {
        let b = *block.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h2::server::hpack::hex;

    fn decode(d: &mut Decoder, block: &str) -> Result<Vec<(String, String)>, HpackError> {
        let mut got = Vec::new();
        d.decode(&Bytes::from(hex(block)), |n, v| {
            got.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ))
        })?;
        Ok(got)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman() {
        let mut d = Decoder::default();
        let first = "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d";
        let got = decode(&mut d, first).unwrap();
        assert_eq!(
            got,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        let second = "8286 84be 5808 6e6f 2d63 6163 6865";
        let got = decode(&mut d, second).unwrap();
        assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(got[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.size, 110);
        let third = "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65";
        let got = decode(&mut d, third).unwrap();
        assert_eq!(got[1], (":scheme".into(), "https".into()));
        assert_eq!(got[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::default();
        let got = decode(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff").unwrap();
        assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
        let got = decode(&mut d, "8286 84be 5886 a8eb 1064 9cbf").unwrap();
        assert_eq!(got[4], ("cache-control".into(), "no-cache".into()));
        let third = "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf";
        let got = decode(&mut d, third).unwrap();
        assert_eq!(got[4], ("custom-key".into(), "custom-value".into()));
    }

    #[test]
    fn eviction_follows_the_table_size() {
        // RFC 7541 C.5 (responses, table of 256): the third response evicts.
        let mut d = Decoder::default();
        decode(&mut d, "3fe1 01").unwrap(); // size update to 256
        assert_eq!(d.max, 256);
        let first = "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d";
        let got = decode(&mut d, first).unwrap();
        assert_eq!(got[0], (":status".into(), "302".into()));
        assert_eq!(d.size, 222);
        let got = decode(&mut d, "4803 3330 37c1 c0bf").unwrap();
        assert_eq!(got[0], (":status".into(), "307".into()));
        assert_eq!(got[3].0, "location");
        assert_eq!(d.size, 222);
    }

    #[test]
    fn broken_blocks_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert_eq!(decode(&mut d, "be"), Err(HpackError::BadIndex(62)));
        assert_eq!(decode(&mut d, "80"), Err(HpackError::BadIndex(0)));
        assert_eq!(decode(&mut d, "41"), Err(HpackError::Truncated));
        assert_eq!(decode(&mut d, "410a 61"), Err(HpackError::Truncated));
        assert_eq!(decode(&mut d, "ffff ffff ffff"), Err(HpackError::Overflow));
        assert_eq!(
            decode(&mut d, "3fe2 1f"),
            Err(HpackError::BadSizeUpdate(4097))
        );
        assert_eq!(decode(&mut d, "82 20"), Err(HpackError::BadSizeUpdate(0)));
        assert_eq!(decode(&mut d, "4181 00"), Err(HpackError::Huffman));
        // Every prefix of a valid block fails cleanly or decodes.
        let block = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        for end in 0..block.len() {
            let _ = Decoder::default().decode(&Bytes::copy_from_slice(&block[..end]), |_, _| {});
        }
    }
}
