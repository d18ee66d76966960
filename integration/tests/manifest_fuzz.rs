//! Input fuzzing of the node agent: the manifests of a small cluster
//! (Services of every kind, EndpointSlices, NetworkPolicies, pods,
//! namespaces, nodes) mutated at random, as text and as objects, fed to
//! the agent over a loaded datapath. Whatever comes in, parsing gives
//! objects or an error, a sync gives a report, nothing panics, and nothing
//! stays: when the valid manifests come back, the maps say exactly what a
//! fresh agent writes for them (no Service, backend, Maglev table, VIP,
//! identity or rule left over).
//!
//! The seed is fixed (`SLUICE_FUZZ_SEED` changes it); CI runs
//! `SLUICE_MANIFEST_FUZZ_CASES` cases (400 by default).

use proptest::prelude::RngExt;
use serde_json::Value;
use sluice_agent::agent::Agent;
use sluice_agent::objects::Objects;
use sluice_agent::services::NodeView;
use sluice_agent::source::manifests::parse;
use sluice_integration::fuzz::{Strings, cases, mutate, pick, rng};
use sluice_integration::require_root;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

const SHOP: &str = include_str!("../../agent/tests/manifests/shop.yaml");

/// What the maps say, without the ids the agent gives out (a Service
/// removed and written again gets new ones).
fn fingerprint(a: &Agent, vips: &BTreeSet<IpAddr>) -> Vec<String> {
    let lb = a.maps().lb();
    let backends = lb.backends().unwrap();
    let addr_of = |id: u32| {
        backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| format!("{}:{}", b.addr, b.port))
            .unwrap_or_else(|| format!("missing backend {id}"))
    };
    let mut out: Vec<String> = lb
        .services()
        .unwrap()
        .iter()
        .map(|s| {
            let mut active: Vec<String> = s.active.iter().map(|id| addr_of(*id)).collect();
            active.sort();
            format!(
                "service {}:{}/{} {:?} affinity {} reject {} active {active:?}",
                s.vip, s.port, s.proto, s.algorithm, s.affinity_timeout_secs, s.reject
            )
        })
        .collect();
    let mut b: Vec<String> = backends
        .iter()
        .map(|b| format!("backend {}:{}/{} active {}", b.addr, b.port, b.proto, b.active))
        .collect();
    b.sort();
    out.extend(b);
    out.push(format!("maglev tables {}", lb.maglev_tables().unwrap().len()));
    for v in vips {
        out.push(format!("vip filter {v} {}", lb.vip_filter_count(*v).unwrap()));
    }
    let p = a.maps().policy();
    out.push(format!("identities {}", p.identities().unwrap().len()));
    out.push(format!("cidrs {}", p.cidrs().unwrap().len()));
    out.push(format!("rules {}", p.rule_entries(None).unwrap().len()));
    for e in p.endpoint_policies().unwrap() {
        out.push(format!(
            "endpoint {} flags {} kinds {:?}",
            e.endpoint_id, e.state.flags, e.state.kinds
        ));
    }
    out.sort();
    out
}

fn agent() -> (impl Sized, Agent) {
    let (ebpf, mut maps) = loader::load_unpinned(&DatapathConfig::default()).unwrap();
    // The shop's local pods, so that policy has endpoints to write.
    for (i, a) in ["10.244.1.5", "10.244.1.6", "10.244.1.20"].iter().enumerate() {
        maps.endpoints_mut()
            .add(&Endpoint {
                addr: a.parse().unwrap(),
                ifindex: 1,
                endpoint_id: 7 + i as u32,
                mac: [2, 0, 0, 0, 0, 5 + i as u8],
                parent_ifindex: 0,
                netns_cookie: 0,
            })
            .unwrap();
    }
    let node = NodeView {
        name: "node-a".into(),
        addresses: Vec::new(),
    };
    (ebpf, Agent::with_maps(maps, node, vec![]).unwrap())
}

fn objects(docs: &[Value]) -> Result<Objects, String> {
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect();
    text_objects(&text)
}

fn text_objects(text: &str) -> Result<Objects, String> {
    let mut o = Objects::default();
    for obj in parse(text, Path::new("fuzz.yaml")).map_err(|e| e.to_string())? {
        o.insert(obj);
    }
    Ok(o)
}

#[test]
fn fuzzed_manifests_never_stop_the_agent_or_stay_in_the_maps() {
    if !require_root("fuzzed_manifests_never_stop_the_agent_or_stay_in_the_maps") {
        return;
    }
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(SHOP)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    let base = objects(&docs).unwrap();
    let (_ebpf, mut a) = agent();
    let report = a.sync(&base);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // VIPs the fuzz may write, for the filter check: the base's and any a
    // mutation names.
    let mut vips: BTreeSet<IpAddr> = BTreeSet::new();
    let baseline_vips =
        |a: &Agent| -> BTreeSet<IpAddr> { a.maps().lb().services().unwrap().iter().map(|s| s.vip).collect() };
    vips.extend(baseline_vips(&a));
    let baseline = fingerprint(&a, &vips);
    // A fresh agent writes the same for the base.
    let (_e2, mut fresh) = agent();
    fresh.sync(&base);
    assert_eq!(
        fingerprint(&fresh, &vips),
        baseline,
        "fingerprints compare what agents wrote"
    );

    let strings = Strings {
        paths: vec!["/nonexistent".into()],
    };
    let mut rng = rng(0xaf);
    let n = cases("SLUICE_MANIFEST_FUZZ_CASES", 400);
    let (mut parsed, mut refused, mut failures_reported, mut warned) = (0, 0, 0, 0);
    for i in 0..n {
        let mut mutated = docs.clone();
        for _ in 0..rng.random_range(1..=3) {
            let d = rng.random_range(0..mutated.len());
            mutate(&mut rng, &strings, &mut mutated[d]);
        }
        // Some are duplicated under another name, so they add rather than replace.
        if rng.random_bool(0.3) {
            let mut extra = pick(&mut rng, &mutated).clone();
            if let Some(m) = extra.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("name".into(), Value::String(format!("fuzz-{i}")));
            }
            mutated.push(extra);
        }
        let result = if rng.random_bool(0.1) {
            // As text, cut or with bytes changed.
            let mut text: Vec<u8> = mutated
                .iter()
                .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
                .collect::<String>()
                .into_bytes();
            let at = rng.random_range(0..text.len());
            if rng.random_bool(0.5) {
                text.truncate(at);
            } else {
                text[at] = rng.random();
            }
            text_objects(&String::from_utf8_lossy(&text))
        } else {
            objects(&mutated)
        };
        let o = match result {
            Ok(o) => o,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        parsed += 1;
        let r = a.sync(&o);
        failures_reported += usize::from(!r.failures.is_empty());
        warned += usize::from(!r.warnings.is_empty());
        vips.extend(baseline_vips(&a));
        // The valid manifests again: the maps are the baseline.
        let r = a.sync(&base);
        assert!(r.failures.is_empty(), "case {i}: the base after it: {:?}", r.failures);
        let now = fingerprint(&a, &vips);
        let fresh_now = fingerprint(&fresh, &vips);
        if now != fresh_now {
            let extra: Vec<&String> = now.iter().filter(|l| !fresh_now.contains(l)).collect();
            let missing: Vec<&String> = fresh_now.iter().filter(|l| !now.contains(l)).collect();
            panic!(
                "case {i} (seed {}): the maps kept something after the valid manifests came back\n  extra {extra:?}\n  missing {missing:?}\n  mutated {}",
                sluice_integration::fuzz::seed_name(),
                serde_json::to_string(&mutated).unwrap()
            );
        }
    }
    eprintln!(
        "manifest fuzz: {n} cases: {parsed} parsed and synced ({failures_reported} with failures reported, {warned} with warnings), {refused} refused at parsing; the maps came back to the baseline after each"
    );
    assert!(
        parsed > n / 3 && refused > 0,
        "the fuzz reached both parsing and syncing"
    );
}
