//! The example repository a new user starts with, embedded so that `kairn up` works
//! from any directory.

/// `(path, content)` of every file in `examples-repo/`.
pub const FILES: &[(&str, &str)] = &[
    ("namespace.yaml", include_str!("../examples-repo/namespace.yaml")),
    ("configmap.yaml", include_str!("../examples-repo/configmap.yaml")),
    ("deployment.yaml", include_str!("../examples-repo/deployment.yaml")),
];
