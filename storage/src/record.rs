//! An append-only file of records: `u32 length | u32 crc32 | bytes` (big endian), appended
//! in batches with one write and one `fdatasync` each.
//!
//! At open every record is read back and checked. A torn record at the end (a crash in the
//! middle of an append, before the batch was acknowledged) is cut off, but only beyond the
//! records the caller says were handed out: damage below that is [`Error::Corrupted`] and
//! the file is left untouched for an operator to inspect.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use crate::{Error, Result};

const HEADER: usize = 8;

/// The record file. One writer appends (callers serialise appends); any number of readers
/// read records by index.
pub struct RecordFile {
    writer: Mutex<File>,
    reader: File,
    max_record_len: usize,
    /// (offset of the bytes, length) per record, and the end of the last one.
    index: RwLock<(Vec<(u64, u32)>, u64)>,
    /// Set when a failed batch could not be taken back: the file may then hold bytes the
    /// index does not know, so nothing more is appended until a restart re-reads it.
    broken: AtomicBool,
}

impl RecordFile {
    /// Opens (or creates) the file at `path`, calling `visit(index, bytes)` for every intact
    /// record in order. `handed_out` records must be intact; beyond them a torn or damaged
    /// tail is cut off. A `visit` error stops the open.
    pub fn open(
        path: &Path,
        max_record_len: usize,
        handed_out: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<Self> {
        let mut writer = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let reader = File::open(path)?;
        let file_len = reader.metadata()?.len();
        let mut offsets = Vec::new();
        let mut pos = 0u64;
        {
            let mut r = BufReader::with_capacity(1 << 20, &reader);
            let mut header = [0u8; HEADER];
            let mut buf = Vec::new();
            loop {
                if r.read_exact(&mut header).is_err() {
                    break;
                }
                let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
                let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
                let crc = u32::from_be_bytes([c0, c1, c2, c3]);
                if len > max_record_len {
                    break;
                }
                buf.resize(len, 0);
                if r.read_exact(&mut buf).is_err() || crc32fast::hash(&buf) != crc {
                    break;
                }
                visit(offsets.len() as u64, &buf)?;
                offsets.push((pos + HEADER as u64, len as u32));
                pos += (HEADER + len) as u64;
            }
        }
        let intact = offsets.len() as u64;
        if intact < handed_out {
            return Err(Error::Corrupted(format!(
                "{} reads as {intact} intact records (of {file_len} bytes, {pos} readable) but \
                 {handed_out} were handed out; the file was left untouched",
                path.display()
            )));
        }
        if pos < file_len {
            tracing::warn!(
                kept = pos,
                file_len,
                path = %path.display(),
                "cutting a torn record off the end of the file"
            );
            writer.set_len(pos)?;
            writer.sync_all()?;
        }
        writer.flush()?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader,
            max_record_len,
            index: RwLock::new((offsets, pos)),
            broken: AtomicBool::new(false),
        })
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, (Vec<(u64, u32)>, u64)> {
        // A poisoned lock means a panic mid-update; the file is append-only and still valid.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of durable records.
    pub fn len(&self) -> u64 {
        self.index().0.len() as u64
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of record `index`.
    pub fn read(&self, index: u64) -> Result<Vec<u8>> {
        let (off, len) = {
            let idx = self.index();
            *idx.0.get(index as usize).ok_or_else(|| {
                Error::OutOfRange(format!("record {index} beyond the file ({})", idx.0.len()))
            })?
        };
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// `len` bytes of record `index` from byte `start` of it: a part of a record read
    /// without reading the rest (its CRC, checked at open, is not checked again: the
    /// caller checks what it reads, as for [`RecordFile::read`]).
    pub fn read_range(&self, index: u64, start: u64, len: u64) -> Result<Vec<u8>> {
        let (off, rec_len) = {
            let idx = self.index();
            *idx.0.get(index as usize).ok_or_else(|| {
                Error::OutOfRange(format!("record {index} beyond the file ({})", idx.0.len()))
            })?
        };
        if start
            .checked_add(len)
            .is_none_or(|end| end > u64::from(rec_len))
        {
            return Err(Error::OutOfRange(format!(
                "bytes {start}..+{len} beyond record {index} ({rec_len} bytes)"
            )));
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.reader.read_exact_at(&mut buf, off + start)?;
        Ok(buf)
    }

    /// Appends `records` durably: one write, one `fdatasync`. On failure nothing of the
    /// batch stays in the file. Returns the index of the first.
    pub fn append(&self, records: &[Vec<u8>]) -> Result<u64> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.check_usable()?;
        let (first, end) = {
            let idx = self.index();
            (idx.0.len() as u64, idx.1)
        };
        let mut buf = Vec::with_capacity(records.iter().map(|e| e.len() + HEADER).sum());
        let mut offsets = Vec::with_capacity(records.len());
        let mut pos = end;
        for r in records {
            if r.len() > self.max_record_len {
                return Err(Error::TooLarge {
                    field: "record",
                    len: r.len(),
                    limit: self.max_record_len,
                });
            }
            let len = u32::try_from(r.len()).map_err(|_| Error::TooLarge {
                field: "record",
                len: r.len(),
                limit: u32::MAX as usize,
            })?;
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&crc32fast::hash(r).to_be_bytes());
            buf.extend_from_slice(r);
            offsets.push((pos + HEADER as u64, len));
            pos += (HEADER + r.len()) as u64;
        }
        if let Err(e) = writer.write_all(&buf).and_then(|()| writer.sync_data()) {
            // Leave no partial batch behind: no reader saw it and no one was told.
            if let Err(t) = writer.set_len(end) {
                self.broken.store(true, Ordering::SeqCst);
                tracing::error!(error = %t, "cannot cut a failed batch off the record file");
            }
            return Err(e.into());
        }
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        idx.0.extend(offsets);
        idx.1 = pos;
        Ok(first)
    }
}

impl RecordFile {
    /// Removes records `first..` again, durably: for a caller whose batch failed after the
    /// append (its checkpoint could not be written), so that no one was told of it and
    /// nothing of it remains.
    pub fn truncate(&self, first: u64) -> Result<()> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        let Some(&(off, _)) = idx.0.get(first as usize) else {
            return Ok(());
        };
        let end = off - HEADER as u64;
        if let Err(e) = writer.set_len(end).and_then(|()| writer.sync_all()) {
            self.broken.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        idx.0.truncate(first as usize);
        idx.1 = end;
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Error::Corrupted(
                "a failed batch could not be taken back out of the record file; restart to re-read it"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, handed_out: u64) -> Result<(RecordFile, Vec<Vec<u8>>)> {
        let mut seen = Vec::new();
        let f = RecordFile::open(path, 1024, handed_out, |i, b| {
            assert_eq!(i as usize, seen.len());
            seen.push(b.to_vec());
            Ok(())
        })?;
        Ok((f, seen))
    }

    #[test]
    fn appends_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let (f, seen) = open(&path, 0).unwrap();
        assert!(seen.is_empty() && f.is_empty());
        assert_eq!(f.append(&[b"a".to_vec(), b"bb".to_vec()]).unwrap(), 0);
        assert_eq!(f.append(&[b"".to_vec()]).unwrap(), 2);
        assert_eq!(f.read(1).unwrap(), b"bb");
        assert!(matches!(f.read(3), Err(Error::OutOfRange(_))));
        assert!(matches!(
            f.append(&[vec![0; 1025]]),
            Err(Error::TooLarge { .. })
        ));
        drop(f);
        let (f, seen) = open(&path, 3).unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec()]);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn a_torn_tail_is_cut_but_handed_out_records_are_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let (f, _) = open(&path, 0).unwrap();
        f.append(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        drop(f);
        let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
        raw.write_all(&[0, 0, 0, 9, 1, 2, 3, 4, b'x']).unwrap();
        drop(raw);
        let before = std::fs::read(&path).unwrap();
        // Damage below the handed-out count: refused, file untouched.
        let mut damaged = before.clone();
        damaged[10] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(open(&path, 2), Err(Error::Corrupted(m)) if m.contains("untouched")));
        assert_eq!(std::fs::read(&path).unwrap(), damaged);
        // The torn tail alone is cut.
        std::fs::write(&path, &before).unwrap();
        let (f, seen) = open(&path, 2).unwrap();
        assert_eq!(seen.len(), 2);
        assert!(std::fs::metadata(&path).unwrap().len() < before.len() as u64);
        assert_eq!(f.append(&[b"three".to_vec()]).unwrap(), 2);
        drop(f);
        assert_eq!(open(&path, 3).unwrap().1[2], b"three");
    }
}
