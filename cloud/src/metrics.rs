//! The pool's Prometheus metrics, registered into the agent's registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Default)]
pub struct PoolMetrics {
    /// Every cloud request, retries included, by action and result (`ok`,
    /// `throttled`, `server_error`, `client_error`, `transport_error`,
    /// `bad_answer`).
    pub cloud_calls: Family<Labels, Counter>,
    /// Addresses published to the node file (ready for ADD).
    pub addresses: Gauge,
    /// Of those, leased to pods.
    pub in_use: Gauge,
    /// What the targets ask the pool to hold now.
    pub target: Gauge,
    /// ENIs of the pool attached to the node.
    pub enis: Gauge,
    /// 1 while the pool is below its target and cannot grow (the subnet has
    /// no address left, or the instance its last ENI slot).
    pub cannot_grow: Gauge,
    /// ENIs of this node found attached nowhere and deleted.
    pub leaked_enis_deleted: Counter,
}

impl PoolMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sluice_eni_cloud_calls",
            "Cloud API requests of the ENI pool, retries included, by action and result",
            self.cloud_calls.clone(),
        );
        r.register(
            "sluice_eni_pool_addresses",
            "Addresses in the ENI pool's node file",
            self.addresses.clone(),
        );
        r.register(
            "sluice_eni_pool_in_use",
            "ENI pool addresses leased to pods",
            self.in_use.clone(),
        );
        r.register(
            "sluice_eni_pool_target",
            "Addresses the ENI pool's targets ask for now",
            self.target.clone(),
        );
        r.register(
            "sluice_eni_pool_enis",
            "ENIs of the pool attached to this node",
            self.enis.clone(),
        );
        r.register(
            "sluice_eni_pool_cannot_grow",
            "1 while the ENI pool is below its target and the cloud gives no more",
            self.cannot_grow.clone(),
        );
        r.register(
            "sluice_eni_leaked_deleted",
            "ENIs of this node found attached nowhere and deleted",
            self.leaked_enis_deleted.clone(),
        );
    }

    pub fn call(&self, action: &str, result: &str) {
        self.cloud_calls
            .get_or_create(&vec![("action", action.to_string()), ("result", result.to_string())])
            .inc();
    }
}
