//! PaliGemma against transformers 5.24.0 (fixtures from `tools/golden/gen_paligemma.py`): image
//! features, every layer output, last hidden state and logits within 1e-5 (abs + rel), every
//! parameter gradient of the probe loss within 1e-4 × the global gradient norm, the processor's
//! pixels within 1e-6; plus the token layout, the real parameter count, gradient coverage, the
//! Backbone contract for appended rows and bad-input errors.

mod common;

use common::{assert_close, Nd};
use std::path::PathBuf;
use vlm4vla::engine::{DType, Device, ParamStore, SafeTensorsFile, Tensor};
use vlm4vla::models::paligemma::{
    canonical_name, fused_layout, num_params, param_shapes, preprocess, PaliGemma, PaliGemmaConfig, PaliGemmaProcessor,
};
use vlm4vla::models::{Backbone, BackboneInput};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma")
}

fn nd(t: &Tensor) -> Nd {
    Nd { shape: t.shape().to_vec(), data: t.to_vec::<f64>().unwrap() }
}

/// Largest `|a − b| / (1 + |b|)` (the abs + rel error at tolerance 1: what 1e-5 is compared to).
fn max_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.shape(), reference.shape());
    let a = ours.to_vec::<f64>().unwrap();
    let b = reference.to_vec::<f64>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

fn case_input(case: &SafeTensorsFile) -> BackboneInput {
    BackboneInput {
        pixel_values: case.get("pixel_values", None).unwrap(),
        image_grid_thw: None,
        input_ids: case.get("input_ids", None).unwrap(),
        attention_mask: case.get("attention_mask", None).unwrap(),
        token_type: case.get("token_type_ids", None).unwrap(),
    }
}

fn check_case(file: &str) {
    let model = PaliGemma::load(fixtures(), None).unwrap();
    let case = SafeTensorsFile::open(fixtures().join(file)).unwrap();
    let trace = model.forward_trace(&case_input(&case)).unwrap();
    let mut worst: Vec<(String, f64)> = Vec::new();
    let mut check = |what: &str, ours: &Tensor, key: &str| {
        let r = case.get(key, None).unwrap();
        assert_close(&format!("{file} {what}"), ours, &nd(&r), 1e-5, 1e-5);
        worst.push((what.to_string(), max_err(ours, &r)));
    };
    for (i, t) in trace.vision_layers.iter().enumerate() {
        check(&format!("vision layer {i}"), t, &format!("vision_layer.{i}"));
    }
    check("vision last hidden", &trace.vision_hidden, "vision_hidden");
    check("image features", &trace.image_features, "image_features");
    for (i, t) in trace.text_layers.iter().enumerate() {
        check(&format!("text layer {i}"), t, &format!("text_layer.{i}"));
    }
    check("last hidden", &trace.last_hidden, "last_hidden");
    check("logits", &trace.logits, "logits");
    assert_eq!(trace.vision_layers.len(), model.config().vision.num_hidden_layers);
    assert_eq!(trace.text_layers.len(), model.config().text.num_hidden_layers);

    let probe = case.get("probe", None).unwrap();
    let probe2 = case.get("probe2", None).unwrap();
    let loss = common::probe_loss(&trace.last_hidden, &trace.logits, &probe, &probe2);
    let ref_loss = case.get("loss", None).unwrap().to_vec::<f64>().unwrap()[0];
    let our_loss = loss.to_scalar::<f64>().unwrap();
    assert!((our_loss - ref_loss).abs() <= 1e-4 * (1.0 + ref_loss.abs()), "{file}: loss {our_loss} vs {ref_loss}");
    let grads = loss.backward().unwrap();

    let by_name = model.fused().split_grads(model.params(), &grads).unwrap();
    let grad_names: Vec<&str> = case.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(grad_names.len(), param_shapes(model.config()).len(), "{file}: one reference gradient per parameter");
    let mut global = 0.0;
    for g in &grad_names {
        let r = case.get(g, Some(DType::F64)).unwrap().to_vec::<f64>().unwrap();
        global += r.iter().map(|x| x * x).sum::<f64>();
    }
    let global = global.sqrt();
    let mut worst_grad = (String::new(), 0.0f64);
    for g in &grad_names {
        let name = canonical_name(&g["grad.".len()..]);
        let ours =
            by_name.get(&name).unwrap_or_else(|| panic!("{file}: no gradient for {name}")).to_vec::<f64>().unwrap();
        let r = case.get(g, Some(DType::F64)).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(ours.len(), r.len(), "{file}: gradient size of {name}");
        let err = ours.iter().zip(&r).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / global;
        assert!(err <= 1e-4, "{file}: gradient of {name}: max |ours − ref| = {err:e} × global norm {global}");
        if err > worst_grad.1 {
            worst_grad = (name, err);
        }
    }
    for (what, e) in &worst {
        println!("{file}: {what}: max abs+rel error {e:.2e}");
    }
    println!(
        "{file}: gradients: max |ours − ref| / global norm {:.2e} (at {}; global norm {global:.3})",
        worst_grad.1, worst_grad.0
    );
}

#[test]
fn parity_batch_of_one() {
    check_case("case1.safetensors");
}

#[test]
fn parity_left_padded_batch_of_two() {
    check_case("case2.safetensors");
}

#[test]
fn processor_pixels_match_siglip_image_processor() {
    let f = SafeTensorsFile::open(fixtures().join("processor.safetensors")).unwrap();
    let img = f.get("image", None).unwrap();
    let (h, w) = (img.shape()[0], img.shape()[1]);
    let px = preprocess(&img.to_vec::<u8>().unwrap(), h, w).unwrap();
    let r = f.get("pixel_values", None).unwrap();
    let r = r.reshape(&r.shape()[1..]).unwrap();
    assert_close("pixels", &px, &nd(&r), 1e-6, 0.0);
    println!("pixels: max abs error {:.2e}", max_err(&px, &r));
}

#[test]
fn prompt_layout_and_left_padded_collation() {
    let cfg = PaliGemmaConfig::tiny();
    let p = PaliGemmaProcessor::new(&cfg);
    let a = p.prompt(&[5, 17, 42, 9, 77], Some(&[33, 64]));
    let mut want = vec![100i64; 16];
    want.extend([2, 5, 17, 42, 9, 77, 108, 33, 64, 1]);
    assert_eq!(a.input_ids, want);
    let mut types = vec![0u8; 23];
    types.extend([1, 1, 1]);
    assert_eq!(a.token_type_ids, types);

    // The fixture's batch of 2 is exactly what the processor makes.
    let b1 = p.prompt(&[7, 8, 9, 10, 11, 12], Some(&[50]));
    let b2 = p.prompt(&[90, 3, 4], None);
    let case = SafeTensorsFile::open(fixtures().join("case2.safetensors")).unwrap();
    let batch = p.collate(&[b1, b2], case.get("pixel_values", None).unwrap()).unwrap();
    let ids = case.get("input_ids", None).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(batch.input_ids.to_vec::<i64>().unwrap(), ids);
    let mask = case.get("attention_mask", None).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(batch.attention_mask.to_vec::<i64>().unwrap(), mask);
    let tt = case.get("token_type_ids", None).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(batch.token_type.to_vec::<i64>().unwrap(), tt);

    // The real layout: 256 image tokens 257152, bos 2, prompt, "\n" = 108.
    let real = PaliGemmaProcessor::new(&PaliGemmaConfig::paligemma_3b_pt_224());
    let t = real.prompt(&[1000, 2000], None);
    assert_eq!(t.input_ids.len(), 260);
    assert!(t.input_ids[..256].iter().all(|&i| i == 257152));
    assert_eq!(t.input_ids[256..], [2, 1000, 2000, 108]);
    assert!(t.token_type_ids.iter().all(|&x| x == 0));
}

#[test]
fn real_config_parameter_count() {
    let cfg = PaliGemmaConfig::builtin("paligemma-3b-pt-224").unwrap();
    assert_eq!(num_params(&cfg), 2_923_466_480);
    let shapes = param_shapes(&cfg);
    let count = |prefix: &str| -> usize {
        shapes.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    assert_eq!(count("vision_tower."), 412_442_352);
    assert_eq!(count("multi_modal_projector."), 2_361_344);
    assert_eq!(count("language_model."), 2_508_662_784);
    assert_eq!(cfg.num_image_tokens(), 256);
}

#[test]
fn configs_parse_both_rope_spellings_and_hub_values() {
    let tiny = PaliGemmaConfig::from_file(fixtures().join("config.json")).unwrap();
    assert_eq!(tiny, PaliGemmaConfig::tiny());
    let hub = r#"{"architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
      "hidden_size": 2048, "ignore_index": -100, "image_token_index": 257152, "model_type": "paligemma",
      "pad_token_id": 0, "projection_dim": 2048,
      "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
        "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256, "num_key_value_heads": 1,
        "torch_dtype": "float32", "vocab_size": 257216, "rope_theta": 10000.0},
      "torch_dtype": "float32", "transformers_version": "4.41.0.dev0",
      "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
        "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256, "patch_size": 14,
        "projection_dim": 2048, "projector_hidden_act": "gelu_fast", "vision_use_head": false}}"#;
    assert_eq!(PaliGemmaConfig::from_json_str(hub).unwrap(), PaliGemmaConfig::paligemma_3b_pt_224());
    let v5 =
        hub.replace(r#""rope_theta": 10000.0"#, r#""rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}"#);
    assert_eq!(PaliGemmaConfig::from_json_str(&v5).unwrap().text.rope_theta, 500.0);
    let old = hub.replace(r#""rope_theta": 10000.0"#, r#""rope_theta": 250.0"#);
    assert_eq!(PaliGemmaConfig::from_json_str(&old).unwrap().text.rope_theta, 250.0);

    let err = PaliGemmaConfig::from_json_str(&hub.replace(r#""model_type": "gemma""#, r#""model_type": "llama""#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text_config.model_type") && err.contains("llama"), "{err}");
    let err =
        PaliGemmaConfig::from_json_str(&hub.replace(r#""model_type": "paligemma""#, r#""model_type": "kosmos-2""#))
            .unwrap_err()
            .to_string();
    assert!(err.contains("model_type") && err.contains("kosmos-2"), "{err}");
    let err = PaliGemmaConfig::from_json_str(&hub.replace(r#""patch_size": 14"#, r#""patch_size": "14""#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vision_config.patch_size"), "{err}");
    assert!(PaliGemmaConfig::builtin("paligemma-9b").is_err());
}

/// Both spellings of the vision tower load to the same model (hub `vision_tower.vision_model.*`
/// and save_pretrained's `vision_tower.*`, used by the fixture).
#[test]
fn hub_and_save_pretrained_names_load_alike() {
    let st = SafeTensorsFile::open(fixtures().join("model.safetensors")).unwrap();
    assert!(st.names().iter().any(|n| n.starts_with("vision_tower.encoder.")));
    let mut hub = ParamStore::new();
    for n in st.names() {
        hub.insert(canonical_name(n), &st.get(n, None).unwrap()).unwrap();
    }
    assert!(hub.contains("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"));
    let a = PaliGemma::from_params(PaliGemmaConfig::tiny(), hub).unwrap();
    let b = PaliGemma::load(fixtures(), None).unwrap();
    let case = SafeTensorsFile::open(fixtures().join("case1.safetensors")).unwrap();
    let input = case_input(&case);
    let ha = a.forward(&input, None).unwrap().hidden.to_vec::<f32>().unwrap();
    let hb = b.forward(&input, None).unwrap().hidden.to_vec::<f32>().unwrap();
    assert_eq!(ha, hb);
    // Backbone::forward's hidden states are forward_trace's last hidden.
    let reference = case.get("last_hidden", None).unwrap();
    assert_close(
        "backbone hidden",
        &Tensor::from_vec(ha, reference.shape(), Device::Cpu).unwrap(),
        &nd(&reference),
        1e-5,
        1e-5,
    );
}

fn tiny_batch(model: &PaliGemma, seed: u64) -> BackboneInput {
    let p = PaliGemmaProcessor::new(model.config());
    let s = model.config().vision.image_size;
    let img = |k: u64| -> Vec<u8> { (0..s * s * 3).map(|i| ((i as u64 * 31 + k * 17 + seed) % 256) as u8).collect() };
    let (i1, i2) = (img(1), img(2));
    let px = p.pixel_values(&[&i1, &i2]).unwrap();
    p.collate(&[p.prompt(&[5, 6, 7, 8], Some(&[9])), p.prompt(&[11, 12], None)], px).unwrap()
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let model = PaliGemma::random(PaliGemmaConfig::tiny(), 3, DType::F32).unwrap();
    let input = tiny_batch(&model, 0);
    let t0 = std::time::Instant::now();
    let trace = model.forward_trace(&input).unwrap();
    let probe = Tensor::rand_uniform(-1.0, 1.0, trace.logits.shape(), DType::F32, Device::Cpu, 9).unwrap();
    let loss = trace.last_hidden.sum_all().unwrap().add(&trace.logits.mul(&probe).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let elapsed = t0.elapsed();
    let by_name = model.fused().split_grads(model.params(), &grads).unwrap();
    for (name, _) in model.fused().split(&model.params().trainable()).unwrap() {
        let g = by_name.get(&name).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(g.to_vec::<f32>().unwrap().iter().any(|&x| x != 0.0), "zero gradient for {name}");
    }
    assert_eq!(by_name.len(), param_shapes(model.config()).len());
    println!("tiny forward + backward on 2 images: {elapsed:?}");
    assert!(elapsed.as_secs_f64() < 2.0, "tiny forward+backward took {elapsed:?}");
}

/// Appended rows: prompt tokens never see them; they see the whole prompt and earlier appended
/// rows only.
#[test]
fn appended_rows_follow_the_backbone_contract() {
    let model = PaliGemma::random(PaliGemmaConfig::tiny(), 5, DType::F32).unwrap();
    let input = tiny_batch(&model, 1);
    let (b, l) = (input.input_ids.shape()[0], input.input_ids.shape()[1]);
    let h = model.hidden_size();
    let extra = Tensor::rand_normal(0.0, 1.0, &[b, 3, h], DType::F32, Device::Cpu, 2).unwrap();
    let with = model.forward(&input, Some(&extra)).unwrap();
    assert_eq!(with.appended, l..l + 3);
    assert_eq!(with.hidden.shape(), &[b, l + 3, h]);
    let without = model.forward(&input, None).unwrap();
    let prompt = with.hidden.narrow(1, 0, l).unwrap();
    assert_close("prompt rows ignore appended rows", &prompt, &nd(&without.hidden), 1e-6, 1e-6);

    // Changing the last appended row leaves the first two alone; changing a prompt token moves all.
    let mut e2 = extra.to_vec::<f32>().unwrap();
    for r in 0..b {
        for k in 0..h {
            e2[(r * 3 + 2) * h + k] += 1.0;
        }
    }
    let extra2 = Tensor::from_vec(e2, &[b, 3, h], Device::Cpu).unwrap();
    let with2 = model.forward(&input, Some(&extra2)).unwrap();
    let first_two = |t: &Tensor| t.narrow(1, l, 2).unwrap();
    assert_close("causal appended rows", &first_two(&with2.hidden), &nd(&first_two(&with.hidden)), 1e-6, 1e-6);
    let mut ids = input.input_ids.to_vec::<i64>().unwrap();
    ids[l - 2] = 40;
    let changed = BackboneInput { input_ids: Tensor::from_vec(ids, &[b, l], Device::Cpu).unwrap(), ..input.clone() };
    let moved = model.forward(&changed, Some(&extra)).unwrap();
    let d = first_two(&moved.hidden).sub(&first_two(&with.hidden)).unwrap().abs().unwrap().max(2).unwrap();
    assert!(d.to_vec::<f32>().unwrap()[..2].iter().all(|&x| x > 1e-6), "appended rows must see the prompt");
}

#[test]
fn bad_inputs_are_errors_naming_the_culprit() {
    let cfg = PaliGemmaConfig::tiny();
    let good = PaliGemma::random(cfg.clone(), 1, DType::F32).unwrap();
    let store = |skip: &str, replace: Option<(&str, Tensor)>| {
        let mut s = ParamStore::new();
        for (n, t) in &good.checkpoint_params().unwrap() {
            if n == skip {
                continue;
            }
            match &replace {
                Some((r, t2)) if n == *r => s.insert(n, t2).unwrap(),
                _ => s.insert(n, t).unwrap(),
            };
        }
        s
    };
    let missing = "language_model.model.layers.1.mlp.up_proj.weight";
    let err = PaliGemma::from_params(cfg.clone(), store(missing, None)).unwrap_err().to_string();
    assert!(err.contains(missing) && err.contains("missing") && err.contains("[96, 64]"), "{err}");

    let wrong = "vision_tower.vision_model.encoder.layers.0.self_attn.k_proj.weight";
    let t = Tensor::zeros(&[32, 31], DType::F32, Device::Cpu).unwrap();
    let err = PaliGemma::from_params(cfg.clone(), store("", Some((wrong, t)))).unwrap_err().to_string();
    assert!(err.contains(wrong) && err.contains("[32, 32]") && err.contains("[32, 31]"), "{err}");

    let mut extra = store("", None);
    extra
        .insert("vision_tower.vision_model.head.probe", &Tensor::zeros(&[1, 1, 32], DType::F32, Device::Cpu).unwrap())
        .unwrap();
    let err = PaliGemma::from_params(cfg.clone(), extra).unwrap_err().to_string();
    assert!(err.contains("vision_tower.vision_model.head.probe") && err.contains("unexpected"), "{err}");

    let err = PaliGemma::load(fixtures().join("nope"), None).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");

    // Images: channel count, zero size, wrong model size.
    let err = preprocess(&[0u8; 4 * 4 * 4], 4, 4).unwrap_err().to_string();
    assert!(err.contains("4 channels"), "{err}");
    let err = preprocess(&[], 0, 4).unwrap_err().to_string();
    assert!(err.contains("zero-size"), "{err}");
    let p = PaliGemmaProcessor::new(&cfg);
    let err = p.pixel_values(&[&[0u8; 16 * 16 * 3]]).unwrap_err().to_string();
    assert!(err.contains("images[0]") && err.contains("32×32×3"), "{err}");
    let mut input = tiny_batch(&good, 0);
    input.pixel_values = Tensor::zeros(&[2, 3, 16, 16], DType::F32, Device::Cpu).unwrap();
    let err = good.forward(&input, None).unwrap_err().to_string();
    assert!(err.contains("pixel_values") && err.contains("[2, 3, 16, 16]"), "{err}");

    // Token inputs: wrong number of image tokens, suffix before prefix, ids outside the vocab.
    let input = tiny_batch(&good, 0);
    let l = input.input_ids.shape()[1];
    let mut ids = input.input_ids.to_vec::<i64>().unwrap();
    let first_image = ids.iter().position(|&i| i == 100).unwrap();
    ids[first_image] = 3;
    let bad = BackboneInput { input_ids: Tensor::from_vec(ids, &[2, l], Device::Cpu).unwrap(), ..input.clone() };
    let err = good.forward(&bad, None).unwrap_err().to_string();
    assert!(err.contains("input_ids") && err.contains("image tokens"), "{err}");
    let mut ids = input.input_ids.to_vec::<i64>().unwrap();
    ids[l - 1] = 500;
    let bad = BackboneInput { input_ids: Tensor::from_vec(ids, &[2, l], Device::Cpu).unwrap(), ..input.clone() };
    let err = good.forward(&bad, None).unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("vocabulary"), "{err}");
    let mut tt = input.token_type.to_vec::<u8>().unwrap();
    tt[l - 5] = 1; // a prompt token marked suffix, with prefix tokens after it
    let bad = BackboneInput { token_type: Tensor::from_vec(tt, &[2, l], Device::Cpu).unwrap(), ..input };
    let err = good.forward(&bad, None).unwrap_err().to_string();
    assert!(err.contains("token_type_ids"), "{err}");
}

/// The same model in bf16 runs (pixels and image features cast to the weight dtype, the embedding
/// scale rounded to bf16) and stays close to f32.
#[test]
fn bf16_parameters_run_close_to_f32() {
    let mut model = PaliGemma::random(PaliGemmaConfig::tiny(), 7, DType::F32).unwrap();
    let input = tiny_batch(&model, 2);
    let reference = model.forward(&input, None).unwrap().hidden;
    model.params_mut().to_dtype(DType::BF16).unwrap();
    assert_eq!(model.dtype().unwrap(), DType::BF16);
    let hidden = model.forward(&input, None).unwrap().hidden;
    assert_eq!(hidden.dtype(), DType::BF16);
    let diff =
        hidden.to_dtype(DType::F32).unwrap().sub(&reference).unwrap().norm_l2().unwrap().to_scalar::<f64>().unwrap();
    let rel = diff / reference.norm_l2().unwrap().to_scalar::<f64>().unwrap();
    println!("bf16 vs f32 last hidden: relative error {rel:.2e}");
    assert!(rel < 3e-2, "bf16 relative error {rel}");
}

/// Parameter groups cover the model as MODELS.md splits it, and a frozen vision tower gets no
/// gradient while the rest still does.
#[test]
fn groups_and_freezing() {
    use vlm4vla::models::ParamGroup;
    let mut model = PaliGemma::random(PaliGemmaConfig::tiny(), 4, DType::F32).unwrap();
    assert_eq!(model.group_of("vision_tower.encoder.layers.0.mlp.fc1.weight"), ParamGroup::Vision);
    assert_eq!(model.group_of("multi_modal_projector.linear.bias"), ParamGroup::Connector);
    assert_eq!(model.group_of("language_model.model.embed_tokens.weight"), ParamGroup::Embeddings);
    assert_eq!(model.group_of("language_model.model.layers.1.mlp.up_proj.weight"), ParamGroup::LanguageModel);
    let frozen = model.params_mut().freeze_prefix("vision_tower.");
    let held = fused_layout(model.config()).fused_shapes(&param_shapes(model.config()));
    assert_eq!(frozen, held.iter().filter(|(n, _)| n.starts_with("vision_tower.")).count());
    let input = tiny_batch(&model, 3);
    let grads = model.forward(&input, None).unwrap().hidden.sum_all().unwrap().backward().unwrap();
    for (name, t) in model.params().iter() {
        assert_eq!(grads.get(t).is_some(), !name.starts_with("vision_tower."), "{name}");
    }
}
