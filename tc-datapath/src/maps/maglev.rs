//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! M slots (M prime) filled by the backends' permutations in turn, so each
//! backend owns M/N slots give or take one, and removing a backend moves
//! few slots that were not its own.
//!
//! The table must be identical on every node for the same backend set, so
//! the hash is the crate's stable FNV-1a over the backend's identity with
//! two fixed seeds.

use crate::hash::fnv1a;
use crate::layout::{MAGLEV_CHUNK, MaglevKey, MaglevValue};

/// The table: slot -> index into `backends`. `backends` are identities
/// (e.g. "10.244.2.7:8080"); their order does not matter, their set does.
pub fn table(backends: &[&[u8]], m: u32) -> Vec<u32> {
    let m = m as u64;
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    // Visit backends in a canonical order, so any listing gives the same table.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| backends[*a].cmp(backends[*b]));
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let offset = fnv1a(0x5eed_0001, backends[i]) % m;
            let skip = fnv1a(0x5eed_0002, backends[i]) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (k, &(offset, skip)) in perm.iter().enumerate() {
            // Walk this backend's permutation to its next free slot.
            let mut c = (offset + next[k] * skip) % m;
            while entry[c as usize] != u32::MAX {
                next[k] += 1;
                c = (offset + next[k] * skip) % m;
            }
            entry[c as usize] = order[k] as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// The map entries of one service's table, with backend ids in the slots.
pub fn chunks(rev_nat_id: u32, table: &[u32], backend_ids: &[u32]) -> Vec<(MaglevKey, MaglevValue)> {
    table
        .chunks(MAGLEV_CHUNK)
        .enumerate()
        .map(|(c, slots)| {
            let mut v = MaglevValue {
                backend_ids: [0; MAGLEV_CHUNK],
            };
            for (i, s) in slots.iter().enumerate() {
                v.backend_ids[i] = backend_ids[*s as usize];
            }
            (
                MaglevKey {
                    rev_nat_id,
                    chunk: c as u32,
                },
                v,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u32 = 16381;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 2).into_bytes())
            .collect()
    }

    fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn even_spread() {
        for n in [1, 3, 10, 100, 1000] {
            let b = names(n);
            let t = table(&refs(&b), M);
            assert_eq!(t.len(), M as usize);
            let mut per = vec![0u32; n];
            for s in &t {
                per[*s as usize] += 1;
            }
            let (lo, hi) = (*per.iter().min().unwrap(), *per.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} backends: {lo}..{hi} slots each");
        }
    }

    #[test]
    fn removing_one_of_100_moves_few_other_slots() {
        let all = names(100);
        let before = table(&refs(&all), M);
        for gone in [0usize, 42, 99] {
            let mut rest = all.clone();
            rest.remove(gone);
            let after = table(&refs(&rest), M);
            // Compare by identity: indices shift when a backend is removed.
            let moved_elsewhere = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b as usize != gone && all[**b as usize] != rest[**a as usize])
                .count();
            let bound = (0.01 * M as f64 + M as f64 / 100.0) as usize;
            eprintln!("removing backend {gone} of 100: {moved_elsewhere} of {M} slots of others moved");
            assert!(
                moved_elsewhere <= bound,
                "removing backend {gone} moved {moved_elsewhere} slots of others (bound {bound})"
            );
        }
    }

    #[test]
    fn chunks_cover_the_table_with_ids() {
        let b = names(3);
        let t = table(&refs(&b), M);
        let c = chunks(7, &t, &[100, 200, 300]);
        assert_eq!(c.len(), (M as usize).div_ceil(MAGLEV_CHUNK));
        assert_eq!(
            c[1].0,
            MaglevKey {
                rev_nat_id: 7,
                chunk: 1
            }
        );
        assert_eq!(c[1].1.backend_ids[5], [100, 200, 300][t[MAGLEV_CHUNK + 5] as usize]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// The table depends on the set of backends, not their order.
        #[test]
        fn order_independent(n in 2usize..40, seed in any::<u64>()) {
            let b = names(n);
            let mut shuffled = b.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let t1: Vec<&[u8]> = table(&refs(&b), 251).iter().map(|i| b[*i as usize].as_slice()).collect();
            let t2: Vec<&[u8]> = table(&refs(&shuffled), 251).iter().map(|i| shuffled[*i as usize].as_slice()).collect();
            prop_assert_eq!(t1, t2);
        }
    }
}
