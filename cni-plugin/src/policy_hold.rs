//! Policy from a pod's first packet. A pod that a NetworkPolicy may select
//! is put on hold at ADD, before it can send: isolated both ways with no
//! rule, so it reaches its node and nothing else (kubelet probes, a
//! node-local DNS cache), until the agent sees the pod and writes its own
//! entry in place of the hold, or removes it when no policy selects the
//! pod. The agent then also drops the flows opened on hold, so that none
//! keeps a verdict from before the pod's policy was known.
//!
//! Which pods: those of a namespace that holds a NetworkPolicy (a policy
//! selects pods of its own namespace only), by the namespace the runtime
//! passes in `CNI_ARGS`. The agent writes those namespaces to a file at
//! every sync; without the file (no agent has run on this node) nothing is
//! held. A pod of a namespace without a policy is never held up.
//!
//! `policyAtStart.mode: permissive` holds nothing: a pod is unrestricted
//! until the agent writes its policy (the behaviour of AWS's network
//! policy agent), and a flow opened in that window keeps passing.

use crate::config::{HoldMode, PluginConfig};
use crate::endpoint::Endpoint;
use serde::Deserialize;
use sluice_cni_spec::{CniError, ErrorCode};
use sluice_tc_datapath::layout::{EpPolicyValue, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_F_PENDING};
use sluice_tc_datapath::maps::{PolicyMaps, Source};
use sluice_tc_datapath::pin;
use std::path::Path;
use tracing::{info, warn};

/// The file the agent writes (its `--policy-namespaces-file`).
#[derive(Debug, Deserialize)]
struct PolicyNamespaces {
    namespaces: Vec<String>,
}

/// Whether the pod of `ep` must be held: its namespace is one the agent
/// listed. An unreadable file holds (fail closed).
pub fn must_hold(cfg: &PluginConfig, ep: &Endpoint) -> bool {
    if cfg.policy_at_start.mode == HoldMode::Permissive {
        return false;
    }
    let Some(pod) = &ep.pod else {
        return false;
    };
    let path = &cfg.policy_at_start.namespaces_file;
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the policy namespaces: holding the pod");
            return true;
        }
    };
    match serde_json::from_slice::<PolicyNamespaces>(&text) {
        Ok(p) => p.namespaces.contains(&pod.namespace),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the policy namespaces do not parse: holding the pod");
            true
        }
    }
}

/// Put the endpoint on hold in the node's maps.
pub fn hold(versioned: &Path, ep: &Endpoint) -> Result<(), CniError> {
    let id = pin::attachment_id(&ep.container_id, &ep.ifname);
    let mut policy = PolicyMaps::open(&mut Source::pinned(versioned))
        .map_err(|e| CniError::new(ErrorCode::Io, format!("datapath: opening the policy maps: {e}")))?;
    let v = EpPolicyValue {
        identity: 0,
        ingress_policy: 0,
        egress_policy: 0,
        flags: POLICY_F_INGRESS | POLICY_F_EGRESS | POLICY_F_PENDING,
        kinds: [0, 0],
        pad0: 0,
    };
    policy
        .set_endpoint_policy(id, v)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("datapath: holding endpoint {id}: {e}")))?;
    if let Some(p) = &ep.pod {
        info!(pod = %format!("{}/{}", p.namespace, p.name), endpoint = id, "pod on hold until the agent writes its policy");
    }
    Ok(())
}

/// Take a hold back (an ADD that failed after it).
pub fn release(versioned: &Path, ep: &Endpoint) {
    let id = pin::attachment_id(&ep.container_id, &ep.ifname);
    if let Ok(mut policy) = PolicyMaps::open(&mut Source::pinned(versioned)) {
        let _ = policy.remove_endpoint_policy(id);
    }
}
