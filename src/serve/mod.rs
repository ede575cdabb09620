//! `vlm4vla serve`: a policy server that speaks openpi's WebSocket protocol, so openpi's own
//! client (`openpi_client.websocket_client_policy.WebsocketClientPolicy`) drives our checkpoints
//! unchanged.
//!
//! - [`protocol`]: msgpack maps whose arrays use msgpack-numpy's encoding;
//! - [`InputMap`]: which observation keys hold the cameras, the state and the prompt;
//! - [`server`]: the listener (WebSocket at `/`, `GET /healthz`), one thread per connection and
//!   one inference thread that batches the requests waiting together into one forward.

pub mod protocol;
pub mod server;

use crate::data::RgbImage;
use crate::demo::LoadedPolicy;
use crate::engine::{Error, Result};
use crate::finetune::{is_finetune_checkpoint, FinetunedPolicy};
use protocol::{Dtype, Field, NdArray};
use rmpv::Value;
use serde::Deserialize;
use std::path::Path;

pub use server::{Server, ServerOptions};

/// A checkpoint ready to serve: a fine-tuned policy of any family, or a tabletop demo policy.
pub enum ServedPolicy {
    Finetuned(Box<FinetunedPolicy>),
    /// A tabletop policy and its checkpoint's step.
    Tabletop(Box<LoadedPolicy>, usize),
}

impl ServedPolicy {
    /// Open a fine-tuning checkpoint or a tabletop one (a `checkpoint-<step>` directory or a
    /// run's output directory).
    pub fn open(dir: &Path) -> Result<ServedPolicy> {
        if is_finetune_checkpoint(dir) {
            Ok(ServedPolicy::Finetuned(Box::new(FinetunedPolicy::open(dir)?)))
        } else {
            let policy = LoadedPolicy::open(dir)?;
            let step = crate::train::Checkpoint::open(dir)?.state.step;
            Ok(ServedPolicy::Tabletop(Box::new(policy), step))
        }
    }

    /// What the server announces and how it reads requests.
    pub fn spec(&self) -> PolicySpec {
        match self {
            ServedPolicy::Finetuned(p) => {
                let size = p.batch.encoder.model_image_size();
                PolicySpec {
                    family: p.extra.family.clone(),
                    horizon: p.policy.config().chunk,
                    action_dim: p.policy.config().action_dim,
                    cameras: if p.config.data.cameras.is_empty() {
                        vec!["observation.image".into()]
                    } else {
                        p.config.data.cameras.clone()
                    },
                    state_key: p.config.data.state_key.clone(),
                    state_dim: p.state_dim(),
                    image_size: size.map(|s| (s, s)),
                    exact_image_size: false,
                    step: p.step,
                }
            }
            ServedPolicy::Tabletop(p, step) => {
                let s = p.image_size();
                PolicySpec {
                    family: "tabletop".into(),
                    horizon: p.policy.config().chunk,
                    action_dim: crate::demo::ACTION_DIMS,
                    cameras: vec!["observation.image".into()],
                    state_key: Some("observation.state".into()),
                    state_dim: p.policy.config().state_dim,
                    image_size: Some((s, s)),
                    exact_image_size: true,
                    step: *step,
                }
            }
        }
    }

    /// Raw action chunks for a batch of samples (see [`FinetunedPolicy::predict`]).
    pub fn predict(
        &self,
        cameras: &[Vec<RgbImage>],
        instructions: &[&str],
        states: Option<&[Vec<f32>]>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        match self {
            ServedPolicy::Finetuned(p) => p.predict(cameras, instructions, states),
            ServedPolicy::Tabletop(p, _) => {
                let images: Vec<&[u8]> = cameras.iter().map(|c| c[0].data.as_slice()).collect();
                let states: Option<Vec<[f32; 7]>> = match states {
                    None => None,
                    Some(s) => Some(
                        s.iter()
                            .map(|v| {
                                <[f32; 7]>::try_from(v.as_slice()).map_err(|_| {
                                    Error::invalid("serve", format!("the tabletop state has 7 values, got {}", v.len()))
                                })
                            })
                            .collect::<Result<_>>()?,
                    ),
                };
                let chunks = p.predict(&images, instructions, states.as_deref())?;
                Ok(chunks.into_iter().map(|c| c.into_iter().map(|a| a.to_vec()).collect()).collect())
            }
        }
    }
}

/// The shape of a served policy's inputs and outputs.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    /// `paligemma`, `qwen2_5_vl`, `kosmos2` or `tabletop`.
    pub family: String,
    /// Action chunk length.
    pub horizon: usize,
    /// Values per action.
    pub action_dim: usize,
    /// The checkpoint's camera features, in the order the policy reads them.
    pub cameras: Vec<String>,
    pub state_key: Option<String>,
    /// 0: the policy takes no state.
    pub state_dim: usize,
    /// The size the processor resizes frames to (None: Qwen2.5-VL keeps each frame's own size).
    pub image_size: Option<(usize, usize)>,
    /// Frames must already be at `image_size` (tabletop policies do not resize).
    pub exact_image_size: bool,
    pub step: usize,
}

/// Which observation keys feed the policy. A key may name a nested map's entry with `/` (e.g.
/// `images/cam_high` for `{"images": {"cam_high": …}}`); a key present literally wins.
///
/// As a TOML file (`--keys FILE`):
///
/// ```toml
/// images = ["observation/image", "observation/wrist_image"]  # in the checkpoint's camera order
/// state = "observation/state"
/// prompt = "prompt"
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputMap {
    pub images: Vec<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default = "default_prompt_key")]
    pub prompt: String,
    /// The instruction used when a request carries no prompt (none: the prompt is required).
    #[serde(default)]
    pub default_prompt: Option<String>,
}

fn default_prompt_key() -> String {
    "prompt".into()
}

impl InputMap {
    /// The default keys: each LeRobot feature name with `.` spelled `/` (`observation.image` →
    /// `observation/image`, `observation.state` → `observation/state`) and `prompt`.
    pub fn defaults(spec: &PolicySpec) -> InputMap {
        InputMap {
            images: spec.cameras.iter().map(|c| c.replace('.', "/")).collect(),
            state: (spec.state_dim > 0)
                .then(|| spec.state_key.as_deref().unwrap_or("observation.state").replace('.', "/")),
            prompt: default_prompt_key(),
            default_prompt: None,
        }
    }

    /// Read a TOML key map.
    pub fn load(path: &Path) -> Result<InputMap> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| Error::file(path, format!("not a key map: {e}")))
    }

    /// Errors when the map does not fit the policy (camera count, a state key for a stateful
    /// policy).
    pub fn check(&self, spec: &PolicySpec) -> Result<()> {
        if self.images.len() != spec.cameras.len() {
            return Err(Error::invalid(
                "serve",
                format!(
                    "the policy reads {} camera(s) ({}), the key map names {} image key(s) ({})",
                    spec.cameras.len(),
                    spec.cameras.join(", "),
                    self.images.len(),
                    self.images.join(", ")
                ),
            ));
        }
        if spec.state_dim > 0 && self.state.is_none() {
            return Err(Error::invalid(
                "serve",
                format!("the policy takes a {}-D state: the key map needs a state key", spec.state_dim),
            ));
        }
        Ok(())
    }

    /// Every key a request must (or may) carry, for the metadata frame.
    pub fn keys(&self, spec: &PolicySpec) -> Vec<String> {
        let mut keys = self.images.clone();
        if spec.state_dim > 0 {
            keys.extend(self.state.clone());
        }
        keys.push(self.prompt.clone());
        keys
    }

    /// The policy inputs of one request, or an error naming the key at fault.
    pub fn read(&self, spec: &PolicySpec, obs: &[(String, Field)]) -> std::result::Result<Sample, String> {
        let mut frames = Vec::with_capacity(self.images.len());
        for (key, camera) in self.images.iter().zip(&spec.cameras) {
            let field = lookup(obs, key).ok_or_else(|| missing(key, &format!("camera `{camera}`"), obs))?;
            frames.push(image(key, field, spec)?);
        }
        let state = match (&self.state, spec.state_dim) {
            (Some(key), d) if d > 0 => {
                let field = lookup(obs, key).ok_or_else(|| missing(key, &format!("the {d}-D state"), obs))?;
                Some(state(key, field, d)?)
            }
            _ => None,
        };
        let instruction = match (lookup(obs, &self.prompt), &self.default_prompt) {
            (Some(Field::Text(t)), _) => t.clone(),
            (Some(other), _) => {
                return Err(format!(
                    "`{}`: expected the instruction as a string, got {}",
                    self.prompt,
                    other.describe()
                ))
            }
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(missing(&self.prompt, "the instruction", obs)),
        };
        Ok(Sample { frames, state, instruction })
    }
}

/// One request's policy inputs.
#[derive(Clone, Debug)]
pub struct Sample {
    pub frames: Vec<RgbImage>,
    pub state: Option<Vec<f32>>,
    pub instruction: String,
}

fn lookup<'a>(obs: &'a [(String, Field)], key: &str) -> Option<&'a Field> {
    if let Some((_, f)) = obs.iter().find(|(k, _)| k == key) {
        return Some(f);
    }
    let (head, rest) = key.split_once('/')?;
    match obs.iter().find(|(k, _)| k == head) {
        Some((_, Field::Map(inner))) => lookup(inner, rest),
        _ => None,
    }
}

fn missing(key: &str, what: &str, obs: &[(String, Field)]) -> String {
    let present: Vec<&str> = obs.iter().map(|(k, _)| k.as_str()).collect();
    format!("missing key `{key}` (the policy reads {what} from it); the request has keys {present:?}")
}

/// An image from a uint8 array, HWC (or CHW, as openpi's ALOHA client sends) with 1, 3 or 4
/// channels.
fn image(key: &str, field: &Field, spec: &PolicySpec) -> std::result::Result<RgbImage, String> {
    let want = "a uint8 image array of shape (H, W, 3)";
    let Field::Array(a) = field else {
        return Err(format!("`{key}`: expected {want}, got {}", field.describe()));
    };
    if a.dtype != Dtype::U8 || a.shape.len() != 3 || a.is_empty() {
        return Err(format!("`{key}`: expected {want}, got a {a}"));
    }
    let (h, w, c) = (a.shape[0], a.shape[1], a.shape[2]);
    let img = if matches!(c, 1 | 3 | 4) {
        RgbImage::from_raw(a.data.clone(), w, h, c)
    } else if matches!(h, 1 | 3 | 4) {
        RgbImage::from_raw(chw_to_hwc(a), c, w, h)
    } else {
        return Err(format!("`{key}`: expected {want}, got a {a}"));
    }
    .map_err(|e| format!("`{key}`: {e}"))?;
    if let (true, Some((sh, sw))) = (spec.exact_image_size, spec.image_size) {
        if (img.height, img.width) != (sh, sw) {
            return Err(format!(
                "`{key}`: the {} policy takes {sh}×{sw} images, got {}×{}",
                spec.family, img.height, img.width
            ));
        }
    }
    Ok(img)
}

fn chw_to_hwc(a: &NdArray) -> Vec<u8> {
    let (c, h, w) = (a.shape[0], a.shape[1], a.shape[2]);
    let mut out = vec![0u8; a.data.len()];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[(y * w + x) * c + ch] = a.data[(ch * h + y) * w + x];
            }
        }
    }
    out
}

fn state(key: &str, field: &Field, dim: usize) -> std::result::Result<Vec<f32>, String> {
    let values = match field {
        Field::Array(a) if a.dtype != Dtype::Bool => a.to_f32(),
        Field::Other(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| format!("`{key}`: expected {dim} numbers, got a list with non-numbers"))?,
        other => return Err(format!("`{key}`: expected a float array of {dim} values, got {}", other.describe())),
    };
    if values.len() != dim {
        return Err(format!("`{key}`: expected a float array of {dim} values, got {}", field.describe()));
    }
    if let Some((i, x)) = values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(format!("`{key}`: value {i} is {x}"));
    }
    Ok(values)
}

/// The metadata frame sent on connect.
pub fn metadata(spec: &PolicySpec, map: &InputMap) -> Value {
    let keys = map.keys(spec);
    protocol::map(vec![
        ("family", Value::from(spec.family.as_str())),
        ("action_horizon", Value::from(spec.horizon as u64)),
        ("action_dim", Value::from(spec.action_dim as u64)),
        (
            "image_size",
            match spec.image_size {
                Some((h, w)) => Value::Array(vec![Value::from(h as u64), Value::from(w as u64)]),
                None => Value::Nil,
            },
        ),
        ("observation_keys", Value::Array(keys.iter().map(|k| Value::from(k.as_str())).collect())),
        ("image_keys", Value::Array(map.images.iter().map(|k| Value::from(k.as_str())).collect())),
        ("cameras", Value::Array(spec.cameras.iter().map(|k| Value::from(k.as_str())).collect())),
        (
            "state_key",
            match (&map.state, spec.state_dim) {
                (Some(k), d) if d > 0 => Value::from(k.as_str()),
                _ => Value::Nil,
            },
        ),
        ("state_dim", Value::from(spec.state_dim as u64)),
        ("prompt_key", Value::from(map.prompt.as_str())),
        ("step", Value::from(spec.step as u64)),
    ])
}
