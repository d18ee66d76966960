//! CNI error objects and the spec's well-known error codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The well-known error codes of the CNI specification (1.1.0, "Error").
/// Codes 100 and above are plugin-specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD requests.
    NotAvailable = 50,
    /// STATUS: not available, and existing containers may have limited connectivity.
    NotAvailableLimitedConnectivity = 51,
    /// sluice: a kernel or netlink operation failed.
    Netlink = 100,
    /// sluice: IPAM could not allocate (pool exhausted, address taken).
    IpamExhausted = 101,
    /// sluice: a resource named in the config (parent link, ENI) does not exist.
    MissingResource = 102,
    /// sluice: CHECK found the pod's network not as ADD left it.
    CheckFailed = 103,
    /// sluice: a delegated plugin failed without a usable error object.
    DelegateFailed = 104,
    /// sluice: CNI_IFNAME is already taken inside the pod namespace.
    InterfaceExists = 105,
    /// sluice: a hostPort another pod holds.
    PortInUse = 106,
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c as u32
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        use ErrorCode::*;
        Ok(match v {
            1 => IncompatibleVersion,
            2 => UnsupportedField,
            3 => UnknownContainer,
            4 => InvalidEnvironment,
            5 => Io,
            6 => Decode,
            7 => InvalidConfig,
            11 => TryAgainLater,
            50 => NotAvailable,
            51 => NotAvailableLimitedConnectivity,
            100 => Netlink,
            101 => IpamExhausted,
            102 => MissingResource,
            103 => CheckFailed,
            104 => DelegateFailed,
            105 => InterfaceExists,
            106 => PortInUse,
            other => return Err(format!("unknown CNI error code {other}")),
        })
    }
}

/// A CNI error object. `code` is kept as a number so that errors returned by
/// delegated plugins with codes unknown to us survive the round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefix the message with what was being done, keeping code and details.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code as u32
    }

    /// The JSON object printed on stdout: the error plus the `cniVersion` the
    /// runtime asked for (spec: errors carry the version of the request).
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        serde_json::to_string(&v).expect("error object serializes")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Shorthands used everywhere a CNI error is built from context.
pub fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

pub fn io_error(what: impl fmt::Display, err: impl fmt::Display) -> CniError {
    CniError::new(ErrorCode::Io, format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_version_code_and_message() {
        let e = CniError::new(ErrorCode::InvalidConfig, "bad").with_details("why");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad");
        assert_eq!(v["details"], "why");
    }

    #[test]
    fn codes_round_trip() {
        for c in [1u32, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103, 104, 105] {
            assert_eq!(u32::from(ErrorCode::try_from(c).unwrap()), c);
        }
        assert!(ErrorCode::try_from(8).is_err());
    }
}
