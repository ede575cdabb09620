"""Golden fixtures for PaliGemma (SigLIP + linear projector + Gemma) from transformers.

Regenerate (CPU, ~10 s; versions pinned in tools/golden/requirements.txt):

    HF_HUB_OFFLINE=1 /work/venv/bin/python tools/golden/gen_paligemma.py tests/fixtures/paligemma

Writes into the output folder:
- config.json, model.safetensors: a tiny random PaliGemma exactly as `save_pretrained` writes it
  (hub-style tensor names). The config equals the Rust built-in `PaliGemmaConfig::tiny()`.
- case1.safetensors (batch of 1) and case2.safetensors (left-padded batch of 2, different
  images). Each holds the inputs (input_ids, attention_mask, token_type_ids, pixel_values), the
  vision tower's last hidden state (after post-LN), the projected image features, every
  vision and decoder layer output (forward hooks), the last hidden state (after the final
  norm), the logits, the two probes and `grad.<name>` for every parameter of the probe loss
  `Σ probe·last_hidden + Σ probe2·logits`.
- processor.safetensors: a uint8 image `[H, W, 3]` at the model size and the pixel values the
  SigLIP image processor (PIL backend) makes of it.

Every parameter is re-randomised (matrices N(0, 1/fan_in); 1-D tensors their default + N(0, 0.1²))
from numpy's RandomState, on one thread, in eager f32, with token_type_ids passed.
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

IMAGE_TOKEN = 100
BOS, EOS, PAD, NEWLINE = 2, 1, 0, 108


def tiny_config():
    return PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="gemma",
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=128,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            max_position_embeddings=512,
            hidden_act="gelu_pytorch_tanh",
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        ),
        image_token_index=IMAGE_TOKEN,
        projection_dim=64,
        hidden_size=64,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )


def randomise(model, rng):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=tuple(p.shape))
            else:
                v = p.detach().numpy().astype(np.float64) + rng.normal(0.0, 0.1, size=tuple(p.shape))
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def disk_name(name):
    """In-memory (v5) parameter name → the name save_pretrained writes."""
    for a, b in [
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ]:
        if name.startswith(a):
            return b + name[len(a):]
    raise ValueError(name)


def layout(prompt, suffix):
    """The processor's token layout: image tokens, bos, prompt, "\\n" (type 0) then suffix (type 1)."""
    ids = [IMAGE_TOKEN] * 16 + [BOS] + prompt + [NEWLINE]
    types = [0] * len(ids)
    ids += suffix
    types += [1] * len(suffix)
    return ids, types


def left_pad(rows):
    n = max(len(r[0]) for r in rows)
    ids, types, mask = [], [], []
    for i, t in rows:
        p = n - len(i)
        ids.append([PAD] * p + i)
        types.append([0] * p + t)
        mask.append([0] * p + [1] * len(i))
    return (torch.tensor(ids, dtype=torch.long), torch.tensor(types, dtype=torch.long), torch.tensor(mask, dtype=torch.long))


def vision_layers(model):
    vt = model.model.vision_tower
    return (vt.vision_model if hasattr(vt, "vision_model") else vt).encoder.layers


def run_case(model, rng, ids, types, mask, pixels, out_path, names):
    captured = {}
    hooks = []

    def hook(key):
        def f(_m, _inp, out):
            captured[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return f

    for i, layer in enumerate(vision_layers(model)):
        hooks.append(layer.register_forward_hook(hook(f"vision_layer.{i}")))
    for i, layer in enumerate(model.model.language_model.layers):
        hooks.append(layer.register_forward_hook(hook(f"text_layer.{i}")))
    hooks.append(model.model.vision_tower.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("vision_hidden", out.last_hidden_state.detach().clone())))
    hooks.append(model.model.multi_modal_projector.register_forward_hook(hook("image_features")))

    model.zero_grad(set_to_none=True)
    out = model(
        input_ids=ids,
        pixel_values=pixels,
        attention_mask=mask,
        token_type_ids=types,
        output_hidden_states=True,
        use_cache=False,
    )
    for h in hooks:
        h.remove()
    last = out.hidden_states[-1]
    logits = out.logits
    probe = torch.from_numpy(rng.uniform(-1, 1, size=tuple(last.shape)).astype(np.float32))
    probe2 = torch.from_numpy(rng.uniform(-1, 1, size=tuple(logits.shape)).astype(np.float32))
    loss = (probe * last).sum() + (probe2 * logits).sum()
    loss.backward()

    t = {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "pixel_values": pixels,
        "last_hidden": last.detach(),
        "logits": logits.detach(),
        "probe": probe,
        "probe2": probe2,
        "loss": loss.detach().reshape(1),
    }
    t.update(captured)
    for name, p in model.named_parameters():
        t["grad." + names[name]] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in t.items()}, out_path)
    return t


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/paligemma"
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.RandomState(0)

    cfg = tiny_config()
    model = PaliGemmaForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomise(model, rng)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "config.json"), os.path.join(out_dir, "config.json"))
        shutil.copy(os.path.join(tmp, "model.safetensors"), os.path.join(out_dir, "model.safetensors"))
        from safetensors import safe_open

        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
            on_disk = set(f.keys())
    names = {n: disk_name(n) for n, _ in model.named_parameters()}
    missing = set(names.values()) - on_disk
    assert not missing, f"save_pretrained wrote other names: {sorted(missing)[:5]} vs {sorted(on_disk)[:5]}"

    img = lambda: torch.from_numpy(rng.uniform(-1, 1, size=(1, 3, 32, 32)).astype(np.float32))

    ids, types, mask = left_pad([layout([5, 17, 42, 9, 77], [33, 64, EOS])])
    run_case(model, rng, ids, types, mask, img(), os.path.join(out_dir, "case1.safetensors"), names)

    rows = [layout([7, 8, 9, 10, 11, 12], [50, EOS]), layout([90, 3, 4], [])]
    ids, types, mask = left_pad(rows)
    pixels = torch.cat([img(), img()], 0)
    run_case(model, rng, ids, types, mask, pixels, os.path.join(out_dir, "case2.safetensors"), names)

    # The image processor at model size (no resize happens): rescale, normalise, channels first.
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from PIL import Image

    raw = rng.randint(0, 256, size=(32, 24, 3)).astype(np.uint8)
    proc = SiglipImageProcessorPil(size={"height": 32, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pv = proc(images=Image.fromarray(raw), return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (1, 3, 32, 24), pv.shape
    save_file({"image": torch.from_numpy(raw), "pixel_values": pv.float().contiguous()},
              os.path.join(out_dir, "processor.safetensors"))
    print("wrote", out_dir, sorted(os.listdir(out_dir)))


if __name__ == "__main__":
    main()
