//! One module per `kairn` verb.

pub mod agent;
pub mod diff;
pub mod get;
pub mod server;
pub mod status;
pub mod up;
