"""Drive `vlm4vla serve` with openpi's own client (the `openpi-client` package from PyPI).

Run by tests/serve.rs (`the_openpi_client_drives_the_server`) when VLM4VLA_OPENPI_PYTHON names a
Python with openpi-client installed (.ci/run makes one); by hand:

    python3 -m venv /tmp/oc && /tmp/oc/bin/pip install openpi-client==0.1.2 typing_extensions
    /tmp/oc/bin/python tools/openpi_check.py --vlm4vla target/release/vlm4vla --checkpoint RUN_DIR

RUN_DIR is a fine-tuned checkpoint with one camera (`observation.image`), optionally a state
(`observation.state`), served with the default keys. The script starts the server on a free port
and checks, with `WebsocketClientPolicy` and `ActionChunkBroker`:
- the metadata frame (action horizon and width, the observation keys);
- a chunk of shape (horizon, 7), float32, whose values equal `vlm4vla predict`'s for the same
  image (saved as PNG), state and instruction, bit for bit; the broker hands it out row by row;
- a malformed request raises openpi's `RuntimeError` naming the missing key, and the same client
  (same connection) and a new one are served afterwards;
- `GET /healthz` answers 200.
Prints `openpi_check: ok` and exits 0, or exits non-zero on the first failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np
from PIL import Image
from openpi_client import action_chunk_broker
from openpi_client import websocket_client_policy


def start_server(binary, checkpoint):
    proc = subprocess.Popen(
        [binary, "serve", "--checkpoint", checkpoint, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    prefix = "listening on ws://127.0.0.1:"
    if not line.startswith(prefix):
        proc.kill()
        sys.exit(f"serve printed {line!r}, not its address")
    return proc, int(line[len(prefix) :])


def predict(binary, checkpoint, png, state, instruction):
    cmd = [binary, "predict", "--checkpoint", checkpoint, "--image", png, "--instruction", instruction]
    if state is not None:
        cmd += ["--state", ",".join(repr(float(v)) for v in state)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return np.asarray(json.loads(out.stdout)["chunk"], dtype=np.float32)


def check(cond, what):
    if not cond:
        sys.exit(f"openpi_check: FAILED: {what}")
    print(f"  ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vlm4vla", required=True, help="the vlm4vla binary")
    ap.add_argument("--checkpoint", required=True)
    args = ap.parse_args()

    proc, port = start_server(args.vlm4vla, args.checkpoint)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            check(r.status == 200, f"GET /healthz -> {r.status}")

        client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
        md = client.get_server_metadata()
        print("metadata:", md)
        horizon = md["action_horizon"]
        check(md["action_dim"] == 7 and horizon >= 1, f"metadata: action horizon {horizon}, width {md['action_dim']}")
        check("observation/image" in md["observation_keys"] and "prompt" in md["observation_keys"],
              f"metadata: observation keys {md['observation_keys']}")

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)  # not the model size: the server resizes
        state = rng.uniform(-1, 1, size=md["state_dim"]).astype(np.float32) if md["state_dim"] else None
        instruction = "pick up the red block"
        obs = {"observation/image": image, "prompt": instruction}
        if state is not None:
            obs["observation/state"] = state

        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, "frame.png")
            Image.fromarray(image).save(png)
            want = predict(args.vlm4vla, args.checkpoint, png, state, instruction)

        reply = client.infer(obs)
        actions = reply["actions"]
        check(isinstance(actions, np.ndarray) and actions.shape == (horizon, 7) and actions.dtype == np.float32,
              f"infer: actions {getattr(actions, 'dtype', type(actions))} {getattr(actions, 'shape', '')}")
        check(np.array_equal(actions, want), "infer: actions equal `vlm4vla predict`'s chunk bit for bit")
        check("infer_ms" in reply.get("server_timing", {}), f"infer: server_timing {reply.get('server_timing')}")

        broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=horizon)
        rows = [broker.infer(obs)["actions"] for _ in range(horizon)]
        check(all(r.shape == (7,) for r in rows), "ActionChunkBroker: one (7,) action per step")
        check(np.array_equal(np.stack(rows), want), "ActionChunkBroker: the steps are predict's chunk, in order")

        bad = {k: v for k, v in obs.items() if k != "observation/image"}
        try:
            client.infer(bad)
            check(False, "a request without observation/image should raise")
        except RuntimeError as e:
            print("  error reply:", str(e).replace("\n", " "))
            check("observation/image" in str(e), "malformed request: RuntimeError naming `observation/image`")
        check(np.array_equal(client.infer(obs)["actions"], want), "the same connection is served after the error")
        other = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
        check(np.array_equal(other.infer(obs)["actions"], want), "a new connection is served after the error")
    finally:
        proc.kill()
        proc.wait()
    print("openpi_check: ok")


if __name__ == "__main__":
    main()
