//! Qwen2.5-VL against transformers 5.24.0 (fixtures from tools/golden/gen_qwen2_5_vl.py): image
//! features, vision block and LM layer outputs, last hidden state and logits within 1e-5
//! (abs + rel), every parameter gradient within 1e-4 × the global gradient norm, the image
//! processor's pixels within 1e-6, the token layout, real-size parameter counts, and errors on
//! bad input.

mod common;

use common::{compare_rows, sq_norm};
use std::collections::HashMap;
use std::path::PathBuf;
use vlm4vla::engine::io::{self, LoadOptions};
use vlm4vla::engine::{DType, Device, ParamStore, Tensor};
use vlm4vla::models::qwen2_5_vl::{
    chat_layout, collate, num_params, param_shapes, preprocess, ChatTokens, Qwen25Vl, Qwen25VlConfig,
};
use vlm4vla::models::{Backbone, BackboneInput};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl")
}

fn load_map(file: &str) -> HashMap<String, Tensor> {
    io::load(fixtures().join(file), &LoadOptions::default()).unwrap().into_iter().collect()
}

fn weights() -> Vec<(String, Tensor)> {
    io::load(fixtures().join("weights.safetensors"), &LoadOptions::default()).unwrap()
}

fn store(ws: &[(String, Tensor)]) -> ParamStore {
    let mut ps = ParamStore::new();
    for (n, t) in ws {
        ps.insert(n.clone(), t).unwrap();
    }
    ps
}

fn fixture_config() -> Qwen25VlConfig {
    Qwen25VlConfig::from_file(fixtures().join("config.json")).unwrap()
}

fn fixture_model() -> Qwen25Vl {
    Qwen25Vl::from_params(fixture_config(), store(&weights())).unwrap()
}

/// Our model in `dtype` against the reference (computed by transformers in float64, stored as
/// f32). f64 checks the algorithm with a wide margin; f32 is the path that runs in practice.
fn parity_case(name: &str, dtype: DType) {
    let mut model = fixture_model();
    model.params_mut().to_dtype(dtype).unwrap();
    let t = load_map(&format!("case_{name}.safetensors"));
    let input = common::qwen_case_input(&t);
    let trace = model.forward_trace(&input).unwrap();
    // f64 reproduces transformers' float64 run to the f32 storage rounding of the reference, so it
    // is held 10× tighter than the brief's 1e-5 / 1e-4.
    let (tol, grad_tol) = if dtype == DType::F64 { (1e-6, 1e-6) } else { (1e-5, 1e-4) };
    let real: Vec<bool> = t["attention_mask"].to_vec::<i64>().unwrap().iter().map(|&m| m != 0).collect();
    let mut worst = HashMap::new();
    let feats = trace.image_features.as_ref().unwrap();
    worst.insert(
        "image_features",
        compare_rows(&format!("{name} image_features"), feats, &t["image_features"], None, tol),
    );
    let mut e = 0f64;
    for (i, blk) in trace.vision_blocks.iter().enumerate() {
        e = e.max(compare_rows(&format!("{name} vision block {i}"), blk, &t[&format!("vision.{i}")], None, tol));
    }
    worst.insert("vision_blocks", e);
    let mut e = 0f64;
    for (i, layer) in trace.layers.iter().enumerate() {
        e = e.max(compare_rows(&format!("{name} layer {i}"), layer, &t[&format!("layer.{i}")], Some(&real), tol));
    }
    worst.insert("layers", e);
    worst.insert(
        "last_hidden",
        compare_rows(&format!("{name} last_hidden"), &trace.last_hidden, &t["last_hidden"], Some(&real), tol),
    );
    worst.insert("logits", compare_rows(&format!("{name} logits"), &trace.logits, &t["logits"], Some(&real), tol));

    let probe = t["probe"].to_dtype(dtype).unwrap();
    let probe2 = t["probe2"].to_dtype(dtype).unwrap();
    let loss = common::probe_loss(&trace.last_hidden, &trace.logits, &probe, &probe2);
    let ref_loss = t["loss"].to_vec::<f64>().unwrap()[0];
    let our_loss = loss.to_scalar::<f64>().unwrap();
    assert!((our_loss - ref_loss).abs() <= 1e-4 * (1.0 + ref_loss.abs()), "{name}: loss {our_loss} vs {ref_loss}");
    let grads = loss.backward().unwrap();
    let global: f64 = t.iter().filter(|(k, _)| k.starts_with("grad.")).map(|(_, g)| sq_norm(g)).sum::<f64>().sqrt();
    let mut worst_grad = 0f64;
    let mut n = 0;
    let by_name = model.fused().split_grads(model.params(), &grads).unwrap();
    for (pname, _) in model.checkpoint_params().unwrap() {
        let reference =
            t.get(&format!("grad.{pname}")).unwrap_or_else(|| panic!("{name}: no reference grad for {pname}"));
        let ours = by_name.get(&pname).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        assert_eq!(ours.shape(), reference.shape(), "{pname}");
        let a = ours.to_vec::<f64>().unwrap();
        let b = reference.to_vec::<f64>().unwrap();
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / global;
        assert!(err <= grad_tol, "{name}: gradient of {pname}: max error {err:e} × global norm {global}");
        worst_grad = worst_grad.max(err);
        n += 1;
    }
    assert_eq!(n, t.keys().filter(|k| k.starts_with("grad.")).count());
    eprintln!(
        "qwen2_5_vl parity {name} ({dtype}): image_features {:.2e}, vision blocks {:.2e}, layers {:.2e}, last_hidden {:.2e}, \
         logits {:.2e} (max |Δ|/(1+|ref|)); gradients {worst_grad:.2e} × global norm {global:.3e}",
        worst["image_features"], worst["vision_blocks"], worst["layers"], worst["last_hidden"], worst["logits"]
    );
}

#[test]
fn parity_batch_of_one() {
    parity_case("b1", DType::F32);
    parity_case("b1", DType::F64);
}

#[test]
fn parity_left_padded_batch_of_two() {
    parity_case("b2", DType::F32);
    parity_case("b2", DType::F64);
}

#[test]
fn parity_window_padding() {
    parity_case("window", DType::F32);
    parity_case("window", DType::F64);
}

#[test]
fn processor_pixels_match_transformers() {
    let cfg = Qwen25VlConfig::tiny();
    let t = load_map("processor.safetensors");
    let img = &t["image"];
    let (h, w) = (img.shape()[0], img.shape()[1]);
    let out = preprocess(&img.to_vec::<u8>().unwrap(), h, w, &cfg).unwrap();
    let grid = t["image_grid_thw"].to_vec::<i64>().unwrap();
    assert_eq!(out.grid_thw.map(|x| x as i64).to_vec(), grid);
    let a = out.pixel_values.to_vec::<f64>().unwrap();
    let b = t["pixel_values"].to_vec::<f64>().unwrap();
    assert_eq!(out.pixel_values.shape(), t["pixel_values"].shape());
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
    eprintln!("qwen2_5_vl processor pixels: max |Δ| {err:.2e}");
    assert!(err <= 1e-6, "pixel error {err}");
}

#[test]
fn token_layout_matches_processor() {
    // Real ids for "Describe this image." at 224×224 (MODELS.md §1.3, from the real processor).
    let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
    let layout = chat_layout(&ChatTokens::qwen2_5_vl(), &[74785, 419, 2168, 13], &[[1, 16, 16]], &cfg);
    let mut want = vec![151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652];
    want.extend([151655; 64]);
    want.extend([151653, 74785, 419, 2168, 13, 151645, 198, 151644, 77091, 198]);
    assert_eq!(layout.input_ids.len(), 89);
    assert_eq!(layout.input_ids, want);
    let types: Vec<u8> = want.iter().map(|&t| u8::from(t == 151655)).collect();
    assert_eq!(layout.mm_token_type_ids, types);

    // The tiny fixtures' left-padded batch, rebuilt from its prompts and images.
    let cfg = Qwen25VlConfig::tiny();
    let chat = ChatTokens::tiny();
    let t = load_map("case_b2.safetensors");
    let ids = t["input_ids"].to_vec::<i64>().unwrap();
    let l = t["input_ids"].shape()[1];
    let input = common::qwen_case_input(&t);
    let grids = input.image_grid_thw.clone().unwrap();
    let mut samples = Vec::new();
    for (r, g) in grids.iter().enumerate() {
        let row = &ids[r * l..(r + 1) * l];
        let end = row.iter().rposition(|&x| x == chat.vision_end).unwrap();
        let prompt: Vec<i64> = row[end + 1..l - 5].to_vec();
        let n = g[0] * g[1] * g[2];
        let offset: usize = grids[..r].iter().map(|g| g[0] * g[1] * g[2]).sum();
        let pixels = input.pixel_values.narrow(0, offset, n).unwrap();
        let img = vlm4vla::models::qwen2_5_vl::ProcessedImage { pixel_values: pixels, grid_thw: *g };
        samples.push((chat_layout(&chat, &prompt, &[*g], &cfg), vec![img]));
    }
    let batch = collate(&samples, chat.pad).unwrap();
    assert_eq!(batch.input_ids.to_vec::<i64>().unwrap(), ids);
    assert_eq!(batch.attention_mask.to_vec::<i64>().unwrap(), t["attention_mask"].to_vec::<i64>().unwrap());
    assert_eq!(batch.token_type.to_vec::<i64>().unwrap(), t["mm_token_type_ids"].to_vec::<i64>().unwrap());
    assert_eq!(batch.image_grid_thw, input.image_grid_thw);
    assert_eq!(batch.pixel_values.to_vec::<f32>().unwrap(), input.pixel_values.to_vec::<f32>().unwrap());
}

#[test]
fn real_size_parameter_counts() {
    let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
    assert_eq!(num_params(&cfg), 3_754_622_976);
    let shapes = param_shapes(&cfg);
    let part = |p: &str| -> usize {
        shapes.iter().filter(|(n, _)| n.starts_with(p)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    assert_eq!(part("visual."), 668_684_288);
    assert_eq!(part("visual.merger."), 36_708_608);
    assert_eq!(part("model."), 3_085_938_688);
    assert!(!shapes.iter().any(|(n, _)| n == "lm_head.weight"));
    let cfg7 = Qwen25VlConfig::qwen2_5_vl_7b();
    assert!(param_shapes(&cfg7).iter().any(|(n, _)| n == "lm_head.weight"));
    assert_eq!(num_params(&cfg7), 8_292_166_656);
}

#[test]
fn hub_flat_config_parses() {
    // The layout of Qwen/Qwen2.5-VL-3B-Instruct's config.json.
    let json = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
      "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
      "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
      "intermediate_size": 11008, "max_position_embeddings": 128000, "max_window_layers": 70,
      "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36,
      "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
      "use_cache": true, "use_sliding_window": false,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2},
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
      "vocab_size": 151936
    }"#;
    let cfg = Qwen25VlConfig::from_json_str(json, "hub config.json").unwrap();
    assert_eq!(cfg, Qwen25VlConfig::qwen2_5_vl_3b());
    // The transformers 5.x layout of the fixtures equals the built-in tiny config.
    assert_eq!(fixture_config(), Qwen25VlConfig::tiny());
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let model = Qwen25Vl::random(Qwen25VlConfig::tiny(), 3, DType::F32).unwrap();
    let t = load_map("case_b2.safetensors");
    let input = common::qwen_case_input(&t);
    let start = std::time::Instant::now();
    let trace = model.forward_trace(&input).unwrap();
    let probe = Tensor::rand_normal(0., 1., trace.last_hidden.shape(), DType::F32, Device::Cpu, 1).unwrap();
    let probe2 = Tensor::rand_normal(0., 1., trace.logits.shape(), DType::F32, Device::Cpu, 2).unwrap();
    let loss = common::probe_loss(&trace.last_hidden, &trace.logits, &probe, &probe2);
    let grads = loss.backward().unwrap();
    eprintln!("qwen2_5_vl tiny forward + backward, 2 images (56×56, 56×112): {:?}", start.elapsed());
    let trainable = model.params().trainable();
    assert_eq!(trainable.len(), model.params().len());
    let by_name = model.fused().split_grads(model.params(), &grads).unwrap();
    for (name, _) in model.fused().split(&trainable).unwrap() {
        let g = by_name.get(&name).unwrap_or_else(|| panic!("no gradient for {name}"));
        // A key bias shifts every score of a query equally, so softmax removes it: its gradient
        // is zero in exact arithmetic (transformers' is rounding noise).
        if name.ends_with("self_attn.k_proj.bias") {
            continue;
        }
        assert!(sq_norm(g) > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn appended_rows_continue_the_prompt() {
    let model = fixture_model();
    let t = load_map("case_b2.safetensors");
    let input = common::qwen_case_input(&t);
    let (b, l) = (input.input_ids.shape()[0], input.input_ids.shape()[1]);
    // Appending the embedding of a text token must equal appending that token to the prompt.
    let token = 77i64;
    let embed = model.params().get("model.embed_tokens.weight").unwrap();
    let row = embed.narrow(0, token as usize, 1).unwrap();
    let extra = Tensor::cat(&vec![&row; b], 0).unwrap().reshape(&[b, 1, embed.shape()[1]]).unwrap();
    let out = model.forward(&input, Some(&extra)).unwrap();
    assert_eq!(out.appended, l..l + 1);
    let plain = model.forward(&input, None).unwrap();

    let ids = input.input_ids.to_vec::<i64>().unwrap();
    let mask = input.attention_mask.to_vec::<u8>().unwrap();
    let types = input.token_type.to_vec::<u8>().unwrap();
    let widen = |v: &[i64], x: i64| -> Vec<i64> { v.chunks(l).flat_map(|r| r.iter().copied().chain([x])).collect() };
    let widen8 = |v: &[u8], x: u8| -> Vec<u8> { v.chunks(l).flat_map(|r| r.iter().copied().chain([x])).collect() };
    let longer = BackboneInput {
        input_ids: Tensor::from_vec(widen(&ids, token), &[b, l + 1], Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(widen8(&mask, 1), &[b, l + 1], Device::Cpu).unwrap(),
        token_type: Tensor::from_vec(widen8(&types, 0), &[b, l + 1], Device::Cpu).unwrap(),
        ..input.clone()
    };
    let reference = model.forward(&longer, None).unwrap();
    let real: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
    let prompt = out.hidden.narrow(1, 0, l).unwrap();
    compare_rows("prompt rows with extra rows", &prompt, &plain.hidden, Some(&real), 1e-6);
    compare_rows(
        "appended row",
        &out.hidden.narrow(1, l, 1).unwrap(),
        &reference.hidden.narrow(1, l, 1).unwrap(),
        None,
        1e-5,
    );
}

fn err_text<T>(r: vlm4vla::engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let cfg = fixture_config();
    let ws = weights();

    let missing: Vec<_> = ws.iter().filter(|(n, _)| n != "visual.blocks.2.attn.proj.bias").cloned().collect();
    let e = err_text(Qwen25Vl::from_params(cfg.clone(), store(&missing)));
    assert!(e.contains("visual.blocks.2.attn.proj.bias") && e.contains("missing"), "{e}");

    let mut wrong = ws.clone();
    let i = wrong.iter().position(|(n, _)| n == "model.layers.1.self_attn.k_proj.weight").unwrap();
    wrong[i].1 = Tensor::zeros(&[48, 48], DType::F32, Device::Cpu).unwrap();
    let e = err_text(Qwen25Vl::from_params(cfg.clone(), store(&wrong)));
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.weight") && e.contains("[24, 48]") && e.contains("[48, 48]"),
        "{e}"
    );

    let mut extra = ws.clone();
    extra.push(("model.layers.9.mlp.up_proj.weight".into(), Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap()));
    let e = err_text(Qwen25Vl::from_params(cfg.clone(), store(&extra)));
    assert!(e.contains("model.layers.9.mlp.up_proj.weight") && e.contains("unexpected"), "{e}");

    // transformers 5.x in-memory names load too.
    let renamed: Vec<_> = ws
        .iter()
        .map(|(n, t)| {
            let n = n
                .strip_prefix("visual.")
                .map_or_else(|| n.replacen("model.", "model.language_model.", 1), |r| format!("model.visual.{r}"));
            (n, t.clone())
        })
        .collect();
    let m = Qwen25Vl::from_params(cfg.clone(), store(&renamed)).unwrap();
    assert!(m.params().contains("visual.merger.mlp.0.weight") && m.params().contains("model.norm.weight"));

    let text = std::fs::read_to_string(fixtures().join("config.json")).unwrap();
    let bad = text.replacen("\"model_type\": \"qwen2_5_vl\"", "\"model_type\": \"llava\"", 1);
    let e = err_text(Qwen25VlConfig::from_json_str(&bad, "bad/config.json"));
    assert!(e.contains("bad/config.json") && e.contains("model_type") && e.contains("llava"), "{e}");
    let bad = text.replacen("\"model_type\": \"qwen2_5_vl_text\"", "\"model_type\": \"gemma\"", 1);
    let e = err_text(Qwen25VlConfig::from_json_str(&bad, "c.json"));
    assert!(e.contains("text_config.model_type") && e.contains("gemma"), "{e}");

    let tiny = Qwen25VlConfig::tiny();
    let e = err_text(preprocess(&[0u8; 56 * 56 * 4], 56, 56, &tiny));
    assert!(e.contains("4 channels") && e.contains("expected 3"), "{e}");
    let e = err_text(preprocess(&[], 0, 56, &tiny));
    assert!(e.contains("zero size"), "{e}");
    let e = err_text(preprocess(&[0u8; 50 * 56 * 3], 50, 56, &tiny));
    assert!(e.contains("multiples of 28"), "{e}");

    // Inputs that disagree with the images.
    let model = Qwen25Vl::from_params(cfg, store(&ws)).unwrap();
    let t = load_map("case_b1.safetensors");
    let mut input = common::qwen_case_input(&t);
    input.image_grid_thw = Some(vec![[1, 4, 8]]);
    let e = err_text(model.forward(&input, None));
    assert!(e.contains("pixel_values") || e.contains("image tokens"), "{e}");
}

#[test]
fn real_size_window_plan_and_rope_index_match_the_worked_224_example() {
    use vlm4vla::models::qwen2_5_vl::{text::rope_index, vision::VisionPlan};
    let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
    let plan = VisionPlan::new(&cfg.vision, &[[1, 16, 16]]).unwrap();
    let mut want = Vec::new();
    for wy in 0..2 {
        for wx in 0..2 {
            for y in 0..4 {
                want.extend((0..4).map(|x| (wy * 4 + y) * 8 + wx * 4 + x));
            }
        }
    }
    assert_eq!(plan.window_index, want);
    assert_eq!(plan.cu_window_seqlens, vec![0, 64, 128, 192, 256]);
    assert_eq!(plan.cu_seqlens, vec![0, 256]);

    let layout = chat_layout(&ChatTokens::qwen2_5_vl(), &[74785, 419, 2168, 13], &[[1, 16, 16]], &cfg);
    let pos = rope_index(std::slice::from_ref(&layout.mm_token_type_ids), &[vec![1; 89]], &[[1, 16, 16]], 2).unwrap();
    let p = &pos[0];
    assert_eq!(p[14], [14; 3]);
    assert_eq!(p[15], [15, 15, 15]);
    assert_eq!(p[15 + 9], [15, 16, 16]);
    assert_eq!(p[15 + 63], [15, 22, 22]);
    assert_eq!(p[79], [23; 3]);
    assert_eq!(p[88], [32; 3]);
    // Left padding: positions start at the first real token, padded slots are 0.
    let padded = rope_index(
        &[[vec![0u8; 3], layout.mm_token_type_ids].concat()],
        &[[vec![0u8; 3], vec![1; 89]].concat()],
        &[[1, 16, 16]],
        2,
    )
    .unwrap();
    assert_eq!(&padded[0][..3], &[[0; 3]; 3]);
    assert_eq!(&padded[0][3..], p.as_slice());
}

#[test]
fn loads_checkpoint_directories() {
    let dir = std::env::temp_dir().join(format!("vlm4vla_qwen_ckpt_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("config.json"), dir.join("config.json")).unwrap();
    let ws = weights();
    let e = err_text(Qwen25Vl::load(&dir, None));
    assert!(e.contains("model.safetensors"), "{e}");

    // Sharded: vision tower in one file, the rest in another, as bf16 loaded as f32.
    let (vis, rest): (Vec<_>, Vec<_>) = ws.iter().partition(|(n, _)| n.starts_with("visual."));
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", &vis), ("model-00002-of-00002.safetensors", &rest)] {
        let bf: Vec<(String, Tensor)> =
            part.iter().map(|(n, t)| (n.clone(), t.to_dtype(DType::BF16).unwrap())).collect();
        let refs: Vec<(&str, &Tensor)> = bf.iter().map(|(n, t)| (n.as_str(), t)).collect();
        io::save(dir.join(shard), &refs, None).unwrap();
        for (n, _) in part.iter() {
            weight_map.insert(n.clone(), serde_json::Value::String(shard.into()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = Qwen25Vl::load(&dir, Some(DType::F32)).unwrap();
    assert_eq!(model.params().num_params(), num_params(model.config()));
    let w = model.params().get("visual.merger.mlp.0.weight").unwrap();
    assert_eq!(w.dtype(), DType::F32);
    let bf16 = model.params().get("model.norm.weight").unwrap().to_vec::<f32>().unwrap();
    let orig = ws.iter().find(|(n, _)| n == "model.norm.weight").unwrap().1.to_dtype(DType::BF16).unwrap();
    assert_eq!(bf16, orig.to_vec::<f32>().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
