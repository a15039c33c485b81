//! The service manager's side of a node: systemd's notify protocol (`Type=notify`) and the
//! signals an operator sends.
//!
//! - `READY=1` once the listeners are bound and migrations applied, so `systemctl start`
//!   returns when the node can take connections, and `STOPPING=1` when it starts draining.
//! - `WATCHDOG=1` at half of `WatchdogSec=` when the unit sets one: a node whose runtime
//!   stops scheduling tasks gets restarted.
//! - SIGHUP re-reads the configuration and applies what can change in a running node (the
//!   log level); everything else waits for a restart, and the log says so.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) notifications are no-ops.

use std::{path::PathBuf, time::Duration};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, telemetry};

/// Tells the service manager the node is serving.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the node is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining connections")]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Pets systemd's watchdog at half its period until `stop`, when the unit has one.
pub async fn watchdog(stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let mut every = tokio::time::interval((period / 2).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = every.tick() => notify(&[NotifyState::Watchdog]),
            () = stop.cancelled() => return,
        }
    }
}

/// From now on (the handler is installed before this returns), on each SIGHUP until `stop`:
/// reloads what can be reloaded from `config_path`, found as at start. Call in the runtime.
pub fn reload_on_hangup(config_path: Option<PathBuf>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading is off");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = hangups.recv() => reload(config_path.as_deref()),
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (config_path, stop);
    }
}

fn reload(config_path: Option<&std::path::Path>) {
    tracing::info!(signal = "SIGHUP", "reloading the configuration");
    let config = match Config::load(config_path).and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(error = %e, "configuration not reloaded: it is invalid; the running one stays");
            return;
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing::info!("RUST_LOG is set and wins over log_level; other settings apply at restart");
        return;
    }
    if let Err(e) = telemetry::check_log_level(&config.log_level) {
        tracing::warn!(error = %e, "log level not changed");
        return;
    }
    // Said before it applies, or a quieter level would hide it.
    tracing::info!(log_level = %config.log_level, "log level applied; other settings apply at restart");
    if let Err(e) = telemetry::set_log_level(&config.log_level) {
        tracing::warn!(error = %e, "log level not changed");
    }
}
