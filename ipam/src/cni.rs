//! IPAM as a CNI plugin: the verbs on top of a [`Pool`], shared by the
//! `sluice-ipam` binary and the in-process path of the `sluice` main role.

use crate::config::{IpamConfig, requested_ips};
use crate::error::IpamError;
use crate::pool::Pool;
use serde::Deserialize;
use serde_json::Value;
use sluice_cni_spec::skel::{Plugin, Request};
use sluice_cni_spec::{CniError, CniResult, ErrorCode, IpConfig, Route};

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match &e {
            IpamError::InvalidConfig(_) | IpamError::NotInRange { .. } => ErrorCode::InvalidConfig,
            IpamError::Exhausted { .. } | IpamError::Taken { .. } => ErrorCode::IpamExhausted,
            IpamError::LockTimeout { .. } => ErrorCode::TryAgainLater,
            IpamError::Store { .. } | IpamError::NodeFile { .. } | IpamError::Corrupt { .. } => ErrorCode::Io,
            IpamError::Quarantined { .. } => ErrorCode::NotAvailable,
        };
        CniError::new(code, e.to_string())
    }
}

#[derive(Deserialize)]
struct NetConf {
    name: String,
    ipam: Option<IpamConfig>,
}

/// Decode the `ipam` section and build the pool of network `name`.
pub fn pool_from_netconf(config: &[u8]) -> Result<(Pool, IpamConfig, Value), CniError> {
    let raw: Value =
        serde_json::from_slice(config).map_err(|e| CniError::new(ErrorCode::Decode, format!("network config: {e}")))?;
    let nc: NetConf = serde_json::from_value(raw.clone())
        .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("ipam config: {e}")))?;
    let ipam = nc
        .ipam
        .ok_or_else(|| CniError::new(ErrorCode::InvalidConfig, "network config has no \"ipam\" section"))?;
    Ok((Pool::new(&nc.name, &ipam)?, ipam, raw))
}

/// The result key naming the ENI an ENI-pool address belongs to
/// (`{"name": …, "mac": …}`): the calling plugin attaches the pod there.
/// A plugin that does not know the key ignores it.
pub const ENI_RESULT_KEY: &str = "sluice.dev/eni";

/// ADD: allocate and describe the addresses as a CNI result (no interfaces;
/// the calling plugin attaches them to its own interface).
pub fn ipam_add(req: &Request) -> Result<CniResult, CniError> {
    let (pool, cfg, raw) = pool_from_netconf(req.config)?;
    let requested = requested_ips(&raw, &req.inv.args)?;
    let allocs = pool.allocate(&req.inv.container_id, &req.inv.ifname, &requested)?;
    let mut extra = serde_json::Map::new();
    if let Some(eni) = allocs.iter().find_map(|a| a.eni.as_ref()) {
        extra.insert(
            ENI_RESULT_KEY.into(),
            serde_json::to_value(eni).expect("ENI id serializes"),
        );
    }
    Ok(CniResult {
        extra,
        ips: allocs
            .into_iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: None,
                extra: Default::default(),
            })
            .collect(),
        routes: cfg
            .routes
            .iter()
            .map(|r| Route {
                dst: r.dst,
                gw: r.gw,
                mtu: None,
                priority: None,
                extra: Default::default(),
            })
            .collect(),
        ..Default::default()
    })
}

pub fn ipam_del(req: &Request) -> Result<(), CniError> {
    let (pool, _, _) = pool_from_netconf(req.config)?;
    pool.release(&req.inv.container_id, &req.inv.ifname)?;
    Ok(())
}

/// CHECK: the owner still holds a lease in every range set.
pub fn ipam_check(req: &Request) -> Result<(), CniError> {
    let (pool, _, _) = pool_from_netconf(req.config)?;
    let leases = pool.leases()?;
    let held = leases
        .iter()
        .filter(|(_, l)| l.container_id == req.inv.container_id && l.ifname == req.inv.ifname)
        .count();
    let sets = pool.addresses_per_owner();
    if held < sets {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "pool {}: {}/{} holds {held} of {sets} addresses",
                pool.name(),
                req.inv.container_id,
                req.inv.ifname
            ),
        ));
    }
    Ok(())
}

/// STATUS: every range set must have a free address.
pub fn ipam_status(req: &Request) -> Result<(), CniError> {
    let (pool, _, _) = pool_from_netconf(req.config)?;
    if pool.free_per_set()?.contains(&0) {
        let why = match pool.cannot_grow()? {
            Some(w) => format!("; the ENI pool cannot grow: {w}"),
            None => String::new(),
        };
        return Err(CniError::new(
            ErrorCode::NotAvailable,
            format!("pool {}: no free address in at least one range set{why}", pool.name()),
        ));
    }
    Ok(())
}

/// GC: release every lease whose attachment is not in `cni.dev/valid-attachments`.
pub fn ipam_gc(req: &Request) -> Result<(), CniError> {
    let (pool, _, raw) = pool_from_netconf(req.config)?;
    let valid = valid_attachments(&raw)?;
    pool.gc(&valid)?;
    Ok(())
}

/// The `cni.dev/valid-attachments` list of a GC call.
pub fn valid_attachments(conf: &Value) -> Result<Vec<(String, String)>, CniError> {
    let Some(list) = conf.get("cni.dev/valid-attachments") else {
        return Ok(Vec::new());
    };
    let bad = || {
        CniError::new(
            ErrorCode::InvalidConfig,
            "cni.dev/valid-attachments must be a list of {containerID, ifname}",
        )
    };
    list.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|a| {
            let id = a.get("containerID").and_then(Value::as_str).ok_or_else(bad)?;
            let ifname = a.get("ifname").and_then(Value::as_str).ok_or_else(bad)?;
            Ok((id.to_string(), ifname.to_string()))
        })
        .collect()
}

/// The `sluice-ipam` plugin.
pub struct IpamPlugin;

impl Plugin for IpamPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        ipam_add(req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        ipam_del(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        ipam_check(req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        ipam_status(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        ipam_gc(req)
    }
}
