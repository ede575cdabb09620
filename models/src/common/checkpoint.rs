//! Finding a Hugging Face checkpoint on disk and loading its weights by tensor name.
//!
//! - [`resolve`]: a local directory, or a hub id `org/name` (optionally `org/name@revision`)
//!   found in the local Hugging Face cache without any network access.
//! - [`Resolved::read_config`] / [`ModelType`]: `config.json` as a `serde_json::Value` and the
//!   family named by its top-level `model_type`.
//! - [`weight_files`]: `model.safetensors`, or the shards listed by
//!   `model.safetensors.index.json` (`weight_map`).
//! - [`load_params`]: every expected tensor, checked by name and shape, renamed from the on-disk
//!   name, converted to one dtype, into a [`ParamStore`]; tied weights (`lm_head` ←
//!   `embed_tokens`) filled from their source when the file omits them.
//! - [`param_count`] / [`param_count_by_group`]: element counts of an expected-tensor list.
//!
//! ```no_run
//! use vlm4vla_models::common::checkpoint::{self, ModelType};
//! let ckpt = checkpoint::resolve("google/paligemma-3b-pt-224").unwrap();
//! let config = ckpt.read_config().unwrap();
//! assert_eq!(ModelType::from_config(&config, &ckpt.config_path()).unwrap(), ModelType::PaliGemma);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use vlm4vla_engine::{DType, Error, ParamStore, Result, SafeTensorsFile};

/// The single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The sharded-weights index name.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config name.
pub const CONFIG_FILE: &str = "config.json";

/// A checkpoint directory found by [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The directory holding `config.json` and the weights (a cache snapshot for hub ids).
    pub dir: PathBuf,
    /// How it was found, for messages: `local directory` or `Hugging Face cache, revision <rev>`.
    pub origin: String,
}

impl Resolved {
    /// `dir/config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `config.json` parsed as JSON (see [`read_config`]).
    pub fn read_config(&self) -> Result<serde_json::Value> {
        read_config(&self.dir)
    }

    /// The family named by `config.json`'s `model_type`.
    pub fn model_type(&self) -> Result<ModelType> {
        ModelType::from_config(&self.read_config()?, &self.config_path())
    }

    /// The weight files of this checkpoint (see [`weight_files`]).
    pub fn weight_files(&self) -> Result<WeightFiles> {
        weight_files(&self.dir)
    }
}

/// Find a checkpoint: `spec` is a directory (used as is), or a hub id `org/name` or
/// `org/name@revision` looked up in the local Hugging Face cache (see [`hub_cache_dirs`]). The
/// error lists every place looked at.
pub fn resolve(spec: &str) -> Result<Resolved> {
    resolve_in(spec, &hub_cache_dirs())
}

/// [`resolve`] with explicit hub cache directories (each holding `models--org--name/`), for
/// callers and tests that do not want the environment consulted.
pub fn resolve_in(spec: &str, caches: &[PathBuf]) -> Result<Resolved> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(Resolved { dir: as_path.to_path_buf(), origin: "local directory".into() });
    }
    let mut looked = vec![format!("{} (not a directory)", as_path.display())];
    let Some((repo, revision)) = parse_hub_id(spec) else {
        return Err(Error::file(
            spec,
            format!(
                "no such checkpoint directory, and not a hub id of the form org/name[@revision]; looked at: {}",
                looked.join("; ")
            ),
        ));
    };
    let folder = format!("models--{}", repo.replace('/', "--"));
    for cache in caches {
        let root = cache.join(&folder);
        match find_snapshot(&root, revision) {
            Ok(found) => return Ok(found),
            Err(why) => looked.push(format!("{} ({why})", root.display())),
        }
    }
    if caches.is_empty() {
        looked.push("no Hugging Face cache directory (HF_HUB_CACHE, HF_HOME and HOME are unset)".into());
    }
    Err(Error::file(
        spec,
        format!("checkpoint not found locally (no network is used); looked at: {}", looked.join("; ")),
    ))
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (empty if none of these can be formed).
pub fn hub_cache_dirs() -> Vec<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return vec![p];
    }
    if let Some(home) = var("HF_HOME") {
        return vec![home.join("hub")];
    }
    var("HOME").map(|h| vec![h.join(".cache").join("huggingface").join("hub")]).unwrap_or_default()
}

/// `org/name` or `org/name@rev` with non-empty parts and no further `/`.
fn parse_hub_id(spec: &str) -> Option<(&str, Option<&str>)> {
    let (repo, rev) = match spec.split_once('@') {
        Some((r, v)) if !v.is_empty() => (r, Some(v)),
        Some(_) => return None,
        None => (spec, None),
    };
    let (org, name) = repo.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    (ok(org) && ok(name)).then_some((repo, rev))
}

/// Pick the snapshot under a `models--org--name` folder: the named revision (a ref such as
/// `main` under `refs/`, or a commit hash), else the one `refs/main` names, else the only or the
/// most recently modified snapshot.
fn find_snapshot(root: &Path, revision: Option<&str>) -> std::result::Result<Resolved, String> {
    if !root.is_dir() {
        return Err("not found".into());
    }
    let snapshots = root.join("snapshots");
    let read_ref =
        |name: &str| std::fs::read_to_string(root.join("refs").join(name)).ok().map(|s| s.trim().to_string());
    if let Some(rev) = revision {
        let commit = read_ref(rev).unwrap_or_else(|| rev.to_string());
        let dir = snapshots.join(&commit);
        return if dir.is_dir() {
            Ok(Resolved { dir, origin: format!("Hugging Face cache, revision {commit}") })
        } else {
            Err(format!("revision {rev} has no snapshot {}", dir.display()))
        };
    }
    if let Some(commit) = read_ref("main") {
        let dir = snapshots.join(&commit);
        if dir.is_dir() {
            return Ok(Resolved { dir, origin: format!("Hugging Face cache, refs/main = {commit}") });
        }
    }
    let entries = std::fs::read_dir(&snapshots).map_err(|e| format!("cannot list {}: {e}", snapshots.display()))?;
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            (modified, e.file_name(), e.path())
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    match newest {
        Some((_, name, dir)) => {
            Ok(Resolved { dir, origin: format!("Hugging Face cache, newest snapshot {}", name.to_string_lossy()) })
        }
        None => Err(format!("no snapshot in {}", snapshots.display())),
    }
}

/// Read `dir/config.json` as JSON. Errors name the file (missing, not JSON, not an object).
pub fn read_config(dir: impl AsRef<Path>) -> Result<serde_json::Value> {
    let path = dir.as_ref().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::file(&path, "expected a JSON object at the top level"));
    }
    Ok(value)
}

/// The backbone families, by their `config.json` `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelType {
    /// `qwen2_5_vl`
    Qwen2_5Vl,
    /// `paligemma`
    PaliGemma,
    /// `kosmos-2`
    Kosmos2,
}

impl ModelType {
    pub const ALL: [ModelType; 3] = [ModelType::Qwen2_5Vl, ModelType::PaliGemma, ModelType::Kosmos2];

    /// The `model_type` string in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Qwen2_5Vl => "qwen2_5_vl",
            ModelType::PaliGemma => "paligemma",
            ModelType::Kosmos2 => "kosmos-2",
        }
    }

    /// The family of a parsed `config.json` (`path` is only used in errors). Errors name the
    /// file, the field, the value found and the accepted values.
    pub fn from_config(config: &serde_json::Value, path: &Path) -> Result<ModelType> {
        let accepted = || ModelType::ALL.map(|m| m.as_str()).join(", ");
        let value = config.get("model_type").ok_or_else(|| {
            Error::file(path, format!("field `model_type` is missing; accepted values: {}", accepted()))
        })?;
        let s = value.as_str().unwrap_or_default();
        ModelType::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            Error::file(path, format!("field `model_type`: unknown value {value}; accepted values: {}", accepted()))
        })
    }
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a checkpoint's tensors are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightFiles {
    /// `model.safetensors`.
    Single(PathBuf),
    /// Shards listed by `model.safetensors.index.json`: the index, each shard once (in the
    /// index's order of first appearance), and the shard each tensor is in.
    Sharded { index: PathBuf, shards: Vec<PathBuf>, weight_map: BTreeMap<String, PathBuf> },
}

impl WeightFiles {
    /// Every file holding tensors.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            WeightFiles::Single(p) => vec![p.as_path()],
            WeightFiles::Sharded { shards, .. } => shards.iter().map(PathBuf::as_path).collect(),
        }
    }
}

/// Find the weights in `dir`: the index `model.safetensors.index.json` when present (every shard
/// it names must exist), else `model.safetensors`. Errors name the directory or the index and
/// the missing shard.
pub fn weight_files(dir: impl AsRef<Path>) -> Result<WeightFiles> {
    let dir = dir.as_ref();
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(format!("reading {}", index.display()), e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&index, format!("invalid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index, "field `weight_map` is missing or not an object"))?;
        let mut shards: Vec<PathBuf> = Vec::new();
        let mut weight_map = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().filter(|f| !f.is_empty()).ok_or_else(|| {
                Error::file(&index, format!("field `weight_map`.`{name}`: expected a file name, found {file}"))
            })?;
            let path = dir.join(file);
            if !shards.contains(&path) {
                if !path.is_file() {
                    return Err(Error::file(
                        &index,
                        format!("shard {} (holding tensor `{name}` and maybe others) does not exist", path.display()),
                    ));
                }
                shards.push(path.clone());
            }
            weight_map.insert(name.clone(), path);
        }
        return Ok(WeightFiles::Sharded { index, shards, weight_map });
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(WeightFiles::Single(single));
    }
    Err(Error::file(dir, format!("no weights: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} is there")))
}

/// How many names a list in an error message shows.
const SHOW: usize = 5;

fn name_list<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(SHOW).map(|s| s.as_ref()).collect();
    let more = names.len().saturating_sub(SHOW);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Load a checkpoint's tensors into a [`ParamStore`], in the order of `expected`.
///
/// - `expected`: `(name, shape)` of every parameter the model needs.
/// - `rename`: maps an on-disk tensor name to its expected name; `None` skips the tensor (buffers
///   the model recomputes, a head it does not use, ...).
/// - `dtype`: float tensors are converted to it on load (integer tensors keep their dtype).
/// - `tied`: `(absent, source)` expected-name pairs: when `absent` is not in the files, it is
///   filled with a copy of `source` (e.g. `("lm_head.weight", "model.embed_tokens.weight")`). The
///   copy is a separate parameter; a family that trains tied weights as one parameter should
///   leave `absent` out of `expected` and use `source` for both.
///
/// Errors (each naming the file and tensor): an expected tensor missing (up to a few names
/// listed), a shape other than expected (both shapes given), a renamed tensor that is not
/// expected (up to a few listed), two on-disk tensors renamed to the same name, a tensor listed
/// in a shard index but absent from its shard, and every error of opening a safetensors file
/// (truncated, corrupt header, ...).
///
/// ```
/// # use vlm4vla_engine::{io, DType, Device, Tensor};
/// # use vlm4vla_models::common::checkpoint::load_params;
/// # let dir = std::env::temp_dir().join(format!("vlm4vla-doc-load-params-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let w = Tensor::ones(&[4, 2], DType::F32, Device::Cpu).unwrap();
/// io::save(dir.join("model.safetensors"), &[("model.embed_tokens.weight", &w)], None).unwrap();
/// let expected = vec![("embed.weight".to_string(), vec![4, 2]), ("lm_head.weight".to_string(), vec![4, 2])];
/// let rename = |n: &str| n.strip_prefix("model.embed_tokens.").map(|r| format!("embed.{r}"));
/// let ps = load_params(&dir, &expected, rename, DType::F32, &[("lm_head.weight", "embed.weight")]).unwrap();
/// assert_eq!(ps.names(), ["embed.weight", "lm_head.weight"]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn load_params(
    dir: impl AsRef<Path>,
    expected: &[(String, Vec<usize>)],
    rename: impl Fn(&str) -> Option<String>,
    dtype: DType,
    tied: &[(&str, &str)],
) -> Result<ParamStore> {
    let dir = dir.as_ref();
    let weights = weight_files(dir)?;
    let files: Vec<SafeTensorsFile> = weights.files().into_iter().map(SafeTensorsFile::open).collect::<Result<_>>()?;

    if let WeightFiles::Sharded { index, weight_map, .. } = &weights {
        for (name, shard) in weight_map {
            if !files.iter().any(|f| f.path() == shard && f.contains(name)) {
                return Err(Error::tensor(
                    index,
                    name,
                    format!("listed in `weight_map` but not present in shard {}", shard.display()),
                ));
            }
        }
    }

    let expected_shape: HashMap<&str, &[usize]> = expected.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    if expected_shape.len() != expected.len() {
        let mut seen = std::collections::HashSet::new();
        let dup = expected.iter().find(|(n, _)| !seen.insert(n.as_str())).map(|(n, _)| n.as_str()).unwrap_or("");
        return Err(Error::tensor(dir, dup, "appears twice in the expected tensors"));
    }

    // expected name -> (file index, on-disk name)
    let mut found: HashMap<String, (usize, String)> = HashMap::new();
    let mut unexpected: Vec<String> = Vec::new();
    for (fi, file) in files.iter().enumerate() {
        for disk_name in file.names() {
            let Some(name) = rename(disk_name) else { continue };
            let Some(&shape) = expected_shape.get(name.as_str()) else {
                unexpected.push(if name == disk_name { name } else { format!("{disk_name} (as {name})") });
                continue;
            };
            let stored = file.shape(disk_name)?;
            if stored != shape {
                return Err(Error::tensor(
                    file.path(),
                    disk_name,
                    if name == disk_name {
                        format!("expected shape {shape:?}, found {stored:?}")
                    } else {
                        format!("expected shape {shape:?} (as `{name}`), found {stored:?}")
                    },
                ));
            }
            if let Some((other_fi, other)) = found.insert(name.clone(), (fi, disk_name.to_string())) {
                return Err(Error::tensor(
                    file.path(),
                    disk_name,
                    format!(
                        "maps to `{name}`, which tensor `{other}` in {} already provides",
                        files[other_fi].path().display()
                    ),
                ));
            }
        }
    }
    let where_ = || match &weights {
        WeightFiles::Single(p) => p.display().to_string(),
        WeightFiles::Sharded { index, .. } => index.display().to_string(),
    };
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(Error::tensor(
            where_(),
            &unexpected[0],
            format!("unexpected tensor{}: {}", if unexpected.len() == 1 { "" } else { "s" }, name_list(&unexpected)),
        ));
    }

    let tied_source: HashMap<&str, &str> = tied.iter().copied().collect();
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !found.contains_key(*n) && !tied_source.get(n).is_some_and(|s| found.contains_key(*s)))
        .collect();
    if let Some(first) = missing.first() {
        let with_shapes: Vec<String> =
            missing.iter().map(|n| format!("{n} {:?}", expected_shape.get(n).copied().unwrap_or_default())).collect();
        return Err(Error::tensor(
            where_(),
            *first,
            format!("missing from the checkpoint ({} missing: {})", missing.len(), name_list(&with_shapes)),
        ));
    }

    let mut store = ParamStore::new();
    for (name, shape) in expected {
        let (fi, disk_name) = match found.get(name) {
            Some(hit) => hit,
            None => {
                let source = tied_source.get(name.as_str()).copied().unwrap_or_default();
                let hit = &found[source];
                let source_shape = expected_shape.get(source).copied().unwrap_or_default();
                if source_shape != shape.as_slice() {
                    return Err(Error::tensor(
                        files[hit.0].path(),
                        name,
                        format!("tied to `{source}` of shape {source_shape:?}, but expected shape {shape:?}"),
                    ));
                }
                hit
            }
        };
        let file = &files[*fi];
        let want = if file.dtype(disk_name)?.is_float() { Some(dtype) } else { None };
        let t = file.get(disk_name, want)?;
        store.insert(name.clone(), &t)?;
    }
    Ok(store)
}

/// Every tensor of the checkpoint in `dir` as `(name, shape, dtype)`, sorted by name (shards
/// merged): for writing a family's `expected` list or a `rename` map against a real checkpoint.
pub fn list_tensors(dir: impl AsRef<Path>) -> Result<Vec<(String, Vec<usize>, DType)>> {
    let mut out = Vec::new();
    for path in weight_files(dir)?.files() {
        let file = SafeTensorsFile::open(path)?;
        for name in file.names() {
            out.push((name.to_string(), file.shape(name)?.to_vec(), file.dtype(name)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Total number of elements of `(name, shape)` tensors.
pub fn param_count(tensors: &[(String, Vec<usize>)]) -> usize {
    tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// Element counts summed per group, `group` mapping a tensor name to its group.
///
/// ```
/// use vlm4vla_models::common::checkpoint::param_count_by_group;
/// let t = vec![("visual.a".to_string(), vec![2, 3]), ("model.b".to_string(), vec![4]), ("visual.c".to_string(), vec![])];
/// let by = param_count_by_group(&t, |n| n.split('.').next().unwrap_or("").to_string());
/// assert_eq!(by["visual"], 7);
/// assert_eq!(by["model"], 4);
/// ```
pub fn param_count_by_group<G: Ord>(tensors: &[(String, Vec<usize>)], group: impl Fn(&str) -> G) -> BTreeMap<G, usize> {
    let mut out = BTreeMap::new();
    for (name, shape) in tensors {
        *out.entry(group(name)).or_insert(0) += shape.iter().product::<usize>();
    }
    out
}

/// Every tensor of the checkpoint at `dir_or_id` (a directory, or a hub id in the local cache, see
/// [`resolve`]), with its `config.json` parsed by `config`: the one loading path behind the
/// families' `load(dir_or_id, dtype)`.
///
/// `stored(config)` lists the tensors a checkpoint of that config may hold and their shapes (the
/// family's `param_shapes`, plus e.g. a tied `lm_head` copy), under the names `canonical` maps
/// on-disk names to. A tensor outside that list is an error naming the file, the tensor and
/// `family`; shapes are checked before any data is read; tensors are converted to `dtype` when
/// given. The store holds the tensors under their on-disk names, file by file and each file's by
/// name; the family's `from_params` renames, orders and validates them.
pub(crate) fn read_checkpoint<C>(
    dir_or_id: &Path,
    dtype: Option<DType>,
    family: &str,
    config: impl FnOnce(&Path) -> Result<C>,
    stored: impl FnOnce(&C) -> Vec<(String, Vec<usize>)>,
    canonical: impl Fn(&str) -> String,
) -> Result<(C, ParamStore)> {
    let dir = resolve(&dir_or_id.to_string_lossy())?.dir;
    let cfg = config(&dir.join(CONFIG_FILE))?;
    let shapes: HashMap<String, Vec<usize>> = stored(&cfg).into_iter().collect();
    let mut store = ParamStore::new();
    for file in checkpoint_files(&dir)? {
        let st = SafeTensorsFile::open(&file)?;
        for name in st.names() {
            let Some(shape) = shapes.get(&canonical(name)) else {
                return Err(Error::tensor(
                    &file,
                    name,
                    format!("unexpected: not a parameter of the {family} in {}", dir.display()),
                ));
            };
            if store.contains(name) {
                return Err(Error::tensor(&file, name, "appears in more than one shard"));
            }
            store.insert(name, &st.get_as(name, shape, dtype)?)?;
        }
    }
    Ok((cfg, store))
}

/// The safetensors files of a checkpoint directory (single file or shards), via the shared loader.
pub(crate) fn checkpoint_files(dir: &std::path::Path) -> vlm4vla_engine::Result<Vec<std::path::PathBuf>> {
    Ok(weight_files(dir)?.files().into_iter().map(std::path::Path::to_path_buf).collect())
}
