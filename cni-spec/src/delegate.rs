//! Calling another plugin (an IPAM plugin) through CNI_PATH, as libcni does.

use crate::env::Invocation;
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Find `plugin_type` in CNI_PATH. The type is a file name, never a path.
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("plugin type {plugin_type:?} is not a plugin name"),
        ));
    }
    path.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("failed to find plugin {plugin_type:?} in CNI_PATH {path:?}"),
            )
        })
}

/// Run `plugin_type` with `command` and `config` on stdin. ADD returns the
/// parsed result; the other verbs return `None`. A plugin's own error object
/// is passed through unchanged (its code is what the runtime should see).
pub fn exec_plugin(
    plugin_type: &str,
    inv: &Invocation,
    command: &str,
    config: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let bin = find_plugin(plugin_type, &inv.path)?;
    let mut child = Command::new(&bin)
        .envs(inv.delegate_env(command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(ErrorCode::Io, format!("cannot start {}: {e}", bin.display())))?;
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(config)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("writing config to {}: {e}", bin.display())))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(ErrorCode::Io, format!("waiting for {}: {e}", bin.display())))?;
    if !out.status.success() {
        let err = serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|_| {
            CniError::new(
                ErrorCode::DelegateFailed,
                format!("{} exited with {} and no error object", bin.display(), out.status),
            )
            .with_details(String::from_utf8_lossy(&out.stdout).into_owned())
        });
        return Err(err.context(format!("delegated {command} to {plugin_type}")));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            format!("{plugin_type} printed an ADD result that is not JSON: {e}"),
        )
    })?;
    CniResult::from_value(value).map(Some)
}
