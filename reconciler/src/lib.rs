//! Kairn's GitOps engine: follows a Git revision, renders its manifests, plans the
//! difference with the live cluster, applies it through the API server as one
//! transaction, and keeps history; the CLI's `diff`, `sync`, `history` and `rollback`
//! use the same steps.

pub mod apply;
pub mod health;
pub mod history;
pub mod live;
pub mod manifest;
pub mod plan;
pub mod render;
pub mod source;
pub mod sync;
pub mod worker;

pub use worker::{run, Config};
