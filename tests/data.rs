//! The LeRobot v3.0 writer and reader, and the loader: exact round trips, the on-disk layout,
//! statistics against a direct computation, seeded and resumable batching, augmentation bounds,
//! and bad input naming its culprit.

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vlm4vla::data::loader::shift_into;
use vlm4vla::data::{LeRobotDataset, LeRobotWriter, Loader, LoaderConfig, LoaderPosition, RandomShift, RgbImage};
use vlm4vla::models::vla::{ActionNormalizer, NormalizationMode};

const H: usize = 12;
const W: usize = 16;
const STATE: usize = 3;
const ACT: usize = 7;
const LENGTHS: [usize; 3] = [5, 3, 7];
const TASKS: [&str; 3] = ["push the red block left", "lift the blue block", "push the red block left"];

/// What was written, frame by frame.
struct Written {
    images: Vec<Vec<u8>>,
    states: Vec<Vec<f32>>,
    actions: Vec<Vec<f32>>,
    episode: Vec<usize>,
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn image(ep: usize, t: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(H * W * 3);
    for y in 0..H {
        for x in 0..W {
            v.push((x * 13 + t * 7 + ep * 50) as u8);
            v.push((y * 17 + t * 3) as u8);
            v.push(((x * y) ^ (ep * 31 + t)) as u8);
        }
    }
    v
}

fn write(dir: &Path, limit: Option<u64>) -> Written {
    let mut w = LeRobotWriter::create(dir, 15, [H, W, 3], STATE, ACT, "tabletop").unwrap();
    if let Some(l) = limit {
        w = w.with_data_file_limit_bytes(l);
    }
    let mut out = Written { images: vec![], states: vec![], actions: vec![], episode: vec![] };
    for (ep, &len) in LENGTHS.iter().enumerate() {
        for t in 0..len {
            let img = image(ep, t);
            let state: Vec<f32> = (0..STATE).map(|d| (ep * 10 + t) as f32 * 0.1 + d as f32).collect();
            let mut action: Vec<f32> = (0..6).map(|d| ((ep * 7 + t * 3 + d) as f32 * 0.37).sin() * 0.8).collect();
            action.push(if (t + ep) % 3 == 0 { -1.0 } else { 1.0 });
            w.add_frame(&img, &state, &action).unwrap();
            out.images.push(img);
            out.states.push(state);
            out.actions.push(action);
            out.episode.push(ep);
        }
        w.end_episode(TASKS[ep]).unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn roundtrip_reads_back_exactly() {
    let dir = tmp("roundtrip");
    let wr = write(&dir, None);
    let ds = LeRobotDataset::open(&dir).unwrap();
    let n: usize = LENGTHS.iter().sum();
    assert_eq!(ds.len(), n);
    assert_eq!(ds.image_size(), (H, W));
    assert_eq!((ds.state_dim(), ds.action_dim(), ds.fps()), (STATE, ACT, 15.0));
    assert_eq!(ds.robot_type(), Some("tabletop"));
    assert_eq!(ds.tasks(), &[TASKS[0].to_string(), TASKS[1].to_string()]);
    let mut from = 0;
    for (e, ep) in ds.episodes().iter().enumerate() {
        assert_eq!((ep.index, ep.length, ep.from, ep.to), (e, LENGTHS[e], from, from + LENGTHS[e]));
        assert_eq!(ep.tasks, vec![TASKS[e].to_string()]);
        from += LENGTHS[e];
    }
    for i in 0..n {
        let s = ds.sample(i, 1).unwrap();
        assert_eq!(s.image, RgbImage { width: W, height: H, data: wr.images[i].clone() }, "frame {i}");
        assert_eq!(s.state, wr.states[i]);
        assert_eq!(s.actions, wr.actions[i]);
        assert_eq!(s.action_mask, vec![true]);
        assert_eq!(s.instruction, TASKS[wr.episode[i]]);
        let ep = &ds.episodes()[wr.episode[i]];
        assert_eq!(ds.episode_of(i).unwrap().index, wr.episode[i]);
        assert_eq!(ds.frame_index(i), Some(i - ep.from));
        assert_eq!(ds.timestamp(i), Some((i - ep.from) as f32 / 15.0));
        assert_eq!(ds.task_index(i), Some(if wr.episode[i] == 1 { 1 } else { 0 }));
    }
    assert!(ds.sample(n, 1).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// numpy's default (linear) quantile.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[test]
fn stats_match_a_direct_computation() {
    let dir = tmp("stats");
    let wr = write(&dir, None);
    let ds = LeRobotDataset::open(&dir).unwrap();
    let st = &ds.stats()["action"];
    let n = wr.actions.len();
    assert_eq!(st.count, n as u64);
    let mut worst = 0f64;
    for d in 0..ACT {
        let col: Vec<f64> = wr.actions.iter().map(|a| a[d] as f64).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let std = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let min = col.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        for (got, want) in [
            (st.mean[d], mean),
            (st.std[d], std),
            (st.min[d], min),
            (st.max[d], max),
            (st.q01()[d], quantile(col.clone(), 0.01)),
            (st.q99()[d], quantile(col.clone(), 0.99)),
            (st.quantile("q50").unwrap()[d], quantile(col.clone(), 0.5)),
        ] {
            worst = worst.max((got - want).abs());
        }
    }
    assert!(worst < 1e-12, "action stats differ by {worst}");
    // Image statistics: per channel, in [0, 1].
    let img = &ds.stats()["observation.image"];
    assert_eq!(img.count, n as u64);
    for c in 0..3 {
        let px: Vec<f64> =
            wr.images.iter().flat_map(|im| im.iter().skip(c).step_by(3).map(|&v| v as f64 / 255.0)).collect();
        let mean = px.iter().sum::<f64>() / px.len() as f64;
        let std = (px.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / px.len() as f64).sqrt();
        assert!((img.mean[c] - mean).abs() < 1e-12 && (img.std[c] - std).abs() < 1e-12, "channel {c}");
        assert!((img.q01()[c] - quantile(px.clone(), 0.01)).abs() < 1e-12);
        assert!((img.q99()[c] - quantile(px.clone(), 0.99)).abs() < 1e-12);
    }
    // The normaliser builds from the dataset's statistics.
    let norm = ActionNormalizer::from_stats(NormalizationMode::Percentile, &ds.action_stats()).unwrap();
    assert_eq!(norm.arm_dims, 6);
    assert_eq!((norm.gripper_low, norm.gripper_high), (-1.0, 1.0));
    assert!((norm.low[2] as f64 - st.q01()[2]).abs() < 1e-6);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn parquet_schema(path: &Path) -> (arrow_schema::SchemaRef, Vec<RecordBatch>, Vec<(String, String)>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|v| v.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())).collect())
        .unwrap_or_default();
    let schema = b.schema().clone();
    let batches = b.build().unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    (schema, batches, kv)
}

#[test]
fn on_disk_layout_is_lerobot_v3() {
    let dir = tmp("layout");
    write(&dir, None);
    for f in [
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "data/chunk-000/file-000.parquet",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta/info.json")).unwrap()).unwrap();
    assert_eq!(info["codebase_version"], "v3.0");
    assert_eq!(info["fps"], 15);
    assert_eq!(info["total_episodes"], 3);
    assert_eq!(info["total_frames"], 15);
    assert_eq!(info["total_tasks"], 2);
    assert_eq!(info["chunks_size"], 1000);
    assert_eq!(info["data_files_size_in_mb"], 100);
    assert_eq!(info["splits"]["train"], "0:3");
    assert_eq!(info["robot_type"], "tabletop");
    assert_eq!(info["data_path"], "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet");
    assert!(info["video_path"].is_null());
    let feats = &info["features"];
    assert_eq!(feats["observation.image"]["dtype"], "image");
    assert_eq!(feats["observation.image"]["shape"], serde_json::json!([H, W, 3]));
    assert_eq!(feats["action"]["shape"], serde_json::json!([ACT]));
    assert_eq!(feats["action"]["dtype"], "float32");
    assert_eq!(feats["index"]["dtype"], "int64");
    // Features keep LeRobot's order in the file (recorded features, then the defaults).
    let text = std::fs::read_to_string(dir.join("meta/info.json")).unwrap();
    assert!(text.find("\"observation.image\"").unwrap() < text.find("\"timestamp\"").unwrap());

    let (schema, batches, _) = parquet_schema(&dir.join("data/chunk-000/file-000.parquet"));
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "observation.image",
            "observation.state",
            "action",
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index"
        ]
    );
    match schema.field_with_name("observation.image").unwrap().data_type() {
        DataType::Struct(f) => {
            assert_eq!(f[0].name(), "bytes");
            assert_eq!(f[0].data_type(), &DataType::Binary);
            assert_eq!(f[1].name(), "path");
            assert_eq!(f[1].data_type(), &DataType::Utf8);
        }
        t => panic!("image column is {t}"),
    }
    match schema.field_with_name("action").unwrap().data_type() {
        DataType::FixedSizeList(f, 7) => assert_eq!(f.data_type(), &DataType::Float32),
        t => panic!("action column is {t}"),
    }
    assert_eq!(schema.field_with_name("timestamp").unwrap().data_type(), &DataType::Float32);
    assert_eq!(schema.field_with_name("task_index").unwrap().data_type(), &DataType::Int64);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 15);

    let (schema, _, _) = parquet_schema(&dir.join("meta/episodes/chunk-000/file-000.parquet"));
    for c in [
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
        "stats/action/min",
        "stats/action/q01",
        "stats/action/q99",
        "stats/action/count",
        "stats/observation.image/mean",
        "stats/timestamp/max",
    ] {
        assert!(schema.field_with_name(c).is_ok(), "episodes table lacks `{c}`");
    }
    match schema.field_with_name("stats/observation.image/mean").unwrap().data_type() {
        DataType::List(a) => match a.data_type() {
            DataType::List(b) => assert!(matches!(b.data_type(), DataType::List(_))),
            t => panic!("{t}"),
        },
        t => panic!("image stats column is {t}"),
    }
    let (schema, _, kv) = parquet_schema(&dir.join("meta/tasks.parquet"));
    assert!(schema.field_with_name("task_index").is_ok() && schema.field_with_name("task").is_ok());
    let pandas = kv.iter().find(|(k, _)| k == "pandas").expect("pandas metadata");
    let pandas: serde_json::Value = serde_json::from_str(&pandas.1).unwrap();
    assert_eq!(pandas["index_columns"], serde_json::json!(["task"]));
    // pyarrow takes schema metadata from an embedded Arrow schema when there is one, which would
    // hide the `pandas` entry (and with it the task index): the task table has none.
    assert!(kv.iter().all(|(k, _)| k != "ARROW:schema"), "{kv:?}");

    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta/stats.json")).unwrap()).unwrap();
    assert_eq!(stats["observation.image"]["mean"].as_array().unwrap().len(), 3);
    assert!(stats["observation.image"]["mean"][0][0][0].is_number());
    assert_eq!(stats["action"]["q01"].as_array().unwrap().len(), ACT);
    assert_eq!(stats["action"]["count"], serde_json::json!([15]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn episodes_spread_over_several_data_files() {
    let dir = tmp("files");
    let wr = write(&dir, Some(1));
    for f in 0..3 {
        assert!(dir.join(format!("data/chunk-000/file-{f:03}.parquet")).is_file());
    }
    let ds = LeRobotDataset::open(&dir).unwrap();
    assert_eq!(ds.episodes().iter().map(|e| e.data_file).collect::<Vec<_>>(), [0, 1, 2]);
    for i in 0..ds.len() {
        assert_eq!(ds.decode_image(i).unwrap().data, wr.images[i]);
        assert_eq!(ds.action(i).unwrap(), &wr.actions[i][..]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writer_is_atomic_and_checks_frames() {
    let dir = tmp("atomic");
    let mut w = LeRobotWriter::create(&dir, 10, [H, W, 3], STATE, ACT, "t").unwrap();
    let e = w.add_frame(&vec![0; H * W * 3 - 1], &[0.0; STATE], &[0.0; ACT]).unwrap_err().to_string();
    assert!(e.contains("observation.image"), "{e}");
    let e = w.add_frame(&vec![0; H * W * 3], &[0.0; STATE], &[0.0; 6]).unwrap_err().to_string();
    assert!(e.contains("action") && e.contains("expected 7"), "{e}");
    w.add_frame(&vec![0; H * W * 3], &[0.0; STATE], &[0.0; ACT]).unwrap();
    assert!(!dir.exists(), "nothing is visible before finish");
    drop(w);
    assert!(!dir.exists());
    let leftovers = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".vlm4vla-data-atomic"))
        .count();
    assert_eq!(leftovers, 0, "the temporary directory is removed");
    // An open episode makes finish fail; an existing directory is never overwritten.
    let mut w = LeRobotWriter::create(&dir, 10, [H, W, 3], STATE, ACT, "t").unwrap();
    w.add_frame(&vec![0; H * W * 3], &[0.0; STATE], &[0.0; ACT]).unwrap();
    assert!(w.finish().is_err());
    write(&dir, None);
    assert!(LeRobotWriter::create(&dir, 10, [H, W, 3], STATE, ACT, "t").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chunks_are_masked_past_the_episode_end() {
    let dir = tmp("mask");
    let wr = write(&dir, None);
    let ds = LeRobotDataset::open(&dir).unwrap();
    // Episode 0 has frames 0..5: a chunk of 4 from frame 3 has 2 real actions.
    let s = ds.sample(3, 4).unwrap();
    assert_eq!(s.action_mask, [true, true, false, false]);
    let rows: Vec<&[f32]> = s.actions.chunks(ACT).collect();
    assert_eq!(rows[0], &wr.actions[3][..]);
    assert_eq!(rows[1], &wr.actions[4][..]);
    assert_eq!(rows[2], &wr.actions[4][..], "padding repeats the episode's last action");
    assert_eq!(rows[3], &wr.actions[4][..]);
    // A chunk inside an episode is all real; the last frame of the dataset has one real action.
    assert!(ds.sample(5, 3).unwrap().action_mask.iter().all(|&m| m));
    let last = ds.sample(14, 10).unwrap();
    assert_eq!(last.action_mask.iter().filter(|&&m| m).count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn loader(dir: &Path, workers: usize, seed: u64, shift: Option<RandomShift>, drop_last: bool) -> Loader {
    let ds = Arc::new(LeRobotDataset::open(dir).unwrap());
    let cfg = LoaderConfig { batch_size: 4, chunk: 3, workers, prefetch: 2, seed, shuffle: true, drop_last, shift };
    Loader::new(ds, cfg).unwrap()
}

#[test]
fn loader_is_deterministic_and_independent_of_workers() {
    let dir = tmp("loader");
    let wr = write(&dir, None);
    let one: Vec<_> = loader(&dir, 1, 7, None, false).epoch(0).map(Result::unwrap).collect();
    let three: Vec<_> = loader(&dir, 3, 7, None, false).epoch(0).map(Result::unwrap).collect();
    assert_eq!(one.len(), 4, "15 frames in batches of 4");
    assert_eq!(one, three, "1 and 3 workers give the same batches");
    let mut seen: Vec<usize> = one.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..15).collect::<Vec<_>>(), "an epoch visits every frame once");
    for b in &one {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.image(k).data, wr.images[i]);
            assert_eq!(&b.states[k * STATE..(k + 1) * STATE], &wr.states[i][..]);
            assert_eq!(&b.actions[k * 3 * ACT..k * 3 * ACT + ACT], &wr.actions[i][..]);
            assert_eq!(b.instructions[k], TASKS[wr.episode[i]]);
        }
    }
    let l = loader(&dir, 2, 7, None, false);
    assert_ne!(l.epoch_order(0), l.epoch_order(1), "epochs are shuffled differently");
    assert_ne!(loader(&dir, 2, 8, None, false).epoch_order(0), l.epoch_order(0), "seeds differ");
    let dl = loader(&dir, 2, 7, None, true);
    assert_eq!(dl.batches_per_epoch(), 3);
    assert!(dl.epoch(0).map(Result::unwrap).all(|b| b.len() == 4));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_shift_stays_within_bounds() {
    let dir = tmp("shift");
    let wr = write(&dir, None);
    let pad = 2;
    let l = loader(&dir, 2, 3, Some(RandomShift { pad }), false);
    let a: Vec<_> = l.epoch(0).map(Result::unwrap).collect();
    let b: Vec<_> = loader(&dir, 1, 3, Some(RandomShift { pad }), false).epoch(0).map(Result::unwrap).collect();
    assert_eq!(a, b, "augmentation is reproducible and independent of workers");
    let mut nonzero = 0;
    for batch in &a {
        for (k, &i) in batch.indices.iter().enumerate() {
            let (dx, dy) = batch.shifts[k];
            assert!(dx.abs() <= pad as i32 && dy.abs() <= pad as i32);
            nonzero += usize::from((dx, dy) != (0, 0));
            let orig = RgbImage { width: W, height: H, data: wr.images[i].clone() };
            let mut want = Vec::new();
            shift_into(&orig, dx as i64, dy as i64, &mut want);
            assert_eq!(batch.image(k).data, want);
            // Edge replication: a pixel shifted in from outside equals the border pixel.
            let got = batch.image(k);
            if dx > 0 {
                assert_eq!(got.pixel(W - 1, 0), orig.pixel(W - 1, (dy.max(0)) as usize));
            }
        }
    }
    assert!(nonzero > 5, "shifts are drawn, not all zero ({nonzero})");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resumed_loader_sees_the_same_batches() {
    let dir = tmp("resume");
    write(&dir, None);
    let l = loader(&dir, 3, 11, Some(RandomShift { pad: 1 }), false);
    let run: Vec<_> = l.iter_from(LoaderPosition::default()).take(7).map(Result::unwrap).collect();
    assert_eq!(run[3].position, LoaderPosition { epoch: 0, batch: 3 });
    assert_eq!(run[4].position, LoaderPosition { epoch: 1, batch: 0 });
    let resume_at = run[2].next_position;
    let l2 = loader(&dir, 2, 11, Some(RandomShift { pad: 1 }), false);
    let resumed: Vec<_> = l2.iter_from(resume_at).take(4).map(Result::unwrap).collect();
    assert_eq!(&resumed[..], &run[3..7]);
    assert_eq!(l2.load_batch(run[5].position).unwrap(), run[5]);
    let pos: LoaderPosition = serde_json::from_str(&serde_json::to_string(&resume_at).unwrap()).unwrap();
    assert_eq!(pos, resume_at);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn edit_info(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("meta/info.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn open_err(dir: &Path) -> String {
    LeRobotDataset::open(dir).unwrap_err().to_string()
}

#[test]
fn bad_datasets_name_the_culprit() {
    let dir = tmp("bad");
    let e = open_err(&dir);
    assert!(e.contains(&dir.display().to_string()) && e.contains("no such dataset"), "{e}");

    write(&dir, None);
    let info = dir.join("meta/info.json");
    let good_info = std::fs::read(&info).unwrap();

    std::fs::write(&info, b"{\"codebase_version\": \"v3.0\", \"fps\": ").unwrap();
    let e = open_err(&dir);
    assert!(e.contains("meta/info.json") && e.contains("malformed JSON"), "{e}");

    std::fs::write(&info, &good_info).unwrap();
    edit_info(&dir, |v| v["codebase_version"] = "v2.1".into());
    let e = open_err(&dir);
    assert!(e.contains("info.json") && e.contains("v2.1"), "{e}");

    std::fs::write(&info, &good_info).unwrap();
    edit_info(&dir, |v| v["features"]["observation.image"]["shape"] = serde_json::json!([H + 1, W, 3]));
    let e = open_err(&dir);
    assert!(e.contains("file-000.parquet") && e.contains("observation.image") && e.contains("16x12"), "{e}");

    std::fs::write(&info, &good_info).unwrap();
    edit_info(&dir, |v| v["features"]["action"]["shape"] = serde_json::json!([6]));
    let e = open_err(&dir);
    assert!(e.contains("file-000.parquet") && e.contains("column `action`") && e.contains("7 values"), "{e}");

    std::fs::write(&info, &good_info).unwrap();
    edit_info(&dir, |v| {
        v["features"].as_object_mut().unwrap().remove("action");
    });
    let e = open_err(&dir);
    assert!(e.contains("info.json") && e.contains("`action`"), "{e}");

    std::fs::write(&info, &good_info).unwrap();
    assert!(LeRobotDataset::open(&dir).is_ok());

    for meta in ["meta/info.json", "meta/stats.json", "meta/tasks.parquet"] {
        let p = dir.join(meta);
        let keep = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let e = open_err(&dir);
        assert!(e.contains(meta), "{meta}: {e}");
        std::fs::write(&p, keep).unwrap();
    }
    let ep = dir.join("meta/episodes/chunk-000/file-000.parquet");
    let keep = std::fs::read(&ep).unwrap();
    std::fs::remove_file(&ep).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("meta/episodes"), "{e}");
    std::fs::write(&ep, keep).unwrap();

    // A data file without the action column.
    let data = dir.join("data/chunk-000/file-000.parquet");
    let keep = std::fs::read(&data).unwrap();
    let (_, batches, _) = parquet_schema(&data);
    let mut b = batches[0].clone();
    let i = b.schema().index_of("action").unwrap();
    b.remove_column(i);
    let mut w = ArrowWriter::try_new(std::fs::File::create(&data).unwrap(), b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    let e = open_err(&dir);
    assert!(e.contains("file-000.parquet") && e.contains("missing column `action`"), "{e}");
    std::fs::write(&data, &keep).unwrap();

    // A truncated data file.
    std::fs::write(&data, &keep[..keep.len() / 2]).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("data/chunk-000/file-000.parquet"), "{e}");
    std::fs::write(&data, &keep).unwrap();
    assert!(LeRobotDataset::open(&dir).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Plan `k` of frame `t` of episode `ep`: distinct values per frame, step and dimension.
fn plan_action(ep: usize, t: usize, k: usize) -> Vec<f32> {
    (0..ACT).map(|d| (ep * 100 + t * 10 + k) as f32 * 0.01 + d as f32 * 0.001).collect()
}

#[test]
fn action_plans_round_trip_and_label_the_chunks() {
    const STEPS: usize = 4;
    let dir = tmp("plan");
    let mut w = LeRobotWriter::create(&dir, 10, [H, W, 3], STATE, ACT, "t").unwrap().with_action_plan(STEPS).unwrap();
    let e = w.add_frame(&image(0, 0), &[0.0; STATE], &[0.0; ACT]).unwrap_err().to_string();
    assert!(e.contains("action_plan") && e.contains("add_frame_with_plan"), "{e}");
    let e = w.add_frame_with_plan(&image(0, 0), &[0.0; STATE], &[0.0; ACT], &[0.0; ACT * (STEPS + 1)]);
    assert!(e.unwrap_err().to_string().contains("1 to 4 actions of 7"));
    let e = w.add_frame_with_plan(&image(0, 0), &[0.0; STATE], &[0.0; ACT], &[0.0; ACT - 1]);
    assert!(e.unwrap_err().to_string().contains("action_plan"));
    // Plans of every frame hold as many real steps as remain in a 5-frame episode (at most 4).
    let mut lens = Vec::new();
    for (ep, &len) in LENGTHS.iter().enumerate() {
        for t in 0..len {
            let real = (len - t).min(STEPS);
            let plan: Vec<f32> = (0..real).flat_map(|k| plan_action(ep, t, k)).collect();
            w.add_frame_with_plan(&image(ep, t), &[t as f32; STATE], &plan_action(ep, t, 0), &plan).unwrap();
            lens.push((ep, t, real));
        }
        w.end_episode(TASKS[ep]).unwrap();
    }
    w.finish().unwrap();

    let ds = LeRobotDataset::open(&dir).unwrap();
    assert_eq!(ds.plan_steps(), STEPS);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta/info.json")).unwrap()).unwrap();
    assert_eq!(info["features"]["action_plan"]["shape"], serde_json::json!([STEPS * ACT]));
    assert_eq!(info["features"]["action_plan"]["names"][ACT + 2], "step_1_action_2");
    assert_eq!(ds.stats()["action_plan"].min.len(), STEPS * ACT);
    assert_eq!(ds.stats()["action_plan_steps"].max, vec![STEPS as f64]);
    for (i, &(ep, t, real)) in lens.iter().enumerate() {
        // Chunks come from the plan (not the next recorded actions), masked past its real steps;
        // the padding repeats the last real step.
        let s = ds.sample(i, 3).unwrap();
        let want: Vec<f32> = (0..3).flat_map(|k| plan_action(ep, t, k.min(real - 1))).collect();
        assert_eq!(s.actions, want, "frame {i}");
        assert_eq!(s.action_mask, (0..3).map(|k| k < real).collect::<Vec<_>>(), "frame {i}");
        assert_eq!(ds.action(i).unwrap(), &plan_action(ep, t, 0)[..]);
    }
    let e = ds.sample(0, STEPS + 1).unwrap_err().to_string();
    assert!(e.contains("action_plan") && e.contains("--plan-steps 5"), "{e}");

    // A plan step count outside 1..=steps, or one of the pair of features alone, is refused.
    let info_path = dir.join("meta/info.json");
    let good = std::fs::read(&info_path).unwrap();
    edit_info(&dir, |v| {
        v["features"].as_object_mut().unwrap().remove("action_plan_steps");
    });
    assert!(open_err(&dir).contains("come together"));
    std::fs::write(&info_path, &good).unwrap();
    edit_info(&dir, |v| v["features"]["action_plan"]["shape"] = serde_json::json!([STEPS * ACT - 1]));
    let e = open_err(&dir);
    assert!(e.contains("info.json") && e.contains("action_plan"), "{e}");
    std::fs::write(&info_path, &good).unwrap();
    let data = dir.join("data/chunk-000/file-000.parquet");
    let (_, batches, _) = parquet_schema(&data);
    let b = &batches[0];
    let i = b.schema().index_of("action_plan_steps").unwrap();
    // The column is a plain float32 scalar, as LeRobot stores shape-[1] features.
    assert_eq!(b.column(i).data_type(), &arrow_schema::DataType::Float32);
    let bad =
        Arc::new(arrow_array::Float32Array::from_iter_values(
            (0..b.num_rows()).map(|r| if r == 2 { 0.0f32 } else { 1.0 }),
        ));
    let mut cols = b.columns().to_vec();
    cols[i] = bad;
    let b = RecordBatch::try_new(b.schema(), cols).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&data).unwrap(), b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    let e = open_err(&dir);
    assert!(e.contains("file-000.parquet") && e.contains("action_plan_steps") && e.contains("frame 2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
