//! The filesystem really forgets: each test writes through the mount, cuts
//! the power and looks at what is left.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::*;

/// A mounted filesystem whose backing directory starts with `durable.bin`
/// (4 pages of 1s) and the directory `d/`, both durable.
fn mounted() -> Option<(tempfile::TempDir, PowerCutFs)> {
    require_fuse().ok()?;
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(backing.join("d")).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(backing.join("durable.bin"), vec![1u8; 4 * PAGE]).unwrap();
    let fs = PowerCutFs::mount(&backing, &mnt).expect("mount the power-cut filesystem");
    Some((dir, fs))
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn append(p: &Path, data: &[u8]) -> File {
    let mut f = File::options().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
    f
}

#[test]
fn write_without_fsync_is_lost_on_cut() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("durable.bin");
    let f = append(&p, &[2u8; 100]);
    drop(f);
    assert_eq!(
        std::fs::read(&p).unwrap().len(),
        4 * PAGE + 100,
        "visible before the cut"
    );
    let r = fs.cut_power(Tear::LoseAll).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 4 * PAGE]);
    assert_eq!(r.files_rolled_back, 1);
}

#[test]
fn write_with_fsync_survives_cut() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("durable.bin");
    let f = append(&p, &[2u8; 100]);
    f.sync_data().unwrap();
    drop(f);
    drop(append(&p, &[3u8; 50])); // after the fsync: lost
    fs.cut_power(Tear::LoseAll).unwrap();
    let mut want = vec![1u8; 4 * PAGE];
    want.extend([2u8; 100]);
    assert_eq!(std::fs::read(&p).unwrap(), want);
}

#[test]
fn new_file_without_directory_fsync_vanishes() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("d/new.seg");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap(); // the file's data, not its name
    drop(f);
    let r = fs.cut_power(Tear::LoseAll).unwrap();
    assert!(!p.exists(), "the name was never made durable");
    assert_eq!(r.vanished, vec![PathBuf::from("d/new.seg")]);
}

#[test]
fn new_file_with_directory_fsync_survives_with_synced_data() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("d/new.seg");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" more").unwrap(); // unsynced
    drop(f);
    sync_dir(&fs.path().join("d"));
    fs.cut_power(Tear::LoseAll).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"data");
}

#[test]
fn new_directory_without_parent_fsync_vanishes_with_its_files() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let dir = fs.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"x").unwrap();
    File::open(dir.join("f")).unwrap().sync_all().unwrap();
    sync_dir(&dir); // the directory's entries, but not its own name
    fs.cut_power(Tear::LoseAll).unwrap();
    assert!(!dir.exists());
}

#[test]
fn rename_without_directory_fsync_is_undone() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let (from, to) = (fs.path().join("durable.bin"), fs.path().join("d/moved.bin"));
    std::fs::rename(&from, &to).unwrap();
    sync_dir(&fs.path().join("d")); // the target's entry only
    let r = fs.cut_power(Tear::LoseAll).unwrap();
    assert!(from.exists(), "the source directory still names the file");
    assert_eq!(std::fs::read(&from).unwrap(), vec![1u8; 4 * PAGE]);
    assert!(r.restored.contains(&PathBuf::from("durable.bin")));
}

#[test]
fn rename_with_directory_fsync_is_kept() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let (from, to) = (fs.path().join("durable.bin"), fs.path().join("renamed.bin"));
    std::fs::rename(&from, &to).unwrap();
    sync_dir(fs.path());
    fs.cut_power(Tear::LoseAll).unwrap();
    assert!(!from.exists());
    assert_eq!(std::fs::read(&to).unwrap(), vec![1u8; 4 * PAGE]);
}

#[test]
fn unlink_without_directory_fsync_is_undone() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("durable.bin");
    std::fs::remove_file(&p).unwrap();
    fs.cut_power(Tear::LoseAll).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 4 * PAGE]);
    std::fs::remove_file(&p).unwrap();
    sync_dir(fs.path());
    fs.cut_power(Tear::LoseAll).unwrap();
    assert!(!p.exists());
}

#[test]
fn cut_with_a_file_still_open_fails_instead_of_hanging() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let f = File::open(fs.path().join("durable.bin")).unwrap();
    let e = fs.cut_power(Tear::LoseAll).unwrap_err();
    assert!(e.to_string().contains("close every file"), "{e}");
    drop(f);
    fs.cut_power(Tear::LoseAll).unwrap();
}

#[test]
fn unsynced_pages_are_torn_one_page_at_a_time() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("durable.bin");
    let (mut kept, mut lost) = (0, 0);
    for seed in 0..8 {
        // Overwrite pages 1..4 without fsync; page 0 stays as synced.
        let f = File::options().write(true).open(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![9u8; 3 * PAGE], PAGE as u64).unwrap();
        drop(f);
        let r = fs.cut_power(Tear::Pages { seed }).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4 * PAGE);
        assert!(
            got[..PAGE].iter().all(|&b| b == 1),
            "the synced page is intact"
        );
        for page in got[PAGE..].chunks(PAGE) {
            assert!(page.iter().all(|&b| b == 1) || page.iter().all(|&b| b == 9));
        }
        kept += r.pages_kept;
        lost += r.pages_lost;
        // Back to the synced state for the next round.
        let f = File::options().write(true).open(&p).unwrap();
        f.write_all_at(&vec![1u8; 4 * PAGE], 0).unwrap();
        f.sync_all().unwrap();
    }
    assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
}

#[test]
fn a_unix_socket_bound_on_the_filesystem_accepts_connections_and_vanishes_on_cut() {
    let Some((_d, mut fs)) = mounted() else {
        return;
    };
    let p = fs.path().join("d/s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
    let mut client = std::os::unix::net::UnixStream::connect(&p).unwrap();
    client.write_all(b"x").unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut server, &mut b).unwrap();
    assert_eq!(&b, b"x");
    drop((client, server, listener));
    sync_dir(&fs.path().join("d"));
    fs.cut_power(Tear::LoseAll).unwrap();
    assert!(!p.exists());
}
