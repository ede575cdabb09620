//! The wire format of openpi's policy server: msgpack maps whose arrays are msgpack-numpy maps.
//!
//! An array travels as a map `{"__ndarray__": true, "data": <bytes>, "dtype": "<f4", "shape":
//! [h, w, c]}` (openpi's `openpi_client/msgpack_numpy.py` packs its keys as msgpack binaries; we
//! read binary or string keys and write binary ones, which is what its `unpack_array` looks up);
//! a numpy scalar as `{"__npgeneric__": true, "data": <value>, "dtype": "<f4"}`. `dtype` is
//! numpy's `dtype.str`: a byte order (`<` little, `>` big, `|` not applicable, `=` native) then a
//! kind letter and the item size in bytes.

use rmpv::Value;
use std::fmt;

/// A decoded numpy array: its element type, shape and bytes in C order, little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The numpy element types a request may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

impl Dtype {
    /// numpy's `dtype.str` (little-endian where the width has an order).
    pub fn numpy_str(self) -> &'static str {
        match self {
            Dtype::Bool => "|b1",
            Dtype::U8 => "|u1",
            Dtype::I8 => "|i1",
            Dtype::U16 => "<u2",
            Dtype::I16 => "<i2",
            Dtype::U32 => "<u4",
            Dtype::I32 => "<i4",
            Dtype::U64 => "<u8",
            Dtype::I64 => "<i8",
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }

    /// numpy's name (`float32`), for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::U32 => "uint32",
            Dtype::I32 => "int32",
            Dtype::U64 => "uint64",
            Dtype::I64 => "int64",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// Parse numpy's `dtype.str`; returns the type and whether its bytes are big-endian.
    pub fn parse(s: &str) -> Result<(Dtype, bool), String> {
        let bad =
            || format!("unsupported dtype `{s}` (expected a numpy bool, integer or float type string like `<f4`)");
        let mut chars = s.chars();
        let order = chars.next().ok_or_else(bad)?;
        let big = match order {
            '<' | '|' => false,
            '>' => true,
            '=' => cfg!(target_endian = "big"),
            _ => return Err(bad()),
        };
        let dtype = match chars.as_str() {
            "b1" => Dtype::Bool,
            "u1" => Dtype::U8,
            "i1" => Dtype::I8,
            "u2" => Dtype::U16,
            "i2" => Dtype::I16,
            "u4" => Dtype::U32,
            "i4" => Dtype::I32,
            "u8" => Dtype::U64,
            "i8" => Dtype::I64,
            "f2" => Dtype::F16,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return Err(bad()),
        };
        Ok((dtype, big))
    }
}

impl NdArray {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A float32 array (as openpi's servers return actions).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> NdArray {
        NdArray { dtype: Dtype::F32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// The elements as f32 (integers and floats converted like numpy's `astype(np.float32)`).
    pub fn to_f32(&self) -> Vec<f32> {
        let n = self.dtype.size();
        self.data
            .chunks_exact(n)
            .map(|b| match self.dtype {
                Dtype::Bool => f32::from(b[0] != 0),
                Dtype::U8 => b[0] as f32,
                Dtype::I8 => b[0] as i8 as f32,
                Dtype::U16 => u16::from_le_bytes([b[0], b[1]]) as f32,
                Dtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
                Dtype::U32 => u32::from_le_bytes(b.try_into().unwrap()) as f32,
                Dtype::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f32,
                Dtype::U64 => u64::from_le_bytes(b.try_into().unwrap()) as f32,
                Dtype::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f32,
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                Dtype::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                Dtype::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            })
            .collect()
    }

    /// The msgpack-numpy map (binary keys, as openpi's `pack_array` writes them).
    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::Binary(b"__ndarray__".to_vec()), Value::Boolean(true)),
            (Value::Binary(b"data".to_vec()), Value::Binary(self.data.clone())),
            (Value::Binary(b"dtype".to_vec()), Value::from(self.dtype.numpy_str())),
            (
                Value::Binary(b"shape".to_vec()),
                Value::Array(self.shape.iter().map(|&d| Value::from(d as u64)).collect()),
            ),
        ])
    }
}

impl fmt::Display for NdArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let trailing = if self.shape.len() == 1 { "," } else { "" };
        write!(f, "{} array of shape ({}{trailing})", self.dtype.name(), dims.join(", "))
    }
}

/// A value of an observation: an array, a numpy scalar (kept as a 0-d array), a string, a
/// nested map, or another msgpack value.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Array(NdArray),
    Text(String),
    Map(Vec<(String, Field)>),
    Other(Value),
}

impl Field {
    /// What the field is, for messages: `uint8 array of shape (2, 3)`, `a string`, ….
    pub fn describe(&self) -> String {
        match self {
            Field::Array(a) => a.to_string(),
            Field::Text(_) => "a string".into(),
            Field::Map(_) => "a map".into(),
            Field::Other(v) => match v {
                Value::Nil => "nil".into(),
                Value::Boolean(_) => "a bool".into(),
                Value::Integer(_) => "an integer".into(),
                Value::F32(_) | Value::F64(_) => "a float".into(),
                Value::Binary(_) => "bytes".into(),
                Value::Array(_) => "a list".into(),
                _ => format!("{v}"),
            },
        }
    }
}

/// Decode a request frame: a msgpack map with string (or binary UTF-8) keys.
pub fn decode_observation(bytes: &[u8]) -> Result<Vec<(String, Field)>, String> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value(&mut rd).map_err(|e| format!("the request is not valid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("the request has {} bytes after its msgpack value", rd.len()));
    }
    match decode_field(value, "the request")? {
        Field::Map(entries) => Ok(entries),
        other => Err(format!("the request must be a map of observation keys, got {}", other.describe())),
    }
}

fn key_text(k: &Value) -> Option<&str> {
    match k {
        Value::String(s) => s.as_str(),
        Value::Binary(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn decode_field(value: Value, at: &str) -> Result<Field, String> {
    match value {
        Value::String(s) => match s.into_str() {
            Some(s) => Ok(Field::Text(s)),
            None => Err(format!("{at}: a string that is not UTF-8")),
        },
        Value::Map(entries) => {
            let is = |name: &str| entries.iter().any(|(k, _)| key_text(k) == Some(name));
            if is("__ndarray__") {
                return decode_ndarray(&entries, at).map(Field::Array);
            }
            if is("__npgeneric__") {
                return decode_npgeneric(&entries, at);
            }
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let Some(name) = key_text(&k).map(str::to_string) else {
                    return Err(format!("{at}: keys must be strings, got {k}"));
                };
                let field = decode_field(v, &name)?;
                out.push((name, field));
            }
            Ok(Field::Map(out))
        }
        other => Ok(Field::Other(other)),
    }
}

fn entry<'a>(entries: &'a [(Value, Value)], name: &str, at: &str) -> Result<&'a Value, String> {
    entries
        .iter()
        .find(|(k, _)| key_text(k) == Some(name))
        .map(|(_, v)| v)
        .ok_or_else(|| format!("{at}: a msgpack-numpy map without `{name}`"))
}

fn decode_ndarray(entries: &[(Value, Value)], at: &str) -> Result<NdArray, String> {
    let dtype_text = match entry(entries, "dtype", at)? {
        v @ (Value::String(_) | Value::Binary(_)) => key_text(v).unwrap_or_default().to_string(),
        v => return Err(format!("{at}: `dtype` must be a string, got {v}")),
    };
    let (dtype, big) = Dtype::parse(&dtype_text).map_err(|e| format!("{at}: {e}"))?;
    let shape = match entry(entries, "shape", at)? {
        Value::Array(dims) => dims
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| format!("{at}: shape entry {d} is not a size")))
            .collect::<Result<Vec<usize>, String>>()?,
        v => return Err(format!("{at}: `shape` must be a list, got {v}")),
    };
    let mut data = match entry(entries, "data", at)? {
        Value::Binary(b) => b.clone(),
        v => return Err(format!("{at}: `data` must be bytes, got {v}")),
    };
    let expected = shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d));
    if expected != Some(data.len()) {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        return Err(format!(
            "{at}: {} bytes of data do not hold a {} array of shape ({})",
            data.len(),
            dtype.name(),
            dims.join(", ")
        ));
    }
    if big && dtype.size() > 1 {
        for item in data.chunks_exact_mut(dtype.size()) {
            item.reverse();
        }
    }
    Ok(NdArray { dtype, shape, data })
}

fn decode_npgeneric(entries: &[(Value, Value)], at: &str) -> Result<Field, String> {
    let dtype_text = key_text(entry(entries, "dtype", at)?).unwrap_or_default().to_string();
    let (dtype, _) = Dtype::parse(&dtype_text).map_err(|e| format!("{at}: {e}"))?;
    let value = match entry(entries, "data", at)? {
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        Value::Integer(i) => i.as_f64().unwrap_or(f64::NAN),
        Value::Boolean(b) => f64::from(u8::from(*b)),
        v => return Err(format!("{at}: a numpy scalar whose value is {v}")),
    };
    let data = match dtype {
        Dtype::F64 => value.to_le_bytes().to_vec(),
        _ => (value as f32).to_le_bytes().to_vec(),
    };
    let dtype = if dtype == Dtype::F64 { Dtype::F64 } else { Dtype::F32 };
    Ok(Field::Array(NdArray { dtype, shape: vec![], data }))
}

/// Encode a msgpack value (a reply or the metadata) into a frame.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing msgpack into a Vec cannot fail");
    out
}

/// A string-keyed msgpack map.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}
