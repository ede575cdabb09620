//! The LeRobot v3.0 dataset layout and [`LeRobotDataset`], its reader.
//!
//! ```text
//! meta/info.json                              codebase_version "v3.0", fps, features, path templates, totals
//! meta/stats.json                             per-feature min/max/mean/std/count/q01..q99
//! meta/tasks.parquet                          task_index + task (the pandas index)
//! meta/episodes/chunk-000/file-000.parquet    one row per episode: tasks, length, frame range, data file, stats/...
//! data/chunk-000/file-000.parquet             one row per frame: observation.image {bytes, path}, observation.state,
//!                                             action, timestamp, frame_index, episode_index, index, task_index
//!                                             (and, when recorded, action_plan, action_plan_steps)
//! videos/{key}/chunk-000/file-000.mp4         video features (`dtype: "video"`): a camera's frames of one or more
//!                                             episodes; the episode rows say which file and from what time
//!                                             (videos/{key}/chunk_index, file_index, from_timestamp, to_timestamp)
//! ```
//! Mirrors `lerobot/datasets/utils.py`, `dataset_metadata.py` and `dataset_writer.py` of
//! huggingface/lerobot (codebase version v3.0).

use super::frames::FrameStore;
use super::parquet_io::{
    column, f32_column, f32_rows, f64_column, i64_column, image_bytes, read_parquet, require_columns, stream_parquet,
    string_column, string_list_column,
};
use super::stats::{DatasetStats, FeatureStats};
use super::video::{EpisodeVideo, VideoFrames, ENABLE_VIDEO};
use super::{decode_frame, frame_size, RgbImage, Sample};
use crate::engine::{Error, Result};
use crate::models::vla::ActionStats;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The dataset format version this module reads and writes.
pub const CODEBASE_VERSION: &str = "v3.0";
/// The image feature our writer records (a reader falls back to the first `image` feature).
pub const IMAGE_KEY: &str = "observation.image";
/// Optional feature: per frame, the next `steps` actions of the unperturbed expert from that
/// frame's state (`steps × action_dim` values, padded by repeating the last real action). With
/// perturbed (DART) demonstrations the recorded next actions answer the perturbations that
/// followed; the plan is what the expert meant to do from here, so action chunks come from it.
pub const PLAN_KEY: &str = "action_plan";
/// Optional feature beside [`PLAN_KEY`]: how many of the plan's actions are real (1 ..= steps).
pub const PLAN_STEPS_KEY: &str = "action_plan_steps";
pub(crate) const DATA_PATH_TEMPLATE: &str = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
const EPISODES_PATH_TEMPLATE: &str = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
const STATE_KEY: &str = "observation.state";
const ACTION_KEY: &str = "action";
const FRAME_COLUMNS: [&str; 5] = ["timestamp", "frame_index", "episode_index", "index", "task_index"];

pub(crate) fn data_path(chunk: usize, file: usize) -> String {
    fill_template(DATA_PATH_TEMPLATE, chunk, file)
}

pub(crate) fn episodes_path(chunk: usize, file: usize) -> String {
    fill_template(EPISODES_PATH_TEMPLATE, chunk, file)
}

/// Fill `{chunk_index}` / `{file_index}` placeholders, with Python's `:03d`-style zero padding.
fn fill_template(template: &str, chunk: usize, file: usize) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let spec = &rest[open + 1..open + close];
        let (name, fmt) = spec.split_once(':').unwrap_or((spec, ""));
        let value = match name {
            "chunk_index" => Some(chunk),
            "file_index" => Some(file),
            _ => None,
        };
        match value {
            Some(v) => {
                let width: usize = fmt.trim_start_matches('0').trim_end_matches('d').parse().unwrap_or(0);
                out.push_str(&format!("{v:0width$}"));
            }
            None => out.push_str(&rest[open..open + close + 1]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// One episode: a contiguous run of frames `from .. to` with its instruction(s).
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    pub index: usize,
    pub tasks: Vec<String>,
    pub length: usize,
    /// Global index of the first frame.
    pub from: usize,
    /// One past the global index of the last frame.
    pub to: usize,
    /// The data file holding the episode's frames.
    pub data_chunk: usize,
    pub data_file: usize,
}

/// A LeRobot v3.0 dataset loaded into memory (encoded frames, states, actions, indices), checked
/// against its `meta/info.json`.
///
/// Cameras are image features (PNG or JPEG bytes embedded in the data files, LeRobot's `dtype:
/// "image"`) or, with the cargo feature `video`, video features (`dtype: "video"`: mp4 files, AV1
/// or H.264 or whatever the system's FFmpeg decodes). Encoded frames stay encoded and video
/// frames stay in their files until [`sample`](Self::sample) (or the [`Loader`](super::Loader))
/// decodes them.
#[derive(Debug)]
pub struct LeRobotDataset {
    root: PathBuf,
    info: Value,
    fps: f64,
    robot_type: Option<String>,
    /// The image features read, in the order asked for.
    cameras: Vec<Camera>,
    state_key: Option<String>,
    action_key: String,
    state_dim: usize,
    action_dim: usize,
    tasks: Vec<String>,
    episodes: Vec<Episode>,
    stats: DatasetStats,
    states: Vec<f32>,
    actions: Vec<f32>,
    /// Steps of the `action_plan` feature (0: the dataset has none).
    plan_steps: usize,
    plans: Vec<f32>,
    plan_lens: Vec<usize>,
    timestamps: Vec<f32>,
    frame_index: Vec<i64>,
    episode_of: Vec<u32>,
    task_index: Vec<u32>,
}

/// One camera: an image feature's encoded frames, or where a video feature's frames are.
#[derive(Debug)]
struct Camera {
    key: String,
    height: usize,
    width: usize,
    frames: Frames,
}

#[derive(Debug)]
enum Frames {
    /// PNG or JPEG bytes, back to back.
    Encoded(FrameStore),
    /// Frames in mp4 files, decoded on demand.
    Video(VideoFrames),
}

impl Camera {
    /// Frame `i`'s encoded bytes (None for a video camera).
    fn bytes(&self, i: usize) -> Option<&[u8]> {
        match &self.frames {
            Frames::Encoded(store) => store.get(i),
            Frames::Video(_) => None,
        }
    }

    fn video(&self) -> Option<&VideoFrames> {
        match &self.frames {
            Frames::Video(v) => Some(v),
            Frames::Encoded(_) => None,
        }
    }
}

/// Which features [`LeRobotDataset::open_with`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetKeys {
    /// Camera features (`image` or `video`), in order; empty: `observation.image`, else the only
    /// camera feature (an error naming them when there are several).
    pub cameras: Vec<String>,
    /// The state feature (`observation.state`); None reads no state (width 0).
    pub state: Option<String>,
    /// The action feature (`action`).
    pub action: String,
    /// Bytes of encoded frames per camera kept on the heap; beyond it the frames go to an
    /// unlinked, memory-mapped temporary file, so datasets larger than memory open and stream.
    pub memory_limit: usize,
}

impl Default for DatasetKeys {
    fn default() -> Self {
        DatasetKeys {
            cameras: Vec::new(),
            state: Some(STATE_KEY.into()),
            action: ACTION_KEY.into(),
            memory_limit: super::frames::DEFAULT_MEMORY_LIMIT,
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("malformed JSON: {e}")))
}

/// `[n]` from a feature's shape, or the full shape list.
fn shape_of(info_path: &Path, features: &serde_json::Map<String, Value>, key: &str) -> Result<Vec<usize>> {
    let f = features.get(key).ok_or_else(|| Error::file(info_path, format!("features: missing feature `{key}`")))?;
    let shape = f
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::file(info_path, format!("feature `{key}`: missing `shape` list")))?;
    shape
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::file(info_path, format!("feature `{key}`: shape {shape:?} is not a list of sizes")))
        .and_then(|dims| match dims.iter().find(|&&d| d > MAX_FEATURE_SIZE) {
            Some(d) => Err(Error::file(
                info_path,
                format!("feature `{key}`: shape {shape:?}: {d} is beyond the supported maximum {MAX_FEATURE_SIZE}"),
            )),
            None => Ok(dims),
        })
}

/// The largest size of one dimension of a feature's shape (an image side, a vector's width).
pub const MAX_FEATURE_SIZE: usize = 8192;

fn dtype_of<'a>(features: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    features.get(key).and_then(|f| f.get("dtype")).and_then(Value::as_str)
}

impl LeRobotDataset {
    /// Open and validate the dataset at `dir`. Errors name the file and the column or feature at
    /// fault: a missing directory or meta file, malformed `info.json`, a missing column, frames
    /// whose image size or action length disagrees with `info.json`, inconsistent indices.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, &DatasetKeys::default())
    }

    /// [`open`](Self::open) reading the features `keys` names: any number of cameras by key, the
    /// state and action features by key. Errors name the key and list the dataset's features of
    /// that kind.
    pub fn open_with(dir: impl AsRef<Path>, keys: &DatasetKeys) -> Result<Self> {
        Self::open_impl(dir.as_ref(), keys, true)
    }

    /// The dataset's metadata only (`info.json`, statistics, tasks, episodes), validated as
    /// [`open_with`](Self::open_with) does, without reading a data file: what a plan needs,
    /// whatever the dataset's size. No frame is read: [`len`](Self::len) is 0.
    pub fn open_metadata(dir: impl AsRef<Path>, keys: &DatasetKeys) -> Result<Self> {
        Self::open_impl(dir.as_ref(), keys, false)
    }

    fn open_impl(dir: &Path, keys: &DatasetKeys, frames: bool) -> Result<Self> {
        let root = dir.to_path_buf();
        if !root.is_dir() {
            return Err(Error::file(&root, "no such dataset directory"));
        }
        // meta/info.json
        let info_path = root.join("meta/info.json");
        let info = read_json(&info_path)?;
        let bad_info = |msg: String| Error::file(&info_path, msg);
        let obj = info.as_object().ok_or_else(|| bad_info("not a JSON object".into()))?;
        let version = obj
            .get("codebase_version")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_info("missing string `codebase_version`".into()))?;
        if !version.starts_with("v3.") {
            return Err(bad_info(format!("codebase_version {version:?}: only LeRobot v3.x datasets are supported")));
        }
        let fps = obj
            .get("fps")
            .and_then(Value::as_f64)
            .filter(|f| *f > 0.0)
            .ok_or_else(|| bad_info("missing positive number `fps`".into()))?;
        let total = |key: &str| -> Result<usize> {
            obj.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad_info(format!("missing integer `{key}`")))
        };
        let (total_episodes, total_frames, total_tasks) =
            (total("total_episodes")?, total("total_frames")?, total("total_tasks")?);
        let data_template = obj
            .get("data_path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_info("missing string `data_path`".into()))?
            .to_string();
        let robot_type = obj.get("robot_type").and_then(Value::as_str).map(str::to_string);
        let features = obj
            .get("features")
            .and_then(Value::as_object)
            .ok_or_else(|| bad_info("missing object `features`".into()))?;
        let is_camera = |k: &str| matches!(dtype_of(features, k), Some("image" | "video"));
        let mut camera_features: Vec<&String> = features.keys().filter(|k| is_camera(k)).collect();
        camera_features.sort();
        let listed = |v: &[&String]| v.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let camera_keys: Vec<String> = if !keys.cameras.is_empty() {
            keys.cameras.clone()
        } else if features.contains_key(IMAGE_KEY) {
            vec![IMAGE_KEY.to_string()]
        } else {
            match camera_features.as_slice() {
                [one] => vec![one.to_string()],
                [] => {
                    return Err(bad_info(format!(
                        "features: missing feature `{IMAGE_KEY}` (no feature has dtype \"image\" or \"video\")"
                    )))
                }
                many => {
                    return Err(bad_info(format!(
                        "the dataset has several camera features ({}); choose the cameras by key",
                        listed(many)
                    )))
                }
            }
        };
        let mut cameras = Vec::with_capacity(camera_keys.len());
        for key in camera_keys {
            let frames = match dtype_of(features, &key) {
                Some("image") => Frames::Encoded(FrameStore::new(keys.memory_limit)),
                Some("video") if cfg!(feature = "video") => Frames::Video(VideoFrames::default()),
                Some("video") => {
                    return Err(bad_info(format!(
                        "feature `{key}` is stored as video (mp4), which this build of vlm4vla does not decode: \
                         {ENABLE_VIDEO}"
                    )))
                }
                Some(other) => {
                    return Err(bad_info(format!("feature `{key}`: dtype {other:?} is not \"image\" or \"video\"")))
                }
                None => {
                    return Err(bad_info(format!(
                        "no feature `{key}` (camera features: {})",
                        if camera_features.is_empty() { "none".to_string() } else { listed(&camera_features) }
                    )))
                }
            };
            let (height, width) = match shape_of(&info_path, features, &key)?.as_slice() {
                [h, w, 3] => (*h, *w),
                [3, h, w] => (*h, *w),
                s => return Err(bad_info(format!("feature `{key}`: shape {s:?} is not [height, width, 3]"))),
            };
            cameras.push(Camera { key, height, width, frames });
        }
        let vec_dim = |key: &str| -> Result<usize> {
            match shape_of(&info_path, features, key)?.as_slice() {
                [n] => Ok(*n),
                s => Err(bad_info(format!("feature `{key}`: shape {s:?} is not [n]"))),
            }
        };
        let state_dim = match &keys.state {
            Some(k) => vec_dim(k)?,
            None => 0,
        };
        let action_dim = vec_dim(&keys.action)?;
        let plan_steps = match (features.contains_key(PLAN_KEY), features.contains_key(PLAN_STEPS_KEY)) {
            (false, false) => 0,
            (true, true) => {
                let n = vec_dim(PLAN_KEY)?;
                if action_dim == 0 || n == 0 || !n.is_multiple_of(action_dim) || vec_dim(PLAN_STEPS_KEY)? != 1 {
                    return Err(bad_info(format!(
                        "feature `{PLAN_KEY}`: shape [{n}] is not a whole number of {action_dim}-D actions, or \
                         `{PLAN_STEPS_KEY}` is not shape [1]"
                    )));
                }
                n / action_dim
            }
            _ => return Err(bad_info(format!("features `{PLAN_KEY}` and `{PLAN_STEPS_KEY}` come together"))),
        };

        // meta/stats.json
        let stats_path = root.join("meta/stats.json");
        let stats_json = read_json(&stats_path)?;
        let stats_obj = stats_json.as_object().ok_or_else(|| Error::file(&stats_path, "not a JSON object"))?;
        let mut stats = DatasetStats::new();
        for (k, v) in stats_obj {
            stats.insert(k.clone(), FeatureStats::from_json(v, &stats_path, k)?);
        }
        let tasks = read_tasks(&root.join("meta/tasks.parquet"), total_tasks)?;
        let video_keys: Vec<&str> = cameras.iter().filter(|c| c.video().is_some()).map(|c| c.key.as_str()).collect();
        let (episodes, spans) = read_episodes(&root, total_episodes, &video_keys)?;
        if !video_keys.is_empty() {
            let template = obj
                .get("video_path")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_info("missing string `video_path` (the dataset has video features)".into()))?;
            for (cam, spans) in cameras.iter_mut().filter(|c| c.video().is_some()).zip(spans) {
                let key = cam.key.clone();
                let path = |(chunk, file): (usize, usize)| {
                    root.join(fill_template(&template.replace("{video_key}", &key), chunk, file))
                };
                let video = video_frames(spans, path);
                // A missing file is found now, not at the first batch that reads it (a
                // metadata-only open reads no frames and needs no files).
                if frames {
                    if let Some(missing) = video.files.iter().find(|f| !f.is_file()) {
                        return Err(Error::file(missing, format!("camera `{key}`: no such video file")));
                    }
                }
                cam.frames = Frames::Video(video);
            }
        }

        let mut ds = LeRobotDataset {
            root: root.clone(),
            info: info.clone(),
            fps,
            robot_type,
            cameras,
            state_key: keys.state.clone(),
            action_key: keys.action.clone(),
            state_dim,
            action_dim,
            tasks,
            episodes,
            stats,
            states: Vec::new(),
            actions: Vec::new(),
            plan_steps,
            plans: Vec::new(),
            plan_lens: Vec::new(),
            timestamps: Vec::new(),
            frame_index: Vec::new(),
            episode_of: Vec::new(),
            task_index: Vec::new(),
        };
        if frames {
            let mut files: Vec<(usize, usize)> = ds.episodes.iter().map(|e| (e.data_chunk, e.data_file)).collect();
            files.sort_unstable();
            files.dedup();
            for (c, f) in files {
                ds.read_data_file(&root.join(fill_template(&data_template, c, f)))?;
            }
            for cam in &mut ds.cameras {
                if let Frames::Encoded(store) = &mut cam.frames {
                    store.finish()?;
                }
            }
            ds.check_frames(total_frames)?;
        }
        let stats = &ds.stats;
        let stat_keys =
            std::iter::once((keys.action.as_str(), action_dim)).chain(keys.state.as_deref().map(|k| (k, state_dim)));
        for (key, dim) in stat_keys {
            match stats.get(key) {
                None => return Err(Error::file(&stats_path, format!("missing statistics for feature `{key}`"))),
                Some(s) if s.min.len() != dim => {
                    return Err(Error::file(
                        &stats_path,
                        format!("feature `{key}`: {} values per statistic, info.json shape is [{dim}]", s.min.len()),
                    ))
                }
                _ => {}
            }
        }
        Ok(ds)
    }

    fn read_data_file(&mut self, path: &Path) -> Result<()> {
        let (schema, batches) = stream_parquet(path, 256)?;
        let camera_keys: Vec<String> =
            self.cameras.iter().filter(|c| c.video().is_none()).map(|c| c.key.clone()).collect();
        let (state_key, action_key) = (self.state_key.clone(), self.action_key.clone());
        let mut names: Vec<&str> = camera_keys.iter().map(String::as_str).collect();
        names.extend(state_key.as_deref());
        names.push(&action_key);
        if self.plan_steps > 0 {
            names.extend([PLAN_KEY, PLAN_STEPS_KEY]);
        }
        names.extend(FRAME_COLUMNS);
        require_columns(path, &schema, &names)?;
        for b in batches {
            let b = &b.map_err(|e| Error::file(path, format!("reading parquet: {e}")))?;
            let first = self.timestamps.len();
            for cam in &mut self.cameras {
                let (key, (width, height)) = (cam.key.clone(), (cam.width, cam.height));
                let Frames::Encoded(store) = &mut cam.frames else { continue };
                image_bytes(path, &key, column(path, b, &key)?, |row, bytes| {
                    let row = first + row;
                    let (w, h) = frame_size(bytes)
                        .map_err(|m| Error::file(path, format!("column `{key}`: frame {row}: {m}")))?;
                    if (w, h) != (width, height) {
                        return Err(Error::file(
                            path,
                            format!(
                                "column `{key}`: frame {row} is {w}x{h} but meta/info.json gives {width}x{height} (width x height)"
                            ),
                        ));
                    }
                    store.push(bytes)
                })?;
            }
            if let Some(k) = &state_key {
                let rows = f32_rows(path, k, column(path, b, k)?, self.state_dim)?;
                check_finite(path, k, &rows, self.state_dim, first)?;
                self.states.extend(rows);
            }
            let rows = f32_rows(path, &action_key, column(path, b, &action_key)?, self.action_dim)?;
            check_finite(path, &action_key, &rows, self.action_dim, first)?;
            self.actions.extend(rows);
            if self.plan_steps > 0 {
                let width = self.plan_steps * self.action_dim;
                self.plans.extend(f32_rows(path, PLAN_KEY, column(path, b, PLAN_KEY)?, width)?);
                for (row, len) in
                    f32_rows(path, PLAN_STEPS_KEY, column(path, b, PLAN_STEPS_KEY)?, 1)?.into_iter().enumerate()
                {
                    if !(len >= 1.0 && len <= self.plan_steps as f32 && len.fract() == 0.0) {
                        return Err(Error::file(
                            path,
                            format!(
                                "column `{PLAN_STEPS_KEY}`: frame {} says {len}, not a whole number in 1..={}",
                                first + row,
                                self.plan_steps
                            ),
                        ));
                    }
                    self.plan_lens.push(len as usize);
                }
            }
            self.timestamps.extend(f32_column(path, "timestamp", column(path, b, "timestamp")?)?);
            self.frame_index.extend(i64_column(path, "frame_index", column(path, b, "frame_index")?)?);
            let index = i64_column(path, "index", column(path, b, "index")?)?;
            let episode = i64_column(path, "episode_index", column(path, b, "episode_index")?)?;
            let task = i64_column(path, "task_index", column(path, b, "task_index")?)?;
            for (row, ((&i, &e), &t)) in index.iter().zip(&episode).zip(&task).enumerate() {
                let here = first + row;
                if i != here as i64 {
                    return Err(Error::file(
                        path,
                        format!(
                            "column `index`: row {row} has index {i}, expected {here} (frames must be stored in order)"
                        ),
                    ));
                }
                let ep = self.episodes.get(e.max(0) as usize).filter(|ep| e >= 0 && (ep.from..ep.to).contains(&here));
                if ep.is_none() {
                    return Err(Error::file(
                        path,
                        format!(
                            "column `episode_index`: frame {here} says episode {e}, which does not hold that frame"
                        ),
                    ));
                }
                if t < 0 || t as usize >= self.tasks.len() {
                    return Err(Error::file(
                        path,
                        format!(
                            "column `task_index`: frame {here} has task {t}, but there are {} tasks",
                            self.tasks.len()
                        ),
                    ));
                }
                self.episode_of.push(e as u32);
                self.task_index.push(t as u32);
            }
        }
        Ok(())
    }

    fn check_frames(&self, total_frames: usize) -> Result<()> {
        let n = self.len();
        for c in &self.cameras {
            if let Frames::Encoded(store) = &c.frames {
                if store.len() != n {
                    return Err(Error::file(
                        self.root.join("data"),
                        format!("column `{}` holds {} frames, the data files {n}", c.key, store.len()),
                    ));
                }
            }
        }
        let last = self.episodes.last().map(|e| e.to).unwrap_or(0);
        if n != total_frames || n != last {
            return Err(Error::file(
                self.root.join("meta/info.json"),
                format!("total_frames is {total_frames}, the episodes cover {last} frames and the data files hold {n}"),
            ));
        }
        Ok(())
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `meta/info.json`.
    pub fn info(&self) -> &Value {
        &self.info
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    pub fn robot_type(&self) -> Option<&str> {
        self.robot_type.as_deref()
    }

    /// The first image feature read (`observation.image` unless the dataset has none).
    pub fn image_key(&self) -> &str {
        &self.cameras[0].key
    }

    /// `(height, width)` of every frame of the first camera.
    pub fn image_size(&self) -> (usize, usize) {
        self.camera_size(0)
    }

    /// The image features read, in order.
    pub fn camera_keys(&self) -> Vec<&str> {
        self.cameras.iter().map(|c| c.key.as_str()).collect()
    }

    /// `(height, width)` of camera `c`'s frames.
    pub fn camera_size(&self, c: usize) -> (usize, usize) {
        self.cameras.get(c).map_or((0, 0), |c| (c.height, c.width))
    }

    /// Whether some camera's frames live in a memory-mapped spill file (the dataset's encoded
    /// frames exceeded [`DatasetKeys::memory_limit`]) rather than on the heap.
    pub fn frames_mapped(&self) -> bool {
        self.cameras.iter().any(|c| matches!(&c.frames, Frames::Encoded(s) if s.is_mapped()))
    }

    /// Bytes of encoded frames held, over every camera read (video cameras hold none: their
    /// frames stay in their files).
    pub fn frame_bytes(&self) -> usize {
        self.cameras.iter().map(|c| if let Frames::Encoded(s) = &c.frames { s.bytes() } else { 0 }).sum()
    }

    /// Whether camera `c` is a video feature.
    pub fn is_video(&self, c: usize) -> bool {
        self.cameras.get(c).is_some_and(|c| c.video().is_some())
    }

    /// The state feature read, if any.
    pub fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    pub fn action_key(&self) -> &str {
        &self.action_key
    }

    pub fn state_dim(&self) -> usize {
        self.state_dim
    }

    pub fn action_dim(&self) -> usize {
        self.action_dim
    }

    /// Task strings by task index.
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    pub fn episodes(&self) -> &[Episode] {
        &self.episodes
    }

    /// `meta/stats.json`, by feature name.
    pub fn stats(&self) -> &DatasetStats {
        &self.stats
    }

    /// The `action` statistics in the form [`ActionNormalizer::from_stats`] takes.
    ///
    /// [`ActionNormalizer::from_stats`]: crate::models::vla::ActionNormalizer::from_stats
    pub fn action_stats(&self) -> ActionStats {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let s = &self.stats[&self.action_key];
        ActionStats {
            min: f(&s.min),
            max: f(&s.max),
            mean: f(&s.mean),
            std: f(&s.std),
            q01: f(s.q01()),
            q99: f(s.q99()),
        }
    }

    /// The episode holding frame `i`.
    pub fn episode_of(&self, i: usize) -> Option<&Episode> {
        self.episode_of.get(i).map(|&e| &self.episodes[e as usize])
    }

    /// The encoded PNG of frame `i` of the first camera (None for a video camera).
    pub fn png(&self, i: usize) -> Option<&[u8]> {
        self.cameras[0].bytes(i)
    }

    pub fn state(&self, i: usize) -> Option<&[f32]> {
        (i < self.len()).then(|| &self.states[i * self.state_dim..(i + 1) * self.state_dim])
    }

    pub fn action(&self, i: usize) -> Option<&[f32]> {
        (i < self.len()).then(|| &self.actions[i * self.action_dim..(i + 1) * self.action_dim])
    }

    pub fn timestamp(&self, i: usize) -> Option<f32> {
        self.timestamps.get(i).copied()
    }

    /// Position of frame `i` within its episode (the `frame_index` column).
    pub fn frame_index(&self, i: usize) -> Option<usize> {
        self.frame_index.get(i).map(|&f| f as usize)
    }

    pub fn task_index(&self, i: usize) -> Option<usize> {
        self.task_index.get(i).map(|&t| t as usize)
    }

    /// The instruction of frame `i`.
    pub fn instruction(&self, i: usize) -> Option<&str> {
        self.task_index.get(i).map(|&t| self.tasks[t as usize].as_str())
    }

    fn check_index(&self, op: &'static str, i: usize) -> Result<()> {
        if i >= self.len() {
            return Err(Error::Invalid {
                op,
                msg: format!("frame {i} out of range for a dataset of {} frames", self.len()),
            });
        }
        Ok(())
    }

    /// Steps of the dataset's `action_plan` feature (0: none recorded).
    pub fn plan_steps(&self) -> usize {
        self.plan_steps
    }

    /// Write the action chunk starting at frame `i` into `actions` (`chunk × action_dim`) and
    /// `mask` (`chunk`). With an `action_plan` feature the chunk is the plan's first `chunk`
    /// actions, masked past its real steps (a `chunk` longer than the plan is an error);
    /// otherwise the recorded actions from `i` on, where rows past the episode end repeat its last
    /// action and are masked out.
    pub fn action_chunk_into(
        &self,
        i: usize,
        chunk: usize,
        actions: &mut Vec<f32>,
        mask: &mut Vec<bool>,
    ) -> Result<()> {
        self.check_index("LeRobotDataset::action_chunk", i)?;
        let a = self.action_dim;
        if self.plan_steps > 0 {
            if chunk > self.plan_steps {
                return Err(Error::file(
                    &self.root,
                    format!(
                        "an action chunk of {chunk} is longer than the dataset's `{PLAN_KEY}` of {} steps \
                         (collect with --plan-steps {chunk} or more)",
                        self.plan_steps
                    ),
                ));
            }
            let plan = &self.plans[i * self.plan_steps * a..(i + 1) * self.plan_steps * a];
            actions.extend_from_slice(&plan[..chunk * a]);
            mask.extend((0..chunk).map(|k| k < self.plan_lens[i]));
            return Ok(());
        }
        let end = self.episodes[self.episode_of[i] as usize].to;
        for k in 0..chunk {
            let j = i + k;
            let real = j < end;
            let src = if real { j } else { end - 1 };
            actions.extend_from_slice(&self.actions[src * a..(src + 1) * a]);
            mask.push(real);
        }
        Ok(())
    }

    /// Frame `i` decoded, with its state, instruction and the `chunk` actions starting there
    /// (see [`Sample`] for the padding past the episode end).
    pub fn sample(&self, i: usize, chunk: usize) -> Result<Sample> {
        self.check_index("LeRobotDataset::sample", i)?;
        let image = self.decode_image(i)?;
        let mut actions = Vec::with_capacity(chunk * self.action_dim);
        let mut action_mask = Vec::with_capacity(chunk);
        self.action_chunk_into(i, chunk, &mut actions, &mut action_mask)?;
        Ok(Sample {
            index: i,
            image,
            state: self.states[i * self.state_dim..(i + 1) * self.state_dim].to_vec(),
            instruction: self.tasks[self.task_index[i] as usize].clone(),
            actions,
            action_mask,
        })
    }

    /// Decode frame `i` of the first camera to RGB, checking its size against `info.json`.
    pub fn decode_image(&self, i: usize) -> Result<RgbImage> {
        self.decode_camera(i, 0)
    }

    /// Decode frame `i` of camera `c` (in [`camera_keys`](Self::camera_keys) order).
    pub fn decode_camera(&self, i: usize, c: usize) -> Result<RgbImage> {
        self.check_index("LeRobotDataset::decode_camera", i)?;
        let cam = self.cameras.get(c).ok_or_else(|| Error::Invalid {
            op: "LeRobotDataset::decode_camera",
            msg: format!("camera {c} out of range: {} cameras are read", self.cameras.len()),
        })?;
        if let Some(video) = cam.video() {
            let e = self.episode_of[i] as usize;
            let (path, time) = video.locate(e, self.timestamps[i]).ok_or_else(|| {
                Error::file(&self.root, format!("camera `{}`: frame {i}: episode {e} has no video", cam.key))
            })?;
            return VideoFrames::decode(path, time, &cam.key, i, (cam.width, cam.height));
        }
        let bytes = cam.bytes(i).unwrap_or_default();
        let where_ = || self.root.join("data");
        let img =
            decode_frame(bytes).map_err(|m| Error::file(where_(), format!("column `{}`: frame {i}: {m}", cam.key)))?;
        if (img.width, img.height) != (cam.width, cam.height) {
            return Err(Error::file(
                where_(),
                format!(
                    "column `{}`: frame {i} decodes to {}x{}, info.json gives {}x{}",
                    cam.key, img.width, img.height, cam.width, cam.height
                ),
            ));
        }
        Ok(img)
    }
}

/// A NaN or infinity in a data column is an error naming the file, the column and the frame
/// (`rows` holds frames `first..` of `dim` values each).
fn check_finite(path: &Path, key: &str, rows: &[f32], dim: usize, first: usize) -> Result<()> {
    match rows.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::file(
            path,
            format!("column `{key}`: frame {} holds {} (value {})", first + i / dim.max(1), rows[i], i % dim.max(1)),
        )),
    }
}

/// The longest task (instruction) a dataset may hold, in characters.
pub const MAX_TASK_CHARS: usize = 4096;

fn read_tasks(path: &Path, total_tasks: usize) -> Result<Vec<String>> {
    let (schema, batches) = read_parquet(path)?;
    let task_col = if schema.field_with_name("task").is_ok() { "task" } else { "__index_level_0__" };
    if schema.field_with_name(task_col).is_err() {
        return Err(Error::file(path, "missing column `task`"));
    }
    require_columns(path, &schema, &["task_index"])?;
    let mut pairs = Vec::new();
    for b in &batches {
        let idx = i64_column(path, "task_index", column(path, b, "task_index")?)?;
        let names = string_column(path, task_col, column(path, b, task_col)?)?;
        pairs.extend(idx.into_iter().zip(names));
    }
    if let Some((i, t)) = pairs.iter().find(|(_, t)| t.chars().count() > MAX_TASK_CHARS) {
        return Err(Error::file(
            path,
            format!("task {i} is {} characters long, at most {MAX_TASK_CHARS} are accepted", t.chars().count()),
        ));
    }
    let mut tasks = vec![None; pairs.len()];
    for (i, t) in pairs {
        let slot = usize::try_from(i).ok().and_then(|i| tasks.get_mut(i));
        match slot {
            Some(s @ None) => *s = Some(t),
            _ => return Err(Error::file(path, format!("column `task_index`: {i} is out of range or repeated"))),
        }
    }
    if tasks.len() != total_tasks {
        return Err(Error::file(
            path,
            format!("{} tasks, but meta/info.json says total_tasks = {total_tasks}", tasks.len()),
        ));
    }
    Ok(tasks.into_iter().flatten().collect())
}

/// Per video camera (in `video_keys` order), per episode: its file `(chunk, file)` and times.
type VideoSpans = Vec<Vec<((usize, usize), f64, f64)>>;

/// The episodes, and where each lies in the video files of the cameras `video_keys`.
fn read_episodes(root: &Path, total_episodes: usize, video_keys: &[&str]) -> Result<(Vec<Episode>, VideoSpans)> {
    let dir = root.join("meta/episodes");
    let mut files = Vec::new();
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let rd = std::fs::read_dir(d).map_err(|e| Error::file(d, format!("cannot list: {e}")))?;
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        Ok(v)
    };
    if dir.is_dir() {
        for chunk in list(&dir)?.into_iter().filter(|p| p.is_dir()) {
            files.extend(list(&chunk)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")));
        }
    }
    if files.is_empty() {
        return Err(Error::file(root.join(episodes_path(0, 0)), "missing: no episode metadata parquet files"));
    }
    let cols = [
        "episode_index",
        "tasks",
        "length",
        "dataset_from_index",
        "dataset_to_index",
        "data/chunk_index",
        "data/file_index",
    ];
    let video_cols: Vec<[String; 4]> = video_keys
        .iter()
        .map(|k| ["chunk_index", "file_index", "from_timestamp", "to_timestamp"].map(|c| format!("videos/{k}/{c}")))
        .collect();
    let mut eps = Vec::new();
    for path in &files {
        let (schema, batches) = read_parquet(path)?;
        require_columns(path, &schema, &cols)?;
        for names in &video_cols {
            require_columns(path, &schema, &names.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        for b in &batches {
            let int = |name: &str| -> Result<Vec<i64>> { i64_column(path, name, column(path, b, name)?) };
            let (idx, len, from, to) =
                (int("episode_index")?, int("length")?, int("dataset_from_index")?, int("dataset_to_index")?);
            let (chunk, file) = (int("data/chunk_index")?, int("data/file_index")?);
            let tasks = string_list_column(path, "tasks", column(path, b, "tasks")?)?;
            let mut videos = Vec::with_capacity(video_cols.len());
            for [chunk, file, from, to] in &video_cols {
                let float = |name: &str| -> Result<Vec<f64>> { f64_column(path, name, column(path, b, name)?) };
                videos.push((int(chunk)?, int(file)?, float(from)?, float(to)?));
            }
            for r in 0..idx.len() {
                let vals = [idx[r], len[r], from[r], to[r], chunk[r], file[r]];
                if vals.iter().any(|&v| v < 0) || to[r] - from[r] != len[r] || len[r] == 0 {
                    return Err(Error::file(
                        path,
                        format!(
                            "episode {}: length {} does not match dataset_from_index {} .. dataset_to_index {}",
                            idx[r], len[r], from[r], to[r]
                        ),
                    ));
                }
                let mut spans = Vec::with_capacity(videos.len());
                for ((chunk, file, from, to), key) in videos.iter().zip(video_keys) {
                    let ok = chunk[r] >= 0 && file[r] >= 0 && from[r].is_finite() && to[r].is_finite();
                    if !ok || from[r] < 0.0 || from[r] > to[r] {
                        return Err(Error::file(
                            path,
                            format!(
                                "episode {}: camera `{key}`: video chunk {} file {} from {} s to {} s is not a \
                                 place in a video file",
                                idx[r], chunk[r], file[r], from[r], to[r]
                            ),
                        ));
                    }
                    spans.push(((chunk[r] as usize, file[r] as usize), from[r], to[r]));
                }
                eps.push((
                    path.clone(),
                    spans,
                    Episode {
                        index: idx[r] as usize,
                        tasks: tasks[r].clone(),
                        length: len[r] as usize,
                        from: from[r] as usize,
                        to: to[r] as usize,
                        data_chunk: chunk[r] as usize,
                        data_file: file[r] as usize,
                    },
                ));
            }
        }
    }
    eps.sort_by_key(|(_, _, e)| e.index);
    let mut next_frame = 0;
    for (i, (path, _, e)) in eps.iter().enumerate() {
        if e.index != i || e.from != next_frame {
            return Err(Error::file(
                path,
                format!("episode {}: episodes must be numbered 0.. and cover frames contiguously (expected episode {i} from frame {next_frame})", e.index),
            ));
        }
        next_frame = e.to;
    }
    if eps.len() != total_episodes {
        return Err(Error::file(
            root.join("meta/info.json"),
            format!("total_episodes is {total_episodes}, but meta/episodes lists {}", eps.len()),
        ));
    }
    let mut spans: VideoSpans = vec![Vec::with_capacity(eps.len()); video_keys.len()];
    for (_, s, _) in &eps {
        for (c, span) in s.iter().enumerate() {
            spans[c].push(*span);
        }
    }
    Ok((eps.into_iter().map(|(_, _, e)| e).collect(), spans))
}

/// A video camera's frames from its per-episode spans; `path` names a `(chunk, file)`'s file.
fn video_frames(spans: Vec<((usize, usize), f64, f64)>, path: impl Fn((usize, usize)) -> PathBuf) -> VideoFrames {
    let mut frames = VideoFrames::default();
    let mut ids = std::collections::HashMap::new();
    for (at, from, _) in spans {
        let file = *ids.entry(at).or_insert_with(|| {
            frames.files.push(path(at));
            frames.files.len() - 1
        });
        frames.episodes.push(EpisodeVideo { file, from });
    }
    frames
}
