//! Board profiles: commented config files in `boards/`, compiled into the binary so that
//! `ddc-edge init --board NAME` works on a device with nothing else installed.
//!
//! A profile is an ordinary config file (it passes `check-config` as it stands), so what an
//! operator edits after `init` is exactly what the profile says, comments included.

use crate::config::{Config, ConfigError, Overrides};

/// Targets the agent is built and tested for. `board.target` must be one of these.
pub const KNOWN_TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
    "x86_64-unknown-linux-gnu",
];

/// One shipped profile.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    pub name: &'static str,
    /// The profile's file text, comments and all.
    pub text: &'static str,
}

macro_rules! boards {
    ($($name:literal),* $(,)?) => {
        &[$(Board { name: $name, text: include_str!(concat!("../boards/", $name, ".toml")) }),*]
    };
}

/// Every shipped profile, in the order `ddc-edge boards` lists them.
pub const BOARDS: &[Board] = boards![
    "rpi5",
    "rpi4",
    "rpi3",
    "rpi-zero-2w",
    "rpi-armv7",
    "generic-aarch64"
];

impl Board {
    pub fn find(name: &str) -> Option<Board> {
        BOARDS.iter().copied().find(|b| b.name == name)
    }

    /// The profile decoded and validated, as the agent would see it.
    pub fn config(&self) -> Result<Config, ConfigError> {
        crate::config::parse_text(
            &format!("boards/{}.toml", self.name),
            self.text,
            &Overrides::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_a_valid_config_naming_itself() {
        assert!(BOARDS.len() >= 6);
        for b in BOARDS {
            let c = b.config().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.board.name, b.name);
            assert!(KNOWN_TARGETS.contains(&c.board.target.as_str()));
            // Profiles are for devices: they must not use the development data dir.
            assert_eq!(
                c.storage.data_dir.to_str(),
                Some("/var/lib/ddc-edge"),
                "{}",
                b.name
            );
        }
        for want in [
            "rpi5",
            "rpi4",
            "rpi3",
            "rpi-zero-2w",
            "rpi-armv7",
            "generic-aarch64",
        ] {
            assert!(Board::find(want).is_some(), "{want}");
        }
        assert_eq!(
            Board::find("rpi-armv7")
                .unwrap()
                .config()
                .unwrap()
                .board
                .target,
            "armv7-unknown-linux-gnueabihf"
        );
    }
}
