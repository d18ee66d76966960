//! Fault injection for the tests, in debug builds only: `SLUICE_FAULT_AT=
//! <step>` makes the plugin fail at that step as if it had failed there
//! (the normal rollback runs), `<step>:kill` makes it SIGKILL itself there
//! (nothing runs after: what a crash or an OOM kill leaves). The steps are
//! the boundaries between what ADD and DEL make and record, named where
//! they are called. A release build has no hook: `at` is empty.

use sluice_cni_spec::CniError;

/// The variable the tests set.
pub const VAR: &str = "SLUICE_FAULT_AT";

#[cfg(debug_assertions)]
pub fn at(step: &'static str) -> Result<(), CniError> {
    let Ok(want) = std::env::var(VAR) else {
        return Ok(());
    };
    let (name, kill) = match want.rsplit_once(':') {
        Some((n, "kill")) => (n, true),
        _ => (want.as_str(), false),
    };
    if name != step {
        return Ok(());
    }
    if kill {
        // SAFETY: signalling our own process; nothing after this runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    Err(CniError::new(
        sluice_cni_spec::ErrorCode::TryAgainLater,
        format!("fault injected at {step}"),
    ))
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn at(_step: &'static str) -> Result<(), CniError> {
    Ok(())
}
