//! Logging to a file or stderr. Never stdout: stdout carries the result.

use crate::config::PluginConfig;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

pub fn init(cfg: Option<&PluginConfig>) {
    let level = cfg
        .and_then(|c| c.log_level.clone())
        .or_else(|| std::env::var("SLUICE_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let file = cfg
        .and_then(|c| c.log_file.as_ref())
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    // try_init: a second call in one process (tests) keeps the first subscriber.
    let _ = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
