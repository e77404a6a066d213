//! The header, parsed and validated in one pass: [`parse`] gives the [`Layout`] of a file.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

use super::error::{one_line, StError, MAX_HEADER_LEN};
use super::source::Source;
use crate::dtype::DType;

/// One tensor of a validated file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name in the header.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Start of its bytes, relative to the data section.
    pub start: usize,
    /// End (exclusive) of its bytes, relative to the data section.
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.end.saturating_sub(self.start) / self.dtype.size_of()
    }

    /// The dtype as spelled in safetensors headers (`F32`, `F16`, `BF16`).
    pub fn dtype_str(&self) -> &'static str {
        dtype_str(self.dtype)
    }
}

/// The dtype as spelled in safetensors headers (`F32`, `F16`, `BF16`).
pub fn dtype_str(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
    }
}

/// The validated layout of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Length of the JSON header in bytes.
    pub header_len: usize,
    /// Offset of the data section in the file (`8 + header_len`).
    pub data_start: usize,
    /// The tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` entries, sorted by key (`None` when absent). OUT gets the header
    /// verbatim, so their order in the file is kept there.
    pub metadata: Option<Vec<(String, String)>>,
    /// The first `data_start` bytes as they were validated (the length and the header).
    head: Vec<u8>,
}

impl Layout {
    /// The file's first [`Layout::data_start`] bytes (the 8-byte length and the JSON header)
    /// exactly as they were validated: what a clipped copy starts with.
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

// ---------------------------------------------------------------------------------------------
// The header, parsed in one pass.
//
// One serde pass over the JSON text builds the compact `TensorInfo`s directly (no JSON tree) and
// refuses any object with a repeated key on the way: serde_json would keep the last of repeated
// keys silently, while the `safetensors` crate's typed parse rejects some of them (a repeated
// `data_offsets`) and accepts others. Problems with one entry (a wrong dtype, a missing field)
// are recorded and parsing goes on, so the reports keep their priority: invalid JSON first, then
// a repeated key, then the first bad entry in document order.

fn repeated_key<E: serde::de::Error>(k: &str) -> E {
    E::custom(format_args!(
        "key `{}` appears twice in one object",
        one_line(k)
    ))
}

/// Reads the rest of an object whose content is not needed, refusing repeated keys.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    let mut keys = std::collections::HashSet::new();
    while let Some(k) = map.next_key::<String>()? {
        map.next_value::<NoRepeatedKeys>()?;
        if keys.contains(&k) {
            return Err(repeated_key(&k));
        }
        keys.insert(k);
    }
    Ok(())
}

/// Reads the rest of an array whose content is not needed, refusing repeated keys inside.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
    Ok(())
}

/// Any JSON value, read and dropped, failing on an object with a repeated key.
struct NoRepeatedKeys;

/// The scalar and array methods of a visitor that only needs to know "something else": they
/// return the given value (`null` the first one; arrays are read through [`skip_seq`]).
macro_rules! other_values {
    ($v:expr) => {
        other_values!($v, $v);
    };
    ($null:expr, $v:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq)?;
            Ok($v)
        }
    };
}

impl<'de> serde::Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoRepeatedKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_values!(NoRepeatedKeys);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NoRepeatedKeys, A::Error> {
                skip_map(map)?;
                Ok(NoRepeatedKeys)
            }
        }
        d.deserialize_any(V)
    }
}

/// An array element of a field: a non-negative integer, or something else (`None`).
struct Uint(Option<u64>);

impl<'de> serde::Deserialize<'de> for Uint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Uint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Uint, E> {
                Ok(Uint(None))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Uint, E> {
                Ok(Uint(u64::try_from(v).ok()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Uint, E> {
                Ok(Uint(Some(v)))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Uint, E> {
                Ok(Uint(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Uint, E> {
                Ok(Uint(None))
            }
            fn visit_unit<E>(self) -> Result<Uint, E> {
                Ok(Uint(None))
            }
            fn visit_none<E>(self) -> Result<Uint, E> {
                Ok(Uint(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Uint, A::Error> {
                skip_seq(seq)?;
                Ok(Uint(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Uint, A::Error> {
                skip_map(map)?;
                Ok(Uint(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field's value as far as validation needs it; nested objects are read and dropped.
enum Field {
    Str(String),
    Seq(Vec<Option<u64>>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Field, E> {
                Ok(Field::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_none<E>(self) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                let mut v = Vec::new();
                while let Some(Uint(x)) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Field::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
                skip_map(map)?;
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// One tensor entry: its three fields as found, or "not an object".
enum Entry {
    NotObject,
    Object {
        dtype: Option<Field>,
        shape: Option<Field>,
        data_offsets: Option<Field>,
    },
}

impl<'de> serde::Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_values!(Entry::NotObject);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let (mut dtype, mut shape, mut data_offsets) = (None, None, None);
                let mut others = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    let slot = match k.as_str() {
                        "dtype" => &mut dtype,
                        "shape" => &mut shape,
                        "data_offsets" => &mut data_offsets,
                        _ => {
                            map.next_value::<NoRepeatedKeys>()?;
                            if others.contains(&k) {
                                return Err(repeated_key(&k));
                            }
                            others.insert(k);
                            continue;
                        }
                    };
                    let value = map.next_value::<Field>()?;
                    if slot.is_some() {
                        return Err(repeated_key(&k));
                    }
                    *slot = Some(value);
                }
                Ok(Entry::Object {
                    dtype,
                    shape,
                    data_offsets,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `__metadata__` value: absent (`null`), string pairs, or a problem to report.
struct Metadata(Result<Option<Vec<(String, String)>>, StError>);

impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_values!(
                Metadata(Ok(None)),
                Metadata(Err(StError::BadHeader(
                    "`__metadata__` is not a JSON object".into()
                )))
            );
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut pairs = Vec::new();
                let mut keys = std::collections::HashSet::new();
                let mut all_strings = true;
                while let Some(k) = map.next_key::<String>()? {
                    let value = map.next_value::<Field>()?;
                    if !keys.insert(k.clone()) {
                        return Err(repeated_key(&k));
                    }
                    match value {
                        Field::Str(v) if all_strings => pairs.push((k, v)),
                        _ => all_strings = false,
                    }
                }
                if !all_strings {
                    return Ok(Metadata(Err(StError::BadHeader(
                        "`__metadata__` values must be strings".into(),
                    ))));
                }
                // Sorted by key, as documented on `Layout::metadata`.
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(Metadata(Ok(Some(pairs))))
            }
        }
        d.deserialize_any(V)
    }
}

/// The whole header: the tensors in document order and `__metadata__`, or the first problem.
struct Header {
    tensors: Vec<TensorInfo>,
    metadata: Option<Vec<(String, String)>>,
    first_error: Option<StError>,
}

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                use std::hash::BuildHasher;
                let mut h = Header {
                    tensors: Vec::new(),
                    metadata: None,
                    first_error: None,
                };
                let mut metadata_seen = false;
                // Names are checked for repeats through their hashes (8 bytes each, not a second
                // copy of every name); a repeated hash is confirmed against the names.
                let hasher = std::collections::hash_map::RandomState::new();
                let mut hashes = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !hashes.insert(hasher.hash_one(&name)) {
                        let again = if name == "__metadata__" {
                            metadata_seen
                        } else {
                            h.tensors.iter().any(|t| t.name == name)
                        };
                        if again {
                            return Err(repeated_key(&name));
                        }
                    }
                    if name == "__metadata__" {
                        metadata_seen = true;
                        match map.next_value::<Metadata>()?.0 {
                            Ok(m) => h.metadata = m,
                            Err(e) => {
                                h.first_error.get_or_insert(e);
                            }
                        }
                        continue;
                    }
                    let entry = map.next_value::<Entry>()?;
                    let info = match tensor_entry(&name, entry) {
                        Ok(info) => info,
                        Err(e) => {
                            h.first_error.get_or_insert(e);
                            // Kept by name only, for the repeated-name check.
                            TensorInfo {
                                name,
                                dtype: DType::F32,
                                shape: Vec::new(),
                                start: 0,
                                end: 0,
                            }
                        }
                    };
                    h.tensors.push(info);
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

fn bad(name: &str, reason: impl Into<String>) -> StError {
    StError::BadTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// One header entry → (dtype, shape, start, end), checking types and the size equation.
fn tensor_entry(name: &str, entry: Entry) -> Result<TensorInfo, StError> {
    let Entry::Object {
        dtype,
        shape,
        data_offsets,
    } = entry
    else {
        return Err(bad(name, "entry is not a JSON object"));
    };
    let dtype = match dtype.ok_or_else(|| bad(name, "missing `dtype`"))? {
        Field::Str(s) => match s.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => {
                return Err(StError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: s,
                })
            }
        },
        _ => return Err(bad(name, "`dtype` is not a string")),
    };
    let shape = match shape.ok_or_else(|| bad(name, "missing `shape`"))? {
        Field::Seq(dims) => dims
            .into_iter()
            .map(|d| d.and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                bad(
                    name,
                    "`shape` holds something other than non-negative integers",
                )
            })?,
        _ => return Err(bad(name, "`shape` is not an array")),
    };
    let offsets = match data_offsets.ok_or_else(|| bad(name, "missing `data_offsets`"))? {
        Field::Seq(o) => o,
        _ => return Err(bad(name, "`data_offsets` is not an array")),
    };
    let (start, end) = match offsets.as_slice() {
        [s, e] => {
            let not_int = || bad(name, "`data_offsets` are not non-negative integers");
            (
                s.and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(not_int)?,
                e.and_then(|e| usize::try_from(e).ok())
                    .ok_or_else(not_int)?,
            )
        }
        _ => return Err(bad(name, "`data_offsets` is not a pair [start, end]")),
    };
    if end < start {
        return Err(bad(
            name,
            format!("data_offsets [{start}, {end}] end before they start"),
        ));
    }
    let needed = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_of()));
    if needed != Some(end - start) {
        return Err(StError::ShapeMismatch {
            name: name.to_string(),
            needed: needed.map(|n| n as u64),
            got: (end - start) as u64,
        });
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        start,
        end,
    })
}

/// The header text → tensors (document order) and metadata, in one pass; see above.
fn parse_header(text: &str) -> Result<Header, StError> {
    let header: Header = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            // Inside an object the only data error raised is a repeated key (entries' own
            // problems are recorded instead); the top level must be an object.
            let object = text
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .starts_with('{');
            if !object {
                return StError::BadHeader("header is not a JSON object".into());
            }
            // Invalid JSON further on is reported before the repeated key, as a full parse
            // would find it first.
            if let Err(syntax) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return StError::BadHeader(format!("header is not valid JSON: {syntax}"));
            }
            StError::BadHeader(format!("header is ambiguous: {e}"))
        } else {
            StError::BadHeader(format!("header is not valid JSON: {e}"))
        }
    })?;
    match header.first_error {
        Some(e) => Err(e),
        None => Ok(header),
    }
}

/// Validates a whole file (header and the layout of the data section) without reading any
/// tensor data. Every malformed input gives an [`StError`]; nothing panics. The header is read
/// in one pass into compact per-tensor records (no JSON tree), so its memory stays a small
/// multiple of the number of tensors.
pub fn parse(bytes: &[u8]) -> Result<Layout, StError> {
    parse_head(bytes, bytes.len() as u64)
}

/// [`parse`] for a file read through a [`Source`] (an open file): reads the 8-byte length and
/// the header (at most [`MAX_HEADER_LEN`] bytes, and never past the end of the file) and
/// validates the layout against the file's size. No tensor data is read.
pub fn read_layout<S: Source + ?Sized>(src: &S) -> Result<Layout, StError> {
    let file_len = src.size().map_err(|e| StError::read(0, &e))?;
    let mut len_bytes = [0u8; 8];
    let got = usize::try_from(file_len).map_or(8, |n| n.min(8));
    src.read_exact_at(&mut len_bytes[..got], 0)
        .map_err(|e| StError::read(0, &e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    // Only a header that `parse_head` would go on to read is read here; every other case is
    // refused by `parse_head` from the first bytes and the file's size alone.
    let head_len = header_len
        .checked_add(8)
        .filter(|&n| header_len <= MAX_HEADER_LEN && n <= file_len && got == 8)
        .map_or(got as u64, |n| n);
    let mut head = vec![0u8; head_len as usize];
    src.read_exact_at(&mut head, 0)
        .map_err(|e| StError::read(0, &e))?;
    parse_head(&head, file_len)
}

/// Validates a file of `file_len` bytes from its first bytes `head` (at least the length and the
/// header when the header fits in the file).
fn parse_head(head: &[u8], file_len: u64) -> Result<Layout, StError> {
    let file_len_usize = usize::try_from(file_len).unwrap_or(usize::MAX);
    if file_len == 0 {
        return Err(StError::Empty);
    }
    let len_bytes: [u8; 8] =
        head.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(StError::TooShort {
                len: file_len_usize,
            })?;
    let header_len64 = u64::from_le_bytes(len_bytes);
    if header_len64 > MAX_HEADER_LEN {
        return Err(StError::HeaderTooLong {
            header_len: header_len64,
        });
    }
    let past_end = StError::HeaderPastEnd {
        header_len: header_len64,
        file_len: file_len_usize,
    };
    let header_len = usize::try_from(header_len64).map_err(|_| past_end.clone())?;
    let data_start = header_len.checked_add(8).ok_or(past_end.clone())?;
    if data_start as u64 > file_len {
        return Err(past_end);
    }
    let header = head.get(8..data_start).ok_or(past_end)?;
    let text = std::str::from_utf8(header)
        .map_err(|e| StError::BadHeader(format!("header is not UTF-8: {e}")))?;
    let Header {
        mut tensors,
        metadata,
        ..
    } = parse_header(text)?;
    // File order: by offsets; the stable sort keeps header order for equal offsets.
    tensors.sort_by_key(|t| (t.start, t.end));

    let data_len = usize::try_from(file_len - data_start as u64).map_err(|_| {
        StError::Format("the data section does not fit in this platform's address space".into())
    })?;
    let mut pos = 0usize;
    let mut prev: Option<&TensorInfo> = None;
    for t in &tensors {
        if t.start < pos {
            return Err(StError::Overlap {
                first: prev.map(|p| p.name.clone()).unwrap_or_default(),
                second: t.name.clone(),
            });
        }
        if t.start > pos {
            // Report a tensor ending past the file before calling the hole a gap.
            if t.end > data_len {
                return Err(StError::OutOfRange {
                    name: t.name.clone(),
                    end: t.end as u64,
                    data_len: data_len as u64,
                });
            }
            return Err(StError::Gap {
                at: pos as u64,
                before: t.name.clone(),
            });
        }
        if t.end > data_len {
            return Err(StError::OutOfRange {
                name: t.name.clone(),
                end: t.end as u64,
                data_len: data_len as u64,
            });
        }
        pos = t.end;
        prev = Some(t);
    }
    if pos != data_len {
        return Err(StError::TrailingBytes {
            data_end: pos as u64,
            data_len: data_len as u64,
        });
    }
    Ok(Layout {
        header_len,
        data_start,
        tensors,
        metadata,
        head: head[..data_start].to_vec(),
    })
}
