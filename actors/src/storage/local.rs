//! The local backend: a content-addressed directory with keys as hard links.
//!
//! ```text
//! <root>/tmp/                 writes in progress (unique names; swept when older than an hour)
//! <root>/cas/<ab>/<sha256>    one file per distinct content, named by its SHA-256
//! <root>/keys/<key>           a hard link to the cas file holding the key's content
//! ```
//!
//! # Why this shape
//! - **Dedup for free:** the same media uploaded twice, or a job retried, stores one copy.
//! - **Atomic visibility:** content is written and fsynced in `tmp/`, linked into `cas/`, then
//!   the key appears by a `rename` of a ready link, so a reader sees the old blob, the new one
//!   or nothing: never a partial file.
//! - **Read in place:** `keys/<key>` is a plain file the engine can open without a copy.
//! - **No index to corrupt:** the file system is the only state; hard links count the users of a
//!   blob.
//!
//! # Life of a blob and its races
//! A blob's inode has one name in `cas/` plus one per key. Deleting a key unlinks its name and,
//! when only one name is left, removes the `cas/` entry (found by inode number: the key name
//! does not carry the hash). Writers hold a link of their own in `tmp/` while they publish, so a
//! concurrent delete never sees the count drop to one under them.
//!
//! The deleter checks the count on the open file *after* its own unlink, so of several deletes
//! of the same content the last one always sees it. The remaining races are tolerated, never
//! lose data, and only cost deduplication or space:
//! - a delete can remove a `cas/` entry just after a writer linked a new key to it (between its
//!   check and its unlink): that key keeps its content (a hard link is the content), only later
//!   dedup misses it;
//! - a crash between steps can leave a `cas/` entry with no key, or temp files:
//!   [`LocalStore::open`] sweeps them once they are an hour old (the age guard keeps the sweep
//!   away from writes in progress in another process).
//!
//! A key cannot also be a directory of other keys here (`a` and `a/b`): that put fails with
//! [`StorageError::Conflict`]. The content type of `put_bytes` is not kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::peers::BlobPeers;
use super::{temp_sibling, unique_name, validate_key, BlobInfo, StorageError};

/// Temp files and orphan blobs younger than this are left alone by the start-up sweep: they may
/// belong to a write in progress.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Read size when hashing and copying files.
const COPY_BUFFER: usize = 1024 * 1024;

/// How often a publish step is retried when a concurrent delete removed what it needed (a cas
/// entry or a key directory) in between.
const PUBLISH_ATTEMPTS: usize = 5;

/// A local content-addressed store. Cheap to clone. Its methods block: [`super::Storage`] runs
/// them on blocking threads.
#[derive(Clone, Debug)]
pub struct LocalStore {
    dirs: Arc<Dirs>,
    /// Where missing blobs are fetched from in a cluster; shared by every clone, so peers
    /// attached after the store was handed out reach all its users.
    peers: Arc<OnceLock<Arc<BlobPeers>>>,
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    keys: PathBuf,
    cas: PathBuf,
    tmp: PathBuf,
}

impl LocalStore {
    /// Creates the layout under `root` if needed and sweeps stale leftovers.
    pub fn open(root: PathBuf) -> Result<Self, StorageError> {
        let dirs = Dirs {
            keys: root.join("keys"),
            cas: root.join("cas"),
            tmp: root.join("tmp"),
            root,
        };
        for dir in [&dirs.keys, &dirs.cas, &dirs.tmp] {
            fs::create_dir_all(dir)
                .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        }
        let store = LocalStore {
            dirs: Arc::new(dirs),
            peers: Arc::new(OnceLock::new()),
        };
        store.sweep();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.dirs.root
    }

    /// Attaches the peers missing blobs are fetched from; `false` when some were attached
    /// already (the first stay).
    pub(crate) fn attach_peers(&self, peers: Arc<BlobPeers>) -> bool {
        self.peers.set(peers).is_ok()
    }

    /// Fetches `key` from the attached peers; `Ok(false)` when none are attached or none has it.
    /// Does not look at the local copy first: callers ask after a local miss.
    pub(crate) async fn fetch_from_peers(&self, key: &str) -> Result<bool, StorageError> {
        match self.peers.get() {
            Some(peers) => peers.fetch(key, self).await,
            None => Ok(false),
        }
    }

    /// A fresh path in `tmp/` for content written from outside (a peer transfer), removed when
    /// the returned guard drops unless [`LocalStore::commit_temp`] took it.
    pub(crate) fn temp_file(&self, prefix: &str) -> TempFile {
        TempFile(self.dirs.tmp.join(unique_name(prefix)))
    }

    /// Publishes a complete file in `tmp/` (from [`LocalStore::temp_file`]) under `key`: fsynced,
    /// made read-only, then committed like any put. `sha256` and `size` must describe the
    /// file's content; the caller computed them while writing it.
    pub(crate) fn commit_temp(
        &self,
        key: &str,
        file: TempFile,
        sha256: String,
        size: u64,
    ) -> Result<BlobInfo, StorageError> {
        let context = || format!("publishing {}", file.0.display());
        File::open(&file.0)
            .and_then(|handle| handle.sync_all())
            .map_err(|e| StorageError::io(context(), e))?;
        fs::set_permissions(&file.0, fs::Permissions::from_mode(0o444))
            .map_err(|e| StorageError::io(context(), e))?;
        self.commit(key, TempBlob { file, sha256, size })
    }

    pub(crate) fn put_file(&self, key: &str, src: &Path) -> Result<BlobInfo, StorageError> {
        let mut input = File::open(src)
            .map_err(|e| StorageError::io(format!("opening {}", src.display()), e))?;
        let temp = self.write_temp(|sink| {
            let mut buffer = vec![0u8; COPY_BUFFER];
            loop {
                let read = match input.read(&mut buffer) {
                    Ok(0) => return Ok(()),
                    Ok(read) => read,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                sink.write_all(&buffer[..read])?;
            }
        })?;
        self.commit(key, temp)
    }

    pub(crate) fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<BlobInfo, StorageError> {
        let temp = self.write_temp(|sink| sink.write_all(bytes))?;
        self.commit(key, temp)
    }

    pub(crate) fn get_bytes(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let file = self.open_key(key)?;
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(format!("reading the size of {key}"), e))?
            .len();
        let too_large = |size| StorageError::TooLarge {
            key: key.to_owned(),
            size,
            limit: max_bytes,
        };
        if size > max_bytes {
            return Err(too_large(size));
        }
        // `take` guards against a blob that is bigger than its size said (it cannot change in
        // place here, but the bound must not depend on that).
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| StorageError::io(format!("reading {key}"), e))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    pub(crate) fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let mut input = self.open_key(key)?;
        let temp = TempFile(temp_sibling(dest)?);
        let context = || format!("copying {key} to {}", temp.0.display());
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.0)
            .map_err(|e| StorageError::io(context(), e))?;
        // File to file: std uses copy_file_range, so the kernel copies (or reflinks).
        let copied =
            io::copy(&mut input, &mut output).map_err(|e| StorageError::io(context(), e))?;
        output
            .sync_all()
            .map_err(|e| StorageError::io(context(), e))?;
        fs::rename(&temp.0, dest)
            .map_err(|e| StorageError::io(format!("renaming to {}", dest.display()), e))?;
        temp.disarm();
        Ok(copied)
    }

    pub(crate) fn local_path(&self, key: &str) -> Option<PathBuf> {
        validate_key(key).ok()?;
        let path = self.key_path(key);
        path.is_file().then_some(path)
    }

    pub(crate) fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match fs::symlink_metadata(self.key_path(key)) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(StorageError::io(format!("checking {key}"), e)),
        }
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.remove_key(key).map(|_| ())
    }

    pub(crate) fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let mut removed = 0;
        for key in self.list(prefix)? {
            if self.remove_key(&key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        // Start at the deepest directory the prefix names instead of walking every key.
        let (start_dir, start_rel) = match prefix.rsplit_once('/') {
            Some((dir, _)) => (self.dirs.keys.join(dir), format!("{dir}/")),
            None => (self.dirs.keys.clone(), String::new()),
        };
        let mut keys = Vec::new();
        self.walk(&start_dir, &start_rel, prefix, &mut keys)?;
        keys.sort();
        Ok(keys)
    }

    pub(crate) fn health(&self) -> Result<(), StorageError> {
        for dir in [&self.dirs.keys, &self.dirs.cas] {
            let meta = fs::metadata(dir)
                .map_err(|e| StorageError::io(format!("checking {}", dir.display()), e))?;
            if !meta.is_dir() {
                return Err(StorageError::io(
                    format!("{} is not a directory", dir.display()),
                    io::Error::from(ErrorKind::NotADirectory),
                ));
            }
        }
        // A write probe: a full or read-only disk is the likely local failure.
        let probe = TempFile(self.dirs.tmp.join(unique_name("health-")));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe.0)
            .and_then(|mut file| file.write_all(b"ok"))
            .map_err(|e| StorageError::io(format!("writing in {}", self.dirs.tmp.display()), e))
    }

    fn key_path(&self, key: &str) -> PathBuf {
        self.dirs.keys.join(key)
    }

    fn cas_path(&self, sha256: &str) -> PathBuf {
        self.dirs.cas.join(&sha256[..2]).join(sha256)
    }

    /// Opens a key's file; a missing key, or a path through another key's file, is `NotFound`.
    fn open_key(&self, key: &str) -> Result<File, StorageError> {
        let path = self.key_path(key);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(StorageError::NotFound(key.to_owned())),
            Err(e) if missing(&e) => return Err(StorageError::NotFound(key.to_owned())),
            Err(e) => return Err(StorageError::io(format!("opening {key}"), e)),
        }
        File::open(&path).map_err(|e| {
            if missing(&e) {
                StorageError::NotFound(key.to_owned())
            } else {
                StorageError::io(format!("opening {key}"), e)
            }
        })
    }

    /// Writes content to a fresh temp file through `fill`, hashing it on the way, and fsyncs it.
    fn write_temp(
        &self,
        fill: impl FnOnce(&mut HashingWriter) -> io::Result<()>,
    ) -> Result<TempBlob, StorageError> {
        let file = TempFile(self.dirs.tmp.join(unique_name("blob-")));
        let context = || format!("writing {}", file.0.display());
        let output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file.0)
            .map_err(|e| StorageError::io(context(), e))?;
        let mut sink = HashingWriter {
            file: output,
            hasher: Sha256::new(),
            size: 0,
        };
        fill(&mut sink).map_err(|e| StorageError::io(context(), e))?;
        sink.file
            .sync_all()
            .map_err(|e| StorageError::io(context(), e))?;
        // Blobs are shared by every key with the same content and read in place: read-only, so
        // a careless writer gets an error instead of changing other keys' content.
        fs::set_permissions(&file.0, fs::Permissions::from_mode(0o444))
            .map_err(|e| StorageError::io(context(), e))?;
        Ok(TempBlob {
            sha256: hex::encode(sink.hasher.finalize()),
            size: sink.size,
            file,
        })
    }

    /// Makes a written temp blob the content of `key`.
    fn commit(&self, key: &str, temp: TempBlob) -> Result<BlobInfo, StorageError> {
        let link = self.link_content(&temp)?;
        // From here the content is held by `link`; the temp name is no longer needed.
        drop(temp.file);
        match self.publish_key(key, &link.0) {
            Ok(replaced) => {
                link.disarm();
                if let Some(previous) = replaced {
                    self.release(previous);
                }
            }
            Err(e) => {
                // Do not leave a cas entry only this failed put wanted.
                let held = File::open(&link.0).ok();
                drop(link);
                if let Some(file) = held {
                    self.release(file);
                }
                return Err(e);
            }
        }
        Ok(BlobInfo {
            key: key.to_owned(),
            size: temp.size,
            sha256: temp.sha256,
        })
    }

    /// Returns a new link in `tmp/` to the cas entry for the temp blob's content, reusing an
    /// existing entry (dedup) or publishing the temp file as the entry.
    fn link_content(&self, temp: &TempBlob) -> Result<TempFile, StorageError> {
        let cas = self.cas_path(&temp.sha256);
        let link = TempFile(self.dirs.tmp.join(unique_name("link-")));
        let context = |what: &str| format!("{what} {}", cas.display());
        for _ in 0..PUBLISH_ATTEMPTS {
            match fs::hard_link(&cas, &link.0) {
                Ok(()) => return Ok(link),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(context("linking"), e)),
            }
            let shard = self.dirs.cas.join(&temp.sha256[..2]);
            fs::create_dir_all(&shard).map_err(|e| StorageError::io(context("creating"), e))?;
            // A link, not a rename: `hard_link` fails if a concurrent writer published the
            // same content first (then the loop reuses theirs), and the temp name keeps the
            // inode's count above one while this writer works.
            match fs::hard_link(&temp.file.0, &cas) {
                Ok(()) => {
                    sync_dir(&shard)?;
                    fs::hard_link(&temp.file.0, &link.0)
                        .map_err(|e| StorageError::io(context("linking"), e))?;
                    return Ok(link);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StorageError::io(context("publishing"), e)),
            }
        }
        Err(StorageError::io(
            context("publishing"),
            io::Error::other("the cas entry kept vanishing under concurrent deletes"),
        ))
    }

    /// Renames a ready link to `keys/<key>`, atomically replacing an older blob. Returns the
    /// replaced blob's file, open, so its last link can be released.
    fn publish_key(&self, key: &str, link: &Path) -> Result<Option<File>, StorageError> {
        let dest = self.key_path(key);
        let conflict = || StorageError::Conflict(key.to_owned());
        let previous = match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_file() => File::open(&dest).ok(),
            Ok(_) => return Err(conflict()),
            Err(_) => None,
        };
        let parent = dest.parent().unwrap_or(&self.dirs.keys).to_owned();
        for attempt in 1..=PUBLISH_ATTEMPTS {
            if let Err(e) = fs::create_dir_all(&parent) {
                return Err(match e.kind() {
                    ErrorKind::AlreadyExists | ErrorKind::NotADirectory => conflict(),
                    _ => StorageError::io(format!("creating {}", parent.display()), e),
                });
            }
            match fs::rename(link, &dest) {
                Ok(()) => {
                    sync_dir(&parent)?;
                    return Ok(previous);
                }
                // A delete pruned the (empty) directory between the two calls: recreate it.
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < PUBLISH_ATTEMPTS => {}
                Err(e) => {
                    return Err(match e.kind() {
                        ErrorKind::IsADirectory
                        | ErrorKind::NotADirectory
                        | ErrorKind::DirectoryNotEmpty => conflict(),
                        _ => StorageError::io(format!("publishing {key}"), e),
                    })
                }
            }
        }
        Err(StorageError::io(
            format!("publishing {key}"),
            io::Error::from(ErrorKind::NotFound),
        ))
    }

    /// Unlinks a key; returns whether it existed.
    fn remove_key(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.key_path(key);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(false),
            Err(e) if missing(&e) => return Ok(false),
            Err(e) => return Err(StorageError::io(format!("deleting {key}"), e)),
        }
        // Keep the inode open across the unlink: its link count afterwards tells whether the
        // cas entry is the last name left.
        let held = File::open(&path).ok();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if missing(&e) => return Ok(false),
            Err(e) => return Err(StorageError::io(format!("deleting {key}"), e)),
        }
        if let Some(file) = held {
            self.release(file);
        }
        self.prune_dirs(&path);
        Ok(true)
    }

    /// Removes a blob's cas entry when it is the blob's last name (the caller just removed a
    /// key link and holds the file open). Best effort: a failure leaves an orphan for the sweep.
    fn release(&self, file: File) {
        let Ok(meta) = file.metadata() else { return };
        if meta.nlink() != 1 {
            return;
        }
        let Some(cas) = self.find_cas_by_inode(meta.ino()) else {
            return;
        };
        // Re-check on the entry itself: a writer may have linked a key to it meanwhile.
        if let Ok(now) = fs::symlink_metadata(&cas) {
            if now.ino() == meta.ino() && now.dev() == meta.dev() && now.nlink() == 1 {
                match fs::remove_file(&cas) {
                    // Another delete of the same content got there first.
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        tracing::warn!(path = %cas.display(), error = %e, "could not remove an unused blob");
                    }
                    _ => {}
                }
            }
        }
    }

    /// The cas entry with this inode. A key's name does not carry its hash, so this scans the
    /// shard directories' entries (names and inode numbers only, no stat): cheap for the
    /// thousands of blobs a node keeps, and only needed when a blob's last key goes.
    fn find_cas_by_inode(&self, ino: u64) -> Option<PathBuf> {
        let shards = fs::read_dir(&self.dirs.cas).ok()?;
        for shard in shards.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            if let Some(entry) = entries.flatten().find(|entry| entry.ino() == ino) {
                return Some(entry.path());
            }
        }
        None
    }

    /// Removes the key directories a delete left empty, up to `keys/`.
    fn prune_dirs(&self, removed: &Path) {
        let mut dir = removed.parent();
        while let Some(current) = dir {
            if current == self.dirs.keys || !current.starts_with(&self.dirs.keys) {
                break;
            }
            // Fails (and stops) on the first non-empty directory.
            if fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        keys: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if missing(&e) => return Ok(()),
            Err(e) => return Err(StorageError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| StorageError::io(format!("listing {}", dir.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let key = format!("{rel}{name}");
            if kind.is_dir() {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    self.walk(&entry.path(), &sub, prefix, keys)?;
                }
            } else if kind.is_file() && key.starts_with(prefix) && validate_key(&key).is_ok() {
                keys.push(key);
            }
        }
        Ok(())
    }

    /// Removes temp files and key-less cas entries older than [`STALE_AFTER`]: what a crash
    /// (or an interleaving of deletes) left behind.
    fn sweep(&self) {
        let mut removed = 0usize;
        for entry in read_dir_or_empty(&self.dirs.tmp) {
            if is_stale(&entry, |_| true) && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        for shard in read_dir_or_empty(&self.dirs.cas) {
            for entry in read_dir_or_empty(&shard.path()) {
                if is_stale(&entry, |meta| meta.nlink() == 1)
                    && fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(root = %self.dirs.root.display(), removed, "swept stale storage leftovers");
        }
    }
}

fn read_dir_or_empty(dir: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(dir).into_iter().flatten().flatten()
}

/// A plain file, older than [`STALE_AFTER`], for which `extra` holds.
fn is_stale(entry: &fs::DirEntry, extra: impl Fn(&fs::Metadata) -> bool) -> bool {
    let Ok(meta) = entry.metadata() else {
        return false;
    };
    let old = meta
        .modified()
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > STALE_AFTER);
    meta.is_file() && old && extra(&meta)
}

/// Missing, including "a path component is a file" (a key under another key's name).
fn missing(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Makes a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| StorageError::io(format!("syncing {}", dir.display()), e))
}

/// Hashes and counts what it writes.
struct HashingWriter {
    file: File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A path removed on drop unless disarmed: temp files never outlive a failed operation.
#[derive(Debug)]
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Content written to `tmp/`, hashed, not yet published.
struct TempBlob {
    file: TempFile,
    sha256: String,
    size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn cas_files(store: &LocalStore) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = read_dir_or_empty(&store.dirs.cas)
            .flat_map(|shard| read_dir_or_empty(&shard.path()).map(|e| e.path()))
            .collect();
        files.sort();
        files
    }

    fn tmp_files(store: &LocalStore) -> Vec<PathBuf> {
        read_dir_or_empty(&store.dirs.tmp)
            .map(|e| e.path())
            .collect()
    }

    #[test]
    fn put_hashes_and_lays_out_the_blob() {
        let (_dir, store) = store();
        let info = store.put_bytes("jobs/1/transcript.json", b"{}").unwrap();
        assert_eq!(info.size, 2);
        assert_eq!(info.sha256, sha(b"{}"));
        let cas = store.cas_path(&info.sha256);
        assert_eq!(cas_files(&store), vec![cas.clone()]);
        let key = store.key_path("jobs/1/transcript.json");
        assert_eq!(fs::read(&key).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&key).unwrap().ino(),
            fs::metadata(&cas).unwrap().ino()
        );
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(
            tmp_files(&store).is_empty(),
            "temp files left: {:?}",
            tmp_files(&store)
        );
    }

    #[test]
    fn same_content_shares_one_cas_file() {
        let (dir, store) = store();
        let src = dir.path().join("media.bin");
        fs::write(&src, vec![7u8; 3 * COPY_BUFFER + 5]).unwrap();
        let a = store.put_file("jobs/a/media", &src).unwrap();
        let b = store.put_file("jobs/b/media", &src).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.size, 3 * COPY_BUFFER as u64 + 5);
        let cas = cas_files(&store);
        assert_eq!(cas.len(), 1);
        // cas entry + two keys
        assert_eq!(fs::metadata(&cas[0]).unwrap().nlink(), 3);
        store.put_bytes("jobs/c/other", b"different").unwrap();
        assert_eq!(cas_files(&store).len(), 2);
    }

    #[test]
    fn delete_keeps_shared_content_until_the_last_key() {
        let (_dir, store) = store();
        let info = store.put_bytes("a/1", b"shared").unwrap();
        store.put_bytes("b/2", b"shared").unwrap();
        let cas = store.cas_path(&info.sha256);

        store.delete("a/1").unwrap();
        assert!(!store.exists("a/1").unwrap());
        assert!(cas.exists(), "content still used by b/2");
        assert_eq!(store.get_bytes("b/2", 100).unwrap(), b"shared");
        assert!(
            !store.dirs.keys.join("a").exists(),
            "empty key directory pruned"
        );

        store.delete("b/2").unwrap();
        assert!(!cas.exists(), "last key gone, content removed");
        assert!(cas_files(&store).is_empty());
        // Idempotent.
        store.delete("b/2").unwrap();
        store.delete("never/was").unwrap();
    }

    #[test]
    fn overwriting_a_key_releases_the_old_content() {
        let (_dir, store) = store();
        let old = store.put_bytes("k", b"old").unwrap();
        let new = store.put_bytes("k", b"new").unwrap();
        assert_eq!(store.get_bytes("k", 10).unwrap(), b"new");
        assert!(!store.cas_path(&old.sha256).exists());
        assert_eq!(cas_files(&store), vec![store.cas_path(&new.sha256)]);
        // Same content again: nothing to release, one entry.
        store.put_bytes("k", b"new").unwrap();
        assert_eq!(cas_files(&store).len(), 1);
    }

    #[test]
    fn a_reader_never_sees_a_partial_blob() {
        let (_dir, store) = store();
        let key_path = store.key_path("jobs/x/media");
        // While the content is written the key does not exist.
        let temp = store
            .write_temp(|sink| {
                sink.write_all(b"half")?;
                assert!(!key_path.exists());
                sink.write_all(b" and the rest")
            })
            .unwrap();
        assert!(!key_path.exists(), "visible before commit");
        store.commit("jobs/x/media", temp).unwrap();
        assert_eq!(fs::read(&key_path).unwrap(), b"half and the rest");

        // A replacement swaps the whole file: a reader holding the old one keeps reading it.
        let mut reader = File::open(&key_path).unwrap();
        store.put_bytes("jobs/x/media", b"replacement").unwrap();
        let mut old = String::new();
        reader.read_to_string(&mut old).unwrap();
        assert_eq!(old, "half and the rest");
        assert_eq!(fs::read(&key_path).unwrap(), b"replacement");
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let (_dir, store) = store();
        let err = store
            .write_temp(|sink| {
                sink.write_all(b"partial")?;
                Err(io::Error::other("source went away"))
            })
            .err()
            .unwrap();
        assert_eq!(err.code(), "storage.io");
        assert!(tmp_files(&store).is_empty());
        assert!(cas_files(&store).is_empty());
        let missing = store
            .put_file("k", Path::new("/nonexistent/file"))
            .unwrap_err();
        assert_eq!(missing.code(), "storage.io");
        assert!(!store.exists("k").unwrap());
    }

    #[test]
    fn get_bytes_limits_and_missing() {
        let (_dir, store) = store();
        store.put_bytes("k", &[1u8; 100]).unwrap();
        assert_eq!(store.get_bytes("k", 100).unwrap().len(), 100);
        let err = store.get_bytes("k", 99).unwrap_err();
        assert!(matches!(
            err,
            StorageError::TooLarge {
                size: 100,
                limit: 99,
                ..
            }
        ));
        assert_eq!(err.code(), "storage.too_large");
        let err = store.get_bytes("nope", 10).unwrap_err();
        assert!(matches!(err, StorageError::NotFound(ref k) if k == "nope"));
        // A path through another key's file is just missing.
        assert!(matches!(
            store.get_bytes("k/child", 10),
            Err(StorageError::NotFound(_))
        ));
        assert!(!store.exists("k/child").unwrap());
    }

    #[test]
    fn key_and_directory_collide() {
        let (_dir, store) = store();
        store.put_bytes("a/b", b"1").unwrap();
        assert_eq!(
            store.put_bytes("a", b"2").unwrap_err().code(),
            "storage.conflict"
        );
        store.put_bytes("c", b"3").unwrap();
        assert_eq!(
            store.put_bytes("c/d", b"4").unwrap_err().code(),
            "storage.conflict"
        );
        // Nothing was left behind by the failures.
        assert!(tmp_files(&store).is_empty());
        assert_eq!(cas_files(&store).len(), 2, "only the contents of a/b and c");
        assert_eq!(store.list("").unwrap(), vec!["a/b", "c"]);
    }

    #[test]
    fn list_walks_only_matching_directories() {
        let (_dir, store) = store();
        for key in [
            "jobs/1/media",
            "jobs/1/t.json",
            "jobs/10/media",
            "jobs/2/media",
            "up/x",
        ] {
            store.put_bytes(key, key.as_bytes()).unwrap();
        }
        assert_eq!(
            store.list("jobs/1/").unwrap(),
            vec!["jobs/1/media", "jobs/1/t.json"]
        );
        assert_eq!(
            store.list("jobs/1").unwrap(),
            vec!["jobs/1/media", "jobs/1/t.json", "jobs/10/media"]
        );
        assert_eq!(store.list("jobs/1/t").unwrap(), vec!["jobs/1/t.json"]);
        assert_eq!(store.list("").unwrap().len(), 5);
        assert!(store.list("none/").unwrap().is_empty());
        assert_eq!(store.delete_prefix("jobs/1/").unwrap(), 2);
        assert_eq!(
            store.list("").unwrap(),
            vec!["jobs/10/media", "jobs/2/media", "up/x"]
        );
    }

    #[test]
    fn orphans_and_stale_temps_are_swept_at_open() {
        let (dir, store) = store();
        let kept = store.put_bytes("k", b"kept").unwrap();
        // An orphan cas entry and a temp file from a "crash", dated two hours back.
        let orphan = store.cas_path(&sha(b"orphan"));
        fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs::write(&orphan, b"orphan").unwrap();
        let stale_tmp = store.dirs.tmp.join("blob-crashed");
        fs::write(&stale_tmp, b"partial").unwrap();
        let fresh_tmp = store.dirs.tmp.join("blob-in-progress");
        fs::write(&fresh_tmp, b"partial").unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [&orphan, &stale_tmp, &store.cas_path(&kept.sha256)] {
            // Read-only handles: blobs are mode 0444; changing times needs ownership only.
            File::open(path)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }

        let reopened = LocalStore::open(dir.path().join("store")).unwrap();
        assert!(!orphan.exists());
        assert!(!stale_tmp.exists());
        assert!(
            fresh_tmp.exists(),
            "a recent temp may be a write in progress"
        );
        assert!(
            reopened.cas_path(&kept.sha256).exists(),
            "content with a key is kept"
        );
        assert_eq!(reopened.get_bytes("k", 10).unwrap(), b"kept");
    }

    #[test]
    fn get_to_file_replaces_the_destination_whole() {
        let (dir, store) = store();
        store.put_bytes("k", b"content").unwrap();
        let dest = dir.path().join("out.bin");
        fs::write(&dest, b"previous").unwrap();
        assert_eq!(store.get_to_file("k", &dest).unwrap(), 7);
        assert_eq!(fs::read(&dest).unwrap(), b"content");
        // Missing key: dest untouched, no temp left next to it.
        assert!(matches!(
            store.get_to_file("nope", &dest),
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(fs::read(&dest).unwrap(), b"content");
        let names: Vec<_> = read_dir_or_empty(dir.path())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // store/ and out.bin
    }

    #[test]
    fn concurrent_puts_and_deletes_of_shared_content_lose_nothing() {
        let (_dir, store) = store();
        let contents: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        std::thread::scope(|scope| {
            for thread in 0..4usize {
                let (store, contents) = (store.clone(), &contents);
                scope.spawn(move || {
                    for round in 0..200usize {
                        let key = format!("t{thread}/k{}", round % 4);
                        let content = &contents[(thread + round) % contents.len()];
                        let info = store.put_bytes(&key, content).unwrap();
                        assert_eq!(info.sha256, sha(content));
                        // Only this thread touches its keys: what it wrote must be there.
                        assert_eq!(&store.get_bytes(&key, 10_000).unwrap(), content);
                        if round % 3 == 0 {
                            store.delete(&key).unwrap();
                            assert!(!store.exists(&key).unwrap());
                        }
                    }
                });
            }
        });
        for key in store.list("").unwrap() {
            let bytes = store.get_bytes(&key, 10_000).unwrap();
            assert!(contents.contains(&bytes), "{key} holds foreign bytes");
        }
        let remaining = store.list("").unwrap().len();
        assert_eq!(store.delete_prefix("t").unwrap() as usize, remaining);
        assert!(store.list("").unwrap().is_empty());
        assert!(
            cas_files(&store).is_empty(),
            "orphans: {:?}",
            cas_files(&store)
        );
        assert!(tmp_files(&store).is_empty());
    }

    #[tokio::test]
    async fn storage_local_path_and_health() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path().join("s")).unwrap();
        assert_eq!(
            storage.describe(),
            format!("local:{}", dir.path().join("s").display())
        );
        storage.health().await.unwrap();
        assert_eq!(storage.local_path("k"), None);
        storage
            .put_bytes("k", b"x".to_vec(), "text/plain")
            .await
            .unwrap();
        let path = storage.local_path("k").unwrap();
        assert_eq!(fs::read(path).unwrap(), b"x");
        assert_eq!(storage.local_path("../k"), None);
        assert_eq!(
            storage
                .put_bytes("../k", vec![], "text/plain")
                .await
                .unwrap_err()
                .code(),
            "storage.bad_key"
        );
        assert_eq!(
            storage.delete_prefix("").await.unwrap_err().code(),
            "storage.bad_key"
        );
    }
}
