//! `sluice-agent`: keeps this node's datapath maps in step with the
//! Kubernetes objects of the API server or of a manifest directory
//! (watched: a saved file is in the maps within milliseconds).
//!
//!     sluice-agent --manifests conf/demo --node-name node-0
//!     sluice-agent --kubernetes

use clap::Parser;
use sluice_agent::daemon::{self, Options};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    daemon::run(Options::parse())
}
