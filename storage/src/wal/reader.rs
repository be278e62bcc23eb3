//! Read-only access to a WAL directory.
//!
//! Unlike [`super::Wal::open`], the reader never repairs anything, so it is
//! safe on the directory of a running node: a record being written at the
//! end of the last segment simply looks like a torn tail and marks the end.

use std::path::{Path, PathBuf};

use super::segment::{parse_segment_file_name, scan_segment, Lsn, SegmentEnd};
use crate::error::{Result, StorageError};
use crate::fs::FsRef;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Its position in the log.
    pub lsn: Lsn,
    /// The bytes given to `append`.
    pub payload: Vec<u8>,
}

/// Summary of a full validation pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segment_count: usize,
    /// Valid records found.
    pub record_count: u64,
    /// First and last LSN found (`None` if the log holds no record).
    pub lsn_range: Option<(Lsn, Lsn)>,
    /// Where the log ends in a torn record, if it does.
    pub torn_tail: Option<(PathBuf, u64)>,
}

/// A read-only view of a WAL directory at the moment it was opened.
#[derive(Debug)]
pub struct WalReader {
    fs: FsRef,
    /// Segment paths with their first LSN, oldest first.
    segments: Vec<(Lsn, PathBuf)>,
    record_size_bytes_max: u32,
}

impl WalReader {
    /// Lists the segments of the WAL in `dir`.
    pub fn open(fs: FsRef, dir: &Path, record_size_bytes_max: u32) -> Result<WalReader> {
        let names = fs
            .list_dir(dir)
            .map_err(StorageError::io("list WAL directory", dir))?;
        let mut segments: Vec<(Lsn, PathBuf)> = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name).map(|lsn| (lsn, dir.join(name))))
            .collect();
        segments.sort();
        Ok(WalReader {
            fs,
            segments,
            record_size_bytes_max,
        })
    }

    /// The segment files, oldest first, with the first LSN of each.
    pub fn segments(&self) -> &[(Lsn, PathBuf)] {
        &self.segments
    }

    /// Visits every valid record with LSN >= `from`, in order, one segment in
    /// memory at a time. Stops at a torn tail of the last segment; fails on
    /// corruption or a gap between segments.
    pub fn for_each_from(
        &self,
        from: Lsn,
        mut visit: impl FnMut(Lsn, &[u8]) -> Result<()>,
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            segment_count: self.segments.len(),
            record_count: 0,
            lsn_range: None,
            torn_tail: None,
        };
        let mut expected_first: Option<Lsn> = None;
        for (index, (first_lsn, path)) in self.segments.iter().enumerate() {
            let next_first = self.segments.get(index + 1).map(|(lsn, _)| *lsn);
            if next_first.is_some_and(|next| next <= from) {
                // Every record of this segment is below `from`.
                expected_first = next_first;
                continue;
            }
            let bytes = self
                .fs
                .read(path)
                .map_err(StorageError::io("read segment", path))?;
            let is_last = next_first.is_none();
            let scan = scan_segment(&bytes, path, is_last, self.record_size_bytes_max)?;
            if scan.first_lsn != *first_lsn {
                return Err(StorageError::corruption(
                    path,
                    16,
                    format!(
                        "header says first LSN {}, file name says {first_lsn}",
                        scan.first_lsn
                    ),
                ));
            }
            if let Some(expected) = expected_first {
                if expected != scan.first_lsn {
                    return Err(StorageError::corruption(
                        path,
                        0,
                        format!(
                            "expected a segment starting at LSN {expected}: records are missing"
                        ),
                    ));
                }
            }
            expected_first = Some(scan.next_lsn());
            for record in scan.records.iter().filter(|r| r.lsn >= from) {
                visit(record.lsn, record.payload(&bytes))?;
                report.record_count += 1;
                let first = report.lsn_range.map_or(record.lsn, |(first, _)| first);
                report.lsn_range = Some((first, record.lsn));
            }
            if let SegmentEnd::Torn { offset, .. } = scan.end {
                report.torn_tail = Some((path.clone(), offset));
            }
        }
        Ok(report)
    }

    /// Every valid record with LSN >= `from`, in order.
    pub fn read_from(&self, from: Lsn) -> Result<Vec<WalRecord>> {
        let mut records = Vec::new();
        self.for_each_from(from, |lsn, payload| {
            records.push(WalRecord {
                lsn,
                payload: payload.to_vec(),
            });
            Ok(())
        })?;
        Ok(records)
    }

    /// Checks every checksum of every segment.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.for_each_from(0, |_, _| Ok(()))
    }
}
