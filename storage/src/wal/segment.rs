//! The bytes of a WAL segment file: its header, the framing of each record,
//! and the scanner that validates a segment and tells a torn tail from
//! corruption.
//!
//! Everything here is pure: it works on byte slices, so the same code serves
//! recovery, read-only inspection of a running node, and the fuzz tests.

use std::path::Path;

use crate::error::{Result, StorageError};

/// Position of a record in the WAL: 1 for the first record ever written,
/// then +1 per record. 0 is never a valid LSN, so an all-zero frame can never
/// validate (its LSN field would read 0).
pub type Lsn = u64;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHARDWAL";
/// The only segment format version this build reads and writes.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record frame's header: `len u32 | crc32 u32 | lsn u64`.
pub const FRAME_HEADER_LEN: usize = 16;

const _: () = assert!(SEGMENT_HEADER_LEN == 8 + 4 + 4 + 8 + 4 + 4);
const _: () = assert!(FRAME_HEADER_LEN == 4 + 4 + 8);

/// File name suffix of a complete segment.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// File name suffix of a segment being created (removed at open).
pub const SEGMENT_TMP_SUFFIX: &str = ".wal.tmp";

/// The file name of the segment whose first record is `first_lsn`: 20 digits,
/// zero padded, so lexical order is log order.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back to its first LSN. `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&lsn| lsn > 0)
}

/// Encodes a segment header.
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    debug_assert!(first_lsn > 0, "LSN 0 is reserved");
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    // 12..16 flags and 24..28 reserved stay zero in version 1.
    header[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Validates a segment header and returns its first LSN.
pub fn decode_segment_header(bytes: &[u8], path: &Path) -> Result<Lsn> {
    let header = bytes.get(..SEGMENT_HEADER_LEN).ok_or_else(|| {
        StorageError::corruption(
            path,
            0,
            format!(
                "segment is {} bytes, shorter than its {SEGMENT_HEADER_LEN}-byte header",
                bytes.len()
            ),
        )
    })?;
    if header[0..8] != SEGMENT_MAGIC {
        return Err(StorageError::corruption(
            path,
            0,
            "not a shardkv WAL segment (bad magic)",
        ));
    }
    let stored_crc = read_u32(header, 28);
    if crc32fast::hash(&header[0..28]) != stored_crc {
        return Err(StorageError::corruption(
            path,
            0,
            "segment header checksum mismatch",
        ));
    }
    let version = read_u32(header, 8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(StorageError::FormatVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SEGMENT_FORMAT_VERSION,
        });
    }
    let first_lsn = read_u64(header, 16);
    if first_lsn == 0 {
        return Err(StorageError::corruption(
            path,
            16,
            "segment header names LSN 0",
        ));
    }
    Ok(first_lsn)
}

/// Appends the frame of one record to `out`.
pub fn encode_frame(lsn: Lsn, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(lsn > 0, "LSN 0 is reserved");
    // Callers check the configured limit first; a u32 length is the format's.
    let len =
        u32::try_from(payload.len()).expect("payload length checked against the record limit");
    out.reserve(FRAME_HEADER_LEN + payload.len());
    let len_bytes = len.to_le_bytes();
    let lsn_bytes = lsn.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, lsn_bytes, payload).to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
}

/// The checksum of a frame: crc32 over `len | lsn | payload`.
fn frame_crc(len: [u8; 4], lsn: [u8; 8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(&lsn);
    hasher.update(payload);
    hasher.finalize()
}

/// Where one valid record sits in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Byte offset of the frame in the segment file.
    pub offset: u64,
    /// Length of the payload.
    pub len_bytes: u32,
}

impl RecordPos {
    /// The payload's bytes within the segment's bytes.
    pub fn payload<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        // The scanner produced this position from these bytes, so the range
        // is inside them; an out-of-range request yields an empty slice.
        let start = usize::try_from(self.offset)
            .unwrap_or(usize::MAX)
            .saturating_add(FRAME_HEADER_LEN);
        let end = start.saturating_add(self.len_bytes as usize);
        segment.get(start..end).unwrap_or(&[])
    }
}

/// How a scanned segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// From `offset` to the end of the file the bytes are not a valid record
    /// and no valid record follows: the remains of a write that a crash
    /// interrupted. Only possible in the last segment.
    Torn {
        /// Where the torn region starts (the end of the last valid record).
        offset: u64,
        /// Why the first invalid frame was rejected.
        reason: String,
    },
}

/// The result of validating one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// LSN of the first record, from the header.
    pub first_lsn: Lsn,
    /// Every valid record, in order, LSNs contiguous from `first_lsn`.
    pub records: Vec<RecordPos>,
    /// How the segment ends.
    pub end: SegmentEnd,
}

impl SegmentScan {
    /// The LSN the next record after this segment would get.
    pub fn next_lsn(&self) -> Lsn {
        self.first_lsn + self.records.len() as u64
    }
}

/// Validates a whole segment.
///
/// `may_be_torn` is true for the last segment of a log: a crash can leave a
/// partly written record only there, because a segment is fsync'd completely
/// before the next one is created. An invalid frame counts as a torn tail
/// only if no valid record with a later LSN can be found anywhere after it;
/// otherwise acknowledged records follow the damage, and truncating would
/// silently lose them, so it is reported as corruption.
pub fn scan_segment(
    bytes: &[u8],
    path: &Path,
    may_be_torn: bool,
    record_size_bytes_max: u32,
) -> Result<SegmentScan> {
    let first_lsn = decode_segment_header(bytes, path)?;
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected_lsn = first_lsn;
    while offset < bytes.len() {
        match decode_frame_at(bytes, offset, expected_lsn, record_size_bytes_max) {
            Ok(pos) => {
                records.push(pos);
                offset += FRAME_HEADER_LEN + pos.len_bytes as usize;
                expected_lsn += 1;
            }
            Err(reason) => {
                let later =
                    find_later_record(bytes, offset + 1, expected_lsn, record_size_bytes_max);
                if may_be_torn && later.is_none() {
                    return Ok(SegmentScan {
                        first_lsn,
                        records,
                        end: SegmentEnd::Torn {
                            offset: offset as u64,
                            reason,
                        },
                    });
                }
                let reason = match later {
                    Some(later) => format!(
                        "{reason} (record {expected_lsn}); valid record {} follows at byte {}",
                        later.lsn, later.offset
                    ),
                    None => format!("{reason} (record {expected_lsn}) in a sealed segment"),
                };
                return Err(StorageError::corruption(path, offset as u64, reason));
            }
        }
    }
    Ok(SegmentScan {
        first_lsn,
        records,
        end: SegmentEnd::Clean,
    })
}

/// Decodes the frame at `offset`, which must carry `expected_lsn`.
fn decode_frame_at(
    bytes: &[u8],
    offset: usize,
    expected_lsn: Lsn,
    record_size_bytes_max: u32,
) -> std::result::Result<RecordPos, String> {
    let Some(header) = bytes.get(offset..offset + FRAME_HEADER_LEN) else {
        return Err(format!(
            "record header cut short: {} of {FRAME_HEADER_LEN} bytes",
            bytes.len() - offset
        ));
    };
    let len = read_u32(header, 0);
    if len > record_size_bytes_max {
        return Err(format!(
            "record length {len} exceeds the limit of {record_size_bytes_max}"
        ));
    }
    let body_start = offset + FRAME_HEADER_LEN;
    let Some(payload) = bytes.get(body_start..body_start + len as usize) else {
        return Err(format!(
            "record cut short: {} of {len} payload bytes",
            bytes.len() - body_start
        ));
    };
    let lsn_bytes: [u8; 8] = header[8..16].try_into().expect("slice of 8 bytes");
    let crc = frame_crc(
        header[0..4].try_into().expect("slice of 4 bytes"),
        lsn_bytes,
        payload,
    );
    if crc != read_u32(header, 4) {
        return Err("record checksum mismatch".to_string());
    }
    let lsn = u64::from_le_bytes(lsn_bytes);
    if lsn != expected_lsn {
        return Err(format!("record carries LSN {lsn}, expected {expected_lsn}"));
    }
    Ok(RecordPos {
        lsn,
        offset: offset as u64,
        len_bytes: len,
    })
}

/// Looks for any valid frame at or after `from` whose LSN is at least
/// `min_lsn`. Cheap field checks run before the checksum, so scanning junk
/// costs a few comparisons per byte.
fn find_later_record(
    bytes: &[u8],
    from: usize,
    min_lsn: Lsn,
    record_size_bytes_max: u32,
) -> Option<RecordPos> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_LEN)?;
    // At most one record per frame header's worth of bytes can follow.
    let max_lsn = min_lsn.saturating_add((bytes.len() / FRAME_HEADER_LEN) as u64);
    (from..=last_start).find_map(|offset| {
        let lsn = read_u64(bytes, offset + 8);
        if lsn < min_lsn || lsn > max_lsn {
            return None;
        }
        decode_frame_at(bytes, offset, lsn, record_size_bytes_max).ok()
    })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(
        bytes[at..at + 4]
            .try_into()
            .expect("caller checked the length"),
    )
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        bytes[at..at + 8]
            .try_into()
            .expect("caller checked the length"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    fn segment(first_lsn: Lsn, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = encode_segment_header(first_lsn).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(first_lsn + i as u64, p, &mut bytes);
        }
        bytes
    }

    #[test]
    fn names_round_trip_and_reject_others() {
        assert_eq!(segment_file_name(7), "00000000000000000007.wal");
        assert_eq!(parse_segment_file_name("00000000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_file_name("00000000000000000000.wal"), None);
        assert_eq!(parse_segment_file_name("7.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.wal.tmp"),
            None
        );
    }

    #[test]
    fn all_zero_frames_never_validate() {
        let mut bytes = encode_segment_header(1).to_vec();
        for len in 0..64 {
            bytes.truncate(SEGMENT_HEADER_LEN);
            bytes.resize(SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + len, 0);
            let scan = scan_segment(&bytes, Path::new("s"), true, MAX).unwrap();
            assert!(scan.records.is_empty());
            assert!(matches!(scan.end, SegmentEnd::Torn { offset: 32, .. }));
        }
    }

    #[test]
    fn scan_returns_every_record() {
        let bytes = segment(5, &[b"a", b"", b"ccc"]);
        let scan = scan_segment(&bytes, Path::new("s"), false, MAX).unwrap();
        assert_eq!(scan.end, SegmentEnd::Clean);
        let got: Vec<_> = scan
            .records
            .iter()
            .map(|r| (r.lsn, r.payload(&bytes).to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(5, b"a".to_vec()), (6, vec![]), (7, b"ccc".to_vec())]
        );
        assert_eq!(scan.next_lsn(), 8);
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption_even_in_the_last_segment() {
        let mut bytes = segment(1, &[b"one", b"two", b"three"]);
        let second = SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 3;
        bytes[second + FRAME_HEADER_LEN] ^= 1;
        let err = scan_segment(&bytes, Path::new("s"), true, MAX).unwrap_err();
        assert!(
            matches!(err, StorageError::Corruption { offset, .. } if offset == second as u64),
            "{err}"
        );
    }

    #[test]
    fn damaged_last_record_is_torn_in_last_segment_but_corrupt_in_sealed_one() {
        let mut bytes = segment(1, &[b"one", b"two"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let scan = scan_segment(&bytes, Path::new("s"), true, MAX).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(matches!(scan.end, SegmentEnd::Torn { offset: 51, .. }));
        assert!(matches!(
            scan_segment(&bytes, Path::new("s"), false, MAX),
            Err(StorageError::Corruption { offset: 51, .. })
        ));
    }

    #[test]
    fn bad_headers_are_rejected() {
        let good = segment(1, &[b"x"]);
        for at in 0..SEGMENT_HEADER_LEN {
            let mut bytes = good.clone();
            bytes[at] ^= 0x04;
            let err = scan_segment(&bytes, Path::new("s"), true, MAX).unwrap_err();
            assert!(
                matches!(err, StorageError::Corruption { offset: 0, .. }),
                "flip at {at}: {err}"
            );
        }
        let mut future = good.clone();
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&future[0..28]);
        future[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            scan_segment(&future, Path::new("s"), true, MAX),
            Err(StorageError::FormatVersion { found: 2, .. })
        ));
    }

    #[test]
    fn oversized_length_is_rejected_not_allocated() {
        let mut bytes = segment(1, &[b"x"]);
        bytes[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let scan = scan_segment(&bytes, Path::new("s"), true, MAX).unwrap();
        assert!(
            matches!(scan.end, SegmentEnd::Torn { ref reason, .. } if reason.contains("limit"))
        );
    }
}
