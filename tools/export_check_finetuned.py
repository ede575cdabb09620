import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
for fam in ["qwen2_5_vl", "paligemma", "kosmos2"]:
    d = f"/tmp/ex-{fam}"
    m, info = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    sd = m.state_dict()
    ours = load_file(f"{d}/model.safetensors")
    # transformers' state dict names vs the file's: compare through save_pretrained's own mapping
    import tempfile, os
    with tempfile.TemporaryDirectory() as t:
        m.save_pretrained(t)
        theirs = load_file(os.path.join(t, "model.safetensors"))
    same = sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    AutoProcessor.from_pretrained(d)
    print(f"{fam}: {type(m).__name__}, loading problems: {problems or 'none'}, re-saved by transformers == our export: {same}")
