//! The only module that touches the filesystem.
//!
//! Everything in this crate that reads or writes a file does it through the
//! [`Fs`] trait, for two reasons:
//!
//! * Crash testing. [`SimFs`] is an in-memory filesystem that remembers what
//!   was made durable (by `sync_data` on a file, `sync_dir` on a directory)
//!   and what was not. [`SimFs::crash`] throws away everything that was not,
//!   exactly as a power loss would: unsynced appends vanish (or survive as a
//!   torn prefix, with [`SimFs::crash_torn`]), and a create, rename or remove
//!   whose directory was not synced is undone.
//! * Fault injection. [`SimFs`] can fail the next write or fsync, perform a
//!   short write, or "halt" after N more mutating calls so that every step of a
//!   multi-step protocol (write, fsync, rename, fsync dir) can be interrupted.
//!
//! [`RealFs`] is the production implementation on `std::fs`. sled does its own
//! file I/O and is tested by killing real processes instead.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A filesystem: the operations the storage engine needs, nothing more.
///
/// # Correctness
///
/// Implementations must give POSIX durability semantics: data written to a
/// file is durable only after [`FsFile::sync_data`] returns `Ok`; a created,
/// renamed or removed directory entry is durable only after [`Fs::sync_dir`]
/// on its parent returns `Ok`. Callers must not assume more.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the regular files directly inside `path`, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for appending (and reading from its start).
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading from its start.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Reads a whole file into memory.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut file = self.open_read(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// An open file. Reads go forward from the start; writes always append.
pub trait FsFile: Read + Send + fmt::Debug {
    /// Appends all of `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len_bytes`; later writes append from there.
    fn truncate(&mut self, len_bytes: u64) -> io::Result<()>;
    /// The file's current length.
    fn len_bytes(&self) -> io::Result<u64>;
}

/// Shared handle to a filesystem implementation.
pub type FsRef = Arc<dyn Fs>;

/// Creates `path` and its missing parents, and fsyncs the parent of every
/// directory it created, so the new directories survive power loss (a
/// directory entry is durable only once its parent is synced).
pub fn create_dir_all_durable(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && fs.list_dir(dir).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(path)?;
    // Children before parents, so each sync covers an entry that exists.
    for created in missing {
        // The root has no parent to sync; a relative path's parent is ".".
        let Some(parent) = created.parent() else {
            continue;
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        fs.sync_dir(parent)?;
    }
    Ok(())
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl RealFs {
    /// A shareable handle to the real filesystem.
    pub fn shared() -> FsRef {
        Arc::new(RealFs)
    }
}

#[derive(Debug)]
struct RealFile(File);

impl Read for RealFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl FsFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.0, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        // Files are opened with O_APPEND, so later writes land at the new end.
        self.0.set_len(len_bytes)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(0)?;
        Ok(Box::new(RealFile(file)))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(
            OpenOptions::new().read(true).append(true).open(path)?,
        )))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// A fault to inject into the next matching [`SimFs`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next file write fails and writes nothing.
    WriteError,
    /// The next file write stores only its first `keep_bytes` bytes, then fails
    /// (a disk filling up mid-write).
    ShortWrite {
        /// How many bytes of the write reach the file.
        keep_bytes: usize,
    },
    /// The next `sync_data` fails. The data stays in the (simulated) page cache
    /// but is not durable.
    SyncError,
}

type InodeId = u64;

#[derive(Debug, Default)]
struct Inode {
    /// What a read sees now (the page cache).
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<String, InodeId>,
    durable: BTreeMap<String, InodeId>,
}

#[derive(Debug, Default)]
struct SimState {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    /// Bumped by every crash; handles from an older generation are dead.
    generation: u64,
    /// Mutating calls allowed before the filesystem halts, if set.
    ops_until_halt: Option<u64>,
    halted: bool,
    /// Mutating calls performed so far (for choosing a halt point).
    mutating_ops: u64,
    pending_write_fault: Option<Fault>,
    pending_sync_fault: bool,
}

impl SimState {
    /// Accounts for one mutating call; fails if the filesystem has halted.
    fn begin_mutation(&mut self) -> io::Result<()> {
        if self.halted {
            return Err(sim_error("simulated filesystem halted"));
        }
        if let Some(left) = self.ops_until_halt.as_mut() {
            if *left == 0 {
                self.halted = true;
                return Err(sim_error("simulated filesystem halted"));
            }
            *left -= 1;
        }
        self.mutating_ops += 1;
        Ok(())
    }

    fn check_alive(&self, generation: u64) -> io::Result<()> {
        if self.halted {
            return Err(sim_error("simulated filesystem halted"));
        }
        if generation != self.generation {
            return Err(sim_error("file handle opened before a simulated crash"));
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> io::Result<InodeId> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(dir)
            .and_then(|d| d.live.get(name))
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            )
        })
    }

    fn inode_mut(&mut self, id: InodeId) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| sim_error("dangling inode"))
    }
}

fn sim_error(msg: &str) -> io::Error {
    io::Error::other(msg.to_string())
}

fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let dir = path
        .parent()
        .ok_or_else(|| sim_error("path has no parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| sim_error("path has no UTF-8 file name"))?;
    Ok((dir, name))
}

/// In-memory filesystem with a power-loss model and fault injection; see the
/// module docs. Cloning gives another handle to the same filesystem.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

impl SimFs {
    /// An empty filesystem.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// This filesystem as a shareable [`FsRef`].
    pub fn shared(&self) -> FsRef {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock can only come from a bug in this
        // module's own bookkeeping; the state is still the best we have.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulates power loss: every file reverts to its durable contents, every
    /// directory to its durable entries, open handles die, faults are cleared.
    pub fn crash(&self) {
        self.crash_keeping(|_, _| 0);
    }

    /// Like [`SimFs::crash`], but for each file whose unsynced change is a
    /// plain append, a prefix of the unsynced bytes survives: `keep(inode,
    /// unsynced_len)` says how many. This models torn writes.
    pub fn crash_keeping(&self, mut keep: impl FnMut(u64, usize) -> usize) {
        let mut state = self.lock();
        for (id, inode) in state.inodes.iter_mut() {
            let kept = if inode.data.len() > inode.durable.len()
                && inode.data.starts_with(&inode.durable)
            {
                let unsynced = inode.data.len() - inode.durable.len();
                keep(*id, unsynced).min(unsynced)
            } else {
                0
            };
            let new_len = inode.durable.len() + kept;
            if kept > 0 {
                inode.data.truncate(new_len);
            } else {
                inode.data = inode.durable.clone();
            }
            inode.durable = inode.data.clone();
        }
        for dir in state.dirs.values_mut() {
            dir.live = dir.durable.clone();
        }
        state.generation += 1;
        state.halted = false;
        state.ops_until_halt = None;
        state.pending_write_fault = None;
        state.pending_sync_fault = false;
    }

    /// Simulates power loss where each file keeps a pseudo-random prefix of
    /// its unsynced appended bytes, chosen from `seed`.
    pub fn crash_torn(&self, seed: u64) {
        let mut x = seed | 1;
        self.crash_keeping(|_, unsynced| {
            // xorshift64: deterministic, no dependency on a RNG crate.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            usize::try_from(x % (unsynced as u64 + 1)).unwrap_or(0)
        });
    }

    /// Injects a fault into the next write (for write faults) or the next
    /// `sync_data` (for [`Fault::SyncError`]).
    pub fn inject(&self, fault: Fault) {
        let mut state = self.lock();
        match fault {
            Fault::SyncError => state.pending_sync_fault = true,
            Fault::WriteError | Fault::ShortWrite { .. } => state.pending_write_fault = Some(fault),
        }
    }

    /// After `ops` more mutating calls (create, write, sync, truncate, rename,
    /// remove, sync_dir, create_dir) succeed, every later call fails until the
    /// next [`SimFs::crash`]: the process "died" at that point.
    pub fn halt_after(&self, ops: u64) {
        self.lock().ops_until_halt = Some(ops);
    }

    /// Whether a [`SimFs::halt_after`] point has been reached.
    pub fn halted(&self) -> bool {
        self.lock().halted
    }

    /// Mutating calls performed so far; lets a test enumerate halt points.
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Overwrites one byte of a file in place, durably (bit rot).
    pub fn corrupt_byte(&self, path: &Path, offset: usize, xor: u8) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.lookup(path)?;
        let inode = state.inode_mut(id)?;
        for bytes in [&mut inode.data, &mut inode.durable] {
            let byte = bytes
                .get_mut(offset)
                .ok_or_else(|| sim_error("offset past end"))?;
            *byte ^= xor;
        }
        Ok(())
    }

    /// Cuts a file to `len_bytes`, durably.
    pub fn truncate_durably(&self, path: &Path, len_bytes: usize) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.lookup(path)?;
        let inode = state.inode_mut(id)?;
        inode.data.truncate(len_bytes);
        inode.durable.truncate(len_bytes);
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.lock();
        let id = if create {
            state.begin_mutation()?;
            let (dir, name) = split(path)?;
            let id = state.next_inode;
            state.next_inode += 1;
            state.inodes.insert(id, Inode::default());
            // Truncating an existing file replaces it with a fresh inode; the
            // old contents stay reachable through the durable directory entry,
            // which is what a crash before sync_dir would show.
            state.dir_mut(dir)?.live.insert(name.to_string(), id);
            id
        } else {
            if state.halted {
                return Err(sim_error("simulated filesystem halted"));
            }
            state.lookup(path)?
        };
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: id,
            generation: state.generation,
            read_pos: 0,
        }))
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_mutation()?;
        // Directories are durable as soon as they exist: the engine creates
        // them once at startup, before anything depends on their durability.
        for ancestor in path.ancestors() {
            state.dirs.entry(ancestor.to_path_buf()).or_default();
        }
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if state.halted {
            return Err(sim_error("simulated filesystem halted"));
        }
        let dir = state.dirs.get(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", path.display()),
            )
        })?;
        Ok(dir.live.keys().cloned().collect())
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, true)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, false)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, false)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_mutation()?;
        let (dir, name) = split(path)?;
        state
            .dir_mut(dir)?
            .live
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_mutation()?;
        let id = state.lookup(from)?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        state.dir_mut(from_dir)?.live.remove(from_name);
        state.dir_mut(to_dir)?.live.insert(to_name.to_string(), id);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_mutation()?;
        let dir = state.dir_mut(path)?;
        dir.durable = dir.live.clone();
        Ok(())
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: InodeId,
    generation: u64,
    read_pos: usize,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Read for SimFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = self.lock();
        state.check_alive(self.generation)?;
        let inode = state
            .inodes
            .get(&self.inode)
            .ok_or_else(|| sim_error("dangling inode"))?;
        let available = inode.data.get(self.read_pos..).unwrap_or(&[]);
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        drop(state);
        self.read_pos += n;
        Ok(n)
    }
}

impl FsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive(self.generation)?;
        state.begin_mutation()?;
        let fault = state.pending_write_fault.take();
        let inode = state.inode_mut(self.inode)?;
        match fault {
            None => {
                inode.data.extend_from_slice(buf);
                Ok(())
            }
            Some(Fault::ShortWrite { keep_bytes }) => {
                inode
                    .data
                    .extend_from_slice(&buf[..keep_bytes.min(buf.len())]);
                Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected short write",
                ))
            }
            Some(_) => Err(sim_error("injected write error")),
        }
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive(self.generation)?;
        state.begin_mutation()?;
        if std::mem::take(&mut state.pending_sync_fault) {
            return Err(sim_error("injected fsync error"));
        }
        let inode = state.inode_mut(self.inode)?;
        inode.durable = inode.data.clone();
        Ok(())
    }
    fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive(self.generation)?;
        state.begin_mutation()?;
        let len = usize::try_from(len_bytes).map_err(|_| sim_error("length overflows usize"))?;
        state.inode_mut(self.inode)?.data.truncate(len);
        Ok(())
    }
    fn len_bytes(&self) -> io::Result<u64> {
        let state = self.lock();
        state.check_alive(self.generation)?;
        let inode = state
            .inodes
            .get(&self.inode)
            .ok_or_else(|| sim_error("dangling inode"))?;
        Ok(inode.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_names(fs: &SimFs, dir: &str) -> Vec<String> {
        fs.list_dir(Path::new(dir)).unwrap()
    }

    /// A file in `/d` whose contents and directory entry are both durable.
    fn durable_file(fs: &SimFs, name: &str, contents: &[u8]) -> Box<dyn FsFile> {
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut file = fs.create(&Path::new("/d").join(name)).unwrap();
        file.write_all(contents).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        file
    }

    #[test]
    fn crash_drops_unsynced_data_and_entries() {
        let fs = SimFs::new();
        let mut f = durable_file(&fs, "a", b"durable");
        f.write_all(b" lost").unwrap();
        let _g = fs.create(Path::new("/d/b")).unwrap(); // entry never synced
        fs.crash();
        assert_eq!(file_names(&fs, "/d"), vec!["a".to_string()]);
        assert_eq!(fs.read(Path::new("/d/a")).unwrap(), b"durable");
        assert!(
            f.write_all(b"x").is_err(),
            "handles from before the crash are dead"
        );
    }

    #[test]
    fn created_directories_survive_a_crash_only_when_made_durable() {
        let fs = SimFs::new();
        create_dir_all_durable(&fs, Path::new("/data/node/wal")).unwrap();
        fs.create(Path::new("/data/node/wal/f")).unwrap();
        fs.sync_dir(Path::new("/data/node/wal")).unwrap();
        fs.crash();
        assert_eq!(file_names(&fs, "/data/node/wal"), vec!["f".to_string()]);
        // Already there: nothing to create, nothing to sync, no error.
        create_dir_all_durable(&fs, Path::new("/data/node/wal")).unwrap();
    }

    #[test]
    fn rename_is_undone_without_dir_sync() {
        let fs = SimFs::new();
        durable_file(&fs, "tmp", b"x");
        fs.rename(Path::new("/d/tmp"), Path::new("/d/final"))
            .unwrap();
        fs.crash();
        assert_eq!(file_names(&fs, "/d"), vec!["tmp".to_string()]);
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_appends() {
        let fs = SimFs::new();
        let mut f = durable_file(&fs, "a", b"abc");
        f.write_all(b"defgh").unwrap();
        fs.crash_keeping(|_, unsynced| {
            assert_eq!(unsynced, 5);
            2
        });
        assert_eq!(fs.read(Path::new("/d/a")).unwrap(), b"abcde");
    }

    #[test]
    fn faults_fire_once_and_halt_stops_everything() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/a")).unwrap();
        fs.inject(Fault::ShortWrite { keep_bytes: 2 });
        assert!(f.write_all(b"hello").is_err());
        assert_eq!(f.len_bytes().unwrap(), 2);
        f.write_all(b"ok").unwrap();
        fs.inject(Fault::SyncError);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        fs.halt_after(1);
        f.write_all(b"1").unwrap();
        assert!(f.write_all(b"2").is_err());
        assert!(fs.halted());
        assert!(fs.list_dir(Path::new("/d")).is_err());
    }
}
