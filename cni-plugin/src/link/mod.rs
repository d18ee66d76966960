//! The pod interface of the main role, one file per kind. Each kind knows
//! how to create its interface inside the pod's namespace and how to take it
//! down again; the pure request builders are unit-tested without a kernel.

pub mod eni;
pub mod ipvlan;
pub mod macvlan;
