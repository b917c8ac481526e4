//! What Kairn's components (the scheduler, the controllers, the node agent) share as
//! clients of the API server, apart from the control plane's own code.

pub mod trimmed;
pub mod watch_event;

pub use trimmed::Trimmed;
