//! The listener: one TCP port serving `GET /healthz` over plain HTTP and openpi's WebSocket
//! protocol at any other path; a thread per connection, and one inference thread that owns the
//! policy and drains up to `max_batch` waiting requests into each forward.
//!
//! Per connection, as openpi's `WebsocketPolicyServer` does: the metadata map as the first
//! binary frame, then one binary reply per binary request, `{"actions": float32 (horizon,
//! width), "server_timing": {"infer_ms", "queue_ms", "batch_size", "prev_total_ms"}}`. A request
//! that cannot be served is answered with a text frame holding the error (openpi's client raises
//! it as `RuntimeError`); unlike openpi's server, which then closes the connection, the
//! connection stays open for the next request.

use super::protocol::{self, NdArray};
use super::{metadata, InputMap, PolicySpec, Sample, ServedPolicy};
use crate::engine::{Error, Result};
use rmpv::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The checkpoint directory.
    pub checkpoint: PathBuf,
    /// `host:port` to listen on (port 0: any free port).
    pub address: String,
    /// Most requests batched into one forward.
    pub max_batch: usize,
    /// How long the first waiting request waits for others to join its batch (zero: the batch
    /// is whatever is already waiting).
    pub batch_window: Duration,
}

/// A loaded policy listening on a bound port; [`Server::run`] serves until the process ends.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    spec: PolicySpec,
    map: InputMap,
    metadata: Vec<u8>,
    jobs: mpsc::Sender<Job>,
}

struct Job {
    sample: Sample,
    queued: Instant,
    reply: mpsc::Sender<Outcome>,
}

struct Outcome {
    actions: std::result::Result<Vec<Vec<f32>>, String>,
    queue_ms: f64,
    infer_ms: f64,
    batch_size: usize,
}

/// The longest HTTP request head read before the handshake.
const MAX_HEAD: usize = 64 * 1024;

impl Server {
    /// Load the checkpoint (on the inference thread, which keeps it), build the key map from its
    /// spec with `keys`, and bind the address.
    pub fn start(options: &ServerOptions, keys: impl FnOnce(&PolicySpec) -> Result<InputMap>) -> Result<Server> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (loaded, spec_rx) = mpsc::channel::<Result<PolicySpec>>();
        let dir = options.checkpoint.clone();
        let (max_batch, window) = (options.max_batch.max(1), options.batch_window);
        std::thread::Builder::new()
            .name("vlm4vla-inference".into())
            .spawn(move || match ServedPolicy::open(&dir) {
                Ok(policy) => {
                    let _ = loaded.send(Ok(policy.spec()));
                    infer_loop(&policy, &queue, max_batch, window);
                }
                Err(e) => {
                    let _ = loaded.send(Err(e));
                }
            })
            .map_err(|e| Error::invalid("serve", format!("cannot start the inference thread: {e}")))?;
        let spec = spec_rx
            .recv()
            .map_err(|_| Error::invalid("serve", "the inference thread stopped while loading the checkpoint"))??;
        let map = keys(&spec)?;
        map.check(&spec)?;
        let metadata = protocol::encode(&metadata(&spec, &map));
        let listener = TcpListener::bind(&options.address)
            .map_err(|e| Error::invalid("serve", format!("cannot listen on {}: {e}", options.address)))?;
        Ok(Server { listener, shared: Arc::new(Shared { spec, map, metadata, jobs }) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.shared.spec
    }

    pub fn input_map(&self) -> &InputMap {
        &self.shared.map
    }

    /// Accept connections until the process ends.
    pub fn run(self) -> Result<()> {
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("serve: accept failed: {e}");
                    continue;
                }
            };
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new().name("vlm4vla-connection".into()).spawn(move || {
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
                if let Err(e) = connection(stream, &shared) {
                    eprintln!("serve: connection from {peer}: {e}");
                }
            });
            if let Err(e) = spawned {
                eprintln!("serve: cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }
}

/// Serve batches until every sender (the server) is gone.
fn infer_loop(policy: &ServedPolicy, queue: &mpsc::Receiver<Job>, max_batch: usize, window: Duration) {
    while let Ok(first) = queue.recv() {
        let deadline = Instant::now() + window;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => queue.recv_timeout(left).ok(),
                _ => queue.try_recv().ok(),
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let start = Instant::now();
        let answers = answer(policy, &batch);
        let infer_ms = start.elapsed().as_secs_f64() * 1e3;
        let batch_size = batch.len();
        for (job, actions) in batch.into_iter().zip(answers) {
            let queue_ms = start.duration_since(job.queued).as_secs_f64() * 1e3;
            let _ = job.reply.send(Outcome { actions, queue_ms, infer_ms, batch_size });
        }
    }
}

type Answer = std::result::Result<Vec<Vec<f32>>, String>;

/// One answer per job: the batch in one forward, or, when that fails, each job on its own (one
/// sample, e.g. a frame the processor rejects, must not fail the others).
fn answer(policy: &ServedPolicy, batch: &[Job]) -> Vec<Answer> {
    let cameras: Vec<Vec<_>> = batch.iter().map(|j| j.sample.frames.clone()).collect();
    let texts: Vec<&str> = batch.iter().map(|j| j.sample.instruction.as_str()).collect();
    let states: Option<Vec<Vec<f32>>> = batch.iter().map(|j| j.sample.state.clone()).collect();
    match policy.predict(&cameras, &texts, states.as_deref()) {
        Ok(chunks) => chunks.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(e.to_string())],
        Err(_) => batch.iter().flat_map(|job| answer(policy, std::slice::from_ref(job))).collect(),
    }
}

/// A client's stream with the bytes already read from it (the HTTP head) served first.
struct Prefixed {
    head: std::io::Cursor<Vec<u8>>,
    stream: TcpStream,
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Read up to the end of the HTTP request head (`\r\n\r\n`); returns everything read.
fn read_head(stream: &mut TcpStream) -> std::result::Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(format!("an HTTP request head over {MAX_HEAD} bytes"));
        }
        let n = stream.read(&mut buf).map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("closed before the end of its HTTP request".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// The request target of an HTTP head's request line, when it is a GET.
fn get_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next()
}

fn connection(mut stream: TcpStream, shared: &Shared) -> std::result::Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let head = read_head(&mut stream)?;
    let path = get_path(&head).map(|p| p.split('?').next().unwrap_or(p));
    if path == Some("/healthz") {
        let body = "OK\n";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return stream.write_all(response.as_bytes()).map_err(|e| e.to_string());
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let prefixed = Prefixed { head: std::io::Cursor::new(head), stream };
    let mut ws = tungstenite::accept_with_config(prefixed, Some(config)).map_err(|e| format!("handshake: {e}"))?;
    ws.send(Message::binary(shared.metadata.clone())).map_err(|e| e.to_string())?;
    let mut prev_total_ms: Option<f64> = None;
    loop {
        let message = match ws.read() {
            Ok(m) => m,
            Err(e) if closed(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let received = Instant::now();
        let reply = match message {
            Message::Binary(bytes) => match request(&bytes, shared, prev_total_ms) {
                Ok(frame) => Message::binary(frame),
                Err(e) => Message::text(e),
            },
            Message::Text(_) => Message::text("expected a binary frame holding a msgpack map of observations"),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => continue,
        };
        match ws.send(reply) {
            Ok(()) => {}
            Err(e) if closed(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        prev_total_ms = Some(received.elapsed().as_secs_f64() * 1e3);
    }
}

/// The client went away (closing properly or not): the end of its connection, not an error.
fn closed(e: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        e,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    )
}

/// Decode, queue and answer one request; the error text names the key at fault.
fn request(bytes: &[u8], shared: &Shared, prev_total_ms: Option<f64>) -> std::result::Result<Vec<u8>, String> {
    let obs = protocol::decode_observation(bytes)?;
    let sample = shared.map.read(&shared.spec, &obs)?;
    let (reply, outcome) = mpsc::channel();
    shared
        .jobs
        .send(Job { sample, queued: Instant::now(), reply })
        .map_err(|_| "the inference thread has stopped".to_string())?;
    let outcome = outcome.recv().map_err(|_| "the inference thread has stopped".to_string())?;
    let actions = outcome.actions?;
    let flat: Vec<f32> = actions.iter().flatten().copied().collect();
    let array = NdArray::from_f32(vec![actions.len(), shared.spec.action_dim], &flat);
    let mut timing = vec![
        ("infer_ms", Value::F64(outcome.infer_ms)),
        ("queue_ms", Value::F64(outcome.queue_ms)),
        ("batch_size", Value::from(outcome.batch_size as u64)),
    ];
    if let Some(t) = prev_total_ms {
        timing.push(("prev_total_ms", Value::F64(t)));
    }
    let reply = protocol::map(vec![("actions", array.to_value()), ("server_timing", protocol::map(timing))]);
    Ok(protocol::encode(&reply))
}
