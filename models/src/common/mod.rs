//! What the families share: the `Backbone` trait the VLA policy drives, checkpoint resolution
//! and loading, fused projections (merged on load, split back to checkpoint names), image
//! preprocessing (Pillow-exact resizes, normalisation) and tokenization.

pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod fused;
pub mod image;
pub mod init;
pub(crate) mod last_rows;
pub mod processor_files;
pub mod tokenizer;
