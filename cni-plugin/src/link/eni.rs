//! eni: a whole host interface (an ENI attached to the node) moved into the
//! pod namespace and renamed to CNI_IFNAME; handed back under its own name
//! on DEL. The pod gets the ENI's MAC and full line rate, no sub-interface.

use crate::config::EniConfig;
use crate::netlink::{Link, Netlink, parse_mac};
use sluice_cni_spec::{CniError, ErrorCode};

/// Find the configured ENI among the host's links.
pub async fn find(host: &Netlink, cfg: &EniConfig) -> Result<Link, CniError> {
    let found = match (&cfg.device, &cfg.mac) {
        (Some(name), _) => host.link_by_name(name).await?,
        (None, Some(mac)) => {
            let want = parse_mac(mac);
            host.links()
                .await?
                .into_iter()
                .find(|l| l.mac.is_some() && l.mac == want)
        }
        (None, None) => None,
    };
    found.ok_or_else(|| {
        CniError::new(
            ErrorCode::MissingResource,
            format!(
                "ENI {} not found in the {} (already given to another pod?)",
                cfg.device.as_deref().or(cfg.mac.as_deref()).unwrap_or("?"),
                host.label()
            ),
        )
    })
}

/// After the pod's namespace died the kernel returns a physical ENI to the
/// initial namespace under some name; find it by MAC and restore its name.
pub async fn recover_by_mac(host: &Netlink, mac: &[u8; 6], original_name: &str) -> Result<bool, CniError> {
    let Some(link) = host.links().await?.into_iter().find(|l| l.mac.as_ref() == Some(mac)) else {
        return Ok(false);
    };
    if link.name != original_name {
        let msg = rtnetlink::LinkUnspec::new_with_index(link.index)
            .name(original_name.to_string())
            .build();
        host.set_link(msg, &format!("rename returned ENI {} to {original_name}", link.name))
            .await?;
    }
    Ok(true)
}
