//! Fast per-thread random numbers for load balancing, ids and plugins' `random-u64`: wyrand,
//! seeded per thread from the standard library's per-process random hasher keys. Not for
//! secrets: those come from [`secure_bytes`].

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64));
        h.finish() | 1
    });
}

/// A uniformly random 64-bit number.
pub fn fast_u64() -> u64 {
    STATE.with(|s| {
        let next = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(next);
        let t = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    })
}

/// 32 bytes from the kernel's CSPRNG, for secrets (tokens, keys).
pub fn secure_bytes() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut out = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_vary_and_spread() {
        let draws: Vec<u64> = (0..1_000).map(|_| super::fast_u64()).collect();
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert_eq!(distinct.len(), draws.len());
        let high = draws.iter().filter(|d| **d >> 63 == 1).count();
        assert!(
            (400..600).contains(&high),
            "top bit set {high} times of 1000"
        );
    }
}
