//! The CNI_* environment a runtime passes with every call, validated per verb.

use crate::error::{CniError, ErrorCode};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// Everything the environment said about this call.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Empty on DEL when the runtime no longer has a namespace (containerd).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
    pub path: Vec<PathBuf>,
}

fn invalid_env(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

impl Invocation {
    /// Read and validate the environment through `get` (std::env::var in
    /// production, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command_s = nonempty("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND is not set"))?;
        let command = Command::parse(&command_s)
            .ok_or_else(|| invalid_env(format!("CNI_COMMAND {command_s:?} is not a CNI verb")))?;

        let per_pod = matches!(command, Command::Add | Command::Del | Command::Check);
        let need = |k: &str| -> Result<String, CniError> {
            match nonempty(k) {
                Some(v) => Ok(v),
                None if per_pod => Err(invalid_env(format!("{k} is required for {command_s}"))),
                None => Ok(String::new()),
            }
        };

        let container_id = need("CNI_CONTAINERID")?;
        if per_pod {
            validate_container_id(&container_id)?;
        }
        let ifname = need("CNI_IFNAME")?;
        if per_pod {
            validate_ifname(&ifname)?;
        }
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(need("CNI_NETNS")?)),
            // DEL must work without a namespace; the others do not use one.
            _ => nonempty("CNI_NETNS").map(PathBuf::from),
        };
        let path: Vec<PathBuf> = match nonempty("CNI_PATH") {
            Some(p) => std::env::split_paths(&p).collect(),
            None if per_pod => {
                return Err(invalid_env(format!("CNI_PATH is required for {command_s}")));
            }
            None => Vec::new(),
        };
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The environment to pass to a delegated plugin for the same call.
    pub fn delegate_env(&self, command: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            ("CNI_IFNAME".into(), self.ifname.clone()),
            (
                "CNI_PATH".into(),
                std::env::join_paths(&self.path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ];
        if let Some(ns) = &self.netns {
            env.push(("CNI_NETNS".into(), ns.to_string_lossy().into_owned()));
        }
        if !self.args.is_empty() {
            let a: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.push(("CNI_ARGS".into(), a.join(";")));
        }
        env
    }
}

/// The spec's identifier rule, shared by container ids and network names:
/// an alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_identifier(id) {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "CNI_CONTAINERID {id:?} is not a valid container id"
        )))
    }
}

/// Spec 1.1: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace;
/// and no `%`, which the kernel takes as a name template (`eth%d`): the
/// link would get another name than the one asked for.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace());
    if bad {
        Err(invalid_env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name"
        )))
    } else {
        Ok(())
    }
}

/// `K1=V1;K2=V2`. Runtimes send e.g. `IgnoreUnknown=1;K8S_POD_NAME=...;IP=...`.
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid_env(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(invalid_env(format!("CNI_ARGS entry {pair:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
    ];

    #[test]
    fn full_add_environment() {
        let inv = Invocation::from_env(env(ADD)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.path.len(), 2);
        assert_eq!(inv.args["K8S_POD_NAME"], "web-0");
    }

    #[test]
    fn each_missing_variable_is_code_4() {
        for skip in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = Invocation::from_env(env(&pairs)).unwrap_err();
            assert_eq!(err.code, 4, "{skip}: {err}");
            assert!(err.msg.contains(skip), "{skip} named in {err}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let pairs: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| if k == "CNI_COMMAND" { (k, "DEL") } else { (k, v) })
            .collect();
        assert!(Invocation::from_env(env(&pairs)).unwrap().netns.is_none());
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn names_and_ids_are_validated() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx", "eth%d"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id("a1_b.c-d").is_ok());
        for bad in ["", "-a", "a/b", "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(parse_args("A=1;;B=").is_ok());
        assert!(parse_args("novalue").is_err());
        assert!(Command::parse("add").is_none());
    }
}
