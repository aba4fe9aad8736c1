//! The node's identity: an Ed25519 key pair created on first start in the data dir.
//!
//! `node_id` is the first 12 bytes of SHA-256(public key) in lowercase hex (24
//! characters). It is safe in MQTT topics and Home Assistant object IDs, short enough for
//! dashboards, and anyone holding the public key (published in the health message) can
//! check that a key belongs to a node ID, so signed messages cannot be attributed to the
//! wrong node. The key file (`<data_dir>/node.key`, PKCS#8) is mode 0600.

use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

pub const KEY_FILE: &str = "node.key";

pub struct Identity {
    key: Ed25519KeyPair,
    public_key: [u8; 32],
    node_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not an Ed25519 PKCS#8 key ({why}); move it away to create a new identity")]
    BadKey { path: PathBuf, why: String },
}

/// `node_id` for a public key.
pub fn node_id_of(public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&d.as_ref()[..12])
}

/// Checks an Ed25519 signature.
pub fn verify(public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(message, sig)
        .is_ok()
}

impl Identity {
    /// Loads `<data_dir>/node.key`, creating it (mode 0600) if absent.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityError> {
        Self::load_or_create_file(&data_dir.join(KEY_FILE))
    }

    /// Loads a key file, creating it (mode 0600, and its directory) if absent.
    pub fn load_or_create_file(path: &Path) -> Result<Identity, IdentityError> {
        let path = path.to_path_buf();
        let data_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let data_dir = data_dir.as_path();
        let key_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| KEY_FILE.into());
        let io_err = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(pkcs8) => {
                let mode = fs::metadata(&path).map_err(io_err)?.permissions().mode();
                if mode & 0o077 != 0 {
                    warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "node key was readable by others; set to 0600");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io_err)?;
                }
                Self::from_pkcs8(&pkcs8).map_err(|why| IdentityError::BadKey {
                    path: path.clone(),
                    why,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io_err)?;
                let rng = SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| io_err(io::Error::other("the system random generator failed")))?;
                let tmp = data_dir.join(format!(".{key_name}.tmp-{}", std::process::id()));
                let write = || -> io::Result<()> {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(pkcs8.as_ref())?;
                    f.sync_all()?;
                    // create_new + rename: two first starts racing cannot mix keys.
                    fs::hard_link(&tmp, &path)?;
                    fs::remove_file(&tmp)?;
                    crate::fsutil::sync_dir(data_dir)
                };
                if let Err(e) = write() {
                    let _ = fs::remove_file(&tmp);
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        return Self::load_or_create_file(&path);
                    }
                    return Err(io_err(e));
                }
                let id = Self::from_pkcs8(pkcs8.as_ref()).map_err(|why| IdentityError::BadKey {
                    path: path.clone(),
                    why,
                })?;
                info!(node_id = %id.node_id, path = %path.display(), "created a new node identity");
                Ok(id)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Identity, String> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| e.to_string())?;
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(key.public_key().as_ref());
        Ok(Identity {
            node_id: node_id_of(&public_key),
            key,
            public_key,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.key.sign(message).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_0600_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path()).unwrap();
        let mode = fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(a.node_id().len(), 24);
        assert_eq!(a.node_id(), node_id_of(a.public_key()));
        let sig = a.sign(b"hello");
        assert!(verify(b.public_key(), b"hello", &sig));
        assert!(!verify(b.public_key(), b"hellO", &sig));
    }

    #[test]
    fn loose_permissions_are_tightened_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        Identity::load_or_create(d.path()).unwrap();
        let p = d.path().join(KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        Identity::load_or_create(d.path()).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, b"not a key").unwrap();
        let e = Identity::load_or_create(d.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an Ed25519 PKCS#8 key"), "{e}");
    }
}
