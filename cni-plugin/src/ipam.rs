//! Addresses for the main role: the built-in allocator in-process (no extra
//! exec on the ADD path), or any CNI IPAM plugin delegated to through CNI_PATH.

use serde_json::Value;
use sluice_cni_spec::delegate::exec_plugin;
use sluice_cni_spec::skel::Request;
use sluice_cni_spec::{CniError, CniResult, ErrorCode};
use sluice_ipam::cni as builtin;

/// The `ipam.type` served in-process.
pub const BUILTIN_TYPE: &str = "sluice-ipam";

pub enum Ipam {
    BuiltIn,
    Delegated(String),
}

impl Ipam {
    pub fn from_section(ipam: &Value) -> Ipam {
        match ipam.get("type").and_then(Value::as_str) {
            Some(BUILTIN_TYPE) => Ipam::BuiltIn,
            Some(t) => Ipam::Delegated(t.to_string()),
            None => Ipam::Delegated(String::new()),
        }
    }

    pub fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let r = match self {
            Ipam::BuiltIn => builtin::ipam_add(req)?,
            Ipam::Delegated(t) => exec_plugin(t, &req.inv, "ADD", req.config)?.expect("ADD returns a result"),
        };
        if r.ips.is_empty() {
            return Err(CniError::new(ErrorCode::InvalidConfig, "IPAM returned no addresses"));
        }
        Ok(r)
    }

    /// A verb without a result: in-process, or the delegated plugin.
    fn verb(&self, req: &Request, verb: &str, builtin: fn(&Request) -> Result<(), CniError>) -> Result<(), CniError> {
        match self {
            Ipam::BuiltIn => builtin(req),
            Ipam::Delegated(t) => exec_plugin(t, &req.inv, verb, req.config).map(drop),
        }
    }

    pub fn del(&self, req: &Request) -> Result<(), CniError> {
        self.verb(req, "DEL", builtin::ipam_del)
    }

    pub fn check(&self, req: &Request) -> Result<(), CniError> {
        self.verb(req, "CHECK", builtin::ipam_check)
    }

    pub fn status(&self, req: &Request) -> Result<(), CniError> {
        self.verb(req, "STATUS", builtin::ipam_status)
    }

    pub fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.verb(req, "GC", builtin::ipam_gc)
    }
}
