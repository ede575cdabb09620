//! Both directions with LeRobot 0.6.1, from fixtures its own code made
//! (`tools/lerobot_interop/make.py`, committed under tests/fixtures/lerobot):
//! - datasets LeRobot's writer made (two non-square PNG cameras with 6-D actions, 14-D actions,
//!   JPEG frames) read here exactly as LeRobot's reader returns them;
//! - a dataset `vlm4vla collect` wrote, which LeRobot's reader loaded, read here the same way, and
//!   written again today with the same values and the same column schema.

use std::path::{Path, PathBuf};
use vlm4vla::data::{DatasetKeys, LeRobotDataset};

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
fn check(ds: &LeRobotDataset, name: &str, cameras: &[&str], tolerance: u8) {
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
    for (c, key) in cameras.iter().enumerate() {
        let shape: Vec<usize> =
            want["cameras"][*key].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(ds.camera_size(c), (shape[0], shape[1]), "{name}: {key}");
        let rgb = std::fs::read(fixtures().join(format!("{name}.{key}.rgb"))).unwrap();
        let per = shape.iter().product::<usize>();
        assert_eq!(rgb.len(), per * ds.len());
        let mut worst = 0u8;
        for i in 0..ds.len() {
            let img = ds.decode_camera(i, c).unwrap();
            assert_eq!((img.height, img.width), (shape[0], shape[1]));
            for (a, b) in img.data.iter().zip(&rgb[i * per..(i + 1) * per]) {
                worst = worst.max(a.abs_diff(*b));
            }
        }
        println!("{name}: {key}: largest pixel difference from LeRobot's decode {worst}");
        assert!(worst <= tolerance, "{name}: {key}: pixels differ from LeRobot's by up to {worst}");
    }
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
    let dir = std::env::temp_dir().join(format!("vlm4vla-interop-train-{}", std::process::id()));
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
    run(&["train", "--config", dir.join("config.toml").to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
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
