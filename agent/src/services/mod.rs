//! Services, shaped like policy: [`translate`] turns Services and
//! EndpointSlices into frontends and their backends (kept up to date
//! Service by Service), [`sync`] writes them into the node's maps by
//! difference.

pub mod sync;
pub mod translate;

pub use sync::{ServiceSync, SyncStats};
pub use translate::{
    BackendAddr, Backends, Frontend, HealthCheck, NodeView, ServiceTranslation, Translated, translate,
};
