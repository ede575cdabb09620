//! `vlm4vla serve` on a tiny paligemma checkpoint trained here, driven by a Rust WebSocket
//! client speaking openpi's protocol (msgpack maps, msgpack-numpy arrays with binary keys as
//! `openpi_client/msgpack_numpy.py` packs them): the metadata frame, actions bit-equal to
//! `FinetunedPolicy::predict`, errors naming the key on the same open connection, `/healthz`,
//! concurrent clients batched into one forward, a bounded load test; and, when
//! `VLM4VLA_OPENPI_PYTHON` names a Python with `openpi-client`, `tools/openpi_check.py` with the
//! real openpi client.

use rmpv::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};
use vlm4vla::data::RgbImage;
use vlm4vla::finetune::FinetunedPolicy;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A paligemma-tiny run of two steps (with a state input), trained once per test binary.
fn checkpoint() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vlm4vla-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(root().join("configs/paligemma-tiny.toml")).unwrap();
        let text = text.replace("steps = 30", "steps = 2").replace("checkpoint_every = 15", "checkpoint_every = 2");
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let run = dir.join("run");
        let out = Command::new(env!("CARGO_BIN_EXE_vlm4vla"))
            .current_dir(root())
            .args(["train", "--config", config.to_str().unwrap(), "--output-dir", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
        run
    })
}

/// A `vlm4vla serve` process on a free loopback port, killed on drop.
struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        Served::start_on(checkpoint(), extra)
    }

    fn start_on(checkpoint: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vlm4vla"))
            .args(["serve", "--checkpoint", checkpoint.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ws://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("serve printed {line:?}, not its address"));
        Served { child, port }
    }

    fn connect(&self) -> (WebSocket<TcpStream>, Value) {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{}/", self.port), stream).unwrap();
        let metadata = match ws.read().unwrap() {
            Message::Binary(b) => decode(&b),
            other => panic!("the first frame should be the binary metadata, got {other:?}"),
        };
        (ws, metadata)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode(bytes: &[u8]) -> Value {
    rmpv::decode::read_value(&mut &bytes[..]).unwrap()
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key) || k.as_slice() == Some(key.as_bytes())).map(|(_, v)| v)
}

/// msgpack-numpy's map for an array: binary keys, as `pack_array` writes them.
fn ndarray(dtype: &str, shape: &[usize], data: Vec<u8>) -> Value {
    Value::Map(vec![
        (Value::Binary(b"__ndarray__".to_vec()), Value::Boolean(true)),
        (Value::Binary(b"data".to_vec()), Value::Binary(data)),
        (Value::Binary(b"dtype".to_vec()), Value::from(dtype)),
        (Value::Binary(b"shape".to_vec()), Value::Array(shape.iter().map(|&d| Value::from(d as u64)).collect())),
    ])
}

fn obs(entries: Vec<(&str, Value)>) -> Vec<u8> {
    encode(&Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
}

/// One sample: an image (of a size the processor must resize), a state and an instruction.
struct Sample {
    image: RgbImage,
    state: Vec<f32>,
    instruction: String,
}

fn sample(seed: u32) -> Sample {
    let (w, h) = (40 + seed as usize % 5 * 8, 32 + seed as usize % 3 * 8);
    let data =
        (0..w * h * 3).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977) >> 13) as u8).collect();
    let state = (0..7).map(|i| ((seed * 7 + i) as f32 * 0.37).sin()).collect();
    let instruction = ["pick up the red block", "push the blue block left", "lift the green cube", "open"]
        [seed as usize % 4]
        .to_string();
    Sample { image: RgbImage { width: w, height: h, data }, state, instruction }
}

fn request(s: &Sample) -> Vec<u8> {
    obs(vec![
        ("observation/image", ndarray("|u1", &[s.image.height, s.image.width, 3], s.image.data.clone())),
        ("observation/state", ndarray("<f4", &[7], s.state.iter().flat_map(|v| v.to_le_bytes()).collect())),
        ("prompt", Value::from(s.instruction.as_str())),
    ])
}

/// The reply's actions (checked to be a float32 (rows, 7) msgpack-numpy array) and timing.
fn actions(reply: &Value) -> (Vec<[f32; 7]>, &Value) {
    let a = get(reply, "actions").unwrap_or_else(|| panic!("no `actions` in {reply}"));
    assert_eq!(get(a, "__ndarray__"), Some(&Value::Boolean(true)), "{a}");
    assert!(a.as_map().unwrap().iter().all(|(k, _)| k.is_bin()), "openpi's unpack_array looks up binary keys: {a}");
    assert_eq!(get(a, "dtype").and_then(Value::as_str), Some("<f4"));
    let shape: Vec<u64> = get(a, "shape").unwrap().as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    let data = get(a, "data").and_then(Value::as_slice).unwrap();
    let values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(shape.len(), 2);
    assert_eq!(shape[1], 7);
    assert_eq!(values.len() as u64, shape[0] * 7);
    let rows = values.chunks_exact(7).map(|r| r.try_into().unwrap()).collect();
    (rows, get(reply, "server_timing").expect("server_timing"))
}

fn infer(ws: &mut WebSocket<TcpStream>, frame: Vec<u8>) -> Result<Value, String> {
    ws.send(Message::binary(frame)).unwrap();
    match ws.read().unwrap() {
        Message::Binary(b) => Ok(decode(&b)),
        Message::Text(t) => Err(t.to_string()),
        other => panic!("unexpected frame {other:?}"),
    }
}

fn expected(policy: &FinetunedPolicy, samples: &[&Sample]) -> Vec<Vec<[f32; 7]>> {
    let cameras: Vec<Vec<RgbImage>> = samples.iter().map(|s| vec![s.image.clone()]).collect();
    let texts: Vec<&str> = samples.iter().map(|s| s.instruction.as_str()).collect();
    let states: Vec<Vec<f32>> = samples.iter().map(|s| s.state.clone()).collect();
    let chunks = policy.predict(&cameras, &texts, Some(&states)).unwrap();
    chunks.into_iter().map(|c| c.into_iter().map(|a| <[f32; 7]>::try_from(a).expect("7-D actions")).collect()).collect()
}

#[test]
fn metadata_then_actions_equal_to_predict_bit_exactly() {
    let server = Served::start(&[]);
    let (mut ws, md) = server.connect();
    assert_eq!(get(&md, "family").and_then(Value::as_str), Some("paligemma"));
    assert_eq!(get(&md, "action_horizon").and_then(Value::as_u64), Some(4));
    assert_eq!(get(&md, "action_dim").and_then(Value::as_u64), Some(7));
    assert_eq!(get(&md, "state_dim").and_then(Value::as_u64), Some(7));
    let size: Vec<u64> = get(&md, "image_size").unwrap().as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    assert_eq!(size, [56, 56]);
    let keys: Vec<&str> =
        get(&md, "observation_keys").unwrap().as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(keys, ["observation/image", "observation/state", "prompt"]);

    let policy = FinetunedPolicy::open(checkpoint()).unwrap();
    for seed in 0..3 {
        let s = sample(seed);
        let reply = infer(&mut ws, request(&s)).unwrap();
        let (rows, timing) = actions(&reply);
        assert_eq!(rows.len(), 4);
        let want = expected(&policy, &[&s]).remove(0);
        let bits = |r: &[[f32; 7]]| r.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&rows), bits(&want), "seed {seed}: served {rows:?}, predict {want:?}");
        assert!(get(timing, "infer_ms").and_then(Value::as_f64).is_some_and(|t| t >= 0.0), "{timing}");
        assert_eq!(get(timing, "prev_total_ms").is_some(), seed > 0, "{timing}");
    }
}

#[test]
fn a_key_map_reads_nested_and_renamed_keys() {
    let dir = checkpoint().parent().unwrap().join("keys.toml");
    std::fs::write(&dir, "images = [\"images/cam_high\"]\nstate = \"state\"\nprompt = \"task\"\n").unwrap();
    let server = Served::start(&["--keys", dir.to_str().unwrap(), "--default-prompt", "pick up the red block"]);
    let (mut ws, md) = server.connect();
    let keys: Vec<&str> =
        get(&md, "observation_keys").unwrap().as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(keys, ["images/cam_high", "state", "task"]);
    let s = sample(5);
    // openpi's ALOHA client: images nested under `images`, channels first.
    let (h, w) = (s.image.height, s.image.width);
    let mut chw = vec![0u8; h * w * 3];
    for (i, px) in s.image.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = px[c];
        }
    }
    let state64: Vec<u8> = s.state.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
    let frame = |prompt: Option<&str>| {
        let mut entries = vec![
            ("images", Value::Map(vec![(Value::from("cam_high"), ndarray("|u1", &[3, h, w], chw.clone()))])),
            ("state", ndarray("<f8", &[7], state64.clone())),
        ];
        entries.extend(prompt.map(|p| ("task", Value::from(p))));
        obs(entries)
    };
    let policy = FinetunedPolicy::open(checkpoint()).unwrap();
    let (rows, _) = actions(&infer(&mut ws, frame(Some(&s.instruction))).unwrap());
    assert_eq!(rows, expected(&policy, &[&s]).remove(0));
    let default = Sample { instruction: "pick up the red block".into(), ..sample(5) };
    let (rows, _) = actions(&infer(&mut ws, frame(None)).unwrap());
    assert_eq!(rows, expected(&policy, &[&default]).remove(0));
}

#[test]
fn a_malformed_request_gets_an_error_naming_the_key_and_the_connection_keeps_serving() {
    let server = Served::start(&[]);
    let (mut ws, _) = server.connect();
    let s = sample(1);
    let image = || ndarray("|u1", &[s.image.height, s.image.width, 3], s.image.data.clone());
    let state = || ndarray("<f4", &[7], s.state.iter().flat_map(|v| v.to_le_bytes()).collect());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (obs(vec![("observation/state", state()), ("prompt", Value::from("go"))]), "missing key `observation/image`"),
        (obs(vec![("observation/image", image()), ("prompt", Value::from("go"))]), "missing key `observation/state`"),
        (obs(vec![("observation/image", image()), ("observation/state", state())]), "missing key `prompt`"),
        (
            obs(vec![
                ("observation/image", ndarray("<f4", &[2, 2, 3], vec![0; 48])),
                ("observation/state", state()),
                ("prompt", Value::from("go")),
            ]),
            "`observation/image`: expected a uint8 image array of shape (H, W, 3), got a float32 array of shape (2, 2, 3)",
        ),
        (
            obs(vec![
                ("observation/image", image()),
                ("observation/state", ndarray("<f4", &[3], vec![0; 12])),
                ("prompt", Value::from("go")),
            ]),
            "`observation/state`: expected a float array of 7 values, got float32 array of shape (3,)",
        ),
        (
            obs(vec![
                ("observation/image", ndarray("|u1", &[4, 4, 3], vec![0; 47])),
                ("observation/state", state()),
                ("prompt", Value::from("go")),
            ]),
            "observation/image: 47 bytes of data do not hold a uint8 array of shape (4, 4, 3)",
        ),
        (obs(vec![("observation/image", image()), ("observation/state", state()), ("prompt", Value::from(3))]), "`prompt`"),
        (vec![0x92, 0x01], "not valid msgpack"),
        (encode(&Value::from("hello")), "must be a map"),
    ];
    let policy = FinetunedPolicy::open(checkpoint()).unwrap();
    let want = expected(&policy, &[&s]).remove(0);
    for (frame, needle) in cases {
        let err = infer(&mut ws, frame).expect_err("a malformed request is answered with a text frame");
        assert!(err.contains(needle), "the error should contain {needle:?}: {err}");
        // The same connection serves the next request.
        let (rows, _) = actions(&infer(&mut ws, request(&s)).unwrap());
        assert_eq!(rows, want);
    }
    ws.send(Message::text("not msgpack")).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Text(t) if t.contains("binary frame")));
    // And other connections are served too.
    let (mut other, _) = server.connect();
    assert_eq!(actions(&infer(&mut other, request(&s)).unwrap()).0, want);
}

#[test]
fn healthz_answers_200_on_the_same_port() {
    let server = Served::start(&[]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nOK\n"), "{response}");
    // The WebSocket still answers on that port.
    let (_, md) = server.connect();
    assert!(get(&md, "action_horizon").is_some());
}

#[test]
fn concurrent_clients_are_batched_into_one_forward_with_correct_answers() {
    let server = Arc::new(Served::start(&["--batch-window-ms", "2000", "--max-batch", "4"]));
    let policy = FinetunedPolicy::open(checkpoint()).unwrap();
    let samples: Vec<Sample> = (0..4).map(sample).collect();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            let (server, barrier) = (server.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (mut ws, _) = server.connect();
                barrier.wait();
                let reply = infer(&mut ws, request(&sample(i))).unwrap();
                let (rows, timing) = actions(&reply);
                (rows, get(timing, "batch_size").and_then(Value::as_u64))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (rows, batch) = h.join().unwrap();
        assert_eq!(batch, Some(4), "client {i}: the four requests should share one forward");
        // The batched forward (padded prompts, one GEMM per layer) agrees with the sample's own
        // forward to float rounding.
        let alone = expected(&policy, &[&samples[i]]).remove(0);
        for (a, b) in rows.iter().flatten().zip(alone.iter().flatten()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "client {i}: batched {a} vs alone {b}");
        }
    }
}

#[test]
fn a_tabletop_demo_checkpoint_is_served() {
    let dir = std::env::temp_dir().join(format!("vlm4vla-serve-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_vlm4vla"))
        .args(["demo", "--quick", "--episodes", "8", "--steps", "4", "--eval-per-family", "1", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("train");
    let server = Served::start_on(&run, &[]);
    let (mut ws, md) = server.connect();
    assert_eq!(get(&md, "family").and_then(Value::as_str), Some("tabletop"));
    assert_eq!(get(&md, "step").and_then(Value::as_u64), Some(4));
    let policy = vlm4vla::demo::LoadedPolicy::open(&run).unwrap();
    let size = policy.image_size();
    let mut s = sample(2);
    s.image =
        RgbImage { width: size, height: size, data: (0..size * size * 3).map(|i| (i * 31 % 251) as u8).collect() };
    s.state = vec![0.5, 0.4, 0.3, 0.0, 0.0, 0.0, 1.0];
    let state: [f32; 7] = s.state.clone().try_into().unwrap();
    let want = policy.predict(&[s.image.data.as_slice()], &[s.instruction.as_str()], Some(&[state])).unwrap().remove(0);
    let (rows, _) = actions(&infer(&mut ws, request(&s)).unwrap());
    assert_eq!(rows, want);
    // A tabletop policy does not resize: another size is an error naming the key.
    s.image = RgbImage { width: size + 1, height: size, data: vec![0; (size + 1) * size * 3] };
    let err = infer(&mut ws, request(&s)).unwrap_err();
    assert!(err.contains("`observation/image`") && err.contains(&format!("{size}×{size}")), "{err}");
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

/// p50/p99 latency and throughput for 1, 4 and 16 concurrent clients (bounded: at most 60
/// requests per level or 20 s). Written to `target/tmp/serve-load.txt`; the README quotes it.
#[test]
fn load_test_reports_latency_and_throughput() {
    let server = Arc::new(Served::start(&[]));
    let mut report = String::from("clients  requests  p50_ms  p99_ms  req/s  mean_batch\n");
    for clients in [1usize, 4, 16] {
        let per_client = (120 / clients).max(8);
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let server = server.clone();
                std::thread::spawn(move || {
                    let (mut ws, _) = server.connect();
                    let frame = request(&sample(c as u32));
                    let mut out = Vec::new();
                    for _ in 0..per_client {
                        if start.elapsed() > Duration::from_secs(20) {
                            break;
                        }
                        let t = Instant::now();
                        let reply = infer(&mut ws, frame.clone()).unwrap();
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        let (rows, timing) = actions(&reply);
                        assert_eq!(rows.len(), 4);
                        out.push((ms, get(timing, "batch_size").and_then(Value::as_u64).unwrap()));
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<(f64, u64)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let wall = start.elapsed().as_secs_f64();
        assert!(all.len() >= clients, "every client got at least one reply");
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize].0;
        let mean_batch = all.iter().map(|a| a.1 as f64).sum::<f64>() / all.len() as f64;
        report += &format!(
            "{clients:>7}  {:>8}  {:>6.2}  {:>6.2}  {:>5.0}  {mean_batch:>10.2}\n",
            all.len(),
            pct(0.5),
            pct(0.99),
            all.len() as f64 / wall
        );
    }
    println!("{report}");
    let out = root().join("target/tmp");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("serve-load.txt"), &report).unwrap();
}

/// The real openpi client (`WebsocketClientPolicy`, `ActionChunkBroker`) against the server,
/// when `VLM4VLA_OPENPI_PYTHON` names a Python with `openpi-client` installed (CI sets it).
#[test]
fn the_openpi_client_drives_the_server() {
    let Some(python) = std::env::var_os("VLM4VLA_OPENPI_PYTHON") else {
        eprintln!("skipped: set VLM4VLA_OPENPI_PYTHON to a Python with openpi-client to run tools/openpi_check.py");
        return;
    };
    let out = Command::new(python)
        .arg(root().join("tools/openpi_check.py"))
        .args(["--vlm4vla", env!("CARGO_BIN_EXE_vlm4vla"), "--checkpoint", checkpoint().to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tools/openpi_check.py failed:\n{text}");
    assert!(text.contains("openpi_check: ok"), "{text}");
}

#[test]
fn msgpack_numpy_arrays_decode_with_binary_or_string_keys_and_either_byte_order() {
    use vlm4vla::serve::protocol::{decode_observation, Dtype, Field, NdArray};
    let values = [1.5f32, -2.25, 3.0];
    let little: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let big: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let string_keys = |dtype: &str, data: Vec<u8>| {
        Value::Map(vec![
            (Value::from("__ndarray__"), Value::Boolean(true)),
            (Value::from("data"), Value::Binary(data)),
            (Value::from("dtype"), Value::from(dtype)),
            (Value::from("shape"), Value::Array(vec![Value::from(3u64)])),
        ])
    };
    let scalar = Value::Map(vec![
        (Value::Binary(b"__npgeneric__".to_vec()), Value::Boolean(true)),
        (Value::Binary(b"data".to_vec()), Value::F64(0.25)),
        (Value::Binary(b"dtype".to_vec()), Value::from("<f8")),
    ]);
    let frame = obs(vec![
        ("binary", ndarray("<f4", &[3], little.clone())),
        ("string", string_keys("<f4", little.clone())),
        ("big", string_keys(">f4", big)),
        ("ints", ndarray("<i8", &[3], [1i64, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect())),
        ("scalar", scalar),
    ]);
    let decoded = decode_observation(&frame).unwrap();
    let array = |key: &str| match &decoded.iter().find(|(k, _)| k == key).unwrap().1 {
        Field::Array(a) => a.clone(),
        other => panic!("{key}: {other:?}"),
    };
    for key in ["binary", "string", "big"] {
        assert_eq!(array(key), NdArray { dtype: Dtype::F32, shape: vec![3], data: little.clone() }, "{key}");
        assert_eq!(array(key).to_f32(), values, "{key}");
    }
    assert_eq!(array("ints").to_f32(), [1.0, -2.0, 3.0]);
    assert_eq!((array("scalar").shape.len(), array("scalar").to_f32()), (0, vec![0.25]));
    // What the server writes is what openpi's `unpack_array` reads: binary keys, numpy's dtype.str.
    let written = NdArray::from_f32(vec![1, 3], &values).to_value();
    let keys: Vec<&[u8]> = written.as_map().unwrap().iter().map(|(k, _)| k.as_slice().unwrap()).collect();
    assert_eq!(keys, [&b"__ndarray__"[..], b"data", b"dtype", b"shape"]);
    for (dtype, err) in [("<c8", "unsupported dtype `<c8`"), ("|O", "unsupported dtype `|O`")] {
        let bad = obs(vec![("x", string_keys(dtype, vec![0; 24]))]);
        assert!(decode_observation(&bad).unwrap_err().contains(err), "{dtype}");
    }
}
