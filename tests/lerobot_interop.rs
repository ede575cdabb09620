//! Both directions with LeRobot 0.6.1, from fixtures its own code made
//! (`tools/lerobot_interop/make.py`, committed under tests/fixtures/lerobot):
//! - datasets LeRobot's writer made (two non-square PNG cameras with 6-D actions, 14-D actions,
//!   JPEG frames; with `--features video`, AV1 and H.264 video cameras) read here as LeRobot's
//!   reader returns them;
//! - a dataset `vlm4vla collect` wrote, which LeRobot's reader loaded, read here the same way, and
//!   written again today with the same values and the same column schema.

use std::path::{Path, PathBuf};
use vlm4vla::data::{DatasetKeys, LeRobotDataset};
mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lerobot")
}

fn expected(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Every frame's values as LeRobot read them; the frames' pixels within `tolerance` (0: exact).
/// Returns, per camera, the largest and the mean absolute pixel difference.
fn check(ds: &LeRobotDataset, name: &str, cameras: &[&str], tolerance: u8) -> Vec<(u8, f64)> {
    let want = expected(name);
    let frames = want["frames"].as_array().unwrap();
    assert_eq!(ds.len(), frames.len(), "{name}: frames");
    assert_eq!(ds.episodes().len() as u64, want["total_episodes"].as_u64().unwrap(), "{name}");
    assert_eq!(ds.fps(), want["fps"].as_f64().unwrap(), "{name}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["index"].as_u64().unwrap() as usize, i, "{name}");
        assert_eq!(ds.state(i).unwrap(), floats(&f["state"]).as_slice(), "{name}: frame {i} state");
        assert_eq!(ds.action(i).unwrap(), floats(&f["action"]).as_slice(), "{name}: frame {i} action");
        assert_eq!(ds.instruction(i).unwrap(), f["task"].as_str().unwrap(), "{name}: frame {i} task");
        assert_eq!(ds.episode_of(i).unwrap().index as u64, f["episode_index"].as_u64().unwrap(), "{name}: {i}");
        assert_eq!(ds.frame_index(i).unwrap() as u64, f["frame_index"].as_u64().unwrap(), "{name}: {i}");
        assert_eq!(ds.timestamp(i).unwrap(), f["timestamp"].as_f64().unwrap() as f32, "{name}: {i}");
    }
    assert_eq!(ds.camera_keys(), cameras, "{name}");
    let mut diffs = Vec::new();
    for (c, key) in cameras.iter().enumerate() {
        let shape: Vec<usize> =
            want["cameras"][*key].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(ds.camera_size(c), (shape[0], shape[1]), "{name}: {key}");
        let rgb = std::fs::read(fixtures().join(format!("{name}.{key}.rgb"))).unwrap();
        let per = shape.iter().product::<usize>();
        assert_eq!(rgb.len(), per * ds.len());
        let (mut worst, mut sum) = (0u8, 0u64);
        for i in 0..ds.len() {
            let img = ds.decode_camera(i, c).unwrap();
            assert_eq!((img.height, img.width), (shape[0], shape[1]));
            for (a, b) in img.data.iter().zip(&rgb[i * per..(i + 1) * per]) {
                worst = worst.max(a.abs_diff(*b));
                sum += u64::from(a.abs_diff(*b));
            }
        }
        let mean = sum as f64 / rgb.len() as f64;
        println!("{name}: {key}: pixel difference from LeRobot's decode: largest {worst}, mean {mean:.4}");
        assert!(worst <= tolerance, "{name}: {key}: pixels differ from LeRobot's by up to {worst}");
        diffs.push((worst, mean));
    }
    diffs
}

fn keys(cameras: &[&str]) -> DatasetKeys {
    DatasetKeys { cameras: cameras.iter().map(|c| c.to_string()).collect(), ..DatasetKeys::default() }
}

#[test]
fn two_png_cameras_and_6d_actions_written_by_lerobot() {
    let cams = ["observation.images.front", "observation.images.wrist"];
    let ds = LeRobotDataset::open_with(fixtures().join("png_2cam_6d"), &keys(&cams)).unwrap();
    check(&ds, "png_2cam_6d", &cams, 0);
    assert_eq!((ds.state_dim(), ds.action_dim()), (6, 6));
    // Without a choice, two image features are an error that lists them.
    let err = LeRobotDataset::open(fixtures().join("png_2cam_6d")).unwrap_err().to_string();
    assert!(err.contains("observation.images.front") && err.contains("observation.images.wrist"), "{err}");
    // One camera of the two, by key.
    let wrist = LeRobotDataset::open_with(fixtures().join("png_2cam_6d"), &keys(&cams[1..])).unwrap();
    assert_eq!(wrist.camera_keys(), ["observation.images.wrist"]);
}

#[test]
fn fourteen_dimensional_actions_written_by_lerobot() {
    let cams = ["observation.images.top"];
    let ds = LeRobotDataset::open_with(fixtures().join("png_14d"), &keys(&cams)).unwrap();
    check(&ds, "png_14d", &cams, 0);
    assert_eq!((ds.state_dim(), ds.action_dim()), (14, 14));
}

/// JPEG decoders differ in their inverse DCT and upsampling (PIL's libjpeg-turbo here, the `image`
/// crate's zune-jpeg there), so decoded JPEG pixels may differ by a few levels; PNG is exact.
#[test]
fn jpeg_frames_written_by_lerobot() {
    let ds = LeRobotDataset::open(fixtures().join("jpeg_7d")).unwrap();
    check(&ds, "jpeg_7d", &["observation.image"], 8);
}

#[test]
fn what_we_write_is_what_lerobot_read() {
    let committed = fixtures().join("ours");
    let ds = LeRobotDataset::open(&committed).unwrap();
    check(&ds, "ours", &["observation.image"], 0);

    // The same collection today: the same values and the same column types and feature schema.
    let dir = std::env::temp_dir().join(format!("vlm4vla-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlm4vla"))
        .args(["collect", "--episodes", "2", "--image-size", "24", "--plan-steps", "4", "--seed", "7", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now = LeRobotDataset::open(&dir).unwrap();
    check(&now, "ours", &["observation.image"], 0);
    let schema = |root: &Path| {
        let f = std::fs::File::open(root.join("data/chunk-000/file-000.parquet")).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let s = r.schema();
        let cols: Vec<(String, String)> =
            s.fields().iter().map(|f| (f.name().clone(), format!("{:?}", f.data_type()))).collect();
        (cols, s.metadata().get("huggingface").cloned())
    };
    let (a, b) = (schema(&committed), schema(&dir));
    assert_eq!(a, b, "the data file's schema changed since LeRobot read it");
    assert!(a.1.as_deref().is_some_and(|m| m.contains("\"Image\"")), "the huggingface feature schema");
    let info = |root: &Path| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("meta/info.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("data_files_size_in_mb");
        v
    };
    assert_eq!(info(&committed)["features"], info(&dir)["features"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Our `meta/stats.json` against the statistics LeRobot's own functions compute for the same
/// state and actions: min, max, mean, std and count agree. (LeRobot's quantiles come from running
/// histograms averaged over episodes, ours are the exact quantiles of all frames; on 13-frame
/// episodes the two differ by up to the data's range, so they are not compared.)
#[test]
fn our_statistics_are_lerobots() {
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ours/meta/stats.json")).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ours.lerobot_stats.json")).unwrap()).unwrap();
    for feature in ["observation.state", "action"] {
        for stat in ["min", "max", "mean", "std", "count"] {
            let a: Vec<f64> = ours[feature][stat].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let b: Vec<f64> = theirs[feature][stat].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(a.len(), b.len(), "{feature}.{stat}");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{feature}.{stat}: ours {x}, LeRobot's {y}");
            }
        }
    }
}

/// Datasets LeRobot wrote train through `vlm4vla train`, the head sized from the dataset: JPEG
/// frames with 7-D actions (gripper last), two cameras with 6-D actions and 14-D actions (every
/// dimension continuous).
#[test]
fn lerobot_datasets_train_through_the_cli() {
    for (name, cameras, gripper, width) in [
        ("jpeg_7d", "[\"observation.image\"]", "last", 7),
        ("png_2cam_6d", "[\"observation.images.front\", \"observation.images.wrist\"]", "none", 6),
        ("png_14d", "[\"observation.images.top\"]", "none", 14),
    ] {
        train_on(name, cameras, gripper, width);
    }
}

fn train_on(name: &str, cameras: &str, gripper: &str, width: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("vlm4vla-interop-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(root.join("configs/paligemma-tiny.toml"))
        .unwrap()
        .replace("tests/fixtures/tiny/lerobot", &format!("tests/fixtures/lerobot/{name}"))
        .replace("cameras = [\"observation.image\"]", &format!("cameras = {cameras}"))
        .replace("[policy]\n", &format!("[policy]\ngripper = \"{gripper}\"\n"))
        .replace("steps = 30", "steps = 4")
        .replace("checkpoint_every = 15", "checkpoint_every = 0");
    assert!(text.contains(&format!("gripper = \"{gripper}\"")), "{text}");
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_vlm4vla")).current_dir(&root).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out_dir = dir.join("run");
    let config = dir.join("config.toml");
    let plan = run(&["train", "--config", config.to_str().unwrap(), "--plan"]);
    assert!(plan.contains("trainable"), "{name}: {plan}");
    run(&["train", "--config", config.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    let eval = run(&["eval", "--checkpoint", out_dir.to_str().unwrap(), "--batches", "1", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let frames = r["frames"].as_u64().unwrap();
    assert!((7..=8).contains(&frames), "{name}: one batch of up to 8 frames, got {frames}");
    assert_eq!(r["arm_mae"].as_array().unwrap().len(), if gripper == "last" { width - 1 } else { width }, "{name}");
    let p = vlm4vla::finetune::FinetunedPolicy::open(&out_dir).unwrap();
    assert_eq!(p.policy.config().action_dim, width, "{name}: the head is sized from the dataset");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The metadata-only open (what `train --plan` reads) agrees with a full open and reads no frame.
#[test]
fn metadata_only_open_reads_no_frame() {
    let cams = ["observation.images.front", "observation.images.wrist"];
    let full = LeRobotDataset::open_with(fixtures().join("png_2cam_6d"), &keys(&cams)).unwrap();
    let meta = LeRobotDataset::open_metadata(fixtures().join("png_2cam_6d"), &keys(&cams)).unwrap();
    assert_eq!(meta.len(), 0);
    assert!(!full.is_empty());
    assert_eq!(meta.camera_keys(), full.camera_keys());
    assert_eq!((meta.camera_size(0), meta.camera_size(1)), (full.camera_size(0), full.camera_size(1)));
    assert_eq!((meta.state_dim(), meta.action_dim()), (full.state_dim(), full.action_dim()));
    assert_eq!(meta.tasks(), full.tasks());
    assert_eq!(meta.episodes().len(), full.episodes().len());
    assert!(LeRobotDataset::open_metadata(fixtures().join("png_2cam_6d"), &keys(&["nope"])).is_err());
}

/// Video features written by LeRobot's video encoder, decoded here through FFmpeg and compared
/// with what LeRobot's reader decoded (PyAV 15.1 with its own FFmpeg 7.1: the frame nearest each
/// time, converted to RGB by swscale with bilinear filtering and the default BT.601 matrix). We
/// decode with the same decoders (libdav1d for AV1, FFmpeg's H.264 decoder) and the same swscale
/// settings through Debian 12's FFmpeg 5.1. Measured when this was written: identical, every
/// pixel of every frame (largest difference 0). The allowance of 1 level (and 0.01 on average)
/// leaves room for another FFmpeg's swscale rounding its YUV→RGB step differently, and no more:
/// a wrong frame (the neighbour in time) differs by far more.
#[cfg(feature = "video")]
mod video {
    use super::*;

    const MAX_DIFF: u8 = 1;
    const MEAN_DIFF: f64 = 0.01;

    fn check_video(ds: &LeRobotDataset, name: &str, cameras: &[&str]) {
        for (key, (_, mean)) in cameras.iter().zip(check(ds, name, cameras, MAX_DIFF)) {
            assert!(mean <= MEAN_DIFF, "{name}: {key}: mean pixel difference {mean}");
        }
    }

    #[test]
    fn av1_video_cameras_written_by_lerobot() {
        let cams = ["observation.images.front", "observation.images.wrist"];
        let ds = LeRobotDataset::open_with(fixtures().join("av1_2cam_7d"), &keys(&cams)).unwrap();
        assert!(ds.is_video(0) && ds.is_video(1));
        assert_eq!((ds.camera_size(0), ds.camera_size(1)), ((50, 66), (34, 46)));
        check_video(&ds, "av1_2cam_7d", &cams);
        assert_eq!((ds.state_dim(), ds.action_dim()), (7, 7));
        assert_eq!(ds.frame_bytes(), 0, "video frames stay in their files");
        // Without a choice, two camera features are an error that lists them.
        let err = LeRobotDataset::open(fixtures().join("av1_2cam_7d")).unwrap_err().to_string();
        assert!(err.contains("observation.images.front") && err.contains("observation.images.wrist"), "{err}");
    }

    #[test]
    fn h264_video_written_by_lerobot() {
        // The only camera feature is read without naming it.
        let ds = LeRobotDataset::open(fixtures().join("h264_6d")).unwrap();
        check_video(&ds, "h264_6d", &["observation.images.top"]);
        assert_eq!((ds.state_dim(), ds.action_dim()), (6, 6));
    }

    /// Frames decoded in any order, on any thread, are the frames decoded in order: the
    /// per-thread decoders' reuse of what they decoded last never hands out a stale frame.
    #[test]
    fn random_access_equals_sequential_access() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let cams = ["observation.images.front", "observation.images.wrist"];
        let ds = std::sync::Arc::new(LeRobotDataset::open_with(fixtures().join("av1_2cam_7d"), &keys(&cams)).unwrap());
        let n = ds.len();
        let in_order: Vec<Vec<Vec<u8>>> =
            (0..2).map(|c| (0..n).map(|i| ds.decode_camera(i, c).unwrap().data).collect()).collect();
        let mut order: Vec<usize> = (0..n).chain(0..n).chain((0..n).rev()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        for &i in &order {
            for (c, frames) in in_order.iter().enumerate() {
                assert!(ds.decode_camera(i, c).unwrap().data == frames[i], "frame {i} camera {c}");
            }
        }
        // The loader's workers, shuffled batches.
        let cfg = vlm4vla::data::LoaderConfig { batch_size: 4, chunk: 2, workers: 3, ..Default::default() };
        let loader = vlm4vla::data::Loader::new(ds.clone(), cfg).unwrap();
        for batch in loader.epoch(1) {
            let batch = batch.unwrap();
            for (b, &i) in batch.indices.iter().enumerate() {
                for (c, frames) in in_order.iter().enumerate() {
                    assert!(batch.cameras[c].image(b).data == frames[i], "loader: frame {i} camera {c}");
                }
            }
        }
    }

    /// A copy of fixture `name` in a fresh temporary directory.
    fn copy_of(name: &str, tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vlm4vla-video-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::copy_dir(&fixtures().join(name), &dir);
        dir
    }

    const TOP: &str = "observation.images.top";
    const MP4: &str = "videos/observation.images.top/chunk-000/file-000.mp4";

    /// Every error names the file, the camera and the frame; none panics.
    fn decode_error(ds: &LeRobotDataset, i: usize, file: &Path) -> String {
        let err = ds.decode_camera(i, 0).unwrap_err().to_string();
        let frame = format!("frame {i} ");
        assert!(err.contains(&file.display().to_string()) && err.contains(TOP) && err.contains(&frame), "{err}");
        err
    }

    #[test]
    fn missing_corrupt_and_truncated_videos_are_errors_naming_the_file() {
        let dir = copy_of("h264_6d", "bad");
        let mp4 = dir.join(MP4);
        let good = std::fs::read(&mp4).unwrap();
        // Missing: opening the dataset is the error, naming the file and the camera; a
        // metadata-only open (`train --plan`) reads no frames and still works.
        std::fs::remove_file(&mp4).unwrap();
        let err = LeRobotDataset::open(&dir).unwrap_err().to_string();
        assert!(err.contains(&mp4.display().to_string()) && err.contains(TOP), "{err}");
        assert!(err.contains("no such video file"), "{err}");
        assert!(LeRobotDataset::open_metadata(&dir, &Default::default()).is_ok());
        // Removed after the open: each frame is an error naming it.
        std::fs::write(&mp4, &good).unwrap();
        let ds = LeRobotDataset::open(&dir).unwrap();
        std::fs::remove_file(&mp4).unwrap();
        let err = decode_error(&ds, 3, &mp4);
        assert!(err.contains("no such video file"), "{err}");
        // Garbage.
        std::fs::write(&mp4, vec![0x5a; good.len()]).unwrap();
        let err = decode_error(&LeRobotDataset::open(&dir).unwrap(), 0, &mp4);
        assert!(err.contains("not a readable video file"), "{err}");
        // Truncated: LeRobot's mp4s keep their index first, so the file opens and the frames
        // whose data was cut are errors; none is handed out wrong.
        std::fs::write(&mp4, &good[..good.len() / 2]).unwrap();
        let ds = LeRobotDataset::open(&dir).unwrap();
        let want = std::fs::read(fixtures().join(format!("h264_6d.{TOP}.rgb"))).unwrap();
        let per = 38 * 50 * 3;
        let mut failed = 0;
        for i in 0..ds.len() {
            match ds.decode_camera(i, 0) {
                Ok(img) => {
                    let worst = img.data.iter().zip(&want[i * per..]).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
                    assert!(worst <= MAX_DIFF, "truncated: frame {i} decodes differently");
                }
                Err(_) => {
                    decode_error(&ds, i, &mp4);
                    failed += 1;
                }
            }
        }
        assert!(failed > 0, "a file cut in half still decodes every frame");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `h264_6d_late` (made by make.py) says its second episode lies 5 s further into the video
    /// than the video lasts.
    #[test]
    fn a_frame_beyond_the_video_is_an_error_naming_the_frame() {
        let root = fixtures().join("h264_6d_late");
        let ds = LeRobotDataset::open(&root).unwrap();
        let first = ds.episodes()[1].from;
        assert!(ds.decode_camera(first - 1, 0).is_ok());
        let err = decode_error(&ds, first, &root.join(MP4));
        assert!(err.contains(&format!("frame {first} at 6.200000 s")) && err.contains("tolerance"), "{err}");
    }

    /// An episodes file without the video columns of a chosen camera is an error naming the file
    /// and the column.
    #[test]
    fn episodes_without_video_columns_are_an_error() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = copy_of("h264_6d", "nocols");
        let path = dir.join("meta/episodes/chunk-000/file-000.parquet");
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        let keep: Vec<usize> = batches[0]
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.name().starts_with("videos/"))
            .map(|(i, _)| i)
            .collect();
        let batches: Vec<_> = batches.iter().map(|b| b.project(&keep).unwrap()).collect();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batches[0].schema(), None)
                .unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let err = LeRobotDataset::open(&dir).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("videos/observation.images.top/"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The metadata-only open (`train --plan`) takes the video cameras' sizes from `info.json`.
    #[test]
    fn metadata_only_open_of_a_video_dataset() {
        let cams = ["observation.images.front", "observation.images.wrist"];
        let meta = LeRobotDataset::open_metadata(fixtures().join("av1_2cam_7d"), &keys(&cams)).unwrap();
        assert_eq!(meta.len(), 0);
        assert_eq!((meta.camera_size(0), meta.camera_size(1)), ((50, 66), (34, 46)));
        assert_eq!((meta.state_dim(), meta.action_dim()), (7, 7));
    }

    /// Video datasets LeRobot wrote train through `vlm4vla train` (and plan), the head sized
    /// from the dataset.
    #[test]
    fn lerobot_video_datasets_train_through_the_cli() {
        train_on("av1_2cam_7d", "[\"observation.images.front\", \"observation.images.wrist\"]", "last", 7);
        train_on("h264_6d", "[\"observation.images.top\"]", "none", 6);
    }
}

/// Without the cargo feature `video`, a chosen video camera is an error that names it and says how
/// to build with video; cameras not chosen do not matter.
#[cfg(not(feature = "video"))]
#[test]
fn video_cameras_need_the_video_feature() {
    let err = LeRobotDataset::open(fixtures().join("h264_6d")).unwrap_err().to_string();
    assert!(err.contains("`observation.images.top`") && err.contains("--features video"), "{err}");
    assert!(err.contains("libavcodec-dev"), "{err}");
    let err = LeRobotDataset::open_metadata(fixtures().join("av1_2cam_7d"), &keys(&["observation.images.wrist"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`observation.images.wrist`") && err.contains("--features video"), "{err}");
    // A video feature beside the image cameras chosen is no error.
    let dir = std::env::temp_dir().join(format!("vlm4vla-novideo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("meta")).unwrap();
    let src = fixtures().join("png_14d");
    for sub in ["data/chunk-000", "meta/episodes/chunk-000"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
        }
    }
    for f in ["meta/stats.json", "meta/tasks.parquet"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("meta/info.json")).unwrap()).unwrap();
    info["features"]["observation.images.side"] =
        serde_json::json!({"dtype": "video", "shape": [20, 20, 3], "names": ["height", "width", "channels"]});
    std::fs::write(dir.join("meta/info.json"), info.to_string()).unwrap();
    let ds = LeRobotDataset::open_with(&dir, &keys(&["observation.images.top"])).unwrap();
    check(&ds, "png_14d", &["observation.images.top"], 0);
    let err = LeRobotDataset::open_with(&dir, &keys(&["observation.images.side"])).unwrap_err().to_string();
    assert!(err.contains("`observation.images.side`") && err.contains("--features video"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
