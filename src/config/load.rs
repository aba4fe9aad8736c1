//! Finding, layering and decoding the config file.
//!
//! Layers, lowest first: built-in defaults (serde `default`), the file, then overrides from
//! the command line (`--data-dir`, `--broker`, `--sysfs-root`, `--set key.path=value`).
//! Overrides are applied to the TOML tree *before* decoding, so an override goes through
//! exactly the same type checks and validation as a value written in the file, and an
//! error in one is blamed on the flag rather than on the file.

use super::Config;
use std::fmt;
use std::path::{Path, PathBuf};

/// The system-wide config path a packaged agent reads.
pub const SYSTEM_CONFIG: &str = "/etc/ddc-edge/config.toml";
/// Environment variable naming a config file; between `--config` and the system file.
pub const CONFIG_ENV: &str = "DDC_EDGE_CONFIG";

/// Where the config came from; printed at start so an operator knows which file won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Flag(PathBuf),
    Env(PathBuf),
    System(PathBuf),
    BuiltIn,
}

impl ConfigSource {
    /// Applies the lookup order: `--config`, `$DDC_EDGE_CONFIG`, the system file if it
    /// exists, then the built-in default. Told the environment and system path so it can be
    /// tested without touching the real ones.
    pub fn resolve(explicit: Option<&Path>, env: Option<&str>, system: &Path) -> ConfigSource {
        if let Some(p) = explicit {
            ConfigSource::Flag(p.to_path_buf())
        } else if let Some(e) = env.filter(|e| !e.is_empty()) {
            ConfigSource::Env(PathBuf::from(e))
        } else if system.exists() {
            ConfigSource::System(system.to_path_buf())
        } else {
            ConfigSource::BuiltIn
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::System(p) => Some(p),
            ConfigSource::BuiltIn => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Flag(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (${CONFIG_ENV})", p.display()),
            ConfigSource::System(p) => write!(f, "{}", p.display()),
            ConfigSource::BuiltIn => f.write_str("built-in development default"),
        }
    }
}

/// Command-line adjustments on top of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `key.path=value`; the value is read as a TOML value (`70`, `true`, `"x"`) and
    /// otherwise taken as a plain string (`20GiB`, `mqtt://host`).
    pub sets: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub broker: Option<String>,
    pub sysfs_root: Option<PathBuf>,
}

impl Overrides {
    /// Each override as (flag as the user typed it, key path, value).
    fn entries(&self) -> Result<Vec<(String, String, toml::Value)>, ConfigError> {
        let mut out = Vec::new();
        let path_value = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        if let Some(d) = &self.data_dir {
            out.push((
                "--data-dir".into(),
                "storage.data_dir".into(),
                path_value(d),
            ));
        }
        if let Some(b) = &self.broker {
            out.push((
                "--broker".into(),
                "mqtt.broker".into(),
                toml::Value::String(b.clone()),
            ));
        }
        if let Some(r) = &self.sysfs_root {
            out.push((
                "--sysfs-root".into(),
                "sensors.sysfs_root".into(),
                path_value(r),
            ));
        }
        for s in &self.sets {
            let flag = format!("--set {s}");
            let Some((key, raw)) = s.split_once('=') else {
                return Err(ConfigError::new(flag, None, "expected key.path=value"));
            };
            let key = key.trim();
            let valid = !key.is_empty()
                && key.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !valid {
                return Err(ConfigError::new(
                    flag,
                    None,
                    format!("{key:?} is not a key path like storage.quota"),
                ));
            }
            out.push((flag, key.to_string(), parse_set_value(raw)));
        }
        Ok(out)
    }
}

fn parse_set_value(raw: &str) -> toml::Value {
    let raw = raw.trim();
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// A config that decoded and validated, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: ConfigSource,
}

/// A config problem: `<origin>: <key>: <message>`, e.g.
/// `config.toml: storage.quota: expected a size like "20GiB", got "twenty"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user named it, a `--flag`, or `built-in default`.
    pub origin: String,
    /// Dotted key path, when the problem is in one key.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        origin: impl Into<String>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: origin.into(),
            key,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {}: {}", self.origin, k, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Finds, reads, decodes and validates the config.
pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<LoadedConfig, ConfigError> {
    let env = std::env::var(CONFIG_ENV).ok();
    let source = ConfigSource::resolve(explicit, env.as_deref(), Path::new(SYSTEM_CONFIG));
    let config = match source.path() {
        Some(p) => {
            let origin = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| {
                let hint = match &source {
                    ConfigSource::Env(_) => format!(" (named by ${CONFIG_ENV})"),
                    _ => String::new(),
                };
                ConfigError::new(
                    origin.clone(),
                    None,
                    format!("cannot read config file{hint}: {e}"),
                )
            })?;
            parse(&origin, &text, overrides)?
        }
        None => parse("built-in default", "", overrides)?,
    };
    Ok(LoadedConfig { config, source })
}

/// Decodes and validates config text. `origin` names it in errors.
pub fn parse(origin: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::new(
            format!("{origin}:{line}:{col}"),
            None,
            format!("invalid TOML: {}", e.message().trim()),
        )
    })?;
    let mut set_keys = Vec::new();
    for (flag, key, value) in overrides.entries()? {
        set_path(&mut table, &key, value)
            .map_err(|m| ConfigError::new(flag.clone(), Some(key.clone()), m))?;
        set_keys.push((flag, key));
    }
    // Blame an error on the override that set the key, if any; the file otherwise.
    let blame = |key: &str| -> String {
        set_keys
            .iter()
            .rev()
            .find(|(_, k)| {
                key == k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(flag, _)| flag.clone())
            .unwrap_or_else(|| origin.to_string())
    };
    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().trim().to_string();
            ConfigError::new(blame(&key), (key != ".").then_some(key), humanize(&message))
        })?;
    config
        .validate()
        .map_err(|(key, message)| ConfigError::new(blame(&key), Some(key), message))?;
    Ok(config)
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut cur = table;
    for (i, p) in parts.iter().enumerate() {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is a value, not a section", parts[..=i].join(".")))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// serde's messages say "unknown field `x`, expected one of ..."; operators think in keys.
fn humanize(message: &str) -> String {
    message
        .replace("unknown field", "unknown key")
        .replace("unknown variant", "unknown value")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("config.toml", text, &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_file_is_the_builtin_default() {
        let c = parse("x", "", &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_example_message() {
        assert_eq!(
            err("[storage]\nquota = \"twenty\"\n"),
            "config.toml: storage.quota: expected a size like \"20GiB\", got \"twenty\""
        );
    }

    /// A 0.1 config (a conffile kept over an upgrade) names the anti-entropy period by
    /// its old name.
    #[test]
    fn the_old_sweep_interval_still_sets_the_period() {
        let c = parse(
            "x",
            "[replication]\nsweep_interval = \"30s\"\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.replication.anti_entropy_interval.0,
            std::time::Duration::from_secs(30)
        );
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let e = err("[storage]\nqouta = \"1GiB\"\n");
        assert!(
            e.starts_with("config.toml: storage.qouta: unknown key `qouta`"),
            "{e}"
        );
        let e = err("[stroage]\n");
        assert!(e.starts_with("config.toml: stroage: unknown key"), "{e}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = err("[storage]\nquota = \n");
        assert!(e.starts_with("config.toml:2:"), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_blamed() {
        let o = Overrides {
            sets: vec![
                "storage.quota=2GiB".into(),
                "throttle.pause_temp_c=82".into(),
            ],
            data_dir: Some("/tmp/d".into()),
            broker: Some("mqtt://h:1884".into()),
            sysfs_root: Some("/tmp/fake".into()),
        };
        let c = parse("config.toml", "[storage]\nquota = \"1GiB\"\n", &o).unwrap();
        assert_eq!(c.storage.quota.0, 2 << 30);
        assert_eq!(c.throttle.pause_temp_c, 82.0);
        assert_eq!(c.storage.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(c.mqtt.broker.to_string(), "mqtt://h:1884");
        assert_eq!(c.sensors.sysfs_root, PathBuf::from("/tmp/fake"));

        let bad = Overrides {
            sets: vec!["storage.quota=lots".into()],
            ..Default::default()
        };
        let e = parse("config.toml", "", &bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "--set storage.quota=lots: storage.quota: expected a size like \"20GiB\", got \"lots\""
        );

        let bad = Overrides {
            broker: Some("localhost".into()),
            ..Default::default()
        };
        let e = parse("config.toml", "", &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("--broker: mqtt.broker: expected \"embedded\" or a URL"),
            "{e}"
        );

        let bad = Overrides {
            sets: vec!["storage.quota.x=1".into()],
            ..Default::default()
        };
        let e = parse("config.toml", "[storage]\nquota = \"1GiB\"\n", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.quota is a value, not a section"), "{e}");
        let e = parse("config.toml", "", &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("--set storage.quota.x=1: storage.quota: invalid type: map"),
            "{e}"
        );

        let bad = Overrides {
            sets: vec!["noequals".into()],
            ..Default::default()
        };
        assert!(parse("c", "", &bad).is_err());
    }

    #[test]
    fn lookup_order() {
        let dir = std::env::temp_dir();
        let missing = Path::new("/nonexistent/ddc-edge.toml");
        assert_eq!(
            ConfigSource::resolve(Some(Path::new("a.toml")), Some("b.toml"), &dir),
            ConfigSource::Flag("a.toml".into())
        );
        assert_eq!(
            ConfigSource::resolve(None, Some("b.toml"), &dir),
            ConfigSource::Env("b.toml".into())
        );
        assert_eq!(
            ConfigSource::resolve(None, Some(""), &dir),
            ConfigSource::System(dir.clone())
        );
        assert_eq!(
            ConfigSource::resolve(None, None, missing),
            ConfigSource::BuiltIn
        );
    }
}
