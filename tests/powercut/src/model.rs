//! The bookkeeping of the filesystem: which inode is where in the backing
//! directory now (the "page cache" view), and what of each file and
//! directory has been made durable. No FUSE here; the cut itself is
//! [`Model::surviving_tree`] plus [`tear`].

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Granularity of torn writes: the page size of the Linux page cache.
pub const PAGE: usize = 4096;

/// The inode number of the root directory (FUSE's convention).
pub const ROOT: u64 = 1;

/// How unsynced file data fares in a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Every byte written since the file's last fsync is lost (LazyFS's
    /// default behaviour).
    LoseAll,
    /// Each 4 KiB page whose content differs from its synced state is
    /// independently kept or lost (probability 1/2), and the file's length is
    /// independently its synced or its current length; a kept length with a
    /// lost page reads as zeros there (a size that reached the disk before
    /// the data, as XFS or ext4 in writeback mode can leave it). The choices
    /// come from a RNG seeded with `seed`, so a cut can be replayed.
    Pages { seed: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    /// A socket or other special file: passed through, never durable (it
    /// does not survive a cut).
    Special,
}

/// Where a currently linked inode lives.
#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    name: OsString,
}

/// One entry of the tree that survives a cut.
#[derive(Debug)]
pub struct Survivor {
    /// Path relative to the root.
    pub path: PathBuf,
    /// `None` for a directory, the file's bytes otherwise.
    pub data: Option<Vec<u8>>,
}

/// What a cut discarded, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose content changed since their last fsync (rolled back at
    /// least in part).
    pub files_rolled_back: usize,
    /// Pages of unsynced data kept (only with [`Tear::Pages`]) and lost.
    pub pages_kept: u64,
    pub pages_lost: u64,
    /// Paths that existed before the cut and do not after it (new names whose
    /// directory was not fsynced, the old side of an undone rename).
    pub vanished: Vec<PathBuf>,
    /// Paths that exist after the cut but did not before (undone unlinks and
    /// renames).
    pub restored: Vec<PathBuf>,
}

/// Inodes, locations and durable state.
#[derive(Debug)]
pub struct Model {
    backing: PathBuf,
    /// Inodes linked in the backing directory now.
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, OsString), u64>,
    /// Kind of every inode ever handed out (unlinked ones stay known, since
    /// a durable directory may still name them).
    kinds: HashMap<u64, Kind>,
    next_ino: u64,
    /// File data as of the file's last fsync; absent means empty.
    durable_data: HashMap<u64, Vec<u8>>,
    /// Directory entries as of the directory's last fsync; absent means
    /// empty.
    durable_dirs: HashMap<u64, BTreeMap<OsString, u64>>,
}

impl Model {
    /// Takes everything in `backing` as durable (the state at mount time
    /// is what is on the disk).
    pub fn scan(backing: &Path) -> io::Result<Model> {
        let mut m = Model {
            backing: backing.to_owned(),
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            kinds: HashMap::new(),
            next_ino: ROOT + 1,
            durable_data: HashMap::new(),
            durable_dirs: HashMap::new(),
        };
        m.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
            },
        );
        m.kinds.insert(ROOT, Kind::Dir);
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let entries = m.list(dir)?;
            for (name, kind) in entries {
                let ino = m.link(dir, &name, kind);
                match kind {
                    Kind::Dir => stack.push(ino),
                    Kind::File => {
                        let data = std::fs::read(m.path(ino)?)?;
                        m.durable_data.insert(ino, data);
                    }
                    Kind::Special => {}
                }
            }
            m.sync_dir(dir)?;
        }
        Ok(m)
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    pub fn kind(&self, ino: u64) -> Option<Kind> {
        self.kinds.get(&ino).copied()
    }

    /// The backing path of a linked inode.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let n = self.nodes.get(&at).ok_or_else(enoent)?;
            names.push(n.name.clone());
            at = n.parent;
            if names.len() > 4096 {
                return Err(io::Error::other("directory cycle in the inode table"));
            }
        }
        let mut p = self.backing.clone();
        p.extend(names.iter().rev());
        Ok(p)
    }

    /// The inode of `name` in `parent`, if linked.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.by_name.get(&(parent, name.to_owned())).copied()
    }

    /// Records that `name` in `parent` exists (now) and returns its inode,
    /// handing out a new one for a name not seen before.
    pub fn link(&mut self, parent: u64, name: &OsStr, kind: Kind) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            if self.kinds.get(&ino) == Some(&kind) {
                return ino;
            }
            self.unlink(parent, name);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.kinds.insert(ino, kind);
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
            },
        );
        self.by_name.insert((parent, name.to_owned()), ino);
        ino
    }

    /// `name` was removed from `parent` (unlink, rmdir, or replaced by a
    /// rename). The inode stays known: a durable directory may name it.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_owned())) {
            self.nodes.remove(&ino);
        }
    }

    /// `name` in `parent` is now `new_name` in `new_parent`.
    pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let Some(ino) = self.by_name.remove(&(parent, name.to_owned())) else {
            return;
        };
        self.unlink(new_parent, new_name);
        self.by_name.insert((new_parent, new_name.to_owned()), ino);
        self.nodes.insert(
            ino,
            Node {
                parent: new_parent,
                name: new_name.to_owned(),
            },
        );
    }

    /// The entries of a directory in the backing directory now.
    pub fn list(&self, dir: u64) -> io::Result<Vec<(OsString, Kind)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.path(dir)?)? {
            let e = e?;
            let t = e.file_type()?;
            let kind = if t.is_dir() {
                Kind::Dir
            } else if t.is_file() {
                Kind::File
            } else {
                Kind::Special
            };
            out.push((e.file_name(), kind));
        }
        out.sort();
        Ok(out)
    }

    /// fsync of a file: its current bytes become its durable content.
    pub fn sync_file(&mut self, ino: u64, file: &File) -> io::Result<()> {
        use std::io::{Read, Seek};
        let mut f = file.try_clone()?;
        let mut data = Vec::new();
        f.seek(io::SeekFrom::Start(0))?;
        f.read_to_end(&mut data)?;
        self.durable_data.insert(ino, data);
        Ok(())
    }

    /// fsync of a directory: its current entries become its durable ones.
    pub fn sync_dir(&mut self, dir: u64) -> io::Result<()> {
        let mut entries = BTreeMap::new();
        for (name, kind) in self.list(dir)? {
            let ino = self.link(dir, &name, kind);
            entries.insert(name, ino);
        }
        self.durable_dirs.insert(dir, entries);
        Ok(())
    }

    /// The tree a power cut leaves: the durable entries from the root down,
    /// each file with its durable content, torn with its current content as
    /// `tear` says. Also reports what changed.
    pub fn surviving_tree(&self, tear: Tear) -> io::Result<(Vec<Survivor>, CutReport)> {
        let mut rng = match tear {
            Tear::LoseAll => None,
            Tear::Pages { seed } => Some(SmallRng::seed_from_u64(seed)),
        };
        let mut report = CutReport::default();
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::new())];
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, rel)) = stack.pop() {
            if !seen.insert(dir) {
                continue; // a directory named twice (cross-directory rename)
            }
            let Some(entries) = self.durable_dirs.get(&dir) else {
                continue;
            };
            for (name, &ino) in entries {
                let path = rel.join(name);
                match self.kinds.get(&ino) {
                    Some(Kind::Dir) => {
                        out.push(Survivor {
                            path: path.clone(),
                            data: None,
                        });
                        stack.push((ino, path));
                    }
                    Some(Kind::File) => {
                        let synced: &[u8] = self.durable_data.get(&ino).map_or(&[], |d| d);
                        // The page cache's view, for torn pages; an unlinked
                        // file's unsynced data is simply lost.
                        let current = match self.nodes.contains_key(&ino) {
                            true => std::fs::read(self.path(ino)?).ok(),
                            false => None,
                        };
                        let data = match (&current, rng.as_mut()) {
                            (Some(cur), _) if cur.as_slice() == synced => synced.to_vec(),
                            (Some(cur), Some(rng)) => {
                                report.files_rolled_back += 1;
                                tear_pages(synced, cur, rng, &mut report)
                            }
                            (Some(cur), None) => {
                                report.files_rolled_back += 1;
                                report.pages_lost += differing_pages(synced, cur);
                                synced.to_vec()
                            }
                            (None, _) => synced.to_vec(),
                        };
                        out.push(Survivor {
                            path,
                            data: Some(data),
                        });
                    }
                    Some(Kind::Special) | None => {}
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((out, report))
    }
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

fn page(b: &[u8], p: usize) -> &[u8] {
    let start = (p * PAGE).min(b.len());
    let end = ((p + 1) * PAGE).min(b.len());
    &b[start..end]
}

fn differing_pages(a: &[u8], b: &[u8]) -> u64 {
    let pages = a.len().max(b.len()).div_ceil(PAGE);
    (0..pages).filter(|&p| page(a, p) != page(b, p)).count() as u64
}

/// The content of a file after a cut under [`Tear::Pages`]: see there.
pub fn tear(synced: &[u8], current: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    tear_pages(synced, current, &mut rng, &mut CutReport::default())
}

fn tear_pages(synced: &[u8], current: &[u8], rng: &mut SmallRng, r: &mut CutReport) -> Vec<u8> {
    let len = if synced.len() == current.len() || rng.random_bool(0.5) {
        synced.len()
    } else {
        current.len()
    };
    let mut out = vec![0u8; len];
    for p in 0..len.div_ceil(PAGE) {
        let (s, c) = (page(synced, p), page(current, p));
        let from = if s == c {
            s
        } else if rng.random_bool(0.5) {
            r.pages_kept += 1;
            c
        } else {
            r.pages_lost += 1;
            s
        };
        let start = p * PAGE;
        let n = from.len().min(len - start);
        out[start..start + n].copy_from_slice(&from[..n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tear_keeps_synced_pages_and_chooses_each_unsynced_page() {
        let synced = vec![1u8; 3 * PAGE];
        let mut current = synced.clone();
        current[PAGE..].fill(2);
        current.extend(vec![3u8; 2 * PAGE]);
        let mut saw_kept = false;
        let mut saw_lost = false;
        for seed in 0..64 {
            let t = tear(&synced, &current, seed);
            assert!(t.len() == synced.len() || t.len() == current.len());
            assert_eq!(&t[..PAGE], &synced[..PAGE], "a synced page never changes");
            for p in 1..t.len().div_ceil(PAGE) {
                let got = page(&t, p);
                let old = page(&synced, p);
                let new = page(&current, p);
                let zeros = got.iter().all(|&b| b == 0);
                assert!(
                    got == &new[..got.len()] || got == old || (old.is_empty() && zeros),
                    "page {p} is either old, new, or a hole"
                );
                saw_kept |= got == &new[..got.len()];
                saw_lost |= got == old || zeros;
            }
        }
        assert!(saw_kept && saw_lost, "both outcomes occur over 64 seeds");
    }

    #[test]
    fn tear_is_replayable_from_its_seed() {
        let synced = vec![0u8; 10 * PAGE];
        let current = vec![7u8; 12 * PAGE];
        assert_eq!(tear(&synced, &current, 42), tear(&synced, &current, 42));
    }
}
