//! What the families share: the `Backbone` trait the VLA policy drives, checkpoint resolution
//! and loading, image preprocessing (Pillow-exact resizes, normalisation) and tokenization.

pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod image;
pub mod tokenizer;
