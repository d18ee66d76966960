//! eni: a whole host interface (an ENI attached to the node) moved into the
//! pod namespace and renamed to CNI_IFNAME; handed back under its own name
//! on DEL. The pod gets the ENI's MAC and full line rate, no sub-interface.

use crate::config::EniConfig;
use crate::netlink::{Link, Netlink, parse_mac};
use sluice_cni_spec::{CniError, ErrorCode};

/// A host link by MAC when one is given (names can change), else by name.
pub async fn find_link(host: &Netlink, name: Option<&str>, mac: Option<&str>) -> Result<Option<Link>, CniError> {
    Ok(match (mac, name) {
        (Some(mac), _) => {
            let want = parse_mac(mac);
            host.links()
                .await?
                .into_iter()
                .find(|l| l.mac.is_some() && l.mac == want)
        }
        (None, Some(name)) => host.link_by_name(name).await?,
        (None, None) => None,
    })
}

/// Find the configured ENI among the host's links.
pub async fn find(host: &Netlink, cfg: &EniConfig) -> Result<Link, CniError> {
    let found = find_link(host, cfg.device.as_deref(), cfg.mac.as_deref()).await?;
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
