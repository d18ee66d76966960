//! The plugin entry point: environment + stdin in, one verb called, result or
//! error object out. Keeps the protocol rules (which verbs exist in which
//! version, what goes to stdout) out of the plugins.

use crate::conf::{NetConfHeader, sniff_version};
use crate::env::{Command, Invocation};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::{Version, VersionResult};
use std::io::{Read, Write};

/// One validated call.
pub struct Request<'a> {
    pub inv: Invocation,
    pub header: NetConfHeader,
    pub version: Version,
    /// The whole network config as received, for the plugin's own decoding.
    pub config: &'a [u8],
}

pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// What a call prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

/// Run the plugin on the process environment and stdin; print; return the exit code.
pub fn run(plugin: &dyn Plugin) -> i32 {
    let mut stdin = Vec::new();
    // The config is small; a read error is reported like a decode error.
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => dispatch(plugin, |k| std::env::var(k).ok(), &stdin),
        Err(e) => Outcome {
            stdout: CniError::new(ErrorCode::Io, format!("reading stdin: {e}")).to_json(crate::version::LATEST),
            success: false,
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.success { 0 } else { 1 }
}

pub fn dispatch(plugin: &dyn Plugin, env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let err_version = sniff_version(stdin);
    match dispatch_inner(plugin, env, stdin) {
        Ok(stdout) => Outcome { stdout, success: true },
        Err(e) => Outcome {
            stdout: e.to_json(&err_version),
            success: false,
        },
    }
}

fn dispatch_inner(plugin: &dyn Plugin, env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let inv = Invocation::from_env(env)?;
    if inv.command == Command::Version {
        let requested = serde_json::from_slice::<serde_json::Value>(stdin).ok();
        let requested = requested
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(|v| v.as_str());
        return Ok(serde_json::to_string(&VersionResult::new(requested)).expect("serializes"));
    }
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(ErrorCode::Decode, "no network config on stdin"));
    }
    let (header, version) = NetConfHeader::parse(stdin)?;
    let min = |v: Version, verb: &str| {
        if version < v {
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "{verb} needs cniVersion {}.{}.{} or later, config has {}",
                    v.0, v.1, v.2, header.cni_version
                ),
            ))
        } else {
            Ok(())
        }
    };
    match inv.command {
        Command::Check => min(Version(0, 4, 0), "CHECK")?,
        Command::Status => min(Version(1, 1, 0), "STATUS")?,
        Command::Gc => min(Version(1, 1, 0), "GC")?,
        _ => {}
    }
    let req = Request {
        inv,
        header,
        version,
        config: stdin,
    };
    match req.inv.command {
        Command::Add => {
            let result = plugin.add(&req)?;
            let v = result.to_value(&req.header.cni_version)?;
            Ok(serde_json::to_string(&v).expect("serializes"))
        }
        Command::Del => plugin.del(&req).map(|_| String::new()),
        Command::Check => plugin.check(&req).map(|_| String::new()),
        Command::Status => plugin.status(&req).map(|_| String::new()),
        Command::Gc => plugin.gc(&req).map(|_| String::new()),
        Command::Version => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<&'static str>>);
    impl Plugin for Recorder {
        fn add(&self, _: &Request) -> Result<CniResult, CniError> {
            self.0.borrow_mut().push("add");
            Ok(CniResult {
                ips: vec![crate::IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                    extra: Default::default(),
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            self.0.borrow_mut().push("del");
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            self.0.borrow_mut().push("check");
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), CniError> {
            Err(CniError::new(ErrorCode::NotAvailable, "no addresses left"))
        }
        fn gc(&self, _: &Request) -> Result<(), CniError> {
            self.0.borrow_mut().push("gc");
            Ok(())
        }
    }

    fn call(p: &Recorder, cmd: &str, stdin: &str) -> (bool, serde_json::Value) {
        let m: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
        .into();
        let o = dispatch(p, |k| m.get(k).map(|s| s.to_string()), stdin.as_bytes());
        let v = if o.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&o.stdout).unwrap()
        };
        (o.success, v)
    }

    #[test]
    fn add_result_in_requested_version() {
        let p = Recorder::default();
        let (ok, v) = call(&p, "ADD", r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#);
        assert!(ok);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn verbs_gated_by_version() {
        let p = Recorder::default();
        let (ok, v) = call(&p, "GC", r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#);
        assert!(!ok);
        assert_eq!(v["code"], 1);
        let (ok, v) = call(&p, "CHECK", r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#);
        assert!(!ok);
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert!(p.0.borrow().is_empty(), "plugin never called");
        let (ok, v) = call(&p, "STATUS", r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#);
        assert!(!ok);
        assert_eq!(v["code"], 50);
    }

    #[test]
    fn version_needs_no_config() {
        let p = Recorder::default();
        let (ok, v) = call(&p, "VERSION", "");
        assert!(ok);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["supportedVersions"].as_array().unwrap().len() >= 4);
        let (_, v) = call(&p, "VERSION", r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn empty_stdin_is_decode_error() {
        let p = Recorder::default();
        let (ok, v) = call(&p, "ADD", "  ");
        assert!(!ok);
        assert_eq!(v["code"], 6);
    }
}
