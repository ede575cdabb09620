//! `vlm4vla serve`: an openpi-compatible policy server.

use std::path::PathBuf;
use vlm4vla::serve::{InputMap, Server, ServerOptions};

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Serve a checkpoint (a fine-tuned one of any family, or a tabletop \
demo one) with openpi's WebSocket protocol, so openpi's client (`WebsocketClientPolicy`) drives it \
unchanged: a WebSocket at the root path and `GET /healthz` on the same port; on connect one \
msgpack metadata frame (family, action_horizon, action_dim, image_size, observation_keys, …); then \
per request, a msgpack map of observations (images as uint8 HWC arrays of any size, the state as a \
float array, the instruction as a string), a map {\"actions\": float32 (horizon, 7) in raw units, \
\"server_timing\": {…}}. A request that cannot be served gets a text frame naming the key at fault, \
and the connection stays open. Requests that wait together are batched into one forward (up to \
--max-batch). Observation keys default to the checkpoint's LeRobot feature names with `.` spelled \
`/` (`observation.image` → `observation/image`) and `prompt`; change them with --image-key, \
--state-key, --prompt-key or a TOML --keys file (images = [...], state = \"...\", prompt = \"...\", \
default_prompt = \"...\"). Prints `listening on ws://HOST:PORT` once ready (--port 0: any free port).";

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Checkpoint directory (or a run's output directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0: any free port, printed on start). openpi's default is 8000.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Most requests batched into one forward.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Milliseconds the first waiting request waits for others to join its batch (0: batch only
    /// the requests already waiting).
    #[arg(long, default_value_t = 0)]
    batch_window_ms: u64,
    /// A TOML key map: `images = [...]` (in the checkpoint's camera order), `state`, `prompt`,
    /// `default_prompt`. Flags override it.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Observation key of each camera, in the checkpoint's `data.cameras` order (repeat per
    /// camera), e.g. `observation/image`; a `/` also reaches into nested maps.
    #[arg(long)]
    image_key: Vec<String>,
    /// Observation key of the state, e.g. `observation/state`.
    #[arg(long)]
    state_key: Option<String>,
    /// Observation key of the instruction.
    #[arg(long)]
    prompt_key: Option<String>,
    /// The instruction for requests without one (otherwise a request without it is an error).
    #[arg(long)]
    default_prompt: Option<String>,
}

pub fn run(a: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let options = ServerOptions {
        checkpoint: a.checkpoint.clone(),
        address: format!("{}:{}", a.host, a.port),
        max_batch: a.max_batch,
        batch_window: std::time::Duration::from_millis(a.batch_window_ms),
    };
    let server = Server::start(&options, |spec| {
        let mut map = match &a.keys {
            Some(path) => InputMap::load(path)?,
            None => InputMap::defaults(spec),
        };
        if !a.image_key.is_empty() {
            map.images = a.image_key.clone();
        }
        if let Some(k) = &a.state_key {
            map.state = Some(k.clone());
        }
        if let Some(k) = &a.prompt_key {
            map.prompt = k.clone();
        }
        if let Some(p) = &a.default_prompt {
            map.default_prompt = Some(p.clone());
        }
        Ok(map)
    })?;
    let spec = server.spec();
    let keys = server.input_map().keys(spec);
    eprintln!(
        "serving a {} policy (step {}, {} × {} actions); observation keys: {}",
        spec.family,
        spec.step,
        spec.horizon,
        spec.action_dim,
        keys.join(", ")
    );
    outln!("listening on ws://{}", server.local_addr())?;
    server.run()?;
    Ok(())
}
