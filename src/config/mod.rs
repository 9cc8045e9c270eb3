//! Configuration: the TOML schema, its defaults, the environment overlay and validation.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `SWITCHBOARD_*` environment
//! variables, command-line flags (applied by `main`). Every struct denies unknown keys and
//! every value is validated, so a typo refuses to start with an error naming the key instead
//! of falling back to a default. Parsing is pure ([`Config::from_toml_str`]); file IO lives in
//! [`Config::load`]. This module depends on nothing else in the crate.

use std::path::Path;

use serde::{Deserialize, Serialize};

mod auth;
mod cluster;
mod compression;
mod control;
mod env;
mod history;
mod hooks;
mod limits;
mod log;
mod namespaces;
mod presence;
mod server;
mod session;
mod shutdown;
mod streams;
mod webhooks;

pub use self::auth::{AuthConfig, AuthKeyConfig};
pub use self::cluster::{BusRouting, ClusterConfig, RedisTarget};
pub use self::compression::CompressionConfig;
pub use self::control::ControlConfig;
pub use self::history::HistoryConfig;
pub use self::hooks::{ConnectMode, HooksConfig};
pub use self::limits::{LimitsConfig, RefuseConnection};
pub use self::log::{LogConfig, LogFormat};
pub use self::namespaces::{ChannelPattern, EditRule, NamespaceConfig, Rule, SlowConsumer};
pub use self::presence::PresenceConfig;
pub use self::server::{ServerConfig, TlsConfig};
pub use self::session::SessionConfig;
pub use self::shutdown::{MAX_DRAIN, ShutdownConfig};
pub use self::streams::StreamsConfig;
pub use self::webhooks::{WebhookConfig, WebhookEvent};

/// Prefix of the environment variables that override file settings.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Why a configuration was refused. Each message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: fix the path or its permissions.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML is not well formed, or a key is unknown or has the wrong type: fix that key.
    #[error("{0}")]
    Parse(String),
    /// A `SWITCHBOARD_*` variable could not be applied: fix or unset it.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A value is well formed but out of range: fix that key.
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration. See `config/switchboard.toml` for every key documented.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub history: HistoryConfig,
    pub streams: StreamsConfig,
    pub shutdown: ShutdownConfig,
    pub cluster: ClusterConfig,
    pub demo: DemoConfig,
    pub presence: PresenceConfig,
    /// permessage-deflate with clients.
    pub compression: CompressionConfig,
    pub auth: AuthConfig,
    /// The application backend asked at connect, subscribe, publish and for `rpc`.
    pub hooks: HooksConfig,
    /// Events POSTed to the application in signed batches (`[[webhooks]]`). Default none.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Channel permissions; the first entry whose pattern matches a channel governs it, and a
    /// channel no entry matches is refused. Default: one `*` entry letting anyone subscribe
    /// and read history, and no client publish (backends publish through the control API).
    #[serde(default = "namespaces::default_namespaces")]
    pub namespaces: Vec<NamespaceConfig>,
    /// `SWITCHBOARD_*` variables that are not in the `SWITCHBOARD_<SECTION>__<KEY>` form
    /// (Kubernetes injects `<SERVICE>_SERVICE_HOST` and the like for every Service, and a
    /// Service named `switchboard-ws` gives `SWITCHBOARD_WS_SERVICE_HOST`): ignored, and
    /// logged at debug level once logging is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            control: ControlConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            history: HistoryConfig::default(),
            streams: StreamsConfig::default(),
            shutdown: ShutdownConfig::default(),
            cluster: ClusterConfig::default(),
            demo: DemoConfig::default(),
            presence: PresenceConfig::default(),
            compression: CompressionConfig::default(),
            auth: AuthConfig::default(),
            hooks: HooksConfig::default(),
            webhooks: Vec::new(),
            namespaces: namespaces::default_namespaces(),
            ignored_env: Vec::new(),
        }
    }
}

/// The live demo page (`src/demo`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Serve the demo page at `/demo` on the WebSocket listener, publish a ticker to
    /// `demo:ticker` every second and stream a scripted assistant reply to `demo:assistant`
    /// every 15 s (not with `cluster.redis`, which does not carry message streams yet). Its
    /// chat publishes to `demo:chat` from the page, which
    /// needs a `[[namespaces]]` entry letting anonymous clients publish there
    /// (`config/demo.toml` has one). Default false.
    pub enabled: bool,
}

impl Config {
    /// Parses a TOML document, applies no overlay, and validates it.
    ///
    /// ```
    /// use switchboard::config::Config;
    ///
    /// let config = Config::from_toml_str("[limits]\nmax_connections = 5000\n").unwrap();
    /// assert_eq!(config.limits.max_connections, 5000);
    /// let err = Config::from_toml_str("[limits]\nmax_conections = 5000\n").unwrap_err();
    /// assert!(err.to_string().starts_with("limits.max_conections: unknown field"));
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the key for unknown keys and wrong types,
    /// [`ConfigError::Invalid`] for values out of range.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| ConfigError::Parse(err.to_string()))?;
        Self::from_table(table)?.validate()
    }

    /// Reads `path` (when given), overlays `SWITCHBOARD_*` variables from `env`, and validates.
    ///
    /// # Errors
    /// Any [`ConfigError`]; each names the file, variable or key at fault.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|err| ConfigError::Parse(format!("{}: {err}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let applied = env::apply(&mut table, env)?;
        let mut config = Self::from_table(table)
            .map_err(|err| applied.name_variable(err))?
            .validate()?;
        config.ignored_env = applied.ignored;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        // serde_path_to_error gives the full dotted key (`limits.max_connections`) for every
        // error, including errors in values that came from the environment and so have no span
        // in any file.
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().message().to_owned();
            if path == "." {
                ConfigError::Parse(inner)
            } else {
                ConfigError::Parse(format!("{path}: {inner}"))
            }
        })
    }

    /// Checks ranges and relations between values, and fills derived defaults.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key found at fault.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        self.server.validate()?;
        self.session.validate(&self.server)?;
        self.server.tls.validate("server.tls")?;
        self.control.validate()?;
        self.log.validate()?;
        self.limits.validate()?;
        self.history.validate(&self.limits)?;
        self.streams.validate(&self.limits)?;
        self.cluster.validate(&self.history)?;
        self.shutdown.validate()?;
        self.auth.validate()?;
        self.presence.validate()?;
        self.compression.validate()?;
        self.hooks.validate()?;
        for webhook in &self.webhooks {
            webhook.validate()?;
        }
        for (index, namespace) in self.namespaces.iter().enumerate() {
            if let Err(message) = namespaces::check(namespace, &self.hooks, &self.limits) {
                return Err(invalid("namespaces", format!("[{index}]: {message}")));
            }
        }
        if let Some(message) = namespaces::shadowed(&self.namespaces) {
            return Err(invalid("namespaces", message));
        }
        Ok(self)
    }

    /// The effective configuration as TOML, as `check-config` prints it, with API keys, HMAC
    /// secrets and Redis passwords replaced by `<redacted>`.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        match &mut shown.cluster.redis {
            RedisTarget::None => {}
            RedisTarget::Url(url) => *url = cluster::redact_password(url),
            RedisTarget::ClusterSeeds(seeds) => {
                for seed in seeds {
                    *seed = cluster::redact_password(seed);
                }
            }
        }
        for key in &mut shown.control.api_keys {
            *key = "<redacted>".to_owned();
        }
        for key in &mut shown.auth.keys {
            if !key.secret.is_empty() {
                key.secret = "<redacted>".to_owned();
            }
        }
        for webhook in &mut shown.webhooks {
            if !webhook.secret.is_empty() {
                webhook.secret = "<redacted>".to_owned();
            }
        }
        if !shown.hooks.secret.is_empty() {
            shown.hooks.secret = "<redacted>".to_owned();
        }
        for value in shown.hooks.headers.values_mut() {
            *value = "<redacted>".to_owned();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// What a config key's value is refused for.
pub(super) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Whether an API key is one of the placeholders the examples and deploy files ship (a
/// deployment that forgot to replace one would accept a key anyone can read).
pub(super) fn is_placeholder(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("replace-with")
        || key.starts_with("change-me")
        || key.starts_with("changeme")
        || key.starts_with("<")
        || key.contains("placeholder")
}

#[cfg(test)]
mod tests;
