//! Where the cluster's objects come from: a directory of manifests
//! ([`manifests`]) or the API server's watchers ([`kube`]). Both fill the
//! same [`crate::objects::Objects`], so both go through one translation.

pub mod kube;
pub mod manifests;
