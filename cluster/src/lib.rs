//! Kairn's control plane: the replicated store, the API server in front of it, and the
//! scheduler and controllers that act on the cluster through that API.

pub mod api;
pub mod controllers;
pub mod credentials;
pub mod cron;
pub mod election;
pub mod failover;
pub mod kinds;
pub mod member;
pub use kairn_quantity as quantity;
pub mod scheduler;
pub mod store;
