//! The committed tiny Hugging Face-format checkpoints (`tests/fixtures/tiny/<family>/`, made by
//! `tools/tiny_checkpoints/make.py` with transformers) load the way a real checkpoint does:
//! resolved as a directory, `config.json` parsed and dispatched on `model_type`, the bf16
//! `model.safetensors` loaded by tensor name into the family's model, `tokenizer.json` read by our
//! tokenizer wrapper; the family's processor lays out the first frame of the tiny LeRobot dataset
//! (`tests/fixtures/tiny/lerobot/`, written by `vlm4vla collect`) and its task exactly as
//! transformers' processor did, and one backbone forward matches transformers' last hidden state.
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
use vlm4vla::models::qwen2_5_vl::{chat_layout, collate, preprocess, ChatTokens, Qwen25Vl};
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

fn single_id(tok: &Tokenizer, text: &str) -> i64 {
    match tok.encode(text, false).unwrap()[..] {
        [id] => id,
        ref other => panic!("{text:?} is {} tokens, expected one: {other:?}", other.len()),
    }
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
    let enc = |t: &str| tok.encode(t, false).unwrap();
    let chat = ChatTokens {
        im_start: id("<|im_start|>"),
        im_end: id("<|im_end|>"),
        pad: id("<|endoftext|>"),
        newline: single_id(&tok, "\n"),
        system: enc("system"),
        default_system: enc("You are a helpful assistant."),
        user: enc("user"),
        assistant: enc("assistant"),
        vision_start: id("<|vision_start|>"),
        vision_end: id("<|vision_end|>"),
        image_pad: id("<|image_pad|>"),
    };
    let (img, task) = first_frame();
    let image = preprocess(&img.data, img.height, img.width, cfg).unwrap();
    assert_eq!(image.grid_thw, [1, 4, 4]);
    assert_eq!(ids(&reference["image_grid_thw"]), [1, 4, 4]);
    let layout = chat_layout(&chat, &enc(&task), &[image.grid_thw], cfg);
    let input = collate(&[(layout, vec![image])], chat.pad).unwrap();
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
    let mut processor = PaliGemmaProcessor::new(cfg);
    // The prompt ends with the tokenizer's "\n" (108 in the real vocabulary, which
    // PaliGemmaProcessor::new assumes).
    processor.newline_token_id = single_id(&tok, "\n");
    let (img, task) = first_frame();
    let prompt = processor.prompt(&tok.encode(&task, false).unwrap(), None);
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
    let mut processor = Kosmos2Processor::new(cfg);
    // `<image>` / `</image>` come from the tokenizer (Kosmos2Processor::new knows the real ids and
    // the golden fixtures' `vocab − 2`, `vocab − 1`, not a tokenizer's own).
    processor.image_start_id = tok.require_id("<image>").unwrap();
    processor.image_end_id = tok.require_id("</image>").unwrap();
    let (img, task) = first_frame();
    let pixels = processor.preprocess(&img.data, img.height, img.width).unwrap();
    let input = processor.collate(&[pixels], &[tok.encode(&task, false).unwrap()]).unwrap();
    check("kosmos2", &model, &input, &reference, "image_embeds_position_mask");
}
