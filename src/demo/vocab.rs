//! The word vocabulary of the tabletop instructions: the tiny configs ship no `tokenizer.json`,
//! so instructions are tokenized word by word with ids below the tiny vocabulary size, clear of
//! the special and image token ids.

use std::collections::BTreeMap;

use super::GROUNDING_TEMPLATE;
use crate::env::{Colour, Goal, Shape, Side};

/// Name of the word vocabulary stored with checkpoints.
pub const VOCAB_NAME: &str = "tabletop-words-v2";

/// A word-level vocabulary for the tabletop instructions: every word of every template, colour,
/// shape noun and side, in sorted order, numbered from 4 (3 is the unknown word), skipping the
/// PaliGemma image (100) and newline (108) ids; all ids stay below 128, the tiny vocabulary.
#[derive(Clone, Debug)]
pub struct Vocab {
    ids: BTreeMap<String, i64>,
}

/// The id of a word the vocabulary does not know.
pub const UNK_ID: i64 = 3;

impl Vocab {
    pub fn tabletop() -> Vocab {
        let mut words: Vec<String> = Vec::new();
        let goals = [Goal::Reach, Goal::Lift, Goal::PlaceOnPlate, Goal::MoveToSide(Side::Left)];
        for g in goals {
            for t in g.templates() {
                words.extend(split_words(&t.replace("{obj}", " ").replace("{side}", " ")));
            }
        }
        words.extend(Colour::ALL.iter().map(|c| c.name().to_string()));
        words.extend(split_words(&GROUNDING_TEMPLATE.replace("{obj}", " ")));
        words.extend([Shape::Block, Shape::Ball].iter().map(|s| s.noun().to_string()));
        words.extend(Side::ALL.iter().map(|s| s.name().to_string()));
        words.sort();
        words.dedup();
        let mut ids = BTreeMap::new();
        let mut next = UNK_ID + 1;
        for w in words {
            while next == 100 || next == crate::models::paligemma::NEWLINE_TOKEN {
                next += 1;
            }
            ids.insert(w, next);
            next += 1;
        }
        Vocab { ids }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The largest id in use.
    pub fn max_id(&self) -> i64 {
        self.ids.values().copied().max().unwrap_or(UNK_ID)
    }

    /// Lower-cases, splits on anything that is not a letter, maps unknown words to [`UNK_ID`].
    pub fn encode(&self, text: &str) -> Vec<i64> {
        split_words(&text.to_lowercase()).iter().map(|w| self.ids.get(w).copied().unwrap_or(UNK_ID)).collect()
    }

    /// Words of `text` the vocabulary does not know.
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        split_words(&text.to_lowercase()).into_iter().filter(|w| !self.ids.contains_key(w)).collect()
    }
}

fn split_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// The word vocabulary as one tokenizer among others: what the shared
/// [`Encoder`](crate::finetune::Encoder) of the demo preset tokenises instructions with.
impl crate::finetune::text::TextTokenizer for Vocab {
    fn encode(&self, text: &str) -> crate::engine::Result<Vec<i64>> {
        Ok(Vocab::encode(self, text))
    }

    fn describe(&self) -> String {
        format!("the tabletop word vocabulary `{}` ({} words)", super::VOCAB_NAME, self.len())
    }

    fn unknown_words(&self, text: &str) -> Vec<String> {
        Vocab::unknown_words(self, text)
    }
}
