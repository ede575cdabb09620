//! The committed tiny Hugging Face-format checkpoints (`tests/fixtures/tiny/<family>/`, made by
//! `tools/tiny_checkpoints/make.py` with transformers) load the way a real checkpoint does:
//! resolved as a directory, `config.json` parsed and dispatched on `model_type`, the bf16
//! `model.safetensors` loaded by tensor name into the family's model, `tokenizer.json` read by our
//! tokenizer wrapper; the family's processor, built by `from_checkpoint` from the checkpoint's own
//! `preprocessor_config.json` / `processor_config.json` / `tokenizer_config.json` and tokenizer,
//! lays out the first frame of the tiny LeRobot dataset (`tests/fixtures/tiny/lerobot/`, written
//! by `vlm4vla collect`) and its task exactly as transformers' processor did, and one backbone forward matches transformers' last hidden state.
//!
//! Tolerance: `|ours − ref| ≤ 1e-5 + 1e-5·|ref|`, as the parity tests (both sides compute in f32
//! from the same bf16 weights).

use std::collections::HashMap;
use std::path::PathBuf;
use vlm4vla::data::{LeRobotDataset, RgbImage};
use vlm4vla::engine::io::{self, LoadOptions};
use vlm4vla::engine::{DType, Tensor};
use vlm4vla::models::common::checkpoint::{self, ModelType};
use vlm4vla::models::common::tokenizer::Tokenizer;
use vlm4vla::models::kosmos2::{Kosmos2, Kosmos2Processor};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaProcessor};
use vlm4vla::models::qwen2_5_vl::{Qwen25Vl, Qwen25VlProcessor};
use vlm4vla::models::{Backbone, BackboneInput};

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

/// The first frame of the tiny dataset and its task: the pair the references were made from.
fn first_frame() -> (RgbImage, String) {
    let ds = LeRobotDataset::open(tiny("lerobot")).unwrap();
    (ds.decode_image(0).unwrap(), ds.instruction(0).unwrap().to_string())
}

/// Resolve, check `model_type`, and open the tokenizer and the transformers reference.
fn open(family: &str, model_type: ModelType) -> (PathBuf, Tokenizer, HashMap<String, Tensor>) {
    let dir = tiny(family);
    let ckpt = checkpoint::resolve(dir.to_str().unwrap()).unwrap();
    assert_eq!(ckpt.dir, dir);
    assert_eq!(ckpt.model_type().unwrap(), model_type);
    for (name, _, dtype) in checkpoint::list_tensors(&ckpt.dir).unwrap() {
        assert_eq!(dtype, DType::BF16, "{family}: {name} is stored as {dtype}");
    }
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let reference = io::load(dir.join("reference.safetensors"), &LoadOptions::default()).unwrap().into_iter().collect();
    (ckpt.dir, tok, reference)
}

fn ids(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap()
}

fn floats(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

/// Largest `|a − b| / (atol + rtol·|b|)`; ≤ 1 passes.
fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shape");
    let (a, b) = (floats(ours), floats(reference));
    assert!(a.iter().all(|x| x.is_finite()), "{what}: not finite");
    let (mut worst, mut abs) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        abs = abs.max((x - y).abs());
        worst = worst.max((x - y).abs() / (atol + rtol * y.abs()));
    }
    println!("{what}: max abs err {abs:.3e} (tolerance ratio {worst:.3})");
    assert!(worst <= 1.0, "{what}: max abs err {abs:e} exceeds {atol:e} + {rtol:e}·|ref|");
}

/// The layout, the pixels and the last hidden state against transformers.
fn check(
    family: &str,
    model: &dyn Backbone,
    input: &BackboneInput,
    reference: &HashMap<String, Tensor>,
    type_key: &str,
) {
    assert_eq!(ids(&input.input_ids), ids(&reference["input_ids"]), "{family}: input_ids");
    assert_eq!(ids(&input.attention_mask), ids(&reference["attention_mask"]), "{family}: attention_mask");
    assert_eq!(ids(&input.token_type), ids(&reference[type_key]), "{family}: {type_key}");
    assert_close(&format!("{family} pixel_values"), &input.pixel_values, &reference["pixel_values"], 1e-6, 1e-6);
    let out = model.forward(input, None).unwrap();
    let l = input.input_ids.shape()[1];
    assert_eq!(out.hidden.shape(), [1, l, model.hidden_size()]);
    assert_eq!(out.appended, l..l);
    assert_close(&format!("{family} last hidden state"), &out.hidden, &reference["last_hidden"], 1e-5, 1e-5);
}

#[test]
fn lerobot_dataset_loads() {
    let ds = LeRobotDataset::open(tiny("lerobot")).unwrap();
    assert_eq!(ds.episodes().len(), 4);
    assert_eq!(ds.len(), 60);
    assert_eq!(ds.image_size(), (56, 56));
    assert_eq!((ds.state_dim(), ds.action_dim()), (7, 7));
    assert_eq!(ds.tasks().len(), 4);
    assert!(ds.tasks().iter().all(|t| !t.is_empty()));
    let (img, task) = first_frame();
    assert_eq!((img.width, img.height, img.data.len()), (56, 56, 56 * 56 * 3));
    assert_eq!(task, "reach for the yellow ball");
}

#[test]
fn qwen2_5_vl_tiny_checkpoint() {
    let (dir, tok, reference) = open("qwen2_5_vl", ModelType::Qwen2_5Vl);
    let model = Qwen25Vl::load(&dir, Some(DType::F32)).unwrap();
    let cfg = model.config();
    assert!(tok.vocab_size() <= cfg.text.vocab_size);
    let id = |t: &str| tok.require_id(t).unwrap();
    assert_eq!(cfg.image_token_id, id("<|image_pad|>"));
    assert_eq!(cfg.vision_start_token_id, id("<|vision_start|>"));
    assert_eq!(cfg.vision_end_token_id, id("<|vision_end|>"));
    let processor = Qwen25VlProcessor::from_checkpoint(&dir, cfg, &tok).unwrap();
    assert_eq!((processor.min_pixels, processor.max_pixels), (3136, 12544));
    let (img, task) = first_frame();
    let image = processor.image(&img).unwrap();
    assert_eq!(image.grid_thw, [1, 4, 4]);
    assert_eq!(ids(&reference["image_grid_thw"]), [1, 4, 4]);
    let layout = processor.prompt(&tok.encode(&task, false).unwrap(), &[image.grid_thw]);
    let input = processor.collate(&[(layout, vec![image])]).unwrap();
    check("qwen2_5_vl", &model, &input, &reference, "mm_token_type_ids");
}

#[test]
fn paligemma_tiny_checkpoint() {
    let (dir, tok, reference) = open("paligemma", ModelType::PaliGemma);
    let model = PaliGemma::load(&dir, Some(DType::F32)).unwrap();
    let cfg = model.config();
    assert!(tok.vocab_size() <= cfg.text.vocab_size);
    assert_eq!(cfg.image_token_id, tok.require_id("<image>").unwrap());
    assert_eq!(cfg.bos_token_id, tok.require_id("<bos>").unwrap());
    assert_eq!(cfg.eos_token_id, tok.require_id("<eos>").unwrap());
    assert_eq!(cfg.pad_token_id, tok.require_id("<pad>").unwrap());
    let processor = PaliGemmaProcessor::from_checkpoint(&dir, cfg, &tok).unwrap();
    assert_eq!((processor.image_size, processor.num_image_tokens), (56, 16));
    let (img, task) = first_frame();
    let prompt = processor.prompt(&tok.encode(&task, false).unwrap(), None);
    let img = processor.resize(&img).unwrap();
    let pixels = processor.pixel_values(&[&img.data]).unwrap();
    let input = processor.collate(&[prompt], pixels).unwrap();
    check("paligemma", &model, &input, &reference, "token_type_ids");
}

#[test]
fn kosmos2_tiny_checkpoint() {
    let (dir, tok, reference) = open("kosmos2", ModelType::Kosmos2);
    let model = Kosmos2::load(&dir, Some(DType::F32)).unwrap();
    let cfg = model.config();
    assert!(tok.vocab_size() <= cfg.text.vocab_size);
    assert_eq!(cfg.text.bos_token_id, tok.require_id("<s>").unwrap());
    assert_eq!(cfg.text.pad_token_id, tok.require_id("<pad>").unwrap());
    assert_eq!(cfg.text.eos_token_id, tok.require_id("</s>").unwrap());
    let processor = Kosmos2Processor::from_checkpoint(&dir, cfg, &tok).unwrap();
    assert_eq!(processor.first_image_id, tok.require_id("<unk>").unwrap() + 1);
    assert_eq!(processor.num_patch_index_tokens, 64);
    let (img, task) = first_frame();
    let img = processor.resize(&img).unwrap();
    let pixels = processor.preprocess(&img.data, img.height, img.width).unwrap();
    let input = processor.collate(&[pixels], &[tok.encode(&task, false).unwrap()]).unwrap();
    check("kosmos2", &model, &input, &reference, "image_embeds_position_mask");
}

// ----- bad processor files: errors name the file and the field or token -----------------------

/// A file name and what to do to its JSON (`None` from the closure deletes the file).
type Edit<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value) -> Option<()>);

/// A copy of `family`'s config, tokenizer and processor files (no weights) in a fresh directory,
/// with `edit` applied to the JSON of each file it names (`None` deletes the file).
fn edited(family: &str, tag: &str, edits: &[Edit]) -> PathBuf {
    let src = tiny(family);
    let dir = std::env::temp_dir().join(format!("vlm4vla-proc-{family}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") || name.ends_with(".jinja") {
            std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
        }
    }
    for (file, edit) in edits {
        let path = dir.join(file);
        let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        match edit(&mut value) {
            Some(()) => std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    dir
}

fn set(field: &'static str, to: serde_json::Value) -> impl Fn(&mut serde_json::Value) -> Option<()> {
    move |v| {
        let mut at = v;
        let keys: Vec<&str> = field.split('.').collect();
        for k in &keys[..keys.len() - 1] {
            at = at.get_mut(*k).unwrap();
        }
        at.as_object_mut().unwrap().insert(keys[keys.len() - 1].to_string(), to.clone());
        Some(())
    }
}

fn remove(field: &'static str) -> impl Fn(&mut serde_json::Value) -> Option<()> {
    move |v| {
        v.as_object_mut().unwrap().remove(field);
        Some(())
    }
}

fn delete(_: &mut serde_json::Value) -> Option<()> {
    None
}

/// Drop `token` from a `tokenizer.json`'s added tokens and vocabulary.
fn drop_token(token: &'static str) -> impl Fn(&mut serde_json::Value) -> Option<()> {
    move |v| {
        v["added_tokens"].as_array_mut().unwrap().retain(|t| t["content"] != token);
        if let Some(vocab) = v["model"]["vocab"].as_object_mut() {
            vocab.remove(token);
        }
        Some(())
    }
}

fn assert_mentions(err: String, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

fn qwen_err(tag: &str, edits: &[Edit]) -> String {
    let dir = edited("qwen2_5_vl", tag, edits);
    let cfg = vlm4vla::models::qwen2_5_vl::Qwen25VlConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let err = Qwen25VlProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

fn paligemma_err(tag: &str, edits: &[Edit]) -> String {
    let dir = edited("paligemma", tag, edits);
    let cfg = vlm4vla::models::paligemma::PaliGemmaConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let err = PaliGemmaProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

fn kosmos2_err(tag: &str, edits: &[Edit]) -> String {
    let dir = edited("kosmos2", tag, edits);
    let cfg = vlm4vla::models::kosmos2::Kosmos2Config::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let err = Kosmos2Processor::from_checkpoint(&dir, &cfg, &tok).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

const PRE: &str = "preprocessor_config.json";
const PROC: &str = "processor_config.json";

#[test]
fn processor_reads_nested_image_processor_when_preprocessor_config_is_absent() {
    let dir = edited("qwen2_5_vl", "nested", &[(PRE, &delete)]);
    let cfg = vlm4vla::models::qwen2_5_vl::Qwen25VlConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let p = Qwen25VlProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (3136, 12544));
    std::fs::remove_dir_all(&dir).unwrap();
    // The hub's older spelling (top-level min_pixels / max_pixels) wins over `size`.
    let dir = edited(
        "qwen2_5_vl",
        "pixels",
        &[(PRE, &set("min_pixels", 1000.into())), (PRE, &set("max_pixels", 50176.into()))],
    );
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let p = Qwen25VlProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (1000, 50176));
    assert_eq!(p.target_size(224, 224).unwrap(), (224, 224));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qwen2_5_vl_processor_errors_name_file_and_field() {
    let e = qwen_err("merge", &[(PRE, &set("merge_size", 3.into()))]);
    assert_mentions(e, &[PRE, "merge_size", "3"]);
    let e = qwen_err("longest", &[(PRE, &set("size.longest_edge", "big".into()))]);
    assert_mentions(e, &[PRE, "size.longest_edge", "non-negative integer"]);
    let e = qwen_err("mean", &[(PRE, &set("image_mean", serde_json::json!([0.5, 0.5])))]);
    assert_mentions(e, &[PRE, "image_mean", "3 numbers"]);
    let e = qwen_err("nested", &[(PRE, &delete), (PROC, &set("image_processor.patch_size", 16.into()))]);
    assert_mentions(e, &[PROC, "image_processor.patch_size", "16"]);
    let e = qwen_err("none", &[(PRE, &delete), (PROC, &delete)]);
    assert_mentions(e, &[PRE, "missing"]);
    let e = qwen_err("pad", &[("tokenizer_config.json", &set("pad_token", "<|nope|>".into()))]);
    assert_mentions(e, &["tokenizer.json", "<|nope|>"]);
    let e = qwen_err("im_start", &[("tokenizer.json", &drop_token("<|im_start|>"))]);
    assert_mentions(e, &["tokenizer.json", "<|im_start|>"]);
    let dir = edited("qwen2_5_vl", "json", &[]);
    std::fs::write(dir.join(PRE), b"{\"patch_size\": ").unwrap();
    let cfg = vlm4vla::models::qwen2_5_vl::Qwen25VlConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let e = Qwen25VlProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap_err().to_string();
    assert_mentions(e, &[PRE, "not valid JSON"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn paligemma_processor_errors_name_file_and_field() {
    let e = paligemma_err("seq", &[(PRE, &remove("image_seq_length")), (PROC, &delete)]);
    assert_mentions(e, &[PRE, "image_seq_length", "missing"]);
    let e = paligemma_err("seq17", &[(PRE, &set("image_seq_length", 17.into()))]);
    assert_mentions(e, &[PRE, "image_seq_length", "17"]);
    let e = paligemma_err("size", &[(PRE, &set("size.height", 64.into()))]);
    assert_mentions(e, &[PRE, "size", "64"]);
    let e = paligemma_err("std", &[(PRE, &set("image_std", serde_json::json!([0.5, 0.0, 0.5])))]);
    assert_mentions(e, &[PRE, "image_std"]);
    let e = paligemma_err("resample", &[(PRE, &set("resample", 7.into()))]);
    assert_mentions(e, &[PRE, "resample"]);
    let e = paligemma_err("image", &[("tokenizer.json", &drop_token("<image>"))]);
    assert_mentions(e, &["tokenizer.json", "<image>"]);
    let e = paligemma_err("bos", &[("tokenizer_config.json", &set("bos_token", 5.into()))]);
    assert_mentions(e, &["tokenizer_config.json", "bos_token"]);
}

#[test]
fn kosmos2_processor_errors_name_file_and_field() {
    let e = kosmos2_err("crop", &[(PRE, &set("crop_size.width", 28.into()))]);
    assert_mentions(e, &[PRE, "crop_size", "28"]);
    let e = kosmos2_err("edge", &[(PRE, &remove("size"))]);
    assert_mentions(e, &[PRE, "size.shortest_edge", "missing"]);
    let e = kosmos2_err("patches", &[(PROC, &set("num_patch_index_tokens", 65.into()))]);
    assert_mentions(e, &["tokenizer.json", "<patch_index_0064>"]);
    let e = kosmos2_err("unk", &[("tokenizer_config.json", &set("unk_token", "<nope>".into()))]);
    assert_mentions(e, &["tokenizer.json", "<nope>"]);
    let e = kosmos2_err("boi", &[("tokenizer.json", &drop_token("<image>"))]);
    assert_mentions(e, &["tokenizer.json", "<image>"]);
}

#[test]
fn processors_read_token_objects_and_resize_to_the_model_size() {
    // Hub tokenizer_config.json files often spell a special token as an AddedToken object.
    let pad = serde_json::json!({"content": "<pad>", "lstrip": false, "normalized": false, "special": true});
    let dir = edited("paligemma", "object", &[("tokenizer_config.json", &set("pad_token", pad))]);
    let cfg = vlm4vla::models::paligemma::PaliGemmaConfig::from_file(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let p = PaliGemmaProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap();
    assert_eq!(p.pad_token_id, tok.require_id("<pad>").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let odd = RgbImage::from_raw((0..70 * 42 * 3).map(|i| (i % 251) as u8).collect(), 70, 42, 3).unwrap();
    let img = p.resize(&odd).unwrap();
    assert_eq!((img.width, img.height), (56, 56));

    let (dir, tok, _) = open("kosmos2", ModelType::Kosmos2);
    let cfg = vlm4vla::models::kosmos2::Kosmos2Config::from_file(dir.join("config.json")).unwrap();
    let img = Kosmos2Processor::from_checkpoint(&dir, &cfg, &tok).unwrap().resize(&odd).unwrap();
    assert_eq!((img.width, img.height), (56, 56));

    let (dir, tok, _) = open("qwen2_5_vl", ModelType::Qwen2_5Vl);
    let cfg = vlm4vla::models::qwen2_5_vl::Qwen25VlConfig::from_file(dir.join("config.json")).unwrap();
    let p = Qwen25VlProcessor::from_checkpoint(&dir, &cfg, &tok).unwrap();
    // smart_resize: 42×70 rounds to 56×56 (multiples of 28 within [3136, 12544] pixels).
    let image = p.image(&odd).unwrap();
    assert_eq!(image.grid_thw, [1, 4, 4]);
    assert_eq!(image.pixel_values.shape(), [16, 3 * 2 * 14 * 14]);
}
