//! The simulation's only source of randomness: SplitMix64, seeded once.

/// A small deterministic pseudo-random generator (SplitMix64).
///
/// Every random choice of a simulation run comes from generators derived
/// from the run's seed with [`SimRng::fork`], so a seed replays exactly.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A value in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        // Multiply-shift: unbiased enough for a simulation, and no division.
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).expect("high half of a u64 product fits in u64")
    }

    /// A value in `[low, high]` (both included).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "SimRng::between({low}, {high})");
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// A value in a scenario's `(low, high)` range, both included, read as
    /// at least 1 and never inverted: `[max(low, 1), max(high, max(low, 1))]`.
    pub fn in_range(&mut self, (low, high): (u64, u64)) -> u64 {
        let low = low.max(1);
        self.between(low, high.max(low))
    }

    /// A duration of `low_ms` to `high_ms` milliseconds (both included).
    pub fn millis(&mut self, low_ms: u64, high_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.between(low_ms, high_ms))
    }

    /// An index into a collection of `len` elements; `len` must be positive.
    pub fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("usize fits in u64");
        usize::try_from(self.below(len)).expect("an index below a usize length fits in usize")
    }

    /// True with probability `p` (`p <= 0` never, `p >= 1` always). A
    /// probability of zero draws nothing, so turning a fault off does not
    /// disturb the rest of the schedule of the generator.
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits as a fraction in [0, 1).
        let fraction = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        fraction < p
    }

    /// An independent generator for one concern (network, faults, clients),
    /// so that how often one concern draws does not shift the others.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(mix(self.next_u64() ^ 0xD1B5_4A32_D192_ED03))
    }
}

/// The SplitMix64 finalizer: a bijective scramble of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a name (FNV-1a), to give each scenario its own
/// schedules for the same seed numbers.
pub fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn bounds_hold() {
        let mut rng = SimRng::new(7);
        for _ in 0..10_000 {
            assert!(rng.below(5) < 5);
            let x = rng.between(3, 9);
            assert!((3..=9).contains(&x));
            assert!(rng.index(4) < 4);
            assert!((1..=3).contains(&rng.in_range((0, 3))));
            assert_eq!(rng.in_range((5, 2)), 5);
        }
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }
}
