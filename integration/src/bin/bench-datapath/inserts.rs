//! Adding one Service to many: sluice's map writes beside
//! `iptables-restore --noflush` and `nft -f`.

use super::*;

/// Add one Service with 3 backends to the `n` loaded, one at a time.
pub(crate) fn insert_benchmark(
    args: &Args,
    vpc: &Vpc,
    pairs: &[Pair],
    unmeasured: &[bool],
    maps: &mut Maps,
    n: usize,
) -> Result<Inserts> {
    let mut rows = Vec::new();
    let fresh = |k: usize| 2 * n + k; // indexes no loaded Service uses
    let mut t = Vec::new();
    for k in 0..args.inserts {
        let i = fresh(k);
        let s = spec(i, &generated(i));
        let started = Instant::now();
        maps.lb_mut().upsert_service(&s)?;
        t.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rows.push(("sluice (map writes)", pct(&mut t, 0.5), pct(&mut t, 0.99), t.len()));
    for (p, _) in pairs.iter().zip(unmeasured).filter(|(_, u)| !**u) {
        let ns = &vpc.pods[p.client];
        let (label, count) = match p.mode {
            Mode::IptablesNft => ("iptables-nft-restore --noflush", (args.inserts / 10).max(5)),
            Mode::IptablesLegacy => ("iptables-legacy-restore --noflush", (args.inserts / 10).max(5)),
            Mode::Nftables => ("nft -f", (args.inserts / 10).max(5)),
            _ => continue,
        };
        let mut t = Vec::new();
        for k in 0..count {
            let i = fresh(k);
            let s = generated(i);
            let took = match p.mode {
                Mode::Nftables => exec_in(
                    ns,
                    "nft",
                    &["-f", "-"],
                    kube_proxy::nft_add(i, &s, CLUSTER_CIDR).as_bytes(),
                )?,
                _ => exec_in(
                    ns,
                    p.mode.restore(),
                    &["--noflush"],
                    kube_proxy::iptables_add(i, &s, CLUSTER_CIDR).as_bytes(),
                )?,
            };
            t.push(took.as_secs_f64() * 1e6);
        }
        rows.push((label, pct(&mut t, 0.5), pct(&mut t, 0.99), t.len()));
        eprintln!("inserts: {label} done");
    }
    Ok(Inserts { rows })
}
