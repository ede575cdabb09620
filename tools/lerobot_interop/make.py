"""Interop fixtures between LeRobot 0.6.1 and vlm4vla, committed small under
tests/fixtures/lerobot/ so CI (no Python) checks both directions (tests/lerobot_interop.rs).

    python tools/lerobot_interop/make.py PATH/TO/vlm4vla   # from the repository root;
                                                          # tools/lerobot_interop/requirements.txt

1. Written by LeRobot's own writer (`LeRobotDataset.create` / `add_frame` / `save_episode` /
   `finalize`), read here by vlm4vla:
   - `png_2cam_6d`: two PNG cameras of different, non-square sizes, 6-D state and actions;
   - `png_14d`: one camera, 14-D state and actions (an ALOHA-like width);
   - `jpeg_7d`: one camera, 7-D actions; the frames LeRobot wrote re-encoded as JPEG in place (as
     datasets converted from JPEG sources store them);
   - `av1_2cam_7d`: two video cameras (mp4, AV1 through libsvtav1: LeRobot's default), non-square
     sides that are multiples of neither 14 nor 16, three episodes in one video file per camera,
     7-D actions;
   - `h264_6d`: one video camera (mp4, H.264 through libx264), 6-D actions; `h264_6d_late` is a
     copy whose last episode claims to start 5 s later in the video than it does (its frames'
     times fall beyond the end of the file).
2. Written by vlm4vla (`vlm4vla collect`), read by LeRobot's `LeRobotDataset`: `ours`.

For `ours`, `ours.lerobot_stats.json` also holds the statistics LeRobot's own functions compute
for its state and actions. Beside every dataset, `<name>.expected.json` holds what LeRobot's reader returns for every
frame (state, action, task, timestamp, indices) and `<name>.<camera>.rgb` the decoded frames
(uint8 HWC, frame after frame), which vlm4vla's reader must reproduce.
"""

import json
import os
import shutil
import subprocess
import sys
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from lerobot.datasets.lerobot_dataset import LeRobotDataset

OUT = "tests/fixtures/lerobot"


def write(name, cameras, state_dim, action_dim, episodes, seed, vcodec=None):
    """A dataset written by LeRobot's own writer; `vcodec` set: the cameras as video features
    (mp4) encoded with that codec, else as embedded PNG images."""
    root = os.path.join(OUT, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    dtype = "video" if vcodec else "image"
    features = {k: {"dtype": dtype, "shape": (h, w, 3), "names": ["height", "width", "channels"]} for k, (h, w) in cameras.items()}
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    video = {"use_videos": False}
    if vcodec:
        from lerobot.configs.video import RGBEncoderConfig

        video = {"use_videos": True, "rgb_encoder": RGBEncoderConfig(vcodec=vcodec)}
    ds = LeRobotDataset.create(repo_id=f"vlm4vla/{name}", fps=10, root=root, features=features, **video)
    rng = np.random.default_rng(seed)
    for ep, length in enumerate(episodes):
        for t in range(length):
            frame = {}
            for k, (h, w) in cameras.items():
                # Smooth images (gradients plus a moving square), so JPEG re-encoding stays close.
                y, x = np.mgrid[0:h, 0:w]
                img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), np.full_like(x, 40 * ep + 10 * t)], -1)
                img[(t % h) : (t % h) + 4, (2 * t % w) : (2 * t % w) + 4] = [250, 30, 30]
                frame[k] = img.astype(np.uint8)
            frame["observation.state"] = rng.normal(size=state_dim).astype(np.float32)
            frame["action"] = rng.uniform(-1, 1, size=action_dim).astype(np.float32)
            frame["task"] = f"task {ep}: pick up the {['red', 'blue', 'green'][ep % 3]} block"
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


def to_jpeg(root, key):
    for dirpath, _, files in os.walk(os.path.join(root, "data")):
        for f in files:
            path = os.path.join(dirpath, f)
            table = pq.read_table(path)
            rows = table.column(key).to_pylist()
            out = []
            for r in rows:
                buf = io.BytesIO()
                Image.open(io.BytesIO(r["bytes"])).convert("RGB").save(buf, format="JPEG", quality=90)
                out.append({"bytes": buf.getvalue(), "path": (r["path"] or "frame").rsplit(".", 1)[0] + ".jpg"})
            col = pa.array(out, type=table.schema.field(key).type)
            table = table.set_column(table.schema.get_field_index(key), key, col)
            pq.write_table(table, path)


def expected(root, name):
    # Video frames: pyav (torchcodec, LeRobot's first choice, has no build for this platform's
    # FFmpeg here); both seek to the key frame before the time and decode forward with FFmpeg.
    ds = LeRobotDataset(repo_id=f"vlm4vla/{name}", root=root, video_backend="pyav")
    cams = list(ds.meta.camera_keys)
    frames = []
    rgb = {k: bytearray() for k in cams}
    for i in range(len(ds)):
        item = ds[i]
        frames.append({
            "index": int(item["index"]),
            "episode_index": int(item["episode_index"]),
            "frame_index": int(item["frame_index"]),
            "timestamp": float(item["timestamp"]),
            "task": item["task"],
            "state": [float(v) for v in item["observation.state"].reshape(-1)],
            "action": [float(v) for v in item["action"].reshape(-1)],
        })
        for k in cams:
            # LeRobot returns float CHW in [0, 1]; back to the stored uint8 HWC.
            img = (item[k].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            rgb[k] += img.tobytes()
    for k in cams:
        with open(os.path.join(OUT, f"{name}.{k}.rgb"), "wb") as f:
            f.write(rgb[k])
    meta = {
        "lerobot_version": "0.6.1",
        "video_keys": list(ds.meta.video_keys),
        "cameras": {k: list(ds.meta.features[k]["shape"]) for k in cams},
        "fps": ds.meta.fps,
        "total_episodes": ds.meta.total_episodes,
        "frames": frames,
    }
    with open(os.path.join(OUT, f"{name}.expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{name}: {len(ds)} frames, cameras {meta['cameras']}, LeRobot reads it")


def lerobot_stats(root, name):
    """The statistics LeRobot's own functions compute for the vector features of a dataset (per
    episode, then aggregated as its writer does)."""
    from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats

    ds = LeRobotDataset(repo_id=f"vlm4vla/{name}", root=root)
    feats = {k: v for k, v in ds.meta.features.items() if k in ("observation.state", "action")}
    hf = ds.hf_dataset.with_format("numpy")
    per_episode = []
    for e in range(ds.meta.total_episodes):
        rows = hf.filter(lambda r: r["episode_index"] == e)
        per_episode.append(compute_episode_stats({k: np.stack(rows[k]) for k in feats}, feats))
    agg = aggregate_stats(per_episode)
    out = {k: {s: np.asarray(v).reshape(-1).tolist() for s, v in agg[k].items()} for k in feats}
    with open(os.path.join(OUT, f"{name}.lerobot_stats.json"), "w") as f:
        json.dump(out, f, indent=1)


def late_video(src, name):
    """A copy of dataset `src` whose last episode claims to lie 5 s later in its video file than it
    does: its frames' times fall beyond the end of the video."""
    root = os.path.join(OUT, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    shutil.copytree(src, root)
    path = os.path.join(root, "meta/episodes/chunk-000/file-000.parquet")
    table = pq.read_table(path)
    for col in [c for c in table.column_names if c.endswith(("/from_timestamp", "/to_timestamp"))]:
        vals = table.column(col).to_pylist()
        vals[-1] += 5.0
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(vals, type=table.schema.field(col).type))
    pq.write_table(table, path)


def main():
    binary = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    root = write("png_2cam_6d", {"observation.images.front": (24, 32), "observation.images.wrist": (16, 20)}, 6, 6, [5, 4], 1)
    expected(root, "png_2cam_6d")
    root = write("png_14d", {"observation.images.top": (20, 20)}, 14, 14, [4, 3], 2)
    expected(root, "png_14d")
    root = write("jpeg_7d", {"observation.image": (24, 24)}, 7, 7, [4, 4], 3)
    to_jpeg(root, "observation.image")
    expected(root, "jpeg_7d")
    # Video features, written by LeRobot's video encoder: AV1 (its default, libsvtav1) with two
    # non-square cameras whose sides are multiples of neither 14 nor 16, and H.264 (libx264).
    root = write("av1_2cam_7d", {"observation.images.front": (50, 66), "observation.images.wrist": (34, 46)}, 7, 7, [10, 12, 8], 4, vcodec="libsvtav1")
    expected(root, "av1_2cam_7d")
    root = write("h264_6d", {"observation.images.top": (38, 50)}, 6, 6, [12, 10], 5, vcodec="h264")
    expected(root, "h264_6d")
    late_video(root, "h264_6d_late")
    ours = os.path.join(OUT, "ours")
    if os.path.exists(ours):
        shutil.rmtree(ours)
    subprocess.run([binary, "collect", "--episodes", "2", "--image-size", "24", "--plan-steps", "4", "--seed", "7", "--out", ours], check=True)
    expected(ours, "ours")
    lerobot_stats(ours, "ours")


if __name__ == "__main__":
    main()
