//! The box configuration: one TOML file, every key documented in
//! `docs/configuration.md` and exercised by `examples/edge.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mux::config::{MuxConfig, TlsConfig};
use serde::Deserialize;

use crate::update::window::RebootWindow;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[log]`: what is logged.
    #[serde(default)]
    pub log: LogConfig,
    /// `[mux]`: the :443 listener and its routes.
    #[serde(default)]
    pub mux: MuxConfig,
    /// `[tls]`: certificates of terminated connections.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[update]`: A/B updates; absent on a development host.
    pub update: Option<UpdateConfig>,
}

/// `[update]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Public key files (`edge-bundle keygen`) whose bundles are accepted.
    /// Empty: the box still supervises its slot (mark-good, rollback) but
    /// accepts no bundle.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// This box's compatibility string; bundles for another are refused.
    pub compatible: String,
    /// Where the updater keeps its record. Default: `/data/edge`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long a freshly booted slot has to pass its health check before
    /// the box reboots (and the boot script counts a failed try). Default: 5 min.
    #[serde(default = "default_health_deadline", with = "humantime_serde")]
    pub health_deadline: Duration,
    /// Where sysfs is mounted. Default: `/sys`.
    #[serde(default = "default_sys_root")]
    pub sys_root: PathBuf,
    /// Where device nodes are. Default: `/dev`.
    #[serde(default = "default_dev_root")]
    pub dev_root: PathBuf,
    /// The kernel command line naming the booted slot. Default: `/proc/cmdline`.
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
    /// HTTPS URL of the channel document naming the current release.
    /// Default: none (updates only by `edge update install`).
    pub channel: Option<String>,
    /// How often the channel is read, once the running slot is marked good.
    /// Default: 6 h (with up to 10% added at random, so a fleet spreads out).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// PEM root trusted, instead of the system roots, for bundles fetched
    /// over HTTPS (a private update server, or a test CA). Default: none.
    pub server_ca: Option<PathBuf>,
    /// Reboot when the health check fails or an update is installed.
    /// Default: true; tests that run the box on a host turn it off.
    #[serde(default = "default_true")]
    pub reboot: bool,
    /// When `edge run` may reboot into an update it installed from the
    /// channel: a daily window in UTC, `"02:00-04:00"`, wrapping midnight
    /// when the end is earlier (`"23:30-01:00"`). Default: none (at once).
    /// The reboot after a failed health check never waits, nor does
    /// `edge update install`.
    pub reboot_window: Option<RebootWindow>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_true() -> bool {
    true
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/data/edge")
}
fn default_health_deadline() -> Duration {
    Duration::from_secs(300)
}
fn default_sys_root() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_dev_root() -> PathBuf {
    PathBuf::from("/dev")
}
fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,mux=debug`. Default: `info`.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP address serving `GET /metrics`. Default: none (off). Metrics
    /// are never served on :443, where a prober could read them.
    pub listen: Option<SocketAddr>,
    /// Value of the constant `edge_id` label on every metric. Default: none.
    pub edge_id: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: default_log_filter(),
        }
    }
}

fn default_log_filter() -> String {
    "info".to_owned()
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's explanation, with the line and key.
        message: String,
    },
    /// The keys parse but do not fit together.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// Which key, and why.
        source: mux::Error,
    },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseOrInvalid::Parse(message) => ConfigError::Parse {
                path: shown,
                message,
            },
            ParseOrInvalid::Invalid(source) => ConfigError::Invalid {
                path: shown,
                source,
            },
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ParseOrInvalid> {
        let config: Config =
            toml::from_str(text).map_err(|e| ParseOrInvalid::Parse(e.to_string()))?;
        config.mux.validate().map_err(ParseOrInvalid::Invalid)?;
        config.tls.validate().map_err(ParseOrInvalid::Invalid)?;
        if let Some(update) = &config.update {
            if update
                .channel
                .as_deref()
                .is_some_and(|url| !url.starts_with("https://"))
            {
                return Err(ParseOrInvalid::Invalid(mux::Error::Config(
                    "update.channel: must be an https:// URL".to_owned(),
                )));
            }
        }
        Ok(config)
    }
}

/// A parse error (with its own location) or a validation error (naming its key).
#[derive(Debug)]
pub enum ParseOrInvalid {
    /// From the TOML parser.
    Parse(String),
    /// From validation.
    Invalid(mux::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(ParseOrInvalid::Parse(m)) => m,
            Err(ParseOrInvalid::Invalid(e)) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::parse("").expect("defaults");
        assert_eq!(
            config.mux.listen,
            vec!["0.0.0.0:443".parse().expect("addr")]
        );
        assert_eq!(config.mux.peek_timeout.as_secs(), 10);
        assert!(config.metrics.listen.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(
            error_of("[mux]\nlisten = \"0.0.0.0:443\"\npeek_timout = \"5s\"\n")
                .contains("peek_timout")
        );
        assert!(error_of("[muxx]\n").contains("muxx"));
        assert!(
            error_of("[[mux.route]]\naction = \"terminate\"\nupstreem = \"x:1\"\n")
                .contains("upstreem")
        );
    }

    #[test]
    fn inconsistent_keys_are_named() {
        let e = error_of("[[mux.route]]\naction = \"passthrough\"\n");
        assert!(e.contains("mux.route[0].upstream"), "{e}");
        let e = error_of("[[mux.route]]\nsni = [\"a..b\"]\naction = \"terminate\"\n");
        assert!(e.contains("mux.route[0].sni"), "{e}");
        let e = error_of("[mux]\npeek_timeout = \"soon\"\n");
        assert!(e.contains("peek_timeout"), "{e}");
    }
}
