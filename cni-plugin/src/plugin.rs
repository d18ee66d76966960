//! The `sluice` plugin: the CNI verbs, dispatched to the role the config names.

use crate::config::PluginConfig;
use crate::endpoint::EndpointStore;
use crate::ipam::Ipam;
use crate::netns::NetNs;
use crate::{chained, log, main_role};
use sluice_cni_spec::skel::{Plugin, Request};
use sluice_cni_spec::{CniError, CniResult, ErrorCode};
use sluice_ipam::cni::valid_attachments;
use std::future::Future;
use tracing::{info, warn};

pub struct Sluice;

/// Each call runs on its own single-threaded runtime: the process lives for
/// one verb, and netlink needs an executor for its socket.
fn block_on<T>(f: impl Future<Output = Result<T, CniError>>) -> Result<T, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::new(ErrorCode::Io, format!("starting runtime: {e}")))?
        .block_on(f)
}

fn setup(req: &Request) -> Result<PluginConfig, CniError> {
    let cfg = PluginConfig::parse(req.config);
    log::init(cfg.as_ref().ok())?;
    cfg
}

impl Plugin for Sluice {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = setup(req)?;
        let r = block_on(async {
            if cfg.link.is_some() {
                main_role::add(req, &cfg).await
            } else {
                chained::add(req, &cfg).await
            }
        });
        if let Err(e) = &r {
            warn!(container = %req.inv.container_id, error = %e, "ADD failed");
        }
        r
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let cfg = setup(req)?;
        block_on(async {
            if cfg.link.is_some() {
                main_role::del(req, &cfg).await
            } else {
                chained::del(req, &cfg).await
            }
        })
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = setup(req)?;
        block_on(async {
            if cfg.link.is_some() {
                main_role::check(req, &cfg).await
            } else {
                chained::check(req, &cfg).await
            }
        })
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = setup(req)?;
        // Both roles need a writable endpoint store.
        let dir = cfg.data_dir();
        std::fs::create_dir_all(&dir)
            .and_then(|_| tempfile_probe(&dir))
            .map_err(|e| {
                CniError::new(
                    ErrorCode::NotAvailable,
                    format!("data dir {} is not writable: {e}", dir.display()),
                )
            })?;
        if cfg.link.is_some() {
            block_on(main_role::status(req, &cfg))
        } else {
            Ok(())
        }
    }

    /// GC: forget every attachment not in `cni.dev/valid-attachments`,
    /// removing a leaked pod link where its namespace still exists.
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let cfg = setup(req)?;
        let raw: serde_json::Value = serde_json::from_slice(req.config).expect("config parsed before");
        let valid = valid_attachments(&raw)?;
        let store = EndpointStore::new(&cfg.data_dir(), &cfg.name);
        // As DEL: from before the records are read until they are gone.
        let held = crate::datapath::hold(&cfg)?;
        let stale: Vec<_> = store
            .list()?
            .into_iter()
            .filter(|e| !valid.iter().any(|(c, i)| *c == e.container_id && *i == e.ifname))
            .collect();
        block_on(async {
            for ep in &stale {
                let ns = NetNs::for_del(Some(std::path::Path::new(&ep.netns)))?;
                if ep.datapath.is_some() {
                    crate::datapath::detach(&cfg, &held, ns.as_ref(), &ep.container_id, &ep.ifname, Some(ep))?;
                }
                if cfg.link.is_some() {
                    main_role::remove_host_path(ep, &cfg.data_dir()).await?;
                    main_role::remove_recorded_link(&ep.container_id, &ep.ifname, ep, ns.as_ref(), None).await?;
                }
                store.remove(&ep.container_id, &ep.ifname)?;
                info!(container = %ep.container_id, ifname = %ep.ifname, "GC removed stale endpoint");
            }
            Ok(())
        })?;
        if let Some(ipam) = &cfg.ipam {
            Ipam::from_section(ipam).gc(req)?;
        }
        Ok(())
    }
}

fn tempfile_probe(dir: &std::path::Path) -> std::io::Result<()> {
    let p = dir.join(format!(".status-probe-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(p)
}
