//! Files: atomic writes and safetensors checkpoints.
//!
//! - [`write_atomic`] / [`write_atomic_with`] write a file so that readers see either the old
//!   content or the complete new content, never a torn file (temporary file in the same
//!   directory, fsync, rename over the target).
//! - [`SafeTensorsFile`] memory-maps a safetensors file, validates its header once and hands out
//!   tensors by name, converting dtypes on load; [`load`] reads many tensors with a name filter
//!   and rename; [`save`] writes tensors (strided views included) atomically.
//!
//! The safetensors format: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping
//! each tensor name to `{"dtype", "shape", "data_offsets": [start, end]}` (offsets relative to the
//! data section, tensors packed back to back) plus an optional `"__metadata__"` string map, then
//! the data section of little-endian, row-major elements.

use crate::{DType, Error, Result, Tensor, WithDType};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

// ----- atomic writes --------------------------------------------------------------------------

/// Write `bytes` to `path` atomically: readers see the previous file or the new one, never a mix.
/// On error an existing file at `path` is left untouched and no temporary file remains.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("vlm4vla-doc-write-atomic-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("config.json");
/// vlm4vla_engine::io::write_atomic(&path, b"{}").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"{}");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    write_atomic_with(path, |w| w.write_all(bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e)))
}

/// Write `path` atomically from a callback that streams the content into `w` (buffered). If the
/// callback fails, the temporary file is removed, the target is left untouched and the
/// callback's error is returned.
pub fn write_atomic_with(path: impl AsRef<Path>, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let path = path.as_ref();
    let (file, mut guard) = create_temp_beside(path)?;
    let io_err = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", path.display()), e);

    let mut w = BufWriter::new(file);
    write(&mut w)?;
    let file = w.into_inner().map_err(|e| io_err("writing", e.into_error()))?;
    file.sync_all().map_err(|e| io_err("syncing", e))?;
    drop(file);
    fs::rename(&guard.path, path).map_err(|e| io_err("replacing", e))?;
    guard.armed = false;
    sync_dir(parent_dir(path));
    Ok(())
}

/// Removes the temporary file when dropped while armed (an error or a panic before the rename).
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, uniquely named temporary file in `path`'s directory (so the final rename stays on one
/// filesystem), with the permissions of the file it will replace.
fn create_temp_beside(path: &Path) -> Result<(File, TempGuard)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "cannot write: the path does not name a file"))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_dir(path);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => {
                if let Ok(m) = fs::metadata(path) {
                    if m.is_file() {
                        let _ = file.set_permissions(m.permissions());
                    }
                }
                return Ok((file, TempGuard { path: tmp, armed: true }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => {
                return Err(Error::io(
                    format!("writing {} (creating a temporary file in {})", path.display(), dir.display()),
                    e,
                ))
            }
        }
    }
    let e = last_err.unwrap_or_else(|| std::io::Error::other("no free temporary file name"));
    Err(Error::io(format!("writing {} (creating a temporary file)", path.display()), e))
}

/// Make the rename durable. Best effort: some filesystems refuse fsync on directories, and the
/// data itself is already synced.
fn sync_dir(dir: &Path) {
    if cfg!(unix) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

// ----- raw bytes <-> tensors ------------------------------------------------------------------

/// A contiguous CPU tensor of `shape` from little-endian, row-major `bytes` of `dtype`. The bytes
/// are copied, so they need no alignment (memory-mapped data often has none).
pub fn tensor_from_le_bytes(bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n.and_then(|n| n.checked_mul(dtype.size_in_bytes())) != Some(bytes.len()) {
        return Err(Error::invalid(
            "tensor_from_le_bytes",
            format!("{} bytes do not hold a {dtype} tensor of shape {shape:?}", bytes.len()),
        ));
    }
    let device = crate::Device::Cpu;
    match dtype {
        DType::U8 => Tensor::from_vec(bytes.to_vec(), shape, device),
        DType::I64 => Tensor::from_vec(vec_from_le::<i64>(bytes), shape, device),
        DType::F16 => Tensor::from_vec(vec_from_le::<half::f16>(bytes), shape, device),
        DType::BF16 => Tensor::from_vec(vec_from_le::<half::bf16>(bytes), shape, device),
        DType::F32 => Tensor::from_vec(vec_from_le::<f32>(bytes), shape, device),
        DType::F64 => Tensor::from_vec(vec_from_le::<f64>(bytes), shape, device),
    }
}

fn vec_from_le<T: WithDType>(bytes: &[u8]) -> Vec<T> {
    let mut v: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
    if cfg!(target_endian = "big") {
        let size = std::mem::size_of::<T>();
        bytemuck::cast_slice_mut::<T, u8>(&mut v).chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    v
}

/// Write native-endian element bytes as little-endian.
fn write_le(w: &mut dyn Write, bytes: &[u8], elem_size: usize) -> std::io::Result<()> {
    if cfg!(target_endian = "little") || elem_size == 1 {
        return w.write_all(bytes);
    }
    let mut swapped = bytes.to_vec();
    swapped.chunks_exact_mut(elem_size).for_each(|c| c.reverse());
    w.write_all(&swapped)
}

// ----- reading --------------------------------------------------------------------------------

/// The safetensors dtypes the engine reads. BOOL is read as U8 (0 or 1).
fn engine_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::BOOL | Dtype::U8 => DType::U8,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

/// A memory-mapped safetensors file whose header has been validated (offsets cover the data
/// section exactly, sizes match shapes and dtypes). Tensors are copied out on [`get`](Self::get).
///
/// ```
/// # use vlm4vla_engine::{io, Device, Tensor};
/// # let dir = std::env::temp_dir().join(format!("vlm4vla-doc-st-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("w.safetensors");
/// let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], Device::Cpu).unwrap();
/// io::save(&path, &[("layer.weight", &w)], None).unwrap();
/// let f = io::SafeTensorsFile::open(&path).unwrap();
/// assert_eq!(f.names(), ["layer.weight"]);
/// let back = f.get_as("layer.weight", &[2, 3], None).unwrap();
/// assert_eq!(back.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct SafeTensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte position of the data section (8 + header length).
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: Option<HashMap<String, String>>,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.mmap.len())
            .finish()
    }
}

impl SafeTensorsFile {
    /// Map `path` and validate its header. Errors name the file and say what is wrong
    /// (truncated, bad header length, invalid JSON, offsets out of range, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let meta = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::file(path, "not a regular file"));
        }
        if meta.len() < 8 {
            return Err(too_short(path, meta.len()));
        }
        // SAFETY: the map is read-only and lives as long as `self`. Its contents change only if
        // another process modifies the file in place while it is mapped; our own writers never do
        // (they write a new file and rename it over the old one).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        let (n, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| header_error(path, &mmap, e))?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let user_metadata = metadata.metadata().clone();
        Ok(SafeTensorsFile { path: path.to_path_buf(), mmap, data_start: 8 + n, tensors, metadata: user_metadata })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The `"__metadata__"` string map, if the file has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// The stored shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.info(name)?.shape)
    }

    /// The engine dtype of tensor `name` (Err for dtypes the engine does not have, e.g. I32, F8).
    pub fn dtype(&self, name: &str) -> Result<DType> {
        self.dtype_of(name, self.info(name)?)
    }

    /// Tensor `name` as a contiguous CPU tensor of its stored shape, converted to `dtype` if given.
    pub fn get(&self, name: &str, dtype: Option<DType>) -> Result<Tensor> {
        let info = self.info(name)?;
        let stored = self.dtype_of(name, info)?;
        let (s, e) = info.data_offsets;
        let bytes = self
            .data_start
            .checked_add(s)
            .zip(self.data_start.checked_add(e))
            .and_then(|(a, b)| self.mmap.get(a..b))
            .ok_or_else(|| Error::tensor(&self.path, name, format!("data_offsets [{s}, {e}] out of range")))?;
        let t = tensor_from_le_bytes(bytes, &info.shape, stored)
            .map_err(|err| Error::tensor(&self.path, name, err.to_string()))?;
        match dtype {
            Some(d) if d != stored => t.to_dtype(d),
            _ => Ok(t),
        }
    }

    /// Like [`get`](Self::get), but first checks that the stored shape is `expected_shape`.
    pub fn get_as(&self, name: &str, expected_shape: &[usize], dtype: Option<DType>) -> Result<Tensor> {
        let found = &self.info(name)?.shape;
        if found.as_slice() != expected_shape {
            return Err(Error::tensor(&self.path, name, format!("expected shape {expected_shape:?}, found {found:?}")));
        }
        self.get(name, dtype)
    }

    /// The tensors that pass `opts.filter`, named by `opts.rename`, converted to `opts.dtype`,
    /// sorted by their name in the file. Two names renamed to the same name are an error.
    pub fn load(&self, opts: &LoadOptions) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut renamed_from: HashMap<String, &str> = HashMap::new();
        for name in self.tensors.keys() {
            if let Some(keep) = &opts.filter {
                if !keep(name) {
                    continue;
                }
            }
            let new_name = match &opts.rename {
                Some(rename) => rename(name),
                None => name.clone(),
            };
            if let Some(other) = renamed_from.insert(new_name.clone(), name) {
                return Err(Error::tensor(
                    &self.path,
                    name.as_str(),
                    format!("renamed to `{new_name}`, the same name as `{other}`"),
                ));
            }
            out.push((new_name, self.get(name, opts.dtype)?));
        }
        Ok(out)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::tensor(&self.path, name, self.missing_note(name)))
    }

    fn missing_note(&self, name: &str) -> String {
        let n = self.tensors.len();
        let mut msg = format!("not in file (it has {n} tensor{}", if n == 1 { "" } else { "s" });
        if n > 0 {
            let some: Vec<String> = self.tensors.keys().take(3).map(|k| format!("`{k}`")).collect();
            msg.push_str(&format!(", e.g. {}{}", some.join(", "), if n > 3 { ", ..." } else { "" }));
        }
        msg.push(')');
        let near = self.tensors.keys().find(|k| !name.is_empty() && (k.ends_with(name) || name.ends_with(k.as_str())));
        if let Some(k) = near {
            msg.push_str(&format!("; did you mean `{k}`?"));
        }
        msg
    }

    fn dtype_of(&self, name: &str, info: &TensorInfo) -> Result<DType> {
        engine_dtype(info.dtype).ok_or_else(|| {
            Error::tensor(
                &self.path,
                name,
                format!(
                    "dtype {:?} is not supported (the engine reads BOOL, U8, I64, F16, BF16, F32, F64)",
                    info.dtype
                ),
            )
        })
    }
}

/// Options for [`load`]: convert every tensor to `dtype`, keep only names that pass `filter`,
/// and name them `rename(name)`.
///
/// ```
/// # use vlm4vla_engine::{io::LoadOptions, DType};
/// // Keep the vision tower's weights, without their prefix, as f32.
/// let opts = LoadOptions::default().dtype(DType::F32).strip_prefix("model.vision_tower.");
/// assert!(opts.filter.as_ref().unwrap()("model.vision_tower.patch_embed.weight"));
/// assert_eq!(opts.rename.as_ref().unwrap()("model.vision_tower.patch_embed.weight"), "patch_embed.weight");
/// ```
#[derive(Default)]
pub struct LoadOptions {
    pub dtype: Option<DType>,
    pub filter: Option<NameFilter>,
    pub rename: Option<NameMap>,
}

/// Decides whether a tensor name is loaded.
pub type NameFilter = Box<dyn Fn(&str) -> bool>;
/// Maps a tensor name in the file to the name it is loaded as.
pub type NameMap = Box<dyn Fn(&str) -> String>;

impl LoadOptions {
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    pub fn filter(mut self, keep: impl Fn(&str) -> bool + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    pub fn rename(mut self, rename: impl Fn(&str) -> String + 'static) -> Self {
        self.rename = Some(Box::new(rename));
        self
    }

    /// Keep only names starting with `prefix` and strip it (replaces `filter` and `rename`).
    pub fn strip_prefix(self, prefix: &str) -> Self {
        let (p1, p2) = (prefix.to_string(), prefix.to_string());
        self.filter(move |n| n.starts_with(&p1)).rename(move |n| n.strip_prefix(p2.as_str()).unwrap_or(n).to_string())
    }
}

/// Open `path` and load the tensors selected by `opts` (see [`SafeTensorsFile::load`]).
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Vec<(String, Tensor)>> {
    SafeTensorsFile::open(path)?.load(opts)
}

fn too_short(path: &Path, len: u64) -> Error {
    Error::file(
        path,
        format!("file is {len} bytes, too short for a safetensors file (the header length alone takes 8): truncated?"),
    )
}

/// Turn the safetensors crate's header error into a message that names the file, the tensor
/// where one is to blame, and what is wrong.
fn header_error(path: &Path, buf: &[u8], err: SafeTensorError) -> Error {
    let n = buf.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
    let len = buf.len();
    let header = || {
        let end = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).unwrap_or(usize::MAX);
        buf.get(8..end).and_then(|h| std::str::from_utf8(h).ok())
    };
    let data_len = (len as u64).saturating_sub(8).saturating_sub(n);
    match err {
        SafeTensorError::HeaderTooSmall => too_short(path, len as u64),
        SafeTensorError::HeaderTooLarge => Error::file(
            path,
            format!("header length {n} bytes is over the 100 MB limit (not a safetensors file, or a corrupted one)"),
        ),
        SafeTensorError::InvalidHeaderLength => Error::file(
            path,
            format!(
                "header length {n} bytes is larger than the file ({len} bytes, {} after the length): truncated, \
                 or not a safetensors file",
                len - 8
            ),
        ),
        SafeTensorError::InvalidHeader => Error::file(path, "header is not valid UTF-8"),
        SafeTensorError::InvalidHeaderDeserialization => match header() {
            Some(h) => json_error(path, h),
            None => Error::file(path, "header is not valid JSON"),
        },
        SafeTensorError::InvalidOffset(name) => {
            let detail = header()
                .and_then(|h| serde_json::from_str::<Metadata>(h).ok())
                .and_then(|m| m.info(&name).map(|i| format!(" [{}, {}]", i.data_offsets.0, i.data_offsets.1)))
                .unwrap_or_default();
            Error::tensor(
                path,
                name,
                format!(
                    "data_offsets{detail} do not start where the previous tensor ends (gap, overlap or end < start)"
                ),
            )
        }
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => {
            let parsed = header().and_then(|h| serde_json::from_str::<Metadata>(h).ok());
            let bad = parsed.as_ref().and_then(|m| {
                m.tensors().into_iter().find_map(|(name, i)| {
                    let (s, e) = i.data_offsets;
                    let need = i.shape.iter().try_fold(i.dtype.size(), |a, &d| a.checked_mul(d));
                    match need {
                        None => Some((name, format!("shape {:?} overflows the address space", i.shape))),
                        Some(need) if e.checked_sub(s) != Some(need) => Some((
                            name,
                            format!(
                                "shape {:?} of dtype {:?} needs {need} bytes but data_offsets [{s}, {e}] span {}",
                                i.shape,
                                i.dtype,
                                e as i128 - s as i128
                            ),
                        )),
                        Some(_) => None,
                    }
                })
            });
            match bad {
                Some((name, msg)) => Error::tensor(path, name, msg),
                None => Error::file(path, "a tensor's shape and dtype do not match its data_offsets"),
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let parsed = header().and_then(|h| serde_json::from_str::<Metadata>(h).ok());
            let last = parsed.as_ref().and_then(|m| {
                m.tensors().into_iter().max_by_key(|(_, i)| i.data_offsets.1).map(|(k, i)| (k, i.data_offsets))
            });
            match last {
                Some((name, (s, e))) if e as u64 > data_len => Error::tensor(
                    path,
                    name,
                    format!(
                        "data_offsets [{s}, {e}] run past the end of the file (the data section has {data_len} \
                         bytes): truncated file or offsets out of range"
                    ),
                ),
                Some((_, (_, e))) => {
                    let extra = data_len - e as u64;
                    let s = if extra == 1 { "" } else { "s" };
                    Error::file(
                        path,
                        format!("{extra} byte{s} after the last tensor's data (data section {data_len} bytes)"),
                    )
                }
                None if data_len > 0 => {
                    Error::file(path, format!("no tensors but {data_len} bytes of data after the header"))
                }
                None => Error::file(path, "the tensors' data does not cover the data section"),
            }
        }
        other => Error::file(path, format!("invalid safetensors header: {other:?}")),
    }
}

/// Say why a header that the safetensors crate could not deserialize is wrong.
fn json_error(path: &Path, header: &str) -> Error {
    let value: serde_json::Value = match serde_json::from_str(header) {
        Ok(v) => v,
        Err(e) => return Error::file(path, format!("header is not valid JSON: {e}")),
    };
    let serde_json::Value::Object(map) = value else {
        return Error::file(path, "header JSON is not an object");
    };
    for (name, entry) in map {
        if name == "__metadata__" {
            if let Err(e) = serde_json::from_value::<HashMap<String, String>>(entry) {
                return Error::file(path, format!("header `__metadata__` is not a map of strings: {e}"));
            }
        } else if let Err(e) = serde_json::from_value::<TensorInfo>(entry) {
            return Error::tensor(path, name, format!("invalid header entry: {e}"));
        }
    }
    Error::file(path, "header JSON does not describe safetensors tensors")
}

// ----- writing --------------------------------------------------------------------------------

/// The header of a safetensors file holding `tensors` in this order, padded with spaces to a
/// multiple of 8 bytes. Written by hand rather than through a JSON map so that the bytes are
/// deterministic: metadata keys sorted, tensors in data order, fields as `dtype`, `shape`,
/// `data_offsets` (the order Python's safetensors writes).
fn safetensors_header(
    path: &Path,
    tensors: &[&(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let quote = |s: &str| {
        serde_json::to_string(s).map_err(|e| Error::file(path, format!("cannot encode the safetensors header: {e}")))
    };
    let mut entries = Vec::with_capacity(tensors.len() + 1);
    if let Some(m) = metadata {
        let sorted: BTreeMap<&String, &String> = m.iter().collect();
        let pairs = sorted.into_iter().map(|(k, v)| Ok(format!("{}:{}", quote(k)?, quote(v)?)));
        entries.push(format!("\"__metadata__\":{{{}}}", pairs.collect::<Result<Vec<_>>>()?.join(",")));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let nbytes = t.elem_count() * t.dtype().size_in_bytes();
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            quote(name)?,
            t.dtype().safetensors_name(),
            shape.join(","),
            offset + nbytes
        ));
        offset += nbytes;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

/// Save `tensors` (any layout; written contiguous, little-endian) and optional string
/// `metadata` to a safetensors file at `path`, atomically (see [`write_atomic_with`]). Data is
/// ordered by descending element size, then name, so every tensor's data stays aligned to its
/// element size. The same tensors give the same bytes. Duplicate names and the reserved name
/// `__metadata__` are errors.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if *name == "__metadata__" {
            return Err(Error::tensor(path, *name, "is a reserved name in safetensors headers"));
        }
        if !seen.insert(*name) {
            return Err(Error::tensor(path, *name, "appears twice in the tensors to save"));
        }
    }
    let mut order: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    order.sort_by(|(na, a), (nb, b)| b.dtype().size_in_bytes().cmp(&a.dtype().size_in_bytes()).then(na.cmp(nb)));

    let header = safetensors_header(path, &order, metadata)?;

    let io_err = |e| Error::io(format!("writing {}", path.display()), e);
    write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err)?;
        w.write_all(&header).map_err(io_err)?;
        for (name, t) in order {
            let data = t.to_cpu_storage()?;
            let expected = t.elem_count() * t.dtype().size_in_bytes();
            if data.as_bytes().len() != expected {
                return Err(Error::tensor(
                    path,
                    *name,
                    format!("has {} bytes of data, expected {expected}", data.as_bytes().len()),
                ));
            }
            write_le(w, data.as_bytes(), t.dtype().size_in_bytes()).map_err(io_err)?;
        }
        Ok(())
    })
}
