//! Random initialisation of a whole model's parameters, one tensor per task in parallel.

use rayon::prelude::*;
use vlm4vla_engine::{ParamStore, Result, Tensor};

/// A store holding `init(i, name, shape)` for every `(name, shape)` of `shapes`, in order. Each
/// tensor is drawn from its own seed (the caller derives it from `i`), so the tensors are made on
/// the rayon pool in parallel and the result does not depend on the thread count. (A real-size
/// backbone has hundreds of tensors and billions of values: one thread takes minutes.)
pub fn random_store(
    shapes: Vec<(String, Vec<usize>)>,
    init: impl Fn(usize, &str, &[usize]) -> Result<Tensor> + Sync,
) -> Result<ParamStore> {
    let made: Vec<(String, Tensor)> = shapes
        .into_par_iter()
        .enumerate()
        .map(|(i, (name, shape))| init(i, &name, &shape).map(|t| (name, t)))
        .collect::<Result<_>>()?;
    let mut store = ParamStore::new();
    for (name, t) in made {
        store.insert(name, &t)?;
    }
    Ok(store)
}
