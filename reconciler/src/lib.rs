//! Kairn's GitOps engine: follows a branch, renders its manifests, plans the difference
//! with the live cluster and applies it through the API server as one transaction.

pub mod apply;
pub mod manifest;
pub mod render;
pub mod plan;
pub mod source;
pub mod sync;
pub mod worker;

pub use worker::run;
