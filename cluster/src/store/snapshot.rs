//! The store's current snapshot, kept in one file beside the database.
//!
//! A snapshot can be as large as the whole keyspace, so it is not a value in the tree:
//! it is written to a temporary file, fsynced, and renamed over `current`, so the file
//! is always a whole snapshot (the old one or the new one). It carries its metadata and
//! ends with a CRC-32 of everything before it: a damaged file is refused, never loaded.
//!
//! Layout: magic, meta length (u32 BE), meta (postcard), data, CRC-32 (u32 BE).

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{BasicNode, SnapshotMeta};

use super::codec;
use super::types::NodeId;

const MAGIC: &[u8] = b"KAIRNSNAP2";
const CURRENT: &str = "current";

/// Where this member's snapshot lives.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("snapshot {} is damaged: {why}", path.display()),
    )
}

impl SnapshotFile {
    /// Snapshots in `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Durably replaces the current snapshot.
    pub fn write(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> std::io::Result<()> {
        let meta = codec::encode(meta).map_err(std::io::Error::other)?;
        let meta_len = u32::try_from(meta.len()).map_err(std::io::Error::other)?;
        let mut crc = crc32fast::Hasher::new();
        let tmp = self.dir.join(format!("{CURRENT}.tmp"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for part in [MAGIC, &meta_len.to_be_bytes(), &meta, data] {
            crc.update(part);
            file.write_all(part)?;
        }
        file.write_all(&crc.finalize().to_be_bytes())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CURRENT))?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The current snapshot's metadata and data, if there is one.
    pub fn read(&self) -> std::io::Result<Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>> {
        let path = self.dir.join(CURRENT);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = MAGIC.len() + 4;
        if bytes.len() < header + 4 || !bytes.starts_with(MAGIC) {
            return Err(invalid(&path, "not a Kairn snapshot, or truncated"));
        }
        let body_len = bytes.len() - 4;
        let stored = u32::from_be_bytes(bytes[body_len..].try_into().map_err(|e| invalid(&path, e))?);
        if crc32fast::hash(&bytes[..body_len]) != stored {
            return Err(invalid(&path, "checksum mismatch"));
        }
        let meta_len =
            u32::from_be_bytes(bytes[MAGIC.len()..header].try_into().map_err(|e| invalid(&path, e))?) as usize;
        let meta_end = header + meta_len;
        if meta_end > body_len {
            return Err(invalid(&path, "metadata runs past the end"));
        }
        let meta = codec::decode(&bytes[header..meta_end]).map_err(|e| invalid(&path, e))?;
        bytes.truncate(body_len);
        bytes.drain(..meta_end);
        Ok(Some((meta, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_snapshot_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path()).unwrap();
        assert!(file.read().unwrap().is_none());
        let meta = SnapshotMeta {
            snapshot_id: "1-5-0".into(),
            ..Default::default()
        };
        file.write(&meta, b"some data").unwrap();
        let (back, data) = file.read().unwrap().unwrap();
        assert_eq!(back.snapshot_id, "1-5-0");
        assert_eq!(data, b"some data");

        let path = dir.path().join(CURRENT);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = file.read().unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("checksum"), "{err}");
    }
}
