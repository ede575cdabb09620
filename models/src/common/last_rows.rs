//! Computing only the rows that are read after the last decoder layer.
//!
//! The VLA head reads the final hidden states of the appended query rows alone. In the last
//! decoder layer every other row still gives its key and value to those rows, but its own query,
//! attention output, MLP and final norm feed nothing. So that layer computes its norm and its
//! q|k|v projection (keys and values need every row) over the whole sequence, then narrows to the
//! read rows before RoPE on the queries, attention, the output projection, the residual and the
//! MLP. Each kept row is computed by the same operations on the same values as in the full
//! layer; the gradients reaching every parameter are the full layer's (the dropped rows' outputs
//! have none).

use vlm4vla_engine::{AttentionKeys, Result, Tensor};

/// The last `rows` rows of a sequence and the attention keys they see.
pub(crate) struct LastRows {
    /// The first kept row.
    pub first: usize,
    pub rows: usize,
    /// The keys of a `rows × len` attention (see [`AttentionKeys::last_rows`]).
    pub keys: AttentionKeys,
}

impl LastRows {
    /// `t` narrowed to the kept rows along `dim`.
    pub fn of(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        t.narrow(dim, self.first, self.rows)
    }
}

/// The rows the last layer keeps: `Some` when `rows` is given, fewer than `len` and expressible
/// by the mask ([`AttentionKeys::last_rows`]); `None` computes every row (then [`keep_last`]
/// narrows the output).
pub(crate) fn last_rows(keys: &AttentionKeys, len: usize, rows: Option<usize>) -> Option<LastRows> {
    let rows = rows.filter(|&r| r < len)?;
    Some(LastRows { first: len - rows, rows, keys: keys.last_rows(len, rows)? })
}

/// The last `rows` rows of `x` `[B, L, …]` along dim 1 (all of it without `rows`, or when it
/// has no more).
pub(crate) fn keep_last(x: Tensor, rows: Option<usize>) -> Result<Tensor> {
    match rows {
        Some(r) if r < x.shape()[1] => x.narrow(1, x.shape()[1] - r, r),
        _ => Ok(x),
    }
}
