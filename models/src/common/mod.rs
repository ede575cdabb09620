//! What the families share: the `Backbone` trait the VLA policy drives.

pub mod backbone;
