//! FNV-1a with a seed, finished with a multiply-xorshift: the one hash the
//! Rust side needs to be stable across builds and nodes (Maglev tables,
//! program versions, attachment ids). Written here rather than taken from
//! std, whose hasher may change between releases.

pub(crate) fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly; finish with a multiply-xorshift.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}
