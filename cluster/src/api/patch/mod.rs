//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), Kubernetes' strategic
//! merge patch and server-side apply. Written once, here, for the API server and for the
//! GitOps renderer's kustomize patches.

pub mod keys;
