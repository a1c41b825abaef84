//! An optional PID file naming the process that currently serves, replaced atomically (rename)
//! so a reader never sees it empty or half written.

use std::io::{self, Write};
use std::path::Path;

/// Writes `pid` to `path` through a temporary file in the same directory and a rename.
///
/// The temporary file has an unpredictable name and is created only if nothing is there
/// (`O_CREAT | O_EXCL`, which never follows a symbolic link): in a directory another user can
/// write, a link planted at the name cannot make the service (often root) write through it. The
/// rename replaces `path` itself, a link there included, never what a link points to.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    use std::hash::{BuildHasher, RandomState};
    use std::os::unix::fs::OpenOptionsExt;
    let mut attempts = 0;
    let (temporary, mut file) = loop {
        // Each `RandomState` has fresh random keys: 64 unpredictable bits.
        let random = RandomState::new().hash_one(pid);
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{random:016x}.tmp"));
        let temporary = std::path::PathBuf::from(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temporary) {
            Ok(file) => break (temporary, file),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(error) => return Err(error),
        }
    };
    let written = writeln!(file, "{pid}");
    // No fsync: a process id means nothing after a crash of the machine, and on a disk busy with
    // the service's own commits an fsync would delay the hand-over by milliseconds.
    drop(file);
    match written.and_then(|()| std::fs::rename(&temporary, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            Err(error)
        }
    }
}

/// Removes `path` if it still names `pid` (a successor may have replaced it).
pub(crate) fn remove_if_ours(path: &Path, pid: u32) -> io::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == pid.to_string() => std::fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn written_whole_and_removed_only_by_its_owner() {
        let dir = std::env::temp_dir().join(format!("lifecycle-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("service.pid");
        std::fs::write(&path, "stale\n").unwrap();
        super::write(&path, 41).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "41\n");
        super::remove_if_ours(&path, 42).unwrap();
        assert!(path.exists(), "a successor's file is left alone");
        super::remove_if_ours(&path, 41).unwrap();
        assert!(!path.exists());
        super::remove_if_ours(&path, 41).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no temporary file left");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let dir = std::env::temp_dir().join(format!("lifecycle-pidfile-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("service.pid");
        // At the name the old code used, and at the PID file itself.
        let old_name = dir.join(format!("service.pid.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_name).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        super::write(&path, 7).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the victim is untouched");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7\n");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "the link was replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
