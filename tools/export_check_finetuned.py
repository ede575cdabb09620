"""Load `vlm4vla export` directories of fine-tuned policies with transformers itself.

Not part of CI (CI has no transformers); run after changing the fine-tuning or export path
(transformers 5.25 with Pillow, e.g. tools/tiny_checkpoints/requirements.txt):

    for f in qwen2_5_vl paligemma kosmos2; do
        cargo run --release -- train --config configs/$f-tiny.toml --output-dir /tmp/run-$f
        cargo run --release -- export --checkpoint /tmp/run-$f --out /tmp/ex-$f
    done
    python tools/export_check_finetuned.py /tmp/ex-qwen2_5_vl /tmp/ex-paligemma /tmp/ex-kosmos2

For each directory: `AutoModelForImageTextToText.from_pretrained` reports no missing, unexpected
or mismatched keys; transformers' own `save_pretrained` of the loaded model writes exactly our
tensors (names and values); `AutoProcessor` loads from the export. Exits non-zero on a failure.
"""

import os
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor


def check(d):
    model, info = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    ours = load_file(os.path.join(d, "model.safetensors"))
    with tempfile.TemporaryDirectory() as t:
        model.save_pretrained(t)
        theirs = load_file(os.path.join(t, "model.safetensors"))
    same = sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    AutoProcessor.from_pretrained(d)
    print(f"{d}: {type(model).__name__}, loading problems: {problems or 'none'}, re-saved by transformers == ours: {same}")
    return not problems and same


if __name__ == "__main__":
    results = [check(d) for d in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
