//! Logs: the tracing subscriber (text or JSON lines), and panics logged as errors and
//! counted.

use super::PANICS;

/// Logs every panic (where, and its message) as an error event and counts it in
/// `switchboard_panics_total`, then lets the previous hook run (tokio ends the panicked task; a
/// session's guard takes its connection out of the hub).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        metrics::counter!(PANICS).increment(1);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let location = info
            .location()
            .map(|location| format!("{}:{}", location.file(), location.line()));
        tracing::error!(
            location = location.as_deref().unwrap_or("unknown"),
            message,
            "Panic"
        );
        previous(info);
    }));
}

/// Starts the global tracing subscriber: `filter` is a `tracing` filter (`info`,
/// `switchboard=debug,info`), `json` one JSON object per line instead of text. Call once,
/// from `main`.
///
/// # Errors
/// When `filter` is not a valid filter, or a subscriber is already set.
pub fn init_tracing(filter: &str, json: bool) -> Result<(), TracingError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|err| TracingError::Filter(err.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|err| TracingError::Install(err.to_string()))
}

/// Why the tracing subscriber did not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("log.level is not a valid filter: {0}")]
    Filter(String),
    #[error("installing tracing subscriber: {0}")]
    Install(String),
}
