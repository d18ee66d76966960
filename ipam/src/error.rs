use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM config: {0}")]
    InvalidConfig(String),
    #[error("pool {pool}: no free address in range {range}")]
    Exhausted { pool: String, range: String },
    #[error("pool {pool}: requested address {ip} is not in any range ({ranges})")]
    NotInRange { pool: String, ip: String, ranges: String },
    #[error("pool {pool}: requested address {ip} is already leased to {owner}")]
    Taken { pool: String, ip: String, owner: String },
    #[error("pool {pool}: timed out after {waited_ms} ms waiting for the lock {path}")]
    LockTimeout {
        pool: String,
        path: PathBuf,
        waited_ms: u128,
    },
    #[error("pool store {path}: {what}: {source}")]
    Store {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ENI pool file {path}: cannot read the node file: {source}")]
    NodeFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pool store {path} is corrupt: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error(
        "pool {pool}: its lease store was corrupt and is kept aside as {}; nothing is allocated until \
         `sluice-ipam rebuild --network {pool}` rebuilds it from the plugin's endpoint records",
        .aside.display()
    )]
    Quarantined { pool: String, aside: PathBuf },
}
