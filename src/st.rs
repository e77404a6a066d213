//! Safetensors gradient dumps: strict validation, norms and clipping of a whole file.
//!
//! This is the library side of `gradclip norm` and `gradclip clip` (feature `cli`), kept out of
//! the binary so fuzz targets and embedders reach the exact code path the command line runs.
//! Printing and file handling stay in the binary.
//!
//! A file is `u64 little-endian header length N`, `N bytes of JSON header`, then the data section.
//! [`parse`] checks everything before any number is computed: the header length, that the header
//! is a UTF-8 JSON object, each tensor's dtype (F32, F16, BF16 only), shape and `data_offsets`
//! (no overlap, no gap, no byte past the end, `product(shape) * size_of(dtype) == end - start`
//! in checked arithmetic), and no repeated key in any JSON object, all in one pass over the
//! header. It accepts nothing the `safetensors` crate rejects (the fuzz oracle checks that
//! through [`check_with_safetensors_crate`]).
//!
//! [`norms`] and [`clip`] read tensors where they lie in the given bytes (a memory map, in the
//! binary); data that cannot be borrowed (misaligned, big-endian host) and data being scaled
//! goes through one reused buffer of at most [`SCRATCH_BYTES`], so memory does not grow with
//! the file.
//!
//! Tensors are kept in **file order**: ascending data offset, ties (zero-size tensors at the
//! same offset) broken by their position in the header. The JSON map's own order is not used.

use std::borrow::Cow;
use std::fmt;

use half::{bf16, f16};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

use crate::clip::{scale_, ClipOptions};
use crate::dtype::DType;
use crate::error::Error;
use crate::grads::{Grad, GradMut};
use crate::norm::{first_nonfinite, per_buffer_partials, total_norm_partial, NormType};
use crate::parallel::CHUNK;
use crate::partial::NormPartial;

/// Largest header the format allows (the `safetensors` crate's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a file was rejected, or why a computation failed. Its [`fmt::Display`] is one line
/// (control characters from the file are escaped).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StError {
    /// The file has no byte at all.
    Empty,
    /// The file ends before the 8-byte header length.
    TooShort {
        /// File size in bytes.
        len: usize,
    },
    /// The header length is larger than [`MAX_HEADER_LEN`].
    HeaderTooLong {
        /// The declared header length.
        header_len: u64,
    },
    /// The header length runs past the end of the file.
    HeaderPastEnd {
        /// The declared header length.
        header_len: u64,
        /// File size in bytes.
        file_len: usize,
    },
    /// The header is not UTF-8, not JSON, or not a JSON object.
    BadHeader(String),
    /// A tensor entry is malformed (missing field, wrong type, duplicate name, ...).
    BadTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a dtype other than F32, F16 or BF16.
    UnsupportedDtype {
        /// The tensor's name.
        name: String,
        /// The dtype string found in the header.
        dtype: String,
    },
    /// `product(shape) * size_of(dtype)` differs from the byte range (or overflows).
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// Bytes the shape and dtype need (`None` on overflow).
        needed: Option<u64>,
        /// Bytes the offsets give.
        got: u64,
    },
    /// Two tensors' byte ranges overlap.
    Overlap {
        /// The earlier tensor in file order.
        first: String,
        /// The tensor starting inside it.
        second: String,
    },
    /// Bytes of the data section belong to no tensor.
    Gap {
        /// First byte (data-section relative) not covered by a tensor.
        at: u64,
        /// The tensor after the gap.
        before: String,
    },
    /// A tensor's bytes extend past the end of the file.
    OutOfRange {
        /// The tensor's name.
        name: String,
        /// Its end offset in the data section.
        end: u64,
        /// The data section's size.
        data_len: u64,
    },
    /// Bytes after the last tensor.
    TrailingBytes {
        /// Where the last tensor ends.
        data_end: u64,
        /// The data section's size.
        data_len: u64,
    },
    /// The `safetensors` crate rejected a file this module accepted (should not happen).
    Format(String),
    /// An argument is invalid (norm type, max norm), as the library reported it.
    Invalid(Error),
    /// A command-line argument could not be parsed.
    Argument(String),
    /// A tensor holds NaN or ±inf.
    NonFinite(Located),
}

/// A non-finite element, located by tensor (file-order index and name) and flat index.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// File-order index of the tensor.
    pub tensor: usize,
    /// The tensor's name.
    pub name: String,
    /// Row-major flat index inside the tensor.
    pub index: usize,
    /// The value: NaN, +inf or -inf.
    pub value: f64,
}

impl Located {
    /// `"NaN"`, `"inf"` or `"-inf"`.
    pub fn value_str(&self) -> &'static str {
        if self.value.is_nan() {
            "NaN"
        } else if self.value > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    }
}

/// `s` with control characters escaped, so a message built from file content stays on one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for StError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |s: &str| one_line(s);
        match self {
            StError::Empty => write!(f, "the file is empty"),
            StError::TooShort { len } => write!(
                f,
                "the file is truncated: {len} bytes, a safetensors file starts with an 8-byte header length"
            ),
            StError::HeaderTooLong { header_len } => write!(
                f,
                "header length {header_len} is absurd (the format allows at most {MAX_HEADER_LEN} bytes)"
            ),
            StError::HeaderPastEnd {
                header_len,
                file_len,
            } => write!(
                f,
                "header length {header_len} runs past the end of the file ({file_len} bytes): truncated or not a safetensors file"
            ),
            StError::BadHeader(why) => write!(f, "corrupt header: {}", q(why)),
            StError::BadTensor { name, reason } => {
                write!(f, "tensor `{}`: {}", q(name), q(reason))
            }
            StError::UnsupportedDtype { name, dtype } => write!(
                f,
                "tensor `{}`: unsupported dtype `{}` (supported: F32, F16, BF16)",
                q(name),
                q(dtype)
            ),
            StError::ShapeMismatch { name, needed, got } => match needed {
                Some(n) => write!(
                    f,
                    "tensor `{}`: shape and dtype need {n} bytes but data_offsets give {got}",
                    q(name)
                ),
                None => write!(f, "tensor `{}`: shape is too large (overflow)", q(name)),
            },
            StError::Overlap { first, second } => write!(
                f,
                "tensors `{}` and `{}` have overlapping data_offsets",
                q(first),
                q(second)
            ),
            StError::Gap { at, before } => write!(
                f,
                "data bytes from offset {at} up to tensor `{}` belong to no tensor",
                q(before)
            ),
            StError::OutOfRange {
                name,
                end,
                data_len,
            } => write!(
                f,
                "tensor `{}`: data_offsets end at {end}, past the end of the data ({data_len} bytes): truncated file?",
                q(name)
            ),
            StError::TrailingBytes { data_end, data_len } => write!(
                f,
                "{} bytes after the last tensor (data ends at {data_end}, file data is {data_len} bytes)",
                data_len.saturating_sub(*data_end)
            ),
            StError::Format(why) => write!(f, "invalid safetensors file: {}", q(why)),
            StError::Invalid(e) => write!(f, "{e}"),
            StError::Argument(why) => f.write_str(why),
            StError::NonFinite(l) => write!(
                f,
                "non-finite value {} in tensor `{}` at index {}",
                l.value_str(),
                q(&l.name),
                l.index
            ),
        }
    }
}

impl std::error::Error for StError {}

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
    if bytes.is_empty() {
        return Err(StError::Empty);
    }
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(StError::TooShort { len: bytes.len() })?;
    let header_len64 = u64::from_le_bytes(len_bytes);
    if header_len64 > MAX_HEADER_LEN {
        return Err(StError::HeaderTooLong {
            header_len: header_len64,
        });
    }
    let past_end = StError::HeaderPastEnd {
        header_len: header_len64,
        file_len: bytes.len(),
    };
    let header_len = usize::try_from(header_len64).map_err(|_| past_end.clone())?;
    let data_start = header_len.checked_add(8).ok_or(past_end.clone())?;
    let header = bytes.get(8..data_start).ok_or(past_end)?;
    let text = std::str::from_utf8(header)
        .map_err(|e| StError::BadHeader(format!("header is not UTF-8: {e}")))?;
    let Header {
        mut tensors,
        metadata,
        ..
    } = parse_header(text)?;
    // File order: by offsets; the stable sort keeps header order for equal offsets.
    tensors.sort_by_key(|t| (t.start, t.end));

    let data_len = bytes.len() - data_start;
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
    })
}

/// The `safetensors` crate's own validation of a file, for the fuzz oracle: every file
/// [`parse`] accepts must pass it too. Not part of [`parse`] (it would be a third pass over the
/// header, with a JSON tree of its own).
#[doc(hidden)]
pub fn check_with_safetensors_crate(bytes: &[u8]) -> Result<(), String> {
    safetensors::SafeTensors::read_metadata(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A tensor's elements: borrowed from the file when aligned (little-endian hosts), else copied.
#[derive(Debug, Clone)]
pub enum TensorData<'a> {
    /// F32 elements.
    F32(Cow<'a, [f32]>),
    /// F16 elements.
    F16(Cow<'a, [f16]>),
    /// BF16 elements.
    BF16(Cow<'a, [bf16]>),
}

impl TensorData<'_> {
    /// A read-only view for the norm functions.
    pub fn grad(&self) -> Grad<'_> {
        match self {
            TensorData::F32(c) => Grad::F32(c),
            TensorData::F16(c) => Grad::F16(c),
            TensorData::BF16(c) => Grad::BF16(c),
        }
    }
}

fn cast_or_copy<T: bytemuck::Pod, const N: usize>(
    raw: &[u8],
    from_le: fn([u8; N]) -> T,
) -> Cow<'_, [T]> {
    #[cfg(target_endian = "little")]
    if let Ok(s) = bytemuck::try_cast_slice::<u8, T>(raw) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                from_le(a)
            })
            .collect(),
    )
}

/// The elements of tensor `i` of a file that [`parse`] accepted, copied when they cannot be
/// borrowed. Returns `None` for an index or a layout that does not fit `bytes` (never the case
/// for the pair `parse` returned). [`norms`] and [`clip`] do not use it: they never hold more
/// than [`SCRATCH_BYTES`] of copies.
pub fn tensor_data<'a>(bytes: &'a [u8], layout: &Layout, i: usize) -> Option<TensorData<'a>> {
    let t = layout.tensors.get(i)?;
    let raw = bytes
        .get(layout.data_start.checked_add(t.start)?..layout.data_start.checked_add(t.end)?)?;
    Some(match t.dtype {
        DType::F32 => TensorData::F32(cast_or_copy(raw, f32::from_le_bytes)),
        DType::F16 => TensorData::F16(cast_or_copy(raw, f16::from_le_bytes)),
        DType::BF16 => TensorData::BF16(cast_or_copy(raw, bf16::from_le_bytes)),
    })
}

/// Size of the one reused buffer [`norms`] and [`clip`] copy tensor data into when it cannot be
/// borrowed from the file (misaligned data, big-endian hosts) and when it is scaled: the most
/// memory they use beyond the mapped file and the per-tensor bookkeeping. The environment
/// variable `GRADCLIP_SCRATCH_BYTES` overrides it (at least 256 KiB), so tests can reach the
/// piecewise paths with small files.
pub const SCRATCH_BYTES: usize = 64 << 20;

/// The scratch size in force (see [`SCRATCH_BYTES`]): a multiple of 8, at least one f32 chunk
/// of the reduction tree.
fn scratch_bytes() -> usize {
    let least = CHUNK * std::mem::size_of::<f32>();
    std::env::var("GRADCLIP_SCRATCH_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(SCRATCH_BYTES)
        .max(least)
        / 8
        * 8
}

fn layout_mismatch() -> StError {
    StError::Format("layout does not match the file".into())
}

/// The raw bytes of tensor `t`.
fn raw_bytes<'a>(bytes: &'a [u8], layout: &Layout, t: &TensorInfo) -> Result<&'a [u8], StError> {
    let start = layout.data_start.checked_add(t.start);
    let end = layout.data_start.checked_add(t.end);
    start
        .zip(end)
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(layout_mismatch)
}

/// The elements of `raw` in place: a little-endian host and data aligned for the dtype.
fn borrowed(raw: &[u8], dtype: DType) -> Option<Grad<'_>> {
    #[cfg(target_endian = "little")]
    {
        match dtype {
            DType::F32 => bytemuck::try_cast_slice(raw).ok().map(Grad::F32),
            DType::F16 => bytemuck::try_cast_slice(raw).ok().map(Grad::F16),
            DType::BF16 => bytemuck::try_cast_slice(raw).ok().map(Grad::BF16),
        }
    }
    #[cfg(not(target_endian = "little"))]
    {
        let _ = (raw, dtype);
        None
    }
}

/// One reused, 8-byte aligned buffer of at most `cap` bytes for tensor data that is copied.
struct Scratch {
    buf: Vec<u64>,
    cap: usize,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            buf: Vec::new(),
            cap: scratch_bytes(),
        }
    }

    /// The largest piece, in bytes, of elements of `size` bytes that fits.
    fn piece(&self, size: usize) -> usize {
        self.cap - self.cap % size
    }

    /// Copies `raw` (whole elements of `dtype`, at most `cap` bytes) in and returns the
    /// elements, writable. Grows the buffer up to the size asked, never beyond.
    fn load(&mut self, raw: &[u8], dtype: DType) -> GradMut<'_> {
        debug_assert!(raw.len() <= self.cap && raw.len().is_multiple_of(dtype.size_of()));
        let words = raw.len().div_ceil(8);
        if self.buf.len() < words {
            self.buf.resize(words, 0);
        }
        let dst = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.buf)[..raw.len()];
        dst.copy_from_slice(raw);
        // The buffer is 8-byte aligned and `raw` holds whole elements: the casts cannot fail.
        match dtype {
            DType::F32 => {
                let s: &mut [f32] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                GradMut::F32(s)
            }
            DType::F16 => {
                let s: &mut [f16] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = f16::from_bits(u16::from_le(x.to_bits())));
                GradMut::F16(s)
            }
            DType::BF16 => {
                let s: &mut [bf16] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = bf16::from_bits(u16::from_le(x.to_bits())));
                GradMut::BF16(s)
            }
        }
    }
}

/// The elements as little-endian bytes (converted in place on big-endian hosts).
fn into_le_bytes(g: GradMut<'_>) -> &[u8] {
    match g {
        GradMut::F32(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = f32::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
        GradMut::F16(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = f16::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
        GradMut::BF16(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = bf16::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
    }
}

/// The partial of one tensor that cannot be borrowed, copied through `scratch`. A tensor larger
/// than the scratch is cut where the library's reduction tree cuts it (at the chunk-aligned
/// midpoint, see `parallel.rs`) and the halves are merged, so the partial has the bits of the
/// whole tensor's.
fn copied_partial(
    raw: &[u8],
    dtype: DType,
    norm_type: NormType,
    scratch: &mut Scratch,
) -> Result<NormPartial, Error> {
    let size = dtype.size_of();
    let n = raw.len() / size;
    if raw.len() <= scratch.cap || n <= CHUNK {
        let g = scratch.load(raw, dtype);
        return total_norm_partial(&[g], norm_type);
    }
    let mid = (n.div_ceil(CHUNK) / 2) * CHUNK;
    let (l, r) = raw.split_at(mid * size);
    let a = copied_partial(l, dtype, norm_type, scratch)?;
    let b = copied_partial(r, dtype, norm_type, scratch)?;
    Ok(a.merge(b))
}

/// Each tensor's partial, in file order. A run of tensors that can be borrowed from the file goes
/// through one `per_buffer_partials` call (parallel across tensors); a tensor that cannot is
/// copied through `scratch` (one at a time, in pieces of at most the scratch size).
fn tensor_partials(
    bytes: &[u8],
    layout: &Layout,
    norm_type: NormType,
    scratch: &mut Scratch,
) -> Result<Vec<NormPartial>, StError> {
    let mut parts = vec![NormPartial::EMPTY; layout.tensors.len()];
    let mut run: Vec<Grad<'_>> = Vec::new();
    let mut run_start = 0;
    let flush = |run: &mut Vec<Grad<'_>>, parts: &mut [NormPartial]| -> Result<(), StError> {
        if !run.is_empty() {
            per_buffer_partials(run, norm_type, parts).map_err(StError::Invalid)?;
            run.clear();
        }
        Ok(())
    };
    for (i, t) in layout.tensors.iter().enumerate() {
        let raw = raw_bytes(bytes, layout, t)?;
        if let Some(g) = borrowed(raw, t.dtype) {
            if run.is_empty() {
                run_start = i;
            }
            run.push(g);
            continue;
        }
        flush(&mut run, &mut parts[run_start..i])?;
        parts[i] = copied_partial(raw, t.dtype, norm_type, scratch).map_err(StError::Invalid)?;
    }
    let end = parts.len();
    flush(&mut run, &mut parts[run_start..end])?;
    Ok(parts)
}

/// The partials merged in the fixed tree `per_buffer_partials` uses over a set of buffers (split
/// at the middle index), so the total has the same bits as one call over all tensors: the same
/// for any thread count, and the same as [`crate::get_total_norm`] on the tensors in file order.
fn merge_tree(parts: &[NormPartial], empty: NormPartial) -> NormPartial {
    match parts {
        [] => empty,
        [p] => *p,
        _ => {
            let (l, r) = parts.split_at(parts.len() / 2);
            merge_tree(l, empty).merge(merge_tree(r, empty))
        }
    }
}

/// The first non-finite element of one tensor: (flat index, value).
fn first_nonfinite_in(raw: &[u8], dtype: DType, scratch: &mut Scratch) -> Option<(usize, f64)> {
    if let Some(g) = borrowed(raw, dtype) {
        return first_nonfinite(&[g]).map(|nf| (nf.index, nf.value));
    }
    let size = dtype.size_of();
    let piece = scratch.piece(size);
    raw.chunks(piece).enumerate().find_map(|(k, chunk)| {
        let g = scratch.load(chunk, dtype);
        first_nonfinite(&[g]).map(|nf| (k * (piece / size) + nf.index, nf.value))
    })
}

/// Partials of every tensor and of the file, and the first non-finite element.
struct Analysis {
    parts: Vec<NormPartial>,
    total: NormPartial,
    nonfinite: Option<Located>,
}

/// One pass over the data (then a scan of the first tensor holding a NaN or ±inf, if any).
/// A P norm of finite elements that exceeds f64, for the file or for one tensor, is
/// [`Error::NormOverflow`]: the norm type is unusable for this file, which is reported before
/// any non-finite element.
fn analyse(bytes: &[u8], layout: &Layout, norm_type: NormType) -> Result<Analysis, StError> {
    let empty = NormPartial::new(norm_type).map_err(StError::Invalid)?;
    let mut scratch = Scratch::new();
    let parts = tensor_partials(bytes, layout, norm_type, &mut scratch)?;
    let total = merge_tree(&parts, empty);
    let overflows = |p: &NormPartial| p.is_finite() && p.finish().is_infinite();
    if overflows(&total) || parts.iter().any(overflows) {
        return Err(StError::Invalid(Error::NormOverflow {
            p: norm_type.exponent(),
        }));
    }
    let mut nonfinite = None;
    if !total.is_finite() {
        for (i, (t, p)) in layout.tensors.iter().zip(&parts).enumerate() {
            if p.is_finite() {
                continue;
            }
            let raw = raw_bytes(bytes, layout, t)?;
            if let Some((index, value)) = first_nonfinite_in(raw, t.dtype, &mut scratch) {
                nonfinite = Some(Located {
                    tensor: i,
                    name: t.name.clone(),
                    index,
                    value,
                });
                break;
            }
        }
    }
    Ok(Analysis {
        parts,
        total,
        nonfinite,
    })
}

/// Parses a `--max-norm` value: a finite number > 0.
pub fn parse_max_norm(s: &str) -> Result<f64, StError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(StError::Argument(format!(
            "invalid --max-norm `{}`: expected a finite number > 0",
            one_line(s)
        ))),
    }
}

/// Parses a `--norm-type` value: `2`, `1`, `inf` or any finite `p > 0`.
pub fn parse_norm_type(s: &str) -> Result<NormType, StError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
        return Ok(NormType::Inf);
    }
    let bad = || {
        StError::Argument(format!(
            "invalid --norm-type `{}`: expected 2, 1, inf or a finite number > 0",
            one_line(s)
        ))
    };
    let p: f64 = t.parse().map_err(|_| bad())?;
    if !(p.is_finite() && p > 0.0) {
        return Err(bad());
    }
    Ok(if p == 1.0 {
        NormType::L1
    } else if p == 2.0 {
        NormType::L2
    } else {
        NormType::P(p)
    })
}

/// Per-tensor norms and the total of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct NormSummary {
    /// The norm type used.
    pub norm_type: NormType,
    /// The total norm over all elements (NaN or +inf when an element is not finite).
    pub total_norm: f64,
    /// Each tensor's own norm, in file order (NaN or +inf when it holds a non-finite element).
    pub norms: Vec<f64>,
    /// The first non-finite element in file order.
    pub nonfinite: Option<Located>,
}

/// Norms of every tensor and the total, in one pass over the data. Aligned tensors are read
/// where they lie in `bytes` (a memory map); others are copied through one bounded buffer
/// ([`SCRATCH_BYTES`]). The total has the bits of [`crate::get_total_norm`] over the tensors in
/// file order, for any thread count. A P norm too large for f64 gives
/// `StError::Invalid(Error::NormOverflow { .. })`.
pub fn norms(bytes: &[u8], layout: &Layout, norm_type: NormType) -> Result<NormSummary, StError> {
    let a = analyse(bytes, layout, norm_type)?;
    Ok(NormSummary {
        norm_type,
        total_norm: a.total.finish(),
        norms: a.parts.iter().map(NormPartial::finish).collect(),
        nonfinite: a.nonfinite,
    })
}

/// `min(1, max_norm / (total_norm + 1e-6))`, from the library (nothing is scaled).
pub fn clip_coefficient(max_norm: f64, total_norm: f64) -> Result<f64, StError> {
    crate::clip_coefficient(max_norm, total_norm, ClipOptions::default().eps)
        .map_err(StError::Invalid)
}

/// What clipping a file does: the norm, the coefficient, and (through
/// [`Clipped::write_to`]) the clipped data, produced while it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Clipped {
    /// The norm type used.
    pub norm_type: NormType,
    /// The total norm before clipping.
    pub total_norm: f64,
    /// The requested maximum norm.
    pub max_norm: f64,
    /// `min(1, max_norm / (total_norm + 1e-6))`.
    pub clip_coef: f64,
    /// True when `clip_coef < 1` (the data is rescaled).
    pub clipped: bool,
}

impl Clipped {
    /// Writes the clipped file: the 8-byte length and header of `bytes` verbatim (names,
    /// dtypes, shapes, offsets and `__metadata__` are unchanged), then the data in file order.
    /// When `clip_coef == 1` the data section is copied byte for byte; otherwise each tensor,
    /// in pieces of at most [`SCRATCH_BYTES`] cut at element boundaries, is copied into one
    /// reused buffer, scaled there by [`crate::scale_`] (`round_to_dtype(f32(x) *
    /// f32(clip_coef))`) and written.
    pub fn write_to<W: std::io::Write + ?Sized>(
        &self,
        bytes: &[u8],
        layout: &Layout,
        w: &mut W,
    ) -> std::io::Result<()> {
        let mismatch =
            || std::io::Error::new(std::io::ErrorKind::InvalidInput, "layout does not match");
        w.write_all(bytes.get(..layout.data_start).ok_or_else(mismatch)?)?;
        if self.clip_coef == 1.0 {
            return w.write_all(bytes.get(layout.data_start..).ok_or_else(mismatch)?);
        }
        let mut scratch = Scratch::new();
        for t in &layout.tensors {
            let raw = raw_bytes(bytes, layout, t).map_err(|_| mismatch())?;
            for piece in raw.chunks(scratch.piece(t.dtype.size_of())) {
                let mut g = scratch.load(piece, t.dtype);
                scale_(std::slice::from_mut(&mut g), self.clip_coef)
                    .map_err(std::io::Error::other)?;
                w.write_all(into_le_bytes(g))?;
            }
        }
        Ok(())
    }
}

/// The norm and clip coefficient of a validated file, with the semantics of [`clip_grad_norm_`]
/// (policy error, eps 1e-6): a non-finite element gives [`StError::NonFinite`] (the first in file
/// order), bad `max_norm` or norm type and a P norm too large for f64 give [`StError::Invalid`].
/// Nothing is copied here; [`Clipped::write_to`] produces the data.
///
/// [`clip_grad_norm_`]: crate::clip_grad_norm_
pub fn clip(
    bytes: &[u8],
    layout: &Layout,
    max_norm: f64,
    norm_type: NormType,
) -> Result<Clipped, StError> {
    // Validate the arguments before reading gigabytes.
    clip_coefficient(max_norm, 0.0)?;
    let a = analyse(bytes, layout, norm_type)?;
    if let Some(l) = a.nonfinite {
        return Err(StError::NonFinite(l));
    }
    if !a.total.is_finite() {
        return Err(StError::Format(
            "a non-finite value was seen but not located".into(),
        ));
    }
    let total_norm = a.total.finish();
    let clip_coef = clip_coefficient(max_norm, total_norm)?;
    Ok(Clipped {
        norm_type,
        total_norm,
        max_norm,
        clip_coef,
        clipped: clip_coef < 1.0,
    })
}
