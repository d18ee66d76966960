//! The part of a network configuration every plugin shares.

use crate::error::{CniError, ErrorCode, invalid_config};
use crate::version::{self, Version};
use serde::Deserialize;
use serde_json::Value;

/// The fields the entry point needs before a plugin looks at its own config.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConfHeader {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// A conflist's list of versions (spec 1.1); runtimes normally resolve it
    /// into `cniVersion` before calling us, but a plugin config may carry it.
    #[serde(rename = "cniVersions", default)]
    pub cni_versions: Option<Vec<String>>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
}

impl NetConfHeader {
    /// Decode and validate: JSON object (code 6), supported version (code 1),
    /// valid name (code 7). Returns the header and the version to answer in.
    pub fn parse(stdin: &[u8]) -> Result<(NetConfHeader, Version), CniError> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(ErrorCode::Decode, format!("network config is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(CniError::new(ErrorCode::Decode, "network config is not a JSON object"));
        }
        let mut h: NetConfHeader = serde_json::from_value(value)
            .map_err(|e| CniError::new(ErrorCode::Decode, format!("cannot decode network config: {e}")))?;
        if h.cni_version.is_empty()
            && let Some(list) = &h.cni_versions
        {
            h.cni_version = version::pick_from_list(list)
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::IncompatibleVersion,
                        format!(
                            "none of cniVersions {list:?} is supported (have {:?})",
                            version::SUPPORTED_VERSIONS
                        ),
                    )
                })?
                .to_string();
        }
        let ver = version::check_supported(&h.cni_version)?;
        validate_network_name(&h.name)?;
        Ok((h, ver))
    }
}

pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if crate::env::is_identifier(name) {
        Ok(())
    } else {
        Err(invalid_config(format!("network name {name:?} is missing or invalid")))
    }
}

/// Best effort: the version to print an error in when the config itself is broken.
pub fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .filter(|v| version::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_have_spec_codes() {
        assert_eq!(NetConfHeader::parse(b"{").unwrap_err().code, 6);
        assert_eq!(NetConfHeader::parse(b"[]").unwrap_err().code, 6);
        assert_eq!(
            NetConfHeader::parse(br#"{"cniVersion":"0.2.0","name":"n"}"#)
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(NetConfHeader::parse(br#"{"name":"n"}"#).unwrap_err().code, 7);
        assert_eq!(NetConfHeader::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, 7);
        assert_eq!(
            NetConfHeader::parse(br#"{"cniVersion":"1.0.0","name":"-x"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConfHeader::parse(br#"{"cniVersion":1,"name":"n"}"#)
                .unwrap_err()
                .code,
            6
        );
    }

    #[test]
    fn cni_versions_list_is_resolved() {
        let (h, v) = NetConfHeader::parse(br#"{"cniVersions":["0.4.0","1.0.0"],"name":"n"}"#).unwrap();
        assert_eq!(h.cni_version, "1.0.0");
        assert_eq!(v, Version(1, 0, 0));
        assert_eq!(
            NetConfHeader::parse(br#"{"cniVersions":["0.1.0"],"name":"n"}"#)
                .unwrap_err()
                .code,
            1
        );
    }
}
