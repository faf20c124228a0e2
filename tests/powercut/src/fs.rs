//! The FUSE side: every operation is passed through to the backing
//! directory, and [`Model`] is told about names and fsyncs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::model::{Kind, Model};

/// Attributes and entries are never cached by the kernel: the backing
/// directory is the truth.
const TTL: Duration = Duration::ZERO;

pub struct PassFs {
    pub model: Arc<Mutex<Model>>,
    handles: HashMap<u64, (u64, File)>,
    next_fh: u64,
}

impl PassFs {
    pub fn new(model: Arc<Mutex<Model>>) -> PassFs {
        PassFs {
            model,
            handles: HashMap::new(),
            next_fh: 1,
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // A panic elsewhere must not wedge the filesystem.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_handle(&mut self, ino: u64, f: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, f));
        fh
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let t = |s: i64, ns: i64| {
        if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns as u32)
        } else {
            UNIX_EPOCH
        }
    };
    FileAttr {
        ino,
        size: m.len(),
        blocks: m.blocks(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime: t(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: if m.is_dir() { 2 } else { 1 },
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(m: &std::fs::Metadata) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_file() {
        FileType::RegularFile
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_char_device() {
        FileType::CharDevice
    } else {
        FileType::BlockDevice
    }
}

fn kind_of(m: &std::fs::Metadata) -> Kind {
    if m.is_dir() {
        Kind::Dir
    } else if m.is_file() {
        Kind::File
    } else {
        Kind::Special
    }
}

macro_rules! tri {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(errno(&e)),
        }
    };
}

impl Filesystem for PassFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut m = self.model();
        let path = tri!(reply, m.path(parent)).join(name);
        let meta = tri!(reply, std::fs::symlink_metadata(&path));
        let ino = m.link(parent, name, kind_of(&meta));
        reply.entry(&TTL, &attr(ino, &meta), 0);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let meta = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some((_, f)) => tri!(reply, f.metadata()),
            None => {
                let path = tri!(reply, self.model().path(ino));
                tri!(reply, std::fs::symlink_metadata(path))
            }
        };
        reply.attr(&TTL, &attr(ino, &meta));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let path = tri!(reply, self.model().path(ino));
        if let Some(size) = size {
            let r = match fh.and_then(|fh| self.handles.get(&fh)) {
                Some((_, f)) => f.set_len(size),
                None => File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(size)),
            };
            tri!(reply, r);
        }
        if let Some(mode) = mode {
            let p = std::fs::Permissions::from_mode(mode & 0o7777);
            tri!(reply, std::fs::set_permissions(&path, p));
        }
        let meta = tri!(reply, std::fs::symlink_metadata(&path));
        reply.attr(&TTL, &attr(ino, &meta));
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut m = self.model();
        let path = tri!(reply, m.path(parent)).join(name);
        tri!(reply, std::fs::create_dir(&path));
        let meta = tri!(reply, std::fs::symlink_metadata(&path));
        let ino = m.link(parent, name, Kind::Dir);
        reply.entry(&TTL, &attr(ino, &meta), 0);
    }

    /// Sockets (the gateway binds one in its state directory) and other
    /// special files: created in the backing directory, passed through.
    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        use std::os::unix::ffi::OsStrExt;
        let mut m = self.model();
        let path = tri!(reply, m.path(parent)).join(name);
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: `c` is a valid NUL-terminated path for the call.
        if unsafe {
            libc::mknod(
                c.as_ptr(),
                (mode & !umask) as libc::mode_t,
                rdev as libc::dev_t,
            )
        } != 0
        {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        let meta = tri!(reply, std::fs::symlink_metadata(&path));
        let ino = m.link(parent, name, Kind::Special);
        reply.entry(&TTL, &attr(ino, &meta), 0);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut m = self.model();
        let path = tri!(reply, m.path(parent)).join(name);
        tri!(reply, std::fs::remove_file(&path));
        m.unlink(parent, name);
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut m = self.model();
        let path = tri!(reply, m.path(parent)).join(name);
        tri!(reply, std::fs::remove_dir(&path));
        m.unlink(parent, name);
        reply.ok();
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            // RENAME_NOREPLACE / RENAME_EXCHANGE are not modelled.
            return reply.error(libc::EINVAL);
        }
        let mut m = self.model();
        let from = tri!(reply, m.path(parent)).join(name);
        let to = tri!(reply, m.path(newparent)).join(newname);
        tri!(reply, std::fs::rename(&from, &to));
        if m.child(parent, name).is_none() {
            if let Ok(meta) = std::fs::symlink_metadata(&to) {
                m.link(newparent, newname, kind_of(&meta));
            }
        } else {
            m.rename(parent, name, newparent, newname);
        }
        reply.ok();
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let path = tri!(reply, self.model().path(ino));
        let f = tri!(
            reply,
            File::options()
                .read(true)
                .write(true)
                .custom_flags(flags & libc::O_APPEND)
                .open(path)
        );
        let fh = self.add_handle(ino, f);
        reply.opened(fh, 0);
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (ino, f, meta) = {
            let mut m = self.model();
            let path = tri!(reply, m.path(parent)).join(name);
            let f = tri!(
                reply,
                File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .mode(mode & !umask & 0o7777)
                    .custom_flags(flags & (libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND))
                    .open(&path)
            );
            let meta = tri!(reply, f.metadata());
            let ino = m.link(parent, name, Kind::File);
            (ino, f, meta)
        };
        let fh = self.add_handle(ino, f);
        reply.created(&TTL, &attr(ino, &meta), 0, fh, 0);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some((_, f)) = self.handles.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset as u64 + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some((_, f)) = self.handles.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        tri!(reply, f.write_all_at(data, offset as u64));
        reply.written(data.len() as u32);
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let Some((_, f)) = self.handles.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let f = tri!(reply, f.try_clone());
        tri!(reply, self.model().sync_file(ino, &f));
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, 0);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut m = self.model();
        let entries = tri!(reply, m.list(ino));
        let mut all = vec![
            (ino, FileType::Directory, OsStr::new(".").to_owned()),
            (ino, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        for (name, kind) in entries {
            let child = m.link(ino, &name, kind);
            let t = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
                Kind::Special => FileType::Socket,
            };
            all.push((child, t, name));
        }
        for (i, (child, t, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, i as i64 + 1, t, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        tri!(reply, self.model().sync_dir(ino));
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let backing = self.model().backing().to_owned();
        let Ok(c) = std::ffi::CString::new(backing.as_os_str().as_encoded_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out
        // pointer for the duration of the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}
