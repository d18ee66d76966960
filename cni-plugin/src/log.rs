//! Logging to a file or stderr. Never stdout: stdout carries the result.

use crate::config::PluginConfig;
use sluice_cni_spec::{CniError, ErrorCode};
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// The log file, appended to: opened without blocking and refused unless
/// it is a regular file (a FIFO there would hang every call). A file that
/// cannot be opened leaves logging on stderr.
fn open_log(p: &Path) -> Result<Option<File>, CniError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(not_a_file(p)),
        Err(_) => return Ok(None),
    };
    match f.metadata() {
        Ok(m) if m.is_file() => Ok(Some(f)),
        _ => Err(not_a_file(p)),
    }
}

fn not_a_file(p: &Path) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        format!("logFile {} is not a regular file", p.display()),
    )
}

pub fn init(cfg: Option<&PluginConfig>) -> Result<(), CniError> {
    let level = cfg
        .and_then(|c| c.log_level.clone())
        .or_else(|| std::env::var("SLUICE_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let file = match cfg.and_then(|c| c.log_file.as_ref()) {
        Some(p) => open_log(p)?,
        None => None,
    };
    // try_init: a second call in one process (tests) keeps the first subscriber.
    let _ = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    Ok(())
}
