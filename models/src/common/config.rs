//! Reading a checkpoint's `config.json` into a family's config struct, with errors that name the
//! file and the field.
//!
//! A family deserialises its own struct (`#[derive(Deserialize)]`, field names as in the
//! checkpoint, `#[serde(default = ...)]` for class defaults) from the parsed JSON:
//!
//! ```
//! use serde::Deserialize;
//! use vlm4vla_models::common::config::{parse, rope_theta, section};
//! #[derive(Deserialize)]
//! struct Text { hidden_size: usize }
//! let cfg = serde_json::json!({"text_config": {"hidden_size": 64, "rope_theta": 10000.0}});
//! let path = std::path::Path::new("config.json");
//! let text = section(&cfg, "text_config", path).unwrap();
//! let t: Text = parse(text, path, "text_config").unwrap();
//! assert_eq!(t.hidden_size, 64);
//! assert_eq!(rope_theta(text, path, "text_config").unwrap(), Some(10000.0));
//! ```

use serde::de::DeserializeOwned;
use std::path::Path;
use vlm4vla_engine::{Error, Result};

/// Deserialise `value` (the whole config or the sub-config at `field`, `""` for the top level)
/// into `T`. Errors name the file, the field and serde's reason (missing field, wrong type).
pub fn parse<T: DeserializeOwned>(value: &serde_json::Value, path: &Path, field: &str) -> Result<T> {
    T::deserialize(value).map_err(|e| {
        let at = if field.is_empty() { String::from("top level") } else { format!("field `{field}`") };
        Error::file(path, format!("{at}: {e}"))
    })
}

/// The object at `key` of `value` (e.g. `text_config`, `vision_config`). Errors name the file and
/// the field when it is missing or not an object.
pub fn section<'a>(value: &'a serde_json::Value, key: &str, path: &Path) -> Result<&'a serde_json::Value> {
    match value.get(key) {
        Some(v) if v.is_object() => Ok(v),
        Some(v) => Err(Error::file(path, format!("field `{key}`: expected an object, found {v}"))),
        None => Err(Error::file(path, format!("field `{key}` is missing"))),
    }
}

/// The RoPE base of a (sub-)config in either spelling: transformers 5.x writes
/// `rope_parameters.rope_theta`, hub configs have a top-level `rope_theta`. `None` when neither
/// is present (use the class default); an error naming the file and field when it is not a number.
pub fn rope_theta(value: &serde_json::Value, path: &Path, field: &str) -> Result<Option<f64>> {
    let found = value
        .get("rope_parameters")
        .and_then(|p| p.get("rope_theta"))
        .map(|v| (v, "rope_parameters.rope_theta"))
        .or_else(|| value.get("rope_theta").map(|v| (v, "rope_theta")));
    match found {
        None => Ok(None),
        Some((v, name)) => v.as_f64().map(Some).ok_or_else(|| {
            let prefix = if field.is_empty() { String::new() } else { format!("{field}.") };
            Error::file(path, format!("field `{prefix}{name}`: expected a number, found {v}"))
        }),
    }
}

/// The M-RoPE section of a Qwen2.5-VL text config in either spelling:
/// `rope_parameters.mrope_section` (transformers 5.x) or `rope_scaling.mrope_section` (hub).
/// `None` when neither is present.
pub fn mrope_section(value: &serde_json::Value, path: &Path, field: &str) -> Result<Option<Vec<usize>>> {
    let found = ["rope_parameters", "rope_scaling"]
        .into_iter()
        .find_map(|k| value.get(k).and_then(|p| p.get("mrope_section")).map(|v| (v, k)));
    let Some((v, k)) = found else { return Ok(None) };
    let parsed: Option<Vec<usize>> =
        v.as_array().and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect());
    parsed.map(Some).ok_or_else(|| {
        let prefix = if field.is_empty() { String::new() } else { format!("{field}.") };
        Error::file(path, format!("field `{prefix}{k}.mrope_section`: expected a list of integers, found {v}"))
    })
}
