//! The ENI pool's thread: the cloud-facing half of ENI pod networking
//! (sluice-cloud's [`EniPool`]) on a one-thread runtime of its own, apart
//! from the agent's loop, which a slow or throttled cloud never holds up.
//!
//! It starts before the agent waits for the datapath (the first pod needs
//! an address first), passes every `pollSeconds`, reads the configuration
//! file again when it changes (targets and timings), and starts over
//! after an error at start (no credentials yet, the cloud unreachable).

use anyhow::{Context, Result};
use sluice_cloud::config::CloudKind;
use sluice_cloud::ec2::Ec2;
use sluice_cloud::metrics::PoolMetrics;
use sluice_cloud::node::KernelLinks;
use sluice_cloud::pool::RESTART_WAIT;
use sluice_cloud::{EniPool, PoolConfig};
use std::path::PathBuf;
use std::time::SystemTime;
use tracing::{info, warn};

/// Check the configuration now (a bad file stops the agent with a clear
/// error), then run the pool on a thread of its own.
pub fn start(path: PathBuf, metrics: PoolMetrics) -> Result<()> {
    let cfg = PoolConfig::load(&path).map_err(anyhow::Error::msg)?;
    std::thread::Builder::new()
        .name("eni-pool".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a one-thread runtime");
            rt.block_on(run(path, cfg, metrics));
        })
        .context("starting the ENI pool's thread")?;
    Ok(())
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn run(path: PathBuf, mut cfg: PoolConfig, metrics: PoolMetrics) {
    loop {
        // One arm per cloud: a second backend (an ECS one) is a second arm.
        let started = async {
            let cloud = match cfg.cloud {
                CloudKind::Ec2 => Ec2::new(&cfg.ec2, metrics.clone()).await?,
            };
            EniPool::start(cloud, cfg.clone(), metrics.clone(), Box::new(KernelLinks)).await
        };
        let mut pool = match started.await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "ENI pool could not start; trying again");
                tokio::time::sleep(RESTART_WAIT).await;
                if let Ok(c) = PoolConfig::load(&path) {
                    cfg = c;
                }
                continue;
            }
        };
        info!(instance = %pool.instance().id, node_file = %cfg.node_file.display(), "ENI pool started");
        let mut seen = modified(&path);
        loop {
            match pool.pass().await {
                Ok(r) => {
                    if r.granted + r.released + r.enis_created + r.enis_deleted + r.leaked_deleted > 0 {
                        info!(
                            addresses = r.addresses,
                            in_use = r.in_use,
                            target = r.target,
                            granted = r.granted,
                            released = r.released,
                            enis_created = r.enis_created,
                            enis_deleted = r.enis_deleted,
                            leaked_deleted = r.leaked_deleted,
                            "ENI pool changed"
                        );
                    }
                    if let Some(why) = &r.cannot_grow {
                        warn!(addresses = r.addresses, in_use = r.in_use, target = r.target, reason = %why,
                            "ENI pool below its target and cannot grow");
                    }
                }
                Err(e) => warn!(error = %e, "ENI pool pass failed; the next pass tries again"),
            }
            tokio::time::sleep(cfg.poll()).await;
            let now = modified(&path);
            if now != seen {
                seen = now;
                match PoolConfig::load(&path)
                    .map_err(sluice_cloud::PoolError::Config)
                    .and_then(|c| {
                        pool.retarget(c.clone())?;
                        Ok(c)
                    }) {
                    Ok(c) => {
                        info!(file = %path.display(), "ENI pool configuration read again");
                        cfg = c;
                    }
                    Err(e) => warn!(error = %e, "ENI pool configuration not taken; keeping the one in force"),
                }
            }
        }
    }
}
