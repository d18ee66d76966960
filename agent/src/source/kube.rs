//! The Kubernetes API-server source: one kube-rs watcher per kind (list,
//! then watch, re-listing after a lost watch), feeding the same `Objects`
//! the manifest source fills, so both go through one translation.
//!
//! A kind counts only once its first list is complete (the watcher's
//! `InitDone`): until all six are, the agent writes nothing, so a start
//! never removes Services a half-listed cluster seems to lack. A re-list
//! replaces the kind's objects as one step (what was not listed again is
//! gone).

use crate::objects::{Object, Objects};
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The kinds the agent watches, as `Object::id` names them.
pub const KINDS: [&str; 6] = ["Service", "EndpointSlice", "NetworkPolicy", "Pod", "Namespace", "Node"];

/// The objects the watchers have delivered.
#[derive(Debug, Default)]
pub struct KubeStore {
    objects: Objects,
    /// Objects of a re-list in progress, by kind.
    listing: BTreeMap<&'static str, Vec<Object>>,
    listed: BTreeSet<&'static str>,
}

impl KubeStore {
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Every kind listed once: the objects are a whole cluster.
    pub fn synced(&self) -> bool {
        KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// Take one watcher event of `kind`; true when the objects changed.
    pub fn apply(&mut self, kind: &'static str, ev: Event<Object>) -> bool {
        match ev {
            Event::Apply(o) => {
                self.objects.insert(o);
                true
            }
            Event::Delete(o) => {
                let (kind, key) = o.id();
                self.objects.remove(kind, &key);
                true
            }
            Event::Init => {
                self.listing.insert(kind, Vec::new());
                false
            }
            Event::InitApply(o) => {
                // Slimmed now: a whole cluster's Pods are held here until
                // the list is complete.
                self.listing.entry(kind).or_default().push(o.slimmed());
                false
            }
            Event::InitDone => {
                let listed = self.listing.remove(kind).unwrap_or_default();
                let keep: BTreeSet<String> = listed.iter().map(|o| o.id().1).collect();
                let gone: Vec<String> = self
                    .objects
                    .keys(kind)
                    .into_iter()
                    .filter(|k| !keep.contains(k))
                    .collect();
                for k in gone {
                    self.objects.remove(kind, &k);
                }
                for o in listed {
                    self.objects.insert(o);
                }
                self.listed.insert(kind);
                true
            }
        }
    }
}

/// A typed watcher event as the store takes it.
fn boxed<K>(ev: Event<K>, wrap: fn(Box<K>) -> Object) -> Event<Object> {
    match ev {
        Event::Apply(k) => Event::Apply(wrap(Box::new(k))),
        Event::Delete(k) => Event::Delete(wrap(Box::new(k))),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(wrap(Box::new(k))),
        Event::InitDone => Event::InitDone,
    }
}

/// Watch the cluster `client` reaches until the process ends: every
/// change goes into `store`, and `changed` is called once the store is
/// synced and after each change from then on. Watch errors are logged and
/// retried with kube-rs's backoff.
pub async fn watch(client: Client, store: Arc<Mutex<KubeStore>>, changed: impl Fn() + Send + 'static) {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::runtime::WatchStreamExt;

    let cfg = watcher::Config::default;
    macro_rules! stream {
        ($ty:ty, $kind:literal, $variant:ident) => {
            watcher::watcher(Api::<$ty>::all(client.clone()), cfg())
                .default_backoff()
                .map(|r| ($kind, r.map(|ev| boxed(ev, Object::$variant))))
                .boxed()
        };
    }
    let mut all = futures::stream::select_all([
        stream!(Service, "Service", Service),
        stream!(EndpointSlice, "EndpointSlice", EndpointSlice),
        stream!(NetworkPolicy, "NetworkPolicy", NetworkPolicy),
        stream!(Pod, "Pod", Pod),
        stream!(Namespace, "Namespace", Namespace),
        stream!(Node, "Node", Node),
    ]);
    while let Some((kind, r)) = all.next().await {
        match r {
            Ok(ev) => {
                let notify = {
                    let mut s = store.lock().expect("store lock");
                    s.apply(kind, ev) && s.synced()
                };
                if notify {
                    changed();
                }
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Object {
        crate::source::manifests::parse(
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{clusterIP: {ip}}}\n"
            ),
            std::path::Path::new("t"),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn lists_replace_and_watches_update() {
        let mut s = KubeStore::default();
        assert!(!s.apply("Service", Event::Init));
        assert!(!s.apply("Service", Event::InitApply(svc("a", "10.96.0.1"))));
        assert!(!s.apply("Service", Event::InitApply(svc("b", "10.96.0.2"))));
        assert!(
            s.objects().services().is_empty(),
            "nothing counts before the list is whole"
        );
        assert!(s.apply("Service", Event::InitDone));
        assert_eq!(s.objects().services().len(), 2);
        assert!(!s.synced(), "five kinds not listed yet");
        for k in &KINDS[1..] {
            s.apply(k, Event::Init);
            s.apply(k, Event::InitDone);
        }
        assert!(s.synced());
        s.apply("Service", Event::Apply(svc("c", "10.96.0.3")));
        s.apply("Service", Event::Delete(svc("a", "10.96.0.1")));
        let names: Vec<&String> = s.objects().services().keys().collect();
        assert_eq!(names, ["x/b", "x/c"]);
        // A lost watch: the re-list says what exists; c was deleted meanwhile.
        s.apply("Service", Event::Init);
        s.apply("Service", Event::InitApply(svc("b", "10.96.0.22")));
        s.apply("Service", Event::InitDone);
        let b = &s.objects().services()["x/b"];
        assert_eq!(s.objects().services().len(), 1);
        assert_eq!(b.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.22"));
    }
}
