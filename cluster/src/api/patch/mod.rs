//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386), Kubernetes' strategic merge
//! patch and server-side apply with the `metadata.managedFields` every write keeps. Written
//! once, here, for the API server and for the GitOps renderer's kustomize patches.

pub mod apply;
pub mod fields;
pub mod json;
pub mod keys;
pub mod strategic;
