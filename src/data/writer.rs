//! [`LeRobotWriter`]: records episodes and writes a LeRobot v3.0 dataset.

use super::encode_png;
use super::lerobot::{data_path, episodes_path, CODEBASE_VERSION, IMAGE_KEY, PLAN_KEY, PLAN_STEPS_KEY};
use super::parquet_io::write_parquet;
use super::stats::{FeatureStats, StatsAccumulator};
use crate::engine::{Error, Result};
use arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder};
use arrow_array::types::Float32Type;
use arrow_array::{ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_array::{ListArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use rayon::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STATE_KEY: &str = "observation.state";
const ACTION_KEY: &str = "action";
/// LeRobot's defaults for `chunks_size` and `data_files_size_in_mb`.
const CHUNKS_SIZE: usize = 1000;
const DATA_FILES_SIZE_IN_MB: u64 = 100;
const VIDEO_FILES_SIZE_IN_MB: u64 = 200;

/// Writes a LeRobot v3.0 dataset with one image feature (`observation.image`, PNG frames embedded
/// in the parquet files), `observation.state` and `action`, and optionally the expert's action
/// plan per frame (`action_plan`, `action_plan_steps`: see [`with_action_plan`](Self::with_action_plan)).
///
/// Frames are added one at a time and grouped into episodes by [`end_episode`](Self::end_episode);
/// everything goes into a hidden temporary directory beside the target, and
/// [`finish`](Self::finish) writes the metadata and statistics and renames the directory into
/// place, so a reader never sees a half-written dataset. Dropping an unfinished writer removes
/// the temporary directory. Episodes never straddle data files; a new file starts when the
/// current one would pass `data_files_size_in_mb` (100 MB by default).
pub struct LeRobotWriter {
    target: PathBuf,
    tmp: PathBuf,
    fps: u32,
    height: usize,
    width: usize,
    state_dim: usize,
    action_dim: usize,
    /// Steps of the `action_plan` feature (0: not recorded).
    plan_steps: usize,
    robot_type: String,
    file_limit_bytes: u64,
    // The episode being recorded.
    ep_pixels: Vec<Vec<u8>>,
    ep_states: Vec<f32>,
    ep_actions: Vec<f32>,
    ep_plans: Vec<f32>,
    ep_plan_lens: Vec<f32>,
    // The data file being filled.
    file: DataFile,
    episodes: Vec<EpisodeRecord>,
    tasks: Vec<String>,
    global: Vec<(&'static str, StatsAccumulator)>,
    total_frames: usize,
    done: bool,
}

#[derive(Default)]
struct DataFile {
    chunk: usize,
    file_index: usize,
    pngs: Vec<Vec<u8>>,
    frame_names: Vec<String>,
    states: Vec<f32>,
    actions: Vec<f32>,
    plans: Vec<f32>,
    plan_lens: Vec<f32>,
    timestamps: Vec<f32>,
    frame_index: Vec<i64>,
    episode_index: Vec<i64>,
    index: Vec<i64>,
    task_index: Vec<i64>,
    bytes: u64,
}

struct EpisodeRecord {
    task: String,
    length: usize,
    from: usize,
    chunk: usize,
    file: usize,
    stats: Vec<(&'static str, FeatureStats)>,
}

/// LeRobot's five default features, recorded for every frame after the dataset's own.
const DEFAULT_FEATURES: [&str; 5] = ["timestamp", "frame_index", "episode_index", "index", "task_index"];

impl LeRobotWriter {
    /// Start a dataset at `dir`, which must not exist yet. `image_shape` is `[height, width, 3]`
    /// (LeRobot's HWC order); every frame added must have exactly that many RGB bytes.
    pub fn create(
        dir: impl AsRef<Path>,
        fps: u32,
        image_shape: [usize; 3],
        state_dim: usize,
        action_dim: usize,
        robot_type: &str,
    ) -> Result<Self> {
        let target = dir.as_ref().to_path_buf();
        let [height, width, channels] = image_shape;
        let bad = |msg: String| Err(Error::file(&target, msg));
        if channels != 3 || height == 0 || width == 0 {
            return bad(format!("image shape {image_shape:?} is not [height, width, 3]"));
        }
        if fps == 0 || action_dim == 0 {
            return bad(format!("fps ({fps}) and action_dim ({action_dim}) must be positive"));
        }
        if target.exists() {
            return bad("already exists; a dataset is only written into a new directory".into());
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = parent.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        Ok(LeRobotWriter {
            target,
            tmp,
            fps,
            height,
            width,
            state_dim,
            action_dim,
            plan_steps: 0,
            robot_type: robot_type.to_string(),
            file_limit_bytes: DATA_FILES_SIZE_IN_MB * 1024 * 1024,
            ep_pixels: Vec::new(),
            ep_states: Vec::new(),
            ep_actions: Vec::new(),
            ep_plans: Vec::new(),
            ep_plan_lens: Vec::new(),
            file: DataFile::default(),
            episodes: Vec::new(),
            tasks: Vec::new(),
            global: Vec::new(),
            total_frames: 0,
            done: false,
        }
        .with_features())
    }

    /// Also record, for every frame, an `action_plan` of `steps` actions: what the expert would
    /// do from that frame on without perturbation (see [`add_frame_with_plan`](Self::add_frame_with_plan)),
    /// and `action_plan_steps`, how many of them are real. Call before adding frames.
    pub fn with_action_plan(mut self, steps: usize) -> Result<Self> {
        if self.total_frames > 0 || !self.ep_pixels.is_empty() {
            return Err(Error::Invalid {
                op: "LeRobotWriter::with_action_plan",
                msg: "the action plan must be declared before the first frame".into(),
            });
        }
        self.plan_steps = steps;
        Ok(self.with_features())
    }

    fn with_features(mut self) -> Self {
        self.global = self.accumulators();
        self
    }

    /// Feature names in LeRobot's order: the recorded features, then the five default ones.
    fn features(&self) -> Vec<&'static str> {
        let mut f = vec![IMAGE_KEY, STATE_KEY, ACTION_KEY];
        if self.plan_steps > 0 {
            f.extend([PLAN_KEY, PLAN_STEPS_KEY]);
        }
        f.extend(DEFAULT_FEATURES);
        f
    }

    fn accumulators(&self) -> Vec<(&'static str, StatsAccumulator)> {
        self.features()
            .into_iter()
            .map(|k| {
                let acc = match k {
                    IMAGE_KEY => StatsAccumulator::image(),
                    STATE_KEY => StatsAccumulator::rows(self.state_dim),
                    ACTION_KEY => StatsAccumulator::rows(self.action_dim),
                    PLAN_KEY => StatsAccumulator::rows(self.plan_steps * self.action_dim),
                    _ => StatsAccumulator::rows(1),
                };
                (k, acc)
            })
            .collect()
    }

    /// Start a new data file once the current one holds this many bytes of encoded frames
    /// (default: LeRobot's 100 MB). Small values spread a dataset over several files.
    pub fn with_data_file_limit_bytes(mut self, bytes: u64) -> Self {
        self.file_limit_bytes = bytes.max(1);
        self
    }

    /// Add one frame to the current episode: `image` is `height × width × 3` RGB bytes, row-major.
    /// A writer [`with_action_plan`](Self::with_action_plan) takes
    /// [`add_frame_with_plan`](Self::add_frame_with_plan) instead.
    pub fn add_frame(&mut self, image: &[u8], state: &[f32], action: &[f32]) -> Result<()> {
        if self.plan_steps > 0 {
            return Err(Error::Invalid {
                op: "LeRobotWriter::add_frame",
                msg: format!("feature `{PLAN_KEY}` is recorded: add frames with add_frame_with_plan"),
            });
        }
        self.push_frame(image, state, action)
    }

    /// [`add_frame`](Self::add_frame) with the frame's action plan: `plan` holds between 1 and
    /// `steps` actions (`action_dim` values each), the first being `action`; a shorter plan (the
    /// task ends sooner) is padded by repeating its last action.
    pub fn add_frame_with_plan(&mut self, image: &[u8], state: &[f32], action: &[f32], plan: &[f32]) -> Result<()> {
        let op = "LeRobotWriter::add_frame_with_plan";
        let (steps, a) = (self.plan_steps, self.action_dim);
        if steps == 0 {
            return Err(Error::Invalid { op, msg: "the writer records no action plan (see with_action_plan)".into() });
        }
        let len = plan.len() / a;
        if !plan.len().is_multiple_of(a) || len == 0 || len > steps {
            return Err(Error::Invalid {
                op,
                msg: format!("feature `{PLAN_KEY}`: {} values is not 1 to {steps} actions of {a}", plan.len()),
            });
        }
        if let Some(i) = plan.iter().position(|x| !x.is_finite()) {
            return Err(Error::Invalid { op, msg: format!("feature `{PLAN_KEY}`: value {i} is {}", plan[i]) });
        }
        self.push_frame(image, state, action)?;
        self.ep_plans.extend_from_slice(plan);
        for _ in len..steps {
            self.ep_plans.extend_from_slice(&plan[(len - 1) * a..]);
        }
        self.ep_plan_lens.push(len as f32);
        Ok(())
    }

    fn push_frame(&mut self, image: &[u8], state: &[f32], action: &[f32]) -> Result<()> {
        let op = "LeRobotWriter::add_frame";
        let want = self.height * self.width * 3;
        if image.len() != want {
            return Err(Error::Invalid {
                op,
                msg: format!(
                    "feature `{IMAGE_KEY}`: {} bytes, expected {want} ({}x{}x3)",
                    image.len(),
                    self.height,
                    self.width
                ),
            });
        }
        for (name, v, dim) in [(STATE_KEY, state, self.state_dim), (ACTION_KEY, action, self.action_dim)] {
            if v.len() != dim {
                return Err(Error::Invalid {
                    op,
                    msg: format!("feature `{name}`: {} values, expected {dim}", v.len()),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid { op, msg: format!("feature `{name}`: value {i} is {}", v[i]) });
            }
        }
        self.ep_pixels.push(image.to_vec());
        self.ep_states.extend_from_slice(state);
        self.ep_actions.extend_from_slice(action);
        Ok(())
    }

    /// Number of frames added to the current, unfinished episode.
    pub fn pending_frames(&self) -> usize {
        self.ep_pixels.len()
    }

    /// Close the current episode with its language instruction.
    pub fn end_episode(&mut self, task: &str) -> Result<()> {
        let n = self.ep_pixels.len();
        if n == 0 {
            return Err(Error::Invalid { op: "LeRobotWriter::end_episode", msg: "the episode has no frames".into() });
        }
        let (w, h) = (self.width, self.height);
        let pngs: Vec<Vec<u8>> = self.ep_pixels.par_iter().map(|px| encode_png(px, w, h)).collect::<Result<_>>()?;
        let ep_bytes: u64 = pngs.iter().map(|p| p.len() as u64).sum();

        let episode_index = self.episodes.len();
        let task_index = match self.tasks.iter().position(|t| t == task) {
            Some(i) => i,
            None => {
                self.tasks.push(task.to_string());
                self.tasks.len() - 1
            }
        };
        if !self.file.pngs.is_empty() && self.file.bytes + ep_bytes > self.file_limit_bytes {
            self.flush_file()?;
            let (chunk, index) = if self.file.file_index + 1 == CHUNKS_SIZE {
                (self.file.chunk + 1, 0)
            } else {
                (self.file.chunk, self.file.file_index + 1)
            };
            self.file = DataFile { chunk, file_index: index, ..DataFile::default() };
        }

        let mut acc = self.accumulators();
        let from = self.total_frames;
        let rows = |v: &[f32], t: usize, dim: usize| -> Vec<f64> {
            v[t * dim..(t + 1) * dim].iter().map(|&x| x as f64).collect()
        };
        for t in 0..n {
            let timestamp = t as f32 / self.fps as f32;
            let scalars = [timestamp as f64, t as f64, episode_index as f64, (from + t) as f64, task_index as f64];
            for (k, a) in acc.iter_mut() {
                match *k {
                    IMAGE_KEY => a.push_image(&self.ep_pixels[t]),
                    STATE_KEY => a.push_row(rows(&self.ep_states, t, self.state_dim)),
                    ACTION_KEY => a.push_row(rows(&self.ep_actions, t, self.action_dim)),
                    PLAN_KEY => a.push_row(rows(&self.ep_plans, t, self.plan_steps * self.action_dim)),
                    PLAN_STEPS_KEY => a.push_row([self.ep_plan_lens[t] as f64]),
                    other => {
                        let i = DEFAULT_FEATURES.iter().position(|f| *f == other).unwrap_or(0);
                        a.push_row([scalars[i]]);
                    }
                }
            }
            let f = &mut self.file;
            f.timestamps.push(timestamp);
            f.frame_index.push(t as i64);
            f.episode_index.push(episode_index as i64);
            f.index.push((from + t) as i64);
            f.task_index.push(task_index as i64);
            f.frame_names.push(format!("frame-{t:06}.png"));
        }
        for ((_, g), (_, a)) in self.global.iter_mut().zip(&acc) {
            g.merge(a);
        }
        let f = &mut self.file;
        f.states.extend_from_slice(&self.ep_states);
        f.actions.extend_from_slice(&self.ep_actions);
        f.plans.extend_from_slice(&self.ep_plans);
        f.plan_lens.extend_from_slice(&self.ep_plan_lens);
        f.bytes += ep_bytes;
        f.pngs.extend(pngs);
        self.episodes.push(EpisodeRecord {
            task: task.to_string(),
            length: n,
            from,
            chunk: f.chunk,
            file: f.file_index,
            stats: acc.iter().map(|(k, a)| (*k, a.finish())).collect(),
        });
        self.total_frames += n;
        self.ep_pixels.clear();
        self.ep_states.clear();
        self.ep_actions.clear();
        self.ep_plans.clear();
        self.ep_plan_lens.clear();
        Ok(())
    }

    fn flush_file(&mut self) -> Result<()> {
        let f = &self.file;
        if f.pngs.is_empty() {
            return Ok(());
        }
        let path = self.tmp.join(data_path(f.chunk, f.file_index));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        let image_fields =
            Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
        let image = StructArray::new(
            image_fields.clone(),
            vec![
                Arc::new(BinaryArray::from_iter_values(f.pngs.iter())) as ArrayRef,
                Arc::new(StringArray::from_iter_values(f.frame_names.iter())),
            ],
            None,
        );
        let list = |values: &[f32], dim: usize| -> ArrayRef {
            Arc::new(FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
                values.chunks(dim.max(1)).map(|r| Some(r.iter().map(|&v| Some(v)))),
                dim as i32,
            ))
        };
        let state_col = if self.state_dim == 0 {
            Arc::new(FixedSizeListArray::new_null(
                Arc::new(Field::new("item", DataType::Float32, true)),
                0,
                f.pngs.len(),
            ))
        } else {
            list(&f.states, self.state_dim)
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(image), state_col, list(&f.actions, self.action_dim)];
        if self.plan_steps > 0 {
            columns.push(list(&f.plans, self.plan_steps * self.action_dim));
            // A shape-[1] feature is a plain scalar column, as LeRobot writes and reads it.
            columns.push(Arc::new(Float32Array::from(f.plan_lens.clone())));
        }
        columns.extend([
            Arc::new(Float32Array::from(f.timestamps.clone())) as ArrayRef,
            Arc::new(Int64Array::from(f.frame_index.clone())),
            Arc::new(Int64Array::from(f.episode_index.clone())),
            Arc::new(Int64Array::from(f.index.clone())),
            Arc::new(Int64Array::from(f.task_index.clone())),
        ]);
        let fields: Vec<Field> = self
            .features()
            .iter()
            .zip(&columns)
            .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
            .collect();
        // The `huggingface` schema entry (as `datasets` writes it) tells `datasets` and LeRobot the
        // feature types: images as `Image` rather than byte structs, vectors as fixed-length lists.
        let hf: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|f| {
                let value = |dtype: &str| json!({"dtype": dtype, "_type": "Value"});
                let t = match f.data_type() {
                    DataType::Struct(_) => json!({"_type": "Image"}),
                    DataType::FixedSizeList(_, n) => json!({"feature": value("float32"), "length": n, "_type": "List"}),
                    DataType::Int64 => value("int64"),
                    _ => value("float32"),
                };
                (f.name().clone(), t)
            })
            .collect();
        let metadata = std::collections::HashMap::from([(
            "huggingface".to_string(),
            json!({"info": {"features": hf}}).to_string(),
        )]);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields).with_metadata(metadata)), columns)
            .map_err(|e| Error::file(&path, format!("building the frame table: {e}")))?;
        write_parquet(&path, &batch, &[])
    }

    /// Write the metadata, the statistics and the last data file, then move the dataset into
    /// place. Fails (leaving nothing at the target) if an episode is still open or none was
    /// recorded.
    pub fn finish(mut self) -> Result<()> {
        let op = "LeRobotWriter::finish";
        if !self.ep_pixels.is_empty() {
            return Err(Error::Invalid {
                op,
                msg: format!("{} frames were added after the last end_episode", self.ep_pixels.len()),
            });
        }
        if self.episodes.is_empty() {
            return Err(Error::Invalid { op, msg: "no episodes were recorded".into() });
        }
        self.flush_file()?;
        let meta = self.tmp.join("meta");
        let ep_dir = self.tmp.join(episodes_path(0, 0));
        if let Some(p) = ep_dir.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        self.write_tasks(&meta.join("tasks.parquet"))?;
        self.write_episodes(&ep_dir)?;
        let stats = Ordered(
            self.global.iter().map(|(k, a)| (k.to_string(), J::V(a.finish().to_json(*k == IMAGE_KEY)))).collect(),
        );
        write_json(&meta.join("stats.json"), &stats)?;
        write_json(&meta.join("info.json"), &self.info())?;
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| Error::io(format!("moving {} to {}", self.tmp.display(), self.target.display()), e))?;
        self.done = true;
        Ok(())
    }

    fn info(&self) -> Ordered {
        let scalar = |dtype: &str| json!({"dtype": dtype, "shape": [1], "names": null});
        let vector = |dim: usize, prefix: &str| json!({"dtype": "float32", "shape": [dim], "names": (0..dim).map(|i| format!("{prefix}_{i}")).collect::<Vec<_>>()});
        let mut features = vec![
            (
                IMAGE_KEY.into(),
                J::V(
                    json!({"dtype": "image", "shape": [self.height, self.width, 3], "names": ["height", "width", "channels"]}),
                ),
            ),
            (STATE_KEY.into(), J::V(vector(self.state_dim, "state"))),
            (ACTION_KEY.into(), J::V(vector(self.action_dim, "action"))),
        ];
        if self.plan_steps > 0 {
            let names: Vec<String> = (0..self.plan_steps)
                .flat_map(|k| (0..self.action_dim).map(move |d| format!("step_{k}_action_{d}")))
                .collect();
            features.push((
                PLAN_KEY.into(),
                J::V(json!({"dtype": "float32", "shape": [self.plan_steps * self.action_dim], "names": names})),
            ));
            features.push((PLAN_STEPS_KEY.into(), J::V(json!({"dtype": "float32", "shape": [1], "names": null}))));
        }
        features.extend([
            ("timestamp".into(), J::V(scalar("float32"))),
            ("frame_index".into(), J::V(scalar("int64"))),
            ("episode_index".into(), J::V(scalar("int64"))),
            ("index".into(), J::V(scalar("int64"))),
            ("task_index".into(), J::V(scalar("int64"))),
        ]);
        let features = J::O(Ordered(features));
        Ordered(vec![
            ("codebase_version".into(), J::V(json!(CODEBASE_VERSION))),
            ("robot_type".into(), J::V(json!(self.robot_type))),
            ("total_episodes".into(), J::V(json!(self.episodes.len()))),
            ("total_frames".into(), J::V(json!(self.total_frames))),
            ("total_tasks".into(), J::V(json!(self.tasks.len()))),
            ("chunks_size".into(), J::V(json!(CHUNKS_SIZE))),
            ("data_files_size_in_mb".into(), J::V(json!(self.file_limit_bytes.div_ceil(1024 * 1024).max(1)))),
            ("video_files_size_in_mb".into(), J::V(json!(VIDEO_FILES_SIZE_IN_MB))),
            ("fps".into(), J::V(json!(self.fps))),
            ("splits".into(), J::V(json!({"train": format!("0:{}", self.episodes.len())}))),
            ("data_path".into(), J::V(json!(super::lerobot::DATA_PATH_TEMPLATE))),
            ("video_path".into(), J::V(Value::Null)),
            ("features".into(), features),
        ])
    }

    /// `meta/tasks.parquet` as pandas writes LeRobot's task table: a `task_index` column and the
    /// task strings as the (named) index, declared in the `pandas` metadata.
    fn write_tasks(&self, path: &Path) -> Result<()> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..self.tasks.len() as i64)),
            Arc::new(StringArray::from_iter_values(self.tasks.iter())),
        ];
        let schema = Schema::new(vec![
            Field::new("task_index", DataType::Int64, true),
            Field::new("task", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(Arc::new(schema), columns)
            .map_err(|e| Error::file(path, format!("building the task table: {e}")))?;
        let pandas = json!({
            "index_columns": ["task"],
            "column_indexes": [{"name": null, "field_name": null, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": null},
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": null}
            ],
            "creator": {"library": "vlm4vla", "version": env!("CARGO_PKG_VERSION")},
            "pandas_version": "2.2.3"
        });
        write_parquet(path, &batch, &[("pandas", pandas.to_string())])
    }

    /// `meta/episodes/chunk-000/file-000.parquet`: one row per episode with its task list, length,
    /// frame range, data file and `stats/<feature>/<stat>` columns.
    fn write_episodes(&self, path: &Path) -> Result<()> {
        let eps = &self.episodes;
        let ints = |f: &dyn Fn(usize, &EpisodeRecord) -> usize| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(eps.iter().enumerate().map(|(i, e)| f(i, e) as i64)))
        };
        let mut cols: Vec<(String, ArrayRef)> = Vec::new();
        cols.push(("episode_index".into(), ints(&|i, _| i)));
        let mut tasks = ListBuilder::new(StringBuilder::new());
        for e in eps {
            tasks.values().append_value(&e.task);
            tasks.append(true);
        }
        cols.push(("tasks".into(), Arc::new(tasks.finish())));
        cols.push(("length".into(), ints(&|_, e| e.length)));
        cols.push(("data/chunk_index".into(), ints(&|_, e| e.chunk)));
        cols.push(("data/file_index".into(), ints(&|_, e| e.file)));
        cols.push(("dataset_from_index".into(), ints(&|_, e| e.from)));
        cols.push(("dataset_to_index".into(), ints(&|_, e| e.from + e.length)));
        for (fi, feature) in self.features().iter().enumerate() {
            let image = *feature == IMAGE_KEY;
            let stat_of = |e: &'_ EpisodeRecord| -> FeatureStats { e.stats[fi].1.clone() };
            let all: Vec<FeatureStats> = eps.iter().map(stat_of).collect();
            let names = ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"];
            for name in names {
                let col: ArrayRef = if name == "count" {
                    Arc::new(ListArray::from_iter_primitive::<arrow_array::types::Int64Type, _, _>(
                        all.iter().map(|s| Some([Some(s.count as i64)])),
                    ))
                } else {
                    let values = |s: &FeatureStats| -> Vec<f64> {
                        s.float_entries()
                            .into_iter()
                            .find(|(k, _)| *k == name)
                            .map(|(_, v)| v.to_vec())
                            .unwrap_or_default()
                    };
                    if image {
                        let mut b = ListBuilder::new(ListBuilder::new(ListBuilder::new(Float64Builder::new())));
                        for s in &all {
                            for v in values(s) {
                                b.values().values().values().append_value(v);
                                b.values().values().append(true);
                                b.values().append(true);
                            }
                            b.append(true);
                        }
                        Arc::new(b.finish())
                    } else {
                        let mut b = ListBuilder::new(Float64Builder::new());
                        for s in &all {
                            b.values().append_slice(&values(s));
                            b.append(true);
                        }
                        Arc::new(b.finish())
                    }
                };
                cols.push((format!("stats/{feature}/{name}"), col));
            }
        }
        cols.push(("meta/episodes/chunk_index".into(), ints(&|_, _| 0)));
        cols.push(("meta/episodes/file_index".into(), ints(&|_, _| 0)));
        let fields: Vec<Field> = cols.iter().map(|(n, c)| Field::new(n, c.data_type().clone(), true)).collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, c)| c).collect())
            .map_err(|e| Error::file(path, format!("building the episode table: {e}")))?;
        write_parquet(path, &batch, &[])
    }
}

impl Drop for LeRobotWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A JSON object whose keys keep their insertion order (LeRobot's files list features in
/// recording order; `serde_json::Map` would sort them).
struct Ordered(Vec<(String, J)>);

enum J {
    V(Value),
    O(Ordered),
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            J::V(v) => v.serialize(s),
            J::O(o) => o.serialize(s),
        }
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).map_err(|e| Error::file(path, format!("serialising JSON: {e}")))?;
    out.push(b'\n');
    crate::engine::io::write_atomic(path, &out)
}
