//! A FUSE filesystem for tests that forgets, on a simulated power cut,
//! everything that was not made durable.
//!
//! [`PowerCutFs::mount`] mounts a passthrough view of a backing directory.
//! Reads and writes go straight to the backing directory (the "page cache":
//! what every process sees while the power is on). Beside it the filesystem
//! keeps what a disk would hold after a power cut:
//!
//! - the data of each file as of its last `fsync`/`fdatasync` (both are
//!   treated alike: the whole file, size included, becomes durable);
//! - the entries of each directory as of its last `fsync`: a name created,
//!   renamed or unlinked is durable only once its directory was fsynced.
//!   A rename across directories is durable per directory (the source's
//!   removal with the source, the target's entry with the target).
//!
//! [`PowerCutFs::cut_power`] is the power cut: it unmounts, rebuilds the
//! backing directory from the durable state and mounts again. Files whose
//! names were not made durable vanish (a new directory too, with everything
//! in it); undone unlinks and renames come back with their durable data;
//! file data rolls back to its last fsync. Unsynced data is either lost
//! whole ([`Tear::LoseAll`], LazyFS's default) or torn at page granularity
//! ([`Tear::Pages`]: each 4 KiB page that differs from its synced state is
//! independently kept or lost, and the length is independently the synced or
//! the current one, so a kept length over a lost page reads as zeros),
//! chosen by a seeded RNG so that every cut can be replayed.
//!
//! Modelled on LazyFS (unsynced data lost at a fault point) and
//! ALICE/CrashMonkey (directory operations persist only through an fsync of
//! their directory). Not modelled, on purpose or for now:
//!
//! - reordering: an fsync of one file or directory never makes another
//!   durable (ext4's journal often does: the model is stricter), and nothing
//!   unsynced survives in part except pages under [`Tear::Pages`];
//! - torn writes inside a page, sector-level atomicity, bit rot, lying
//!   disks (an fsync that returns before the data is stable), failing fsyncs
//!   (EIO), a full disk;
//! - metadata other than names and sizes (modes, times), hard links,
//!   symbolic links, extended attributes, `mmap`, `O_DIRECT`,
//!   `RENAME_EXCHANGE`/`RENAME_NOREPLACE`; sockets and other special files
//!   are passed through (the gateway binds a socket in its state directory)
//!   but never survive a cut;
//! - the data of a file that was unlinked before the cut but comes back
//!   (its unlink not made durable): it returns with its last synced data.
//!
//! Needs root and `/dev/fuse`: the mount is a plain mount(2) (fuser without
//! libfuse), with `fusermount3` as fuser's fallback. Tests that need it call
//! [`require_fuse`]: without FUSE they skip with a message, except under
//! `CI=true`, where they fail.

mod fs;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, MountOption};

pub use model::{CutReport, Tear, PAGE};
use model::{Model, Survivor};

/// A mounted crash-simulating filesystem. Dropping it unmounts it (also
/// while a test panics).
pub struct PowerCutFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    model: Arc<Mutex<Model>>,
    session: Option<BackgroundSession>,
}

/// Whether FUSE can be used here. `Err` explains why not. Under `CI=true` a
/// missing FUSE panics, so that a CI run never skips power-cut tests
/// silently.
pub fn require_fuse() -> Result<(), String> {
    let why = if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse does not exist (load the fuse module)".to_owned())
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        Some("/dev/fuse cannot be opened (run as root)".to_owned())
    } else if unsafe { libc::geteuid() } != 0 && !fusermount_exists() {
        Some("not root and no fusermount3 (Debian package fuse3)".to_owned())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("FUSE is needed for the power-cut tests and CI=true: {why}")
        }
        Some(why) => {
            eprintln!("skipping a power-cut test: {why} (under CI=true this fails)");
            Err(why)
        }
    }
}

fn fusermount_exists() -> bool {
    [
        "/usr/bin/fusermount3",
        "/bin/fusermount3",
        "/usr/bin/fusermount",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

impl PowerCutFs {
    /// Mounts `backing` at `mountpoint` (both existing directories).
    /// Whatever `backing` holds now counts as durable.
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<PowerCutFs> {
        let model = Arc::new(Mutex::new(Model::scan(backing)?));
        let mut fs = PowerCutFs {
            backing: backing.to_owned(),
            mountpoint: mountpoint.to_owned(),
            model,
            session: None,
        };
        fs.start()?;
        Ok(fs)
    }

    /// The mounted view: put the files under test here.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn start(&mut self) -> std::io::Result<()> {
        let options = [
            MountOption::FSName("powercut".to_owned()),
            MountOption::Subtype("powercut".to_owned()),
        ];
        let fs = fs::PassFs::new(self.model.clone());
        self.session = Some(fuser::spawn_mount2(fs, &self.mountpoint, &options)?);
        Ok(())
    }

    /// Unmounts and waits for the session thread. Fails (still mounted)
    /// while a file on the filesystem is open.
    fn stop(&mut self) -> std::io::Result<()> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = umount(&self.mountpoint, 0) {
            self.session = Some(s);
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot unmount {} for the power cut ({e}): close every file on it and kill its writers first",
                    self.mountpoint.display()
                ),
            ));
        }
        // Unmounted: the session thread ends at once.
        s.join();
        Ok(())
    }

    /// The power cut: unmounts, rebuilds the backing directory from what was
    /// durable (tearing unsynced pages as `tear` says) and mounts again.
    /// Whoever wrote to the filesystem must be dead by now (SIGKILL and
    /// reaped): the cut happens at the instant of the kill.
    pub fn cut_power(&mut self, tear: Tear) -> std::io::Result<CutReport> {
        self.stop()?;
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let before = tree(&self.backing)?;
        let (survivors, mut report) = model.surviving_tree(tear)?;
        for e in std::fs::read_dir(&self.backing)? {
            let p = e?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        for Survivor { path, data } in &survivors {
            let full = self.backing.join(path);
            match data {
                None => std::fs::create_dir_all(&full)?,
                Some(d) => std::fs::write(&full, d)?,
            }
        }
        let after = tree(&self.backing)?;
        report.vanished = before.difference(&after).cloned().collect();
        report.restored = after.difference(&before).cloned().collect();
        *model = Model::scan(&self.backing)?;
        drop(model);
        self.start()?;
        Ok(report)
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if self.stop().is_err() {
            // Files are still open (a test failed with a writer alive): detach
            // the mount so that it disappears from the tree; the kernel ends
            // the connection when this process closes /dev/fuse.
            let _ = umount(&self.mountpoint, libc::MNT_DETACH);
            drop(self.session.take());
        }
    }
}

fn umount(path: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Relative paths of everything under `root`.
fn tree(root: &Path) -> std::io::Result<std::collections::BTreeSet<PathBuf>> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.to_owned());
            }
            if e.file_type()?.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
