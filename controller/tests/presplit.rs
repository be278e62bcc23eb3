//! The pre-split rule of configuration 0, for every allowed shard count.

use controller::config::{presplit_boundaries, PRESPLIT_FIRST_BYTE, PRESPLIT_RADIX};
use controller::limits::MAX_INITIAL_SHARDS;
use controller::Controller;

#[test]
fn every_count_from_1_to_1024_covers_the_key_space_with_increasing_boundaries() {
    for shards in 1..=MAX_INITIAL_SHARDS {
        let boundaries = presplit_boundaries(shards).unwrap();
        assert_eq!(boundaries.len(), usize::try_from(shards - 1).unwrap());
        let width = if shards <= PRESPLIT_RADIX { 1 } else { 2 };
        for boundary in &boundaries {
            assert_eq!(boundary.len(), width, "{shards} shards");
            assert!(
                boundary.iter().all(|b| (0x20..=0x7e).contains(b)),
                "{shards}: {boundary:?}"
            );
        }
        assert!(
            boundaries.windows(2).all(|pair| pair[0] < pair[1]),
            "{shards} shards"
        );

        let config = Controller::new(shards).unwrap().latest();
        assert_eq!(config.num, 0);
        config
            .check()
            .unwrap_or_else(|err| panic!("{shards} shards: {err}"));
        assert_eq!(config.shards.len(), usize::try_from(shards).unwrap());
        assert!(config.groups.is_empty());
        for (i, shard) in (0..).zip(&config.shards) {
            assert_eq!(shard.id, i, "ids follow key order");
            assert_eq!(shard.gid, None);
        }
        assert_eq!(config.shards.first().unwrap().start, b"");
        assert_eq!(config.shards.last().unwrap().end, None);
    }
}

/// Every printable key of the rule's width (1 byte up to 95 shards, 2 bytes
/// beyond), in order.
fn printable_keys(width: usize) -> Vec<Vec<u8>> {
    let alphabet = (0..PRESPLIT_RADIX).map(|d| PRESPLIT_FIRST_BYTE + u8::try_from(d).unwrap());
    if width == 1 {
        alphabet.map(|b| vec![b]).collect()
    } else {
        let alphabet: Vec<u8> = alphabet.collect();
        alphabet
            .iter()
            .flat_map(|&hi| alphabet.iter().map(move |&lo| vec![hi, lo]))
            .collect()
    }
}

#[test]
fn printable_keys_spread_evenly_over_the_shards() {
    let one_byte = printable_keys(1);
    let two_bytes = printable_keys(2);
    for shards in 1..=MAX_INITIAL_SHARDS {
        let config = Controller::new(shards).unwrap().latest();
        let keys = if shards <= PRESPLIT_RADIX {
            &one_byte
        } else {
            &two_bytes
        };
        let mut per_shard = vec![0usize; config.shards.len()];
        for key in keys {
            let shard = config.shard_for_key(key).unwrap();
            assert!(shard.contains(key));
            per_shard[usize::try_from(shard.id).unwrap()] += 1;
        }
        let min = per_shard.iter().min().unwrap();
        let max = per_shard.iter().max().unwrap();
        assert!(*min >= 1 && max - min <= 1, "{shards} shards: {min}..{max}");
    }
}

#[test]
fn keys_outside_printable_ascii_still_land_somewhere() {
    let config = Controller::new(8).unwrap().latest();
    assert_eq!(config.shard_for_key(b"").unwrap().id, 0);
    assert_eq!(config.shard_for_key(b"\x00\x01").unwrap().id, 0);
    assert_eq!(config.shard_for_key(b"\xff\xff").unwrap().id, 7);
    assert_eq!(config.shard_for_key("é".as_bytes()).unwrap().id, 7);
    assert_eq!(config.shard_for_key(b"user:42").unwrap().id, 7);
    assert_eq!(config.shard_for_key(b"Key").unwrap().id, 3);
    assert_eq!(config.shard_for_key(b"0001").unwrap().id, 1);
}
