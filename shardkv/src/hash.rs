//! The hash of `put_hash`: [`put_hash`].
//!
//! `put_hash(key, value)` sets the key to `hash(previous ++ value)`, where
//! `previous` is the key's value before (empty if absent) and `++` is byte
//! concatenation. The hash is 64-bit FNV-1a (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`) written as 16 lowercase
//! hexadecimal ASCII digits, so the new value is printable text a shell user
//! can read and pass back, and any client can recompute it. FNV-1a is not
//! cryptographic: `put_hash` exists to chain values deterministically (and to
//! make lost or duplicated updates visible), not to resist an adversary.

/// FNV-1a offset basis (64 bit).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a prime (64 bit).
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The value `put_hash` stores: [`hash_bytes`] of `previous ++ value`.
pub fn put_hash(previous: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in previous.unwrap_or_default().iter().chain(value) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    format!("{hash:016x}").into_bytes()
}

/// The 64-bit FNV-1a hash of `bytes` as 16 lowercase hex digits.
pub fn hash_bytes(bytes: &[u8]) -> Vec<u8> {
    put_hash(None, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_fnv1a_vectors() {
        // Test vectors of the FNV reference (64-bit FNV-1a).
        assert_eq!(hash_bytes(b""), b"cbf29ce484222325");
        assert_eq!(hash_bytes(b"a"), b"af63dc4c8601ec8c");
        assert_eq!(hash_bytes(b"foobar"), b"85944171f73967e8");
    }

    #[test]
    fn hashes_the_concatenation() {
        assert_eq!(put_hash(Some(b"foo"), b"bar"), hash_bytes(b"foobar"));
        assert_eq!(put_hash(None, b"foobar"), hash_bytes(b"foobar"));
    }
}
