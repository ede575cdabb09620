//! Parquet reading and writing through Arrow record batches, with errors that name the file and
//! the column.

use crate::engine::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::Path;

/// Write `batch` to `path` (snappy, as LeRobot does), adding `kv` to the file's key-value
/// metadata. With `kv` given, the embedded Arrow schema (`ARROW:schema`) is left out: pyarrow
/// then takes the schema metadata (e.g. the `pandas` entry) from the key-value metadata, where an
/// embedded Arrow schema would override it.
pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch, kv: &[(&str, String)]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let skip_arrow_schema = !kv.is_empty();
    let kv: Vec<KeyValue> = kv.iter().map(|(k, v)| KeyValue::new((*k).to_string(), v.clone())).collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(if kv.is_empty() { None } else { Some(kv) })
        .build();
    let pq_err = |e: parquet::errors::ParquetError| Error::file(path, format!("writing parquet: {e}"));
    let options = ArrowWriterOptions::new().with_properties(props).with_skip_arrow_metadata(skip_arrow_schema);
    let mut w = ArrowWriter::try_new_with_options(file, batch.schema(), options).map_err(pq_err)?;
    w.write(batch).map_err(pq_err)?;
    let file = w.into_inner().map_err(pq_err)?;
    file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    Ok(())
}

/// Every record batch of a parquet file, with its schema.
pub(crate) fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::file(path, format!("not a parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let reader =
        builder.with_batch_size(8192).build().map_err(|e| Error::file(path, format!("reading parquet: {e}")))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::file(path, format!("reading parquet: {e}")))?;
    Ok((schema, batches))
}

/// A parquet file's schema and a reader handing out its record batches of at most `rows` rows
/// one at a time (memory bounded by one batch, whatever the file's size).
pub(crate) fn stream_parquet(
    path: &Path,
    rows: usize,
) -> Result<(SchemaRef, parquet::arrow::arrow_reader::ParquetRecordBatchReader)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::file(path, format!("not a parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let reader =
        builder.with_batch_size(rows).build().map_err(|e| Error::file(path, format!("reading parquet: {e}")))?;
    Ok((schema, reader))
}

/// A column of `batch` that the schema says must exist.
pub(crate) fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::file(path, format!("missing column `{name}`")))
}

/// Fail unless every one of `names` is a column of `schema`.
pub(crate) fn require_columns(path: &Path, schema: &SchemaRef, names: &[&str]) -> Result<()> {
    for n in names {
        if schema.field_with_name(n).is_err() {
            return Err(Error::file(path, format!("missing column `{n}`")));
        }
    }
    Ok(())
}

fn col_err(path: &Path, name: &str, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("column `{name}`: {msg}"))
}

fn no_nulls(path: &Path, name: &str, a: &dyn Array) -> Result<()> {
    if a.null_count() > 0 {
        return Err(col_err(path, name, format!("{} null values", a.null_count())));
    }
    Ok(())
}

/// An integer column (int64 or int32) as i64.
pub(crate) fn i64_column(path: &Path, name: &str, a: &ArrayRef) -> Result<Vec<i64>> {
    no_nulls(path, name, a.as_ref())?;
    match a.data_type() {
        DataType::Int64 => Ok(a.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Int32 => Ok(a.as_primitive::<Int32Type>().values().iter().map(|&v| v as i64).collect()),
        t => Err(col_err(path, name, format!("expected int64, found {t}"))),
    }
}

/// A float column (float64 or float32) as f64.
pub(crate) fn f64_column(path: &Path, name: &str, a: &ArrayRef) -> Result<Vec<f64>> {
    no_nulls(path, name, a.as_ref())?;
    match a.data_type() {
        DataType::Float64 => Ok(a.as_primitive::<Float64Type>().values().to_vec()),
        DataType::Float32 => Ok(a.as_primitive::<Float32Type>().values().iter().map(|&v| f64::from(v)).collect()),
        t => Err(col_err(path, name, format!("expected float64, found {t}"))),
    }
}

/// A float column (float32 or float64) as f32.
pub(crate) fn f32_column(path: &Path, name: &str, a: &ArrayRef) -> Result<Vec<f32>> {
    no_nulls(path, name, a.as_ref())?;
    match a.data_type() {
        DataType::Float32 => Ok(a.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Float64 => Ok(a.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect()),
        t => Err(col_err(path, name, format!("expected float32, found {t}"))),
    }
}

/// A column of float vectors (fixed-size list, list or large list of float32/float64) whose rows
/// must all have `dim` values; returned row-major.
pub(crate) fn f32_rows(path: &Path, name: &str, a: &ArrayRef, dim: usize) -> Result<Vec<f32>> {
    no_nulls(path, name, a.as_ref())?;
    let check_len = |row: usize, len: usize| -> Result<()> {
        if len != dim {
            return Err(col_err(
                path,
                name,
                format!("row {row} has {len} values but meta/info.json gives feature `{name}` shape [{dim}]"),
            ));
        }
        Ok(())
    };
    let (values, offsets): (&ArrayRef, Vec<usize>) = match a.data_type() {
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            check_len(0, *n as usize)?;
            (l.values(), (0..=l.len()).map(|i| (i + l.offset()) * *n as usize).collect())
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (l.values(), l.value_offsets().iter().map(|&o| o as usize).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            (l.values(), l.value_offsets().iter().map(|&o| o as usize).collect())
        }
        // LeRobot stores shape-[1] features as plain scalars.
        DataType::Float32 | DataType::Float64 if dim == 1 => return f32_column(path, name, a),
        t => return Err(col_err(path, name, format!("expected a list of float32, found {t}"))),
    };
    let flat = f32_column(path, name, values)?;
    let mut out = Vec::with_capacity(dim * a.len());
    for (row, w) in offsets.windows(2).enumerate() {
        check_len(row, w[1] - w[0])?;
        out.extend_from_slice(&flat[w[0]..w[1]]);
    }
    Ok(out)
}

/// A string column (utf8 or large utf8).
pub(crate) fn string_column(path: &Path, name: &str, a: &ArrayRef) -> Result<Vec<String>> {
    no_nulls(path, name, a.as_ref())?;
    match a.data_type() {
        DataType::Utf8 => Ok(a.as_string::<i32>().iter().map(|s| s.unwrap_or_default().to_string()).collect()),
        DataType::LargeUtf8 => Ok(a.as_string::<i64>().iter().map(|s| s.unwrap_or_default().to_string()).collect()),
        DataType::Utf8View => Ok(a.as_string_view().iter().map(|s| s.unwrap_or_default().to_string()).collect()),
        t => Err(col_err(path, name, format!("expected strings, found {t}"))),
    }
}

/// A column of string lists (the episodes table's `tasks`).
pub(crate) fn string_list_column(path: &Path, name: &str, a: &ArrayRef) -> Result<Vec<Vec<String>>> {
    no_nulls(path, name, a.as_ref())?;
    let (values, offsets): (&ArrayRef, Vec<usize>) = match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (l.values(), l.value_offsets().iter().map(|&o| o as usize).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            (l.values(), l.value_offsets().iter().map(|&o| o as usize).collect())
        }
        t => return Err(col_err(path, name, format!("expected a list of strings, found {t}"))),
    };
    let flat = string_column(path, name, values)?;
    Ok(offsets.windows(2).map(|w| flat[w[0]..w[1]].to_vec()).collect())
}

/// The encoded bytes of an image column (struct `{bytes: binary, path: string}`), appended to
/// `data` with one end offset per row pushed to `ends`.
pub(crate) fn image_bytes(
    path: &Path,
    name: &str,
    a: &ArrayRef,
    mut frame: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    no_nulls(path, name, a.as_ref())?;
    let s = a.as_struct_opt().ok_or_else(|| {
        col_err(path, name, format!("expected an image struct {{bytes, path}}, found {}", a.data_type()))
    })?;
    let bytes = s.column_by_name("bytes").ok_or_else(|| col_err(path, name, "image struct has no `bytes` field"))?;
    let missing = |row: usize| {
        col_err(
            path,
            name,
            format!("row {row} has no embedded image bytes (images stored as separate files are not supported)"),
        )
    };
    let mut push = |row: usize, v: Option<&[u8]>| -> Result<()> {
        let v = v.ok_or_else(|| missing(row))?;
        frame(row, v)
    };
    match bytes.data_type() {
        DataType::Binary => {
            for (row, v) in bytes.as_binary::<i32>().iter().enumerate() {
                push(row, v)?;
            }
        }
        DataType::LargeBinary => {
            for (row, v) in bytes.as_binary::<i64>().iter().enumerate() {
                push(row, v)?;
            }
        }
        DataType::BinaryView => {
            for (row, v) in bytes.as_binary_view().iter().enumerate() {
                push(row, v)?;
            }
        }
        t => return Err(col_err(path, name, format!("image field `bytes` must be binary, found {t}"))),
    }
    Ok(())
}
