"""Load our Hugging Face exports (`vlm4vla::models::export::write_hf_dir`) with transformers itself.

Not part of CI (CI has no Python); run once after changing the export (transformers 5.25 with
Pillow for the processors):

    VLM4VLA_EXPORT_CHECK_DIR=/tmp/export-check \
        cargo test --release --test export -- --ignored write_exports_for_the_transformers_check
    python tools/export_check.py /tmp/export-check

The test writes, per family (`qwen2_5_vl`, `paligemma`, `kosmos2`): `<family>-f32` and
`<family>-bf16`, the committed tiny checkpoint `tests/fixtures/tiny/<family>` loaded by our loader
and exported unchanged (config and processor files from the source), `<family>-sharded`, the same
in f32 as 40 kB shards with `model.safetensors.index.json`, and `<family>-builtin`, the built-in
tiny config exported without a source directory (generated config.json).

For each export this script checks, with transformers' own `AutoModelForImageTextToText`:
- loading reports no missing, unexpected or mismatched keys and logs no warning about weights;
- the parameters are in the exported dtype;
- source exports: every tensor of the state dict equals the original checkpoint's, loaded by
  transformers in the same dtype (bit for bit), and the forward pass on the committed reference
  inputs (`reference.safetensors`) gives the same last hidden state as the original;
  `AutoProcessor` loads from the export and tokenizes the reference instruction identically;
- built-in exports: a forward pass on random token ids runs and is finite, and the config's sizes
  are those in config.json.
Exits non-zero on any failure.
"""

import logging
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

FAMILIES = ["qwen2_5_vl", "paligemma", "kosmos2"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "sharded": torch.float32}


class Captured(logging.Handler):
    """Every warning transformers logs while loading."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load(path, dtype):
    handler = Captured()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, attn_implementation="eager", output_loading_info=True
        )
    finally:
        logger.removeHandler(handler)
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    weight_warnings = [r for r in handler.records if "weight" in r.lower() or "key" in r.lower()]
    return model, problems, weight_warnings


def forward_inputs(family):
    ref = load_file(os.path.join(ROOT, "tests/fixtures/tiny", family, "reference.safetensors"))
    inputs = {k: v for k, v in ref.items() if k not in ("last_hidden", "labels")}
    return inputs, ref["last_hidden"]


def last_hidden(model, inputs):
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, return_dict=True)
    return out.hidden_states[-1].float()


def check_source_export(family, tag, path, failures):
    dtype = DTYPES[tag]
    original_dir = os.path.join(ROOT, "tests/fixtures/tiny", family)
    model, problems, warnings = load(path, dtype)
    original, _, _ = load(original_dir, dtype)
    print(f"{family}-{tag}: {type(model).__name__}, loading info problems: {problems or 'none'}, "
          f"weight warnings: {warnings or 'none'}")
    if problems or warnings:
        failures.append(f"{family}-{tag}: loading problems {problems} {warnings}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {dtype}:
        failures.append(f"{family}-{tag}: parameter dtypes {dtypes}, expected {dtype}")
    ours, theirs = model.state_dict(), original.state_dict()
    if ours.keys() != theirs.keys():
        failures.append(f"{family}-{tag}: state dict keys differ: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    unequal = [k for k in theirs if k in ours and not torch.equal(ours[k], theirs[k])]
    print(f"  state dict: {len(theirs)} tensors compared with the original checkpoint, {len(unequal)} differ")
    if unequal:
        failures.append(f"{family}-{tag}: tensors differ from the original: {unequal[:5]}")

    inputs, reference = forward_inputs(family)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    a, b = last_hidden(model, inputs), last_hidden(original, inputs)
    diff = (a - b).abs().max().item()
    print(f"  forward: last hidden {tuple(a.shape)}, max |export - original| = {diff:.3g}", end="")
    if dtype == torch.float32:
        rel = ((a - reference).norm() / reference.norm()).item()
        print(f", relative error vs reference.safetensors = {rel:.3g}", end="")
        if rel > 1e-5:
            failures.append(f"{family}-{tag}: forward differs from the committed reference ({rel})")
    print()
    if diff != 0.0:
        failures.append(f"{family}-{tag}: forward differs from the original ({diff})")

    processor = AutoProcessor.from_pretrained(path)
    original_processor = AutoProcessor.from_pretrained(original_dir)
    text = "reach for the yellow ball"
    ids = processor.tokenizer(text)["input_ids"]
    same = ids == original_processor.tokenizer(text)["input_ids"]
    print(f"  processor: {type(processor).__name__}, instruction tokenizes identically: {same}")
    if not same:
        failures.append(f"{family}-{tag}: the exported tokenizer encodes differently")


def check_builtin_export(family, path, failures):
    import json

    model, problems, warnings = load(path, torch.float32)
    print(f"{family}-builtin: {type(model).__name__}, loading info problems: {problems or 'none'}, "
          f"weight warnings: {warnings or 'none'}")
    if problems or warnings:
        failures.append(f"{family}-builtin: loading problems {problems} {warnings}")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    text = model.config.get_text_config()
    want_vocab = cfg["text_config"]["vocab_size"]
    if text.vocab_size != want_vocab:
        failures.append(f"{family}-builtin: vocab {text.vocab_size} != {want_vocab}")
    n = sum(p.numel() for p in model.parameters())
    stored = sum(t.numel() for t in load_file(os.path.join(path, "model.safetensors")).values())
    if n != stored:
        failures.append(f"{family}-builtin: transformers has {n} parameters, the export stores {stored}")
    ids = torch.randint(3, 60, (1, 5))
    with torch.no_grad():
        decoder = model.model.language_model if hasattr(model, "model") else model.text_model.model
        out = decoder(input_ids=ids)
    finite = torch.isfinite(out.last_hidden_state).all().item()
    print(f"  {n} parameters (the export stores {stored}), text-only forward on 5 tokens finite: {finite}")
    if not finite:
        failures.append(f"{family}-builtin: forward not finite")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/export-check"
    failures = []
    for family in FAMILIES:
        for tag in ("f32", "bf16", "sharded"):
            check_source_export(family, tag, os.path.join(root, f"{family}-{tag}"), failures)
        check_builtin_export(family, os.path.join(root, f"{family}-builtin"), failures)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("all exports load in transformers without missing or unexpected keys and match the originals")


if __name__ == "__main__":
    main()
