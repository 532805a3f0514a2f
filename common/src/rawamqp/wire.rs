//! AMQP 0-9-1 wire encoding and a lenient decoder: short strings, tables and frames kept as
//! bytes, so a message whose names are not UTF-8 can still be read, shown and settled.
//!
//! The regular client (lapin) refuses such a frame and drops the whole connection; this module
//! exists for exactly those messages and decodes only what the raw client needs.

use std::fmt;

/// A decoding failure: the frame is not AMQP 0-9-1 as this module understands it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed AMQP frame: {0}")]
pub struct WireError(pub String);

/// A field-table value, strings kept as bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// `t`
    Bool(bool),
    /// `b`, `B`, `s`, `u`, `I`, `i`, `l`, `T`: every integer widened.
    Int(i128),
    /// `f`, `d`
    Float(f64),
    /// `D`: scale and value.
    Decimal(u8, u32),
    /// `S` and `x`
    Bytes(Vec<u8>),
    /// `A`
    Array(Vec<RawValue>),
    /// `F`
    Table(RawTable),
    /// `V`
    Void,
}

/// A field table: names kept as bytes (they may not be UTF-8), in wire order.
pub type RawTable = Vec<(Vec<u8>, RawValue)>;

/// Reads AMQP values from a frame payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            WireError(format!(
                "needs {n} bytes at offset {}, frame has {}",
                self.pos,
                self.buf.len()
            ))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One octet.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    /// Big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    /// Big-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// Big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A short string (one length octet), as bytes.
    pub fn short_str(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u8()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// A long string (u32 length), as bytes.
    pub fn long_str(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// The rest of the payload.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// A field table.
    pub fn table(&mut self) -> Result<RawTable, WireError> {
        let bytes = self.long_str()?;
        let mut inner = Reader::new(&bytes);
        let mut out = Vec::new();
        while inner.pos < bytes.len() {
            let name = inner.short_str()?;
            let value = inner.value()?;
            out.push((name, value));
        }
        Ok(out)
    }

    fn value(&mut self) -> Result<RawValue, WireError> {
        let kind = self.u8()?;
        Ok(match kind {
            b't' => RawValue::Bool(self.u8()? != 0),
            b'b' => RawValue::Int(i128::from(self.u8()? as i8)),
            b'B' => RawValue::Int(i128::from(self.u8()?)),
            b's' => RawValue::Int(i128::from(self.u16()? as i16)),
            b'u' => RawValue::Int(i128::from(self.u16()?)),
            b'I' => RawValue::Int(i128::from(self.u32()? as i32)),
            b'i' => RawValue::Int(i128::from(self.u32()?)),
            b'l' => RawValue::Int(i128::from(self.u64()? as i64)),
            b'T' => RawValue::Int(i128::from(self.u64()?)),
            b'f' => RawValue::Float(f64::from(f32::from_bits(self.u32()?))),
            b'd' => RawValue::Float(f64::from_bits(self.u64()?)),
            b'D' => RawValue::Decimal(self.u8()?, self.u32()?),
            b'S' | b'x' => RawValue::Bytes(self.long_str()?),
            b'A' => {
                let bytes = self.long_str()?;
                let mut inner = Reader::new(&bytes);
                let mut items = Vec::new();
                while inner.pos < bytes.len() {
                    items.push(inner.value()?);
                }
                RawValue::Array(items)
            }
            b'F' => RawValue::Table(self.table()?),
            b'V' => RawValue::Void,
            other => return Err(WireError(format!("unknown field type {other:#04x}"))),
        })
    }
}

/// Builds a frame payload.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A method payload: class and method id.
    pub fn method(class: u16, method: u16) -> Self {
        let mut w = Self::default();
        w.u16(class).u16(method);
        w
    }
    /// One octet.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A short string; longer than 255 bytes is cut (AMQP cannot carry more).
    pub fn short_str(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(255)];
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s);
        self
    }
    /// A long string.
    pub fn long_str(&mut self, s: &[u8]) -> &mut Self {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s);
        self
    }
    /// A field table.
    pub fn table(&mut self, t: &RawTable) -> &mut Self {
        let mut inner = Writer::default();
        for (name, value) in t {
            inner.short_str(name).value(value);
        }
        self.long_str(&inner.0)
    }
    fn value(&mut self, v: &RawValue) -> &mut Self {
        match v {
            RawValue::Bool(b) => self.u8(b't').u8(u8::from(*b)),
            RawValue::Int(i) => match i64::try_from(*i) {
                Ok(i) => self.u8(b'l').u64(i as u64),
                Err(_) => self.u8(b'T').u64(*i as u64),
            },
            RawValue::Float(f) => self.u8(b'd').u64(f.to_bits()),
            RawValue::Decimal(s, v) => self.u8(b'D').u8(*s).u32(*v),
            RawValue::Bytes(b) => self.u8(b'S').long_str(b),
            RawValue::Array(items) => {
                let mut inner = Writer::default();
                for item in items {
                    inner.value(item);
                }
                self.u8(b'A').long_str(&inner.0)
            }
            RawValue::Table(t) => self.u8(b'F').table(t),
            RawValue::Void => self.u8(b'V'),
        }
    }
}

/// Bytes shown to a person: UTF-8 as is, anything else as hex with a marker.
pub struct Shown<'a>(pub &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) => f.write_str(s),
            Err(_) => write!(f, "<not UTF-8: 0x{}>", hex::encode(self.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_with_a_non_utf8_name_round_trips() {
        let table: RawTable = vec![
            (b"x-ok".to_vec(), RawValue::Int(3)),
            (vec![0xff, 0xfe], RawValue::Bytes(vec![0xc3, 0x28])),
            (
                b"nested".to_vec(),
                RawValue::Table(vec![(b"a".to_vec(), RawValue::Bool(true))]),
            ),
            (
                b"list".to_vec(),
                RawValue::Array(vec![RawValue::Void, RawValue::Float(1.5)]),
            ),
        ];
        let mut w = Writer::default();
        w.table(&table);
        let back = Reader::new(&w.0).table().unwrap();
        assert_eq!(back, table);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut w = Writer::default();
        w.long_str(b"abcdef");
        let cut = &w.0[..5];
        assert!(Reader::new(cut).long_str().is_err());
        assert!(Reader::new(&[0, 0, 0, 3, b'k', b'?']).table().is_err());
    }

    #[test]
    fn shown_marks_bytes_that_are_not_utf8() {
        assert_eq!(Shown(b"tasks").to_string(), "tasks");
        assert_eq!(Shown(&[0x61, 0xff]).to_string(), "<not UTF-8: 0x61ff>");
    }
}
