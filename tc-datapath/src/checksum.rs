//! The internet checksum (RFC 1071) over a byte slice: what the frames the
//! CNI binary sends (the unsolicited neighbour advertisement), the tests'
//! forged packets and the benchmarks' raw frames are summed with. Ten
//! lines; not worth a dependency in the CNI binary.

/// The folded one's-complement sum of `data` as 16-bit big-endian words,
/// added to `acc` (an odd last byte is padded with zero). Sum a pseudo
/// header first and pass it as `acc`; a buffer with a valid checksum in it
/// sums to 0xffff.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The checksum to write into a header whose checksum field is zero.
pub fn of(data: &[u8], acc: u32) -> u16 {
    !(sum(data, acc) as u16)
}

#[cfg(test)]
mod tests {
    use super::{of, sum};

    /// RFC 1071's worked example (section 3): the words 0001 f203 f4f5 f6f7
    /// sum to ddf2 after the carries fold back.
    #[test]
    fn the_rfc_example_folds_its_carries() {
        assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0), 0xddf2);
        assert_eq!(of(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0), !0xddf2);
    }

    /// A header with its checksum written in sums to all ones, and an odd
    /// length pads with a zero byte, not with whatever follows.
    #[test]
    fn a_filled_in_checksum_verifies_and_odd_lengths_pad_with_zero() {
        let mut ip = [0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 96, 0, 10];
        let c = of(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(sum(&ip, 0), 0xffff);
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), sum(&[0x12, 0x34, 0x56, 0x00], 0));
        assert_eq!(sum(&[0xab], 7), 0xab00 + 7);
    }
}
