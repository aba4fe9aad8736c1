//! Runtime settings changed over MQTT (`set_limits`, `pause_replication`, `drain`),
//! persisted in `<data_dir>/settings.json` so that a restart keeps them. They override the
//! config file; the agent logs each override at start. Delete the file to return to the
//! config's values.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

pub const FILE: &str = "settings.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    pub quota_bytes: Option<u64>,
    /// Operator pause of replication.
    pub replication_paused: bool,
    /// Stop accepting new data, keep serving.
    pub draining: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message} (delete it to return to the config file's values)")]
pub struct SettingsError {
    pub path: PathBuf,
    pub message: String,
}

impl RuntimeSettings {
    pub fn load(data_dir: &Path) -> Result<RuntimeSettings, SettingsError> {
        let path = data_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| SettingsError {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RuntimeSettings::default()),
            Err(e) => Err(SettingsError {
                path,
                message: e.to_string(),
            }),
        }
    }

    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("settings serialize");
        crate::fsutil::write_atomic(&data_dir.join(FILE), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            RuntimeSettings::load(d.path()).unwrap(),
            RuntimeSettings::default()
        );
        let s = RuntimeSettings {
            egress_bps: Some(5),
            draining: true,
            ..Default::default()
        };
        s.save(d.path()).unwrap();
        assert_eq!(RuntimeSettings::load(d.path()).unwrap(), s);
        std::fs::write(d.path().join(FILE), b"{\"egress\":1}").unwrap();
        let e = RuntimeSettings::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("settings.json: unknown field `egress`"), "{e}");
    }
}
