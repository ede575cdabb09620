//! A thin wrapper over the `tokenizers` crate: load a `tokenizer.json`, encode to i64 ids,
//! decode, look up tokens. Errors name the file.
//!
//! ```no_run
//! use vlm4vla_models::common::tokenizer::Tokenizer;
//! let tok = Tokenizer::from_file("checkpoint/tokenizer.json").unwrap();
//! let ids = tok.encode("pick up the red block", false).unwrap();
//! assert_eq!(tok.decode(&ids, false).unwrap(), "pick up the red block");
//! ```

use std::path::{Path, PathBuf};
use vlm4vla_engine::{Error, Result};

/// A Hugging Face fast tokenizer loaded from a `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size()).finish()
    }
}

impl Tokenizer {
    /// Load `path` (a `tokenizer.json`). Errors name the file when it is missing or malformed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading tokenizer {}", path.display()), e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner, path: path.to_path_buf() })
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. bos/eos).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::file(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// The text of `ids`; `skip_special` drops special tokens. Errors on ids out of the u32 range.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| {
                u32::try_from(id)
                    .map_err(|_| Error::file(&self.path, format!("cannot decode token id {id}: out of range")))
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| Error::file(&self.path, format!("cannot decode {ids:?}: {e}")))
    }

    /// The id of `token` (as spelled in the vocabulary, or an added/special token), if any.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// The id of `token`, or an error naming the file and the token.
    pub fn require_id(&self, token: &str) -> Result<i64> {
        self.token_to_id(token)
            .ok_or_else(|| Error::file(&self.path, format!("token {token:?} is not in the vocabulary")))
    }

    /// The token spelled by `id`, if any.
    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id).ok().and_then(|id| self.inner.id_to_token(id))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer, for anything not covered here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
