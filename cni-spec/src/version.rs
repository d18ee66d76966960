//! Spec versions: which ones we speak, and the VERSION result.

use crate::error::{CniError, ErrorCode};
use serde::Serialize;

/// Versions whose config and results we accept, oldest first. Results are
/// produced natively in 1.x and converted down for 0.3.x/0.4.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() { None } else { Some(v) }
    }

    /// 1.0.0 and later drop the per-IP `version` field and add GC/STATUS (1.1).
    pub fn is_v1(self) -> bool {
        self.0 >= 1
    }
}

/// Check that `v` is a version this plugin speaks. Error code 1 per spec.
pub fn check_supported(v: &str) -> Result<Version, CniError> {
    if v.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "network config has no cniVersion",
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&v) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("incompatible CNI versions: config is {v:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
        ));
    }
    Ok(Version::parse(v).expect("supported versions parse"))
}

/// The highest version in a conflist's `cniVersions` that we also support.
pub fn pick_from_list(list: &[String]) -> Option<&'static str> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .find(|s| list.iter().any(|l| l == *s))
        .copied()
}

#[derive(Debug, Serialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

impl VersionResult {
    /// Spec: VERSION answers in the version given on stdin, or the latest.
    pub fn new(requested: Option<&str>) -> Self {
        let cni_version = requested
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .unwrap_or(LATEST)
            .to_string();
        VersionResult {
            cni_version,
            supported_versions: SUPPORTED_VERSIONS.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert!(Version::parse("1.1.0").unwrap() > Version::parse("1.0.0").unwrap());
        assert!(Version::parse("0.4.0").unwrap() < Version::parse("1.0.0").unwrap());
        assert!(Version::parse("1.1").is_none());
        assert!(Version::parse("1.1.0.0").is_none());
        assert!(Version::parse("x.1.0").is_none());
    }

    #[test]
    fn unsupported_is_code_1_and_missing_is_code_7() {
        assert_eq!(check_supported("0.2.0").unwrap_err().code, 1);
        assert_eq!(check_supported("2.0.0").unwrap_err().code, 1);
        assert_eq!(check_supported("").unwrap_err().code, 7);
        assert!(check_supported("0.4.0").is_ok());
    }

    #[test]
    fn picks_highest_common_version() {
        let l = vec!["0.4.0".to_string(), "1.0.0".into(), "9.9.9".into()];
        assert_eq!(pick_from_list(&l), Some("1.0.0"));
        assert_eq!(pick_from_list(&["0.1.0".to_string()]), None);
    }
}
