//! `vlm4vla train` on the committed tiny Hugging Face checkpoints of all three families and the
//! tiny LeRobot dataset, through the CLI: the loss falls, a resume reproduces the uninterrupted
//! run exactly, `predict` and `eval` load the result; and the config's errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vlm4vla::engine::DType;
mod common;
use common::copy_dir;

const FAMILIES: [&str; 3] = ["qwen2_5_vl", "paligemma", "kosmos2"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vlm4vla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlm4vla")).current_dir(root()).args(args).output().expect("run vlm4vla")
}

fn ok(args: &[&str]) -> String {
    let out = vlm4vla(args);
    assert!(
        out.status.success(),
        "vlm4vla {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = vlm4vla(args);
    assert!(!out.status.success(), "vlm4vla {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-finetune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `(step, loss)` of every line of a run's metrics, as written (bit-exact text of the loss).
fn losses(dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn every_family_fine_tunes_resumes_exactly_and_loads_for_predict_and_eval() {
    let image = tmp("image.png");
    let mut rgb = vec![0u8; 40 * 30 * 3];
    rgb.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 7 % 251) as u8);
    std::fs::write(&image, vlm4vla::data::encode_png(&rgb, 40, 30).unwrap()).unwrap();
    for fam in FAMILIES {
        let config = format!("configs/{fam}-tiny.toml");
        let full = tmp(&format!("{fam}-full"));
        ok(&["train", "--config", &config, "--output-dir", full.to_str().unwrap()]);
        let l = losses(&full);
        assert_eq!(l.len(), 30, "{fam}: one metrics line per step");
        let mean = |s: &[(u64, String)]| s.iter().map(|(_, x)| x.parse::<f64>().unwrap()).sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&l[..5]), mean(&l[25..]));
        println!("{fam}: loss {first:.4} (steps 1-5) → {last:.4} (steps 26-30)");
        assert!(last < 0.9 * first, "{fam}: the loss should fall by 10% in 30 steps: {first} → {last}");

        // Resume from step 15 into a fresh directory: steps 16-30 and the final weights and
        // optimizer state must equal the uninterrupted run's, bit for bit.
        let resumed = tmp(&format!("{fam}-resumed"));
        copy_dir(&full.join("checkpoint-15"), &resumed.join("checkpoint-15"));
        ok(&[
            "train",
            "--config",
            &config,
            "--output-dir",
            resumed.to_str().unwrap(),
            "--resume",
            resumed.join("checkpoint-15").to_str().unwrap(),
        ]);
        assert_eq!(losses(&resumed), l[15..].to_vec(), "{fam}: resumed losses differ");
        for f in ["model.safetensors", "optimizer.safetensors"] {
            let a = std::fs::read(full.join("checkpoint-30").join(f)).unwrap();
            let b = std::fs::read(resumed.join("checkpoint-30").join(f)).unwrap();
            assert!(a == b, "{fam}: {f} after the resume differs from the uninterrupted run's");
        }

        let out = ok(&[
            "predict",
            "--checkpoint",
            full.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--instruction",
            "pick up the red block",
            "--state",
            "0.1,0.2,0.3,0,0,0,1",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let chunk = v["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), 4, "{fam}: policy.chunk rows");
        for row in chunk {
            let row: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(row.len(), 7);
            assert!(row.iter().all(|x| x.is_finite()));
            assert!(row[6] == 1.0 || row[6] == -1.0, "{fam}: the gripper is one of its two states: {row:?}");
        }
        assert_eq!(v["step"], 30);

        let out =
            ok(&["eval", "--checkpoint", full.to_str().unwrap(), "--batches", "2", "--batch-size", "4", "--json"]);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["frames"], 8, "{fam}: two batches of four");
        assert!(r["arm_rmse"].as_f64().unwrap().is_finite());
        let acc = r["gripper_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));

        // Export: the fine-tuned backbone under the checkpoint's own names reloads to the same
        // weights, bit for bit; the policy's own tensors beside it.
        let exported = tmp(&format!("{fam}-export"));
        ok(&["export", "--checkpoint", full.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
        let p = vlm4vla::finetune::FinetunedPolicy::open(&root().join(&full)).unwrap();
        let back = vlm4vla::models::registry::load_backbone(exported.to_str().unwrap(), DType::F32, 0).unwrap();
        let ours = p.policy.backbone().checkpoint_params().unwrap();
        let theirs: std::collections::BTreeMap<String, Vec<f32>> =
            back.checkpoint_params().unwrap().into_iter().map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect();
        assert_eq!(ours.len(), theirs.len(), "{fam}: tensor count after the round trip");
        for (name, t) in &ours {
            assert!(theirs[name] == t.to_vec::<f32>().unwrap(), "{fam}: `{name}` differs after export");
        }
        let head = vlm4vla::engine::io::SafeTensorsFile::open(exported.join("vla_policy.safetensors")).unwrap();
        let mut names: Vec<&str> = head.names();
        names.sort_unstable();
        let mut want: Vec<&str> = p.policy.params().names().iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(names, want, "{fam}: the policy's own tensors");
        let err = fails(&["export", "--checkpoint", full.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
        assert!(err.contains(exported.to_str().unwrap()), "{fam}: a non-empty out is refused by name: {err}");

        for d in [&full, &resumed, &exported] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
    std::fs::remove_file(&image).unwrap();
}

fn with_config(name: &str, edit: impl Fn(String) -> String) -> (PathBuf, PathBuf) {
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(root().join("configs/paligemma-tiny.toml")).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path)
}

#[test]
fn a_cuda_device_without_cuda_is_an_error_naming_the_device() {
    if !cfg!(feature = "cuda") {
        let (dir, cfg) = with_config("cuda", |t| t.replace("device = \"cpu\"", "device = \"cuda:0\""));
        let err =
            fails(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.join("run").to_str().unwrap()]);
        assert!(err.contains("cuda:0") && err.contains("--features cuda"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn config_errors_name_the_key() {
    for (edit, want) in [
        (("dtype = \"f32\"", "dtype = \"f16\""), "dtype"),
        (("device = \"cpu\"", "device = \"tpu\""), "device"),
        (("normalization = \"q01_q99\"", "normalization = \"zscore\""), "normalization"),
        (("cameras = [\"observation.image\"]", "cameras = [\"observation.images.wrist\"]"), "observation.images.wrist"),
        (("action_key = \"action\"", "action_key = \"actions\""), "missing feature `actions`"),
        (("prompt = \"What action should the robot take to {instruction}?\"", "prompt = \"Go\""), "prompt"),
        (("workers = 2", "workers = 2\nbogus = 1"), "bogus"),
    ] {
        let (dir, cfg) = with_config("errors", |t| {
            assert!(t.contains(edit.0), "the tiny config has `{}`", edit.0);
            t.replace(edit.0, edit.1)
        });
        let err =
            fails(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.join("run").to_str().unwrap()]);
        assert!(err.contains(want), "editing `{}` → `{}`: the error should name `{want}`: {err}", edit.0, edit.1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn every_example_config_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let cfg = vlm4vla::finetune::FinetuneConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            vlm4vla::finetune::ModelSource::resolve(&cfg.train.backbone)
                .map(|_| ())
                .or_else(|e| if path.to_string_lossy().contains("paper") { Ok(()) } else { Err(e) })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // A plan for every config, without a download or a GPU.
            let out = ok(&["train", "--config", path.to_str().unwrap(), "--plan"]);
            assert!(out.contains("activations (kept)") && out.contains("80 GiB"), "{}: {out}", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 6, "three tiny and three paper configs");
}

/// Two cameras of different sizes (56² and a 24×32 wrist view): every family trains on both
/// (Qwen2.5-VL as two images in the chat, PaliGemma and Kosmos-2 tiled into one frame), predicts
/// from two --image files, and refuses one.
#[test]
fn two_cameras_enter_every_family() {
    let main = tmp("cam-main.png");
    let wrist = tmp("cam-wrist.png");
    std::fs::write(&main, vlm4vla::data::encode_png(&[90u8; 56 * 56 * 3], 56, 56).unwrap()).unwrap();
    std::fs::write(&wrist, vlm4vla::data::encode_png(&[30u8; 24 * 32 * 3], 32, 24).unwrap()).unwrap();
    for fam in FAMILIES {
        let (dir, cfg) = with_config(&format!("2cam-{fam}"), |t| {
            t.replace("tests/fixtures/tiny/paligemma", &format!("tests/fixtures/tiny/{fam}"))
                .replace("tests/fixtures/tiny/lerobot", "tests/fixtures/tiny/lerobot_2cam")
                .replace(
                    "cameras = [\"observation.image\"]",
                    "cameras = [\"observation.image\", \"observation.images.wrist\"]",
                )
                .replace("steps = 30", "steps = 6")
                .replace("checkpoint_every = 15", "checkpoint_every = 0")
        });
        let run = dir.join("run");
        ok(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", run.to_str().unwrap()]);
        assert_eq!(losses(&run).len(), 6, "{fam}");
        let base = [
            "predict",
            "--checkpoint",
            run.to_str().unwrap(),
            "--instruction",
            "lift the ball",
            "--state",
            "0,0,0,0,0,0,1",
        ];
        let mut two = base.to_vec();
        two.extend(["--image", main.to_str().unwrap(), "--image", wrist.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(ok(&two).trim()).unwrap();
        assert_eq!(v["chunk"].as_array().unwrap().len(), 4, "{fam}");
        let mut one = base.to_vec();
        one.extend(["--image", main.to_str().unwrap()]);
        let err = fails(&one);
        assert!(err.contains("observation.images.wrist"), "{fam}: {err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
    let (dir, cfg) = with_config("2cam-default", |t| {
        t.replace("tests/fixtures/tiny/lerobot", "tests/fixtures/tiny/lerobot_2cam")
            .replace("cameras = [\"observation.image\"]\n", "")
    });
    // Without `cameras`, the dataset's `observation.image` is read (the writer's default key).
    ok(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.join("run").to_str().unwrap()]);
    std::fs::remove_dir_all(dir).unwrap();
    for f in [main, wrist] {
        std::fs::remove_file(f).unwrap();
    }
}

/// The plan counts what the run trains: its trainable total is the policy's, with the vision
/// tower frozen and only the last LM layer training.
#[test]
fn the_plan_counts_what_the_run_trains() {
    let (dir, cfg) = with_config("plan", |t| {
        t.replace(
            "train_modules = [\"vision\", \"connector\", \"language_model\", \"embeddings\", \"head\"]",
            "train_modules = [\"connector\", \"language_model\", \"head\"]\ntrain_llm_last_layers = 1",
        )
        .replace("steps = 30", "steps = 2")
    });
    let run = dir.join("run");
    let out = ok(&["train", "--config", cfg.to_str().unwrap(), "--plan"]);
    let trainable: usize = out
        .lines()
        .find(|l| l.trim_start().starts_with("trainable "))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|n| n.replace(',', "").parse().unwrap())
        .expect("a trainable total");
    assert!(out.contains("frozen") && out.contains("the last LM layers"), "{out}");
    ok(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", run.to_str().unwrap()]);
    let p = vlm4vla::finetune::FinetunedPolicy::open(&root().join(&run)).unwrap();
    assert_eq!(p.policy.num_params().1, trainable);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `dtype = "bf16"` on the CPU: bf16 parameters (f32 compute inside each op), f32 masters and
/// moments in the optimizer state, the loss falls.
#[test]
fn bf16_parameters_train_through_the_cli() {
    for fam in FAMILIES {
        let (dir, cfg) = with_config(&format!("bf16-{fam}"), |t| {
            t.replace("tests/fixtures/tiny/paligemma", &format!("tests/fixtures/tiny/{fam}"))
                .replace("dtype = \"f32\"", "dtype = \"bf16\"")
        });
        let run = dir.join("run");
        ok(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", run.to_str().unwrap()]);
        let l: Vec<f64> = losses(&run).iter().map(|(_, x)| x.parse().unwrap()).collect();
        let (first, last) = (l[..5].iter().sum::<f64>() / 5.0, l[25..].iter().sum::<f64>() / 5.0);
        println!("{fam} bf16: loss {first:.4} → {last:.4}");
        assert!(last < 0.9 * first, "{fam}: {first} → {last}");
        let ckpt = run.join("checkpoint-30");
        let model = vlm4vla::engine::io::SafeTensorsFile::open(ckpt.join("model.safetensors")).unwrap();
        for n in model.names() {
            assert_eq!(model.dtype(n).unwrap(), DType::BF16, "{fam}: `{n}`");
        }
        let opt = vlm4vla::engine::io::SafeTensorsFile::open(ckpt.join("optimizer.safetensors")).unwrap();
        let masters: Vec<&str> = opt.names().into_iter().filter(|n| n.ends_with(".master")).collect();
        assert_eq!(masters.len(), model.names().len(), "{fam}: one f32 master per trained tensor");
        for n in masters {
            assert_eq!(opt.dtype(n).unwrap(), DType::F32, "{fam}: `{n}`");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The paper's 224² frames give each real backbone its token count through the processor the
/// built-in configs carry (the real checkpoints' settings): Qwen2.5-VL 16×16 patches merged 2×2
/// into 64 tokens (within its min/max pixels), PaliGemma-224 256, Kosmos-2 its 64 latent queries.
#[test]
fn the_papers_224_frames_give_each_backbone_its_token_count() {
    let frame = vlm4vla::data::RgbImage { width: 320, height: 240, data: vec![128; 320 * 240 * 3] };
    for (name, image_id_count) in [("qwen2.5-vl-3b", 64), ("paligemma-3b-pt-224", 256), ("kosmos-2-patch14-224", 64)] {
        let source = vlm4vla::finetune::ModelSource::resolve(name).unwrap();
        let enc = source.encoder(vlm4vla::finetune::DEFAULT_PROMPT, Some(224)).unwrap();
        let input = enc.encode(&[vec![frame.clone()]], &["pick up the red block"]).unwrap();
        let ids = input.input_ids.to_vec::<i64>().unwrap();
        let types = input.token_type.to_vec::<u8>().unwrap();
        let marked = match &enc.processor {
            vlm4vla::finetune::Processor::Qwen25Vl(p) => ids.iter().filter(|&&t| t == p.chat.image_pad).count(),
            vlm4vla::finetune::Processor::PaliGemma(p) => ids.iter().filter(|&&t| t == p.image_token_id).count(),
            vlm4vla::finetune::Processor::Kosmos2(_) => types.iter().filter(|&&t| t == 1).count(),
        };
        assert_eq!(marked, image_id_count, "{name}: image positions for a 224² frame");
    }
}

#[test]
fn oversized_head_widths_and_prompts_are_errors_naming_the_field() {
    for (edit, want) in [
        (("trunk_out = 64", "trunk_out = 1000000000"), "trunk_out"),
        (("branch_hidden = [64, 32]", "branch_hidden = [64, 4000000000]"), "branch_hidden"),
        (("prompt = \"What action should the robot take to {instruction}?\"", "PROMPT"), "prompt"),
    ] {
        let long = format!("prompt = \"{}{{instruction}}\"", "x".repeat(5000));
        let (dir, cfg) = with_config("bounds", |t| t.replace(edit.0, &edit.1.replace("PROMPT", &long)));
        let err =
            fails(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", dir.join("run").to_str().unwrap()]);
        assert!(err.contains(want), "`{}`: {err}", edit.0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
