//! Volumes for the process runtime: a container with volume mounts runs in a mount
//! namespace of its own where each volume is bound at its `mountPath`. Mount points are
//! made on the host first (a bind mount needs one), inside an outer volume when nested.

use std::fs::File;

use crate::runtime::{ContainerConfig, RuntimeError};

/// A mount prepared for the child: source, target, read-only.
pub(super) type Bind = (std::ffi::CString, std::ffi::CString, bool);

pub(super) fn cstring(p: &std::path::Path) -> Result<std::ffi::CString, RuntimeError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Config(format!("path {} contains a NUL byte", p.display())))
}

/// Makes sure every mount point exists on the host (a directory, or an empty file for
/// a file), as a bind mount needs one, and prepares the paths for the child.
pub(super) fn mount_points(config: &ContainerConfig) -> Result<Vec<Bind>, RuntimeError> {
    let mut binds = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let io = |source| RuntimeError::Io {
            context: format!(
                "preparing mount point {} of container {}",
                m.target.display(),
                config.name
            ),
            source,
        };
        // Inside an earlier mount, the mount point must exist in what that mount shows.
        let point = config.mounts[..i]
            .iter()
            .filter_map(|outer| Some((outer, m.target.strip_prefix(&outer.target).ok()?)))
            .max_by_key(|(outer, _)| outer.target.components().count())
            .map(|(outer, rest)| outer.source.join(rest))
            .unwrap_or_else(|| m.target.clone());
        if m.source.is_dir() {
            std::fs::create_dir_all(&point).map_err(io)?;
        } else {
            if let Some(parent) = point.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            if !point.exists() {
                File::create(&point).map_err(io)?;
            }
        }
        binds.push((cstring(&m.source)?, cstring(&m.target)?, m.read_only));
    }
    Ok(binds)
}

/// In the child: a mount namespace of its own, private (nothing propagates back to
/// the host), with each volume bound at its place.
pub(super) fn enter_mounts(binds: &[Bind], working_dir: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let none = c"none".as_ptr();
    // SAFETY: plain system calls on valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (source, target, read_only) in binds {
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if *read_only {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
                check(libc::mount(
                    none,
                    target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
            }
        }
        // The directory may be inside a volume: enter it again, now that it is there.
        check(libc::chdir(working_dir.as_ptr()))?;
    }
    Ok(())
}
