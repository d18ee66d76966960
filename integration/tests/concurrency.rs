//! Many pods on one node at once, and the bounded wait for the pool lock.

use serde_json::json;
use sluice_integration::require_root;
use sluice_integration::vpc::{Vpc, result_ip};
use std::collections::HashSet;

#[test]
fn parallel_add_and_del_of_many_pods() {
    if !require_root("parallel_add_and_del_of_many_pods") {
        return;
    }
    let mut vpc = Vpc::new("par", 1).unwrap();
    let n = 32;
    let pods: Vec<usize> = (0..n).map(|i| vpc.pod(&format!("p{i}")).unwrap()).collect();
    let conf = vpc.main_conf(0, "1.1.0");
    let vpc = &vpc;
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .chunks(n / 8)
            .map(|chunk| {
                let conf = conf.clone();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| {
                            result_ip(
                                &vpc.sluice(0, "ADD", &format!("c{p}"), *p, &conf)
                                    .expect_ok("ADD")
                                    .json(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<&String> = ips.iter().collect();
    assert_eq!(unique.len(), n, "every pod got its own address: {ips:?}");
    assert_eq!(vpc.leases(0).len(), n);
    assert_eq!(vpc.endpoints(0).len(), n);
    for (p, ip) in pods.iter().zip(&ips) {
        assert_eq!(vpc.pods[*p].addrs("eth0").unwrap()[0], format!("{ip}/16"));
    }
    std::thread::scope(|s| {
        for chunk in pods.chunks(n / 8) {
            let conf = conf.clone();
            s.spawn(move || {
                for p in chunk {
                    vpc.sluice(0, "DEL", &format!("c{p}"), *p, &conf).expect_ok("DEL");
                }
            });
        }
    });
    assert!(vpc.leases(0).is_empty());
    assert!(vpc.endpoints(0).is_empty());
    for p in &pods {
        assert_eq!(vpc.pods[*p].link_names().unwrap(), vec!["lo"]);
    }
}

#[test]
fn a_held_pool_lock_gives_try_again_later_and_leaves_nothing() {
    if !require_root("a_held_pool_lock_gives_try_again_later_and_leaves_nothing") {
        return;
    }
    let mut vpc = Vpc::new("lck", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["ipam"]["lockTimeoutMs"] = json!(300);
    let dir = vpc.data_dir.join("ipam-n0").join(format!("{}-net", vpc.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let started = std::time::Instant::now();
    let out = vpc.sluice(0, "ADD", "p", p, &conf);
    let waited = started.elapsed();
    assert_eq!(out.error_code(), 11, "{}", out.stdout);
    assert!(out.stdout.contains("lock"), "{}", out.stdout);
    assert!(
        waited.as_millis() >= 300 && waited.as_secs() < 5,
        "bounded wait, was {waited:?}"
    );
    assert_eq!(vpc.pods[p].link_names().unwrap(), vec!["lo"]);
    lock.unlock().unwrap();
    vpc.sluice(0, "ADD", "p", p, &conf)
        .expect_ok("ADD once the lock is free");
    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL");
}
