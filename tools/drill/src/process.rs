//! Processes: spawning with output to log files, signals, exits, PID files and free ports.
//!
//! The drill makes itself a child subreaper, so a service's successor (started by the service,
//! not by the drill) becomes the drill's child when its parent exits: every generation is reaped
//! with `waitpid` and its exit status is known.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::Error;

/// Asks the kernel to give the drill the orphans of its descendants, as init would get them.
pub(crate) fn become_subreaper() -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|error| format!("cannot become a child subreaper (prctl): {error}"))?;
    Ok(())
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(Signal),
    /// It is gone but was not the drill's to reap (no subreaper), so its status is unknown.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit {code}"),
            Self::Signal(signal) => write!(f, "{}", signal.as_str()),
            Self::Unknown => f.write_str("exited"),
        }
    }
}

/// The standard output and error files that every process of the drill appends to.
#[derive(Clone, Debug)]
pub(crate) struct Logs {
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
}

impl Logs {
    /// `NAME.stdout` and `NAME.stderr` in `dir`.
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        Self { stdout: dir.join(format!("{name}.stdout")), stderr: dir.join(format!("{name}.stderr")) }
    }

    fn open(path: &Path) -> Result<File, Error> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()).into())
    }
}

/// The last `lines` lines of the file at `path` (at most its last 64 KiB), or why not.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("({}: {error})", path.display()),
    }
}

/// Starts `command` with its output appended to `logs`, its standard input closed.
///
/// The process stays in the drill's process group on purpose: Ctrl-C on the drill then stops
/// the services too instead of leaving them running.
pub(crate) fn spawn(command: &mut Command, logs: &Logs) -> Result<Pid, Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(Logs::open(&logs.stdout)?)
        .stderr(Logs::open(&logs.stderr)?)
        .spawn()
        .map_err(|error| format!("cannot start {program}: {error}"))?;
    // The `Child` handle is dropped without waiting: `reap` reaps this process like any other.
    let pid =
        i32::try_from(child.id()).map_err(|_| format!("{program} got pid {} out of range", child.id()))?;
    Ok(Pid::from_raw(pid))
}

/// Sends `signal` to `pid`.
pub(crate) fn send(pid: Pid, signal: Signal) -> Result<(), Error> {
    signal::kill(pid, signal)
        .map_err(|error| format!("cannot send {} to pid {pid}: {error}", signal.as_str()).into())
}

/// How `pid` ended, or `None` while it runs. A child of the drill (every service process, once
/// its parent is gone) is reaped and its status known; any other process is looked up in
/// `/proc`.
pub(crate) fn reap(pid: Pid) -> Result<Option<Exit>, Error> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Exit::Code(code))),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(Exit::Signal(signal))),
        Ok(_) => Ok(None),
        // Not (yet) the drill's child: a successor whose parent still runs. A zombie counts as
        // exited, since its parent has not reaped it yet but it serves nothing.
        Err(Errno::ECHILD) => Ok(match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => match stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) {
                Some('Z' | 'X') => Some(Exit::Unknown),
                _ => None,
            },
            // ESRCH: it went away between the open and the read.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    || error.raw_os_error() == Some(Errno::ESRCH as i32) =>
            {
                Some(Exit::Unknown)
            }
            Err(error) => return Err(format!("cannot read /proc/{pid}/stat: {error}").into()),
        }),
        Err(error) => Err(format!("waitpid({pid}): {error}").into()),
    }
}

/// Waits until `pid` exits, checking every 2 ms, for at most `timeout`.
pub(crate) async fn wait_exit(pid: Pid, timeout: Duration) -> Result<Option<Exit>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(exit) = reap(pid)? {
            return Ok(Some(exit));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// SIGTERM, then waits up to `timeout` for the exit; past it, SIGKILL and an error.
pub(crate) async fn terminate(pid: Pid, what: &str, timeout: Duration) -> Result<Exit, Error> {
    send(pid, Signal::SIGTERM)?;
    match wait_exit(pid, timeout).await? {
        Some(exit) => Ok(exit),
        None => {
            // Best effort: the error below is what matters, and the process may just have exited.
            let _ = signal::kill(pid, Signal::SIGKILL);
            Err(format!("{what} (pid {pid}) did not exit within {timeout:?} of SIGTERM; killed it").into())
        }
    }
}

/// The pid written in the PID file at `path`, when it exists and holds one.
pub(crate) fn read_pid_file(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse::<i32>().ok().filter(|pid| *pid > 0).map(Pid::from_raw)
}

/// The pids of the children of `pid`, from `/proc` (empty where the kernel does not list them).
pub(crate) fn children(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut children: Vec<Pid> = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace().filter_map(|pid| pid.parse().ok()).map(Pid::from_raw).collect::<Vec<_>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// A port on 127.0.0.1 that nothing listens on right now: bound, read, released.
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signalled_child_is_reaped_with_its_signal() {
        let dir = std::env::temp_dir().join(format!("lifecycle-drill-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let logs = Logs::new(&dir, "sleep");
        let pid = spawn(Command::new("sleep").arg("30"), &logs).unwrap();
        assert_eq!(reap(pid).unwrap(), None, "still running");
        let ended = terminate(pid, "sleep", Duration::from_secs(5)).await.unwrap();
        assert_eq!(ended, Exit::Signal(Signal::SIGTERM));
        let pid = spawn(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), &logs).unwrap();
        assert_eq!(wait_exit(pid, Duration::from_secs(5)).await.unwrap(), Some(Exit::Code(3)));
        assert_eq!(tail(&logs.stderr, 5), "err");
        assert_eq!(tail(&logs.stdout, 5), "out");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_files_hold_one_positive_number() {
        let path = std::env::temp_dir().join(format!("lifecycle-drill-pid-{}", std::process::id()));
        std::fs::write(&path, "1234\n").unwrap();
        assert_eq!(read_pid_file(&path), Some(Pid::from_raw(1234)));
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_pid_file(&path), None, "a file being written");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_pid_file(&path), None);
    }
}
