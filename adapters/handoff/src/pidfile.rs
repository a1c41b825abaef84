//! An optional PID file naming the process that currently serves, replaced atomically (rename)
//! so a reader never sees it empty or half written.

use std::io::{self, Write};
use std::path::Path;

/// Writes `pid` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{pid}")?;
    // No fsync: a process id means nothing after a crash of the machine, and on a disk busy with
    // the service's own commits an fsync would delay the hand-over by milliseconds.
    drop(file);
    std::fs::rename(&temporary, path)
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
}
