//! Instruction text → token ids: one trait, three implementations.
//!
//! - [`HfTokenizer`]: a checkpoint's own `tokenizer.json` (what a real backbone reads);
//! - [`ByteTokenizer`]: UTF-8 bytes folded onto the free ids of a vocabulary, for built-in
//!   backbones that come with random weights and no tokenizer file (benchmarks, smoke runs);
//! - the tabletop demo's word vocabulary ([`crate::demo::Vocab`]).
//!
//! ```
//! use vlm4vla::finetune::text::{ByteTokenizer, TextTokenizer};
//! let tok = ByteTokenizer::new(128, &[100, 108]).unwrap();
//! let ids = tok.encode("pick").unwrap();
//! assert_eq!(ids.len(), 4);
//! assert!(ids.iter().all(|&i| (4..128).contains(&i) && i != 100 && i != 108));
//! ```

use crate::engine::{Error, Result};
use crate::models::common::tokenizer::Tokenizer;
use std::sync::Arc;

/// Turns an instruction into the ids the prompt layout places after the image.
pub trait TextTokenizer: Send + Sync {
    /// Token ids of `text`, without special tokens (the family's prompt layout adds those).
    fn encode(&self, text: &str) -> Result<Vec<i64>>;
    /// What this tokenizer is, for logs and checkpoints (e.g. `tokenizer.json at DIR`).
    fn describe(&self) -> String;
    /// Words of `text` this tokenizer cannot represent (a word vocabulary's unknown words; none
    /// for subword and byte tokenizers).
    fn unknown_words(&self, _text: &str) -> Vec<String> {
        Vec::new()
    }
}

/// A Hugging Face `tokenizer.json`.
#[derive(Clone)]
pub struct HfTokenizer(pub Arc<Tokenizer>);

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        self.0.encode(text, false)
    }

    fn describe(&self) -> String {
        format!("tokenizer.json at {}", self.0.path().display())
    }
}

/// Ids below this are left to the specials every family keeps there (pad, bos, eos, unk).
const FIRST_BYTE_ID: i64 = 4;

/// UTF-8 bytes onto the free ids of a vocabulary: byte `b` becomes the `(b mod n)`-th id of
/// `4..vocab` that is not one of the processor's special ids (`n` free ids, at most 256 used).
/// Deterministic and lossless whenever the vocabulary has 256 free ids.
#[derive(Clone, Debug)]
pub struct ByteTokenizer {
    ids: Vec<i64>,
}

impl ByteTokenizer {
    /// `reserved`: the ids the family's prompt layout gives a meaning (image, bos, newline, …).
    pub fn new(vocab_size: usize, reserved: &[i64]) -> Result<ByteTokenizer> {
        let ids: Vec<i64> = (FIRST_BYTE_ID..vocab_size as i64).filter(|i| !reserved.contains(i)).take(256).collect();
        if ids.is_empty() {
            return Err(Error::invalid(
                "ByteTokenizer",
                format!("a vocabulary of {vocab_size} ids has no free id for text after the special ids"),
            ));
        }
        Ok(ByteTokenizer { ids })
    }
}

impl TextTokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(text.bytes().map(|b| self.ids[b as usize % self.ids.len()]).collect())
    }

    fn describe(&self) -> String {
        format!("bytes onto {} free ids", self.ids.len())
    }
}
