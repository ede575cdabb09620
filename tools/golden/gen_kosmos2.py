"""Golden fixtures for Kosmos-2 (tests/parity_kosmos2.rs).

Regenerate (CPU, seconds, offline):

    HF_HUB_OFFLINE=1 /work/venv/bin/python tools/golden/gen_kosmos2.py tests/fixtures/kosmos2

Versions are pinned in tools/golden/requirements.txt (torch 2.15.0, transformers 5.24.0).

What it writes into the output folder:
- config.json, weights.safetensors: a tiny random `Kosmos2ForConditionalGeneration` as
  `save_pretrained` writes it (hub tensor names, tied lm_head left out), every parameter
  re-randomised (matrices N(0, 1/fan_in), 1-D tensors default ± N(0, 0.1²)).
- pixels.safetensors: two uint8 images at the model size (`image.{0,1}`, [H, W, 3]) and what
  `CLIPImageProcessor` makes of them (`pixel_values.{0,1}`, [3, H, W] f32).
- case_b1.safetensors, case_b2.safetensors: inputs (pixel_values, input_ids, attention_mask,
  image_embeds_position_mask, the probes), outputs (`image_features` = connector output,
  `vision_layer.{i}`, `layer.{i}` = every decoder block output from forward hooks,
  `last_hidden`, `logits`) and `grad.<param name>` for every parameter, of the loss
  `Σ probe·last_hidden + Σ probe2·logits`. Case b2 is a left-padded batch of two different
  images and prompt lengths; its probes are zero on padded rows (transformers' padded query
  rows attend to an arbitrary set of keys, and nothing real depends on them).

The prompt layout is the processor's: `[0, <image>, 4..4+Q, </image>, prompt…]` where the tiny
vocab has no room for ids 64003/64004, so `<image>` = vocab − 2 and `</image>` = vocab − 1 (the
Rust processor uses the same rule for vocabularies smaller than the real one).
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

torch.set_num_threads(1)
torch.manual_seed(0)

VOCAB = 128
LATENT = 8
IMAGE = 28
PATCH = 7


def tiny_config():
    text = dict(
        vocab_size=VOCAB,
        max_position_embeddings=64,
        embed_dim=64,
        layers=2,
        ffn_dim=96,
        attention_heads=4,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        layer_norm_eps=1e-5,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
        image_size=IMAGE,
        patch_size=PATCH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )
    return Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=LATENT)


def rerandomise(model, rng):
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if p.dim() >= 2:
                fan_in = int(np.prod(shape[1:]))
                v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
            elif name.endswith("class_embedding"):
                v = rng.normal(0.0, 1.0, size=shape)
            elif name.endswith(".weight"):
                v = 1.0 + rng.normal(0.0, 0.1, size=shape)
            else:
                v = rng.normal(0.0, 0.1, size=shape)
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def prompt_ids(prompt):
    return [0, VOCAB - 2] + list(range(4, 4 + LATENT)) + [VOCAB - 1] + prompt


def collate(prompts):
    """Left-pad with 1 (the pad id), as the Rust processor does."""
    seqs = [prompt_ids(p) for p in prompts]
    n = max(len(s) for s in seqs)
    ids, att, img = [], [], []
    for s in seqs:
        pad = n - len(s)
        ids.append([1] * pad + s)
        att.append([0] * pad + [1] * len(s))
        img.append([0] * pad + [0, 0] + [1] * LATENT + [0] * (len(s) - 2 - LATENT))
    t = lambda x: torch.tensor(x, dtype=torch.int64)
    return t(ids), t(att), t(img)


def run_case(model, pixel_values, ids, att, img, rng):
    model.zero_grad(set_to_none=True)
    layer_out, vision_out = {}, {}
    hooks = []
    for i, layer in enumerate(model.text_model.model.layers):
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: layer_out.__setitem__(i, o)))
    for i, layer in enumerate(model.vision_model.model.encoder.layers):
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: vision_out.__setitem__(i, o)))
    out = model(
        pixel_values=pixel_values,
        input_ids=ids,
        attention_mask=att,
        image_embeds_position_mask=img,
        output_hidden_states=True,
    )
    for h in hooks:
        h.remove()
    # The last hidden state (after the final LayerNorm), recomputed from the last block's output
    # so it is the exact tensor lm_head reads.
    last_hidden = model.text_model.model.layer_norm(layer_out[len(layer_out) - 1])
    logits = out.logits
    assert torch.allclose(model.text_model.lm_head(last_hidden), logits)
    real = att.to(torch.float32).unsqueeze(-1)
    probe = torch.from_numpy(rng.uniform(-1, 1, size=last_hidden.shape).astype(np.float32)) * real
    probe2 = torch.from_numpy(rng.uniform(-1, 1, size=logits.shape).astype(np.float32)) * real
    loss = (probe * last_hidden).sum() + (probe2 * logits).sum()
    loss.backward()
    t = {
        "pixel_values": pixel_values,
        "input_ids": ids,
        "attention_mask": att,
        "image_embeds_position_mask": img,
        "probe": probe,
        "probe2": probe2,
        "image_features": out.image_outputs.pooler_output if out.image_outputs is not None else None,
        "last_hidden": last_hidden,
        "logits": logits,
        "loss": loss.reshape(1),
    }
    if t["image_features"] is None:
        t["image_features"] = model.get_image_features(pixel_values).pooler_output
    for i, o in layer_out.items():
        t[f"layer.{i}"] = o
    for i, o in vision_out.items():
        t[f"vision_layer.{i}"] = o
    for name, p in model.named_parameters():
        if name == "text_model.lm_head.weight":
            continue
        t[f"grad.{name}"] = p.grad
    return {k: v.detach().clone().contiguous() for k, v in t.items()}


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.RandomState(1234)
    cfg = tiny_config()
    model = Kosmos2ForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    rerandomise(model, rng)
    model.eval()

    tmp = os.path.join(out_dir, "_save")
    model.save_pretrained(tmp, safe_serialization=True)
    weights = load_file(os.path.join(tmp, "model.safetensors"))
    names = set(weights)
    params = {n for n, _ in model.named_parameters()} - {"text_model.lm_head.weight"}
    assert names == params, (names ^ params)
    save_file({k: v.contiguous() for k, v in sorted(weights.items())}, os.path.join(out_dir, "weights.safetensors"))
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)

    proc = CLIPImageProcessorPil(
        size={"height": IMAGE, "width": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )
    images = [rng.randint(0, 256, size=(IMAGE, IMAGE, 3)).astype(np.uint8) for _ in range(2)]
    pixels = [torch.from_numpy(proc(im, return_tensors="np")["pixel_values"][0]) for im in images]
    save_file(
        {
            "image.0": torch.from_numpy(images[0]),
            "image.1": torch.from_numpy(images[1]),
            "pixel_values.0": pixels[0].contiguous(),
            "pixel_values.1": pixels[1].contiguous(),
        },
        os.path.join(out_dir, "pixels.safetensors"),
    )

    ids, att, img = collate([[64, 17, 99, 5, 42]])
    case = run_case(model, pixels[0].unsqueeze(0), ids, att, img, rng)
    save_file(case, os.path.join(out_dir, "case_b1.safetensors"))

    ids, att, img = collate([[23, 77, 8, 120, 13, 56, 91], [33, 9, 102]])
    case = run_case(model, torch.stack(pixels), ids, att, img, rng)
    save_file(case, os.path.join(out_dir, "case_b2.safetensors"))
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"wrote {out_dir}: {total} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/kosmos2")
