//! The environment overlay: `SWITCHBOARD_<SECTION>__<KEY>=value` variables onto the file's
//! table, before it is read into [`Config`](super::Config).
//!
//! The part after the prefix is lowercased and split on `__` into a key path, as deep as the
//! configuration goes: `SWITCHBOARD_LIMITS__MAX_CONNECTIONS=5000` sets
//! `limits.max_connections`, `SWITCHBOARD_SERVER__TLS__CERT_FILE=/etc/tls/cert.pem` sets
//! `server.tls.cert_file`. The top-level arrays of tables take a variable of their own name:
//! `SWITCHBOARD_NAMESPACES='[{pattern = "*", subscribe = "anonymous", publish = "none",
//! history = "none"}]'`, `SWITCHBOARD_WEBHOOKS='[...]'`.
//!
//! A value is read as TOML (numbers, booleans, arrays, inline tables) unless the key holds a
//! string, where it is taken as written: `SWITCHBOARD_SERVER__NODE_ID=12345` is the node
//! `"12345"`, not a number the key refuses. An error about a value that came from a
//! variable names the variable.
//!
//! Variables without `__` after the prefix (other than the arrays above) are not meant for
//! us (Kubernetes' service links, `SWITCHBOARD_WS_SERVICE_HOST`, never contain `__`: service
//! and port names cannot hold `_`): they are returned, to be logged, and otherwise ignored.

use super::{Config, ConfigError, ENV_PREFIX};

/// Top-level keys set whole by a variable of their own name.
const TOP_LEVEL_ARRAYS: [&str; 2] = ["namespaces", "webhooks"];

/// What the overlay did: the variables ignored, and which key each applied one set.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) ignored: Vec<String>,
    /// `(dotted key, variable)`.
    set: Vec<(String, String)>,
}

impl Applied {
    /// `err`, naming the variable when the key at fault came from one.
    pub(super) fn name_variable(&self, err: ConfigError) -> ConfigError {
        let ConfigError::Parse(message) = &err else {
            return err;
        };
        let key = message.split(':').next().unwrap_or_default();
        match self.set.iter().find(|(set, _)| {
            key == set || key.starts_with(&format!("{set}.")) || key.starts_with(&format!("{set}["))
        }) {
            Some((_, var)) => ConfigError::Env {
                var: var.clone(),
                message: message.clone(),
            },
            None => err,
        }
    }
}

/// Overlays the `SWITCHBOARD_*` variables of `env` onto `table`.
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Applied, ConfigError> {
    let defaults = toml::Value::try_from(Config::default()).ok();
    let mut applied = Applied::default();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let top_level = rest.to_ascii_lowercase();
        let path: Vec<String> = if TOP_LEVEL_ARRAYS.contains(&top_level.as_str()) {
            vec![top_level]
        } else if rest.contains("__") {
            rest.split("__").map(str::to_ascii_lowercase).collect()
        } else {
            applied.ignored.push(var);
            continue;
        };
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected SWITCHBOARD_<SECTION>__<KEY> (or deeper, \
                          SWITCHBOARD_SERVER__TLS__CERT_FILE), e.g. SWITCHBOARD_SERVER__LISTEN"
                    .to_owned(),
            });
        }
        let holds_string = defaults
            .as_ref()
            .and_then(|defaults| lookup(defaults, &path))
            .is_some_and(toml::Value::is_str);
        let value = if holds_string {
            toml::Value::String(raw)
        } else {
            parse_value(&raw)
        };
        insert(table, &path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        applied.set.push((path.join("."), var));
    }
    Ok(applied)
}

fn lookup<'a>(value: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter()
        .try_fold(value, |value, key| value.as_table()?.get(key))
}

/// Sets `path` in `table`, making the tables on the way.
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut at = table;
    for (depth, key) in parents.iter().enumerate() {
        let next = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a section", path[..=depth].join(".")))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let document = format!("v = {raw}");
    match document.parse::<toml::Table>() {
        Ok(mut parsed) => parsed
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}
