//! A private `redis-server` per test, on a free port of 127.0.0.1, keeping nothing on disk: a
//! test that stops, freezes or kills a server does it to its own, never to the shared one on
//! 6379.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long a start waits for the server to answer `PING`.
const START_WITHIN: Duration = Duration::from_secs(10);
/// How long [`RedisServer::command`] waits to connect, to send and for each part of the reply.
const REPLY_WITHIN: Duration = Duration::from_secs(2);

/// A reply of the server, as the Redis protocol (RESP2) gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A status: `OK`, `PONG`.
    Status(String),
    /// An error the server answered with.
    Error(String),
    /// An integer.
    Integer(i64),
    /// A string, `None` for nil.
    Bulk(Option<String>),
    /// An array of replies, empty for a nil array.
    Array(Vec<Reply>),
}

/// A `redis-server` of the test's own: started on a free port, frozen, thawed, killed and started
/// again on the same port by the test, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or does not answer within 10 s.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (a port the test chose before, free) and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or does not answer within 10 s.
    pub fn start_on(port: u16) -> Self {
        let mut server = Self { child: None, port };
        server.launch();
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel, but nothing
    /// is answered until [`thaw`](Self::thaw).
    ///
    /// # Panics
    /// When the server is not running or the signal cannot be sent.
    pub fn freeze(&self) {
        crate::kill("STOP", self.running_pid("freeze"));
    }

    /// Lets a frozen server go on (SIGCONT).
    ///
    /// # Panics
    /// When the server is not running or the signal cannot be sent.
    pub fn thaw(&self) {
        crate::kill("CONT", self.running_pid("thaw"));
    }

    /// Kills the server (SIGKILL, frozen or not) and waits for it to exit. Nothing is kept: a
    /// restarted server is empty.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, starts it again on the same port, and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or does not answer within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs one command on a new connection, waiting at most 2 s for each step.
    pub fn command(&self, args: &[&str]) -> Result<Reply, String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let failed = |e: std::io::Error| format!("redis {address} {}: {e}", args.join(" "));
        let mut stream = TcpStream::connect_timeout(&address, REPLY_WITHIN).map_err(failed)?;
        stream.set_read_timeout(Some(REPLY_WITHIN)).map_err(failed)?;
        stream.set_write_timeout(Some(REPLY_WITHIN)).map_err(failed)?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).map_err(failed)?;
        read_reply(&mut BufReader::new(stream)).map_err(failed)
    }

    /// The keys matching `pattern` (`KEYS`: a test server holds few).
    ///
    /// # Panics
    /// When the server does not answer with an array of strings.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.command(&["KEYS", pattern]) {
            Ok(Reply::Array(keys)) => keys
                .into_iter()
                .map(|key| match key {
                    Reply::Bulk(Some(key)) => key,
                    other => panic!("KEYS {pattern}: a key that is not a string: {other:?}"),
                })
                .collect(),
            other => panic!("KEYS {pattern} on port {}: {other:?}", self.port),
        }
    }

    /// A field of `INFO` (`keyspace_hits`, `connected_clients`, ...) as a number.
    ///
    /// # Panics
    /// When the server does not answer or has no such numeric field.
    pub fn info(&self, field: &str) -> u64 {
        let text = match self.command(&["INFO"]) {
            Ok(Reply::Bulk(Some(text))) => text,
            other => panic!("INFO on port {}: {other:?}", self.port),
        };
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO on port {} has no number `{field}`:\n{text}", self.port))
    }

    fn running_pid(&self, what: &str) -> u32 {
        self.pid()
            .unwrap_or_else(|| panic!("cannot {what} the Redis server on port {}: not running", self.port))
    }

    fn launch(&mut self) {
        assert_ne!(self.port, 0, "no free port for redis-server");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start redis-server (scripts/test installs it): {error}"));
        self.child = Some(child);
        let until = Instant::now() + START_WITHIN;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!("redis-server on port {} exited at start ({status}): was the port taken?", self.port);
            }
            if self.command(&["PING"]) == Ok(Reply::Status("PONG".into())) {
                return;
            }
            assert!(
                Instant::now() < until,
                "redis-server on port {} did not answer within {START_WITHIN:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one reply, and the replies it contains.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(invalid("connection closed before the reply".into()));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid("an empty reply line".into()))?;
    let number = || rest.parse::<i64>().map_err(|_| invalid(format!("not a number in `{line}`")));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(length) => {
                let mut bytes = vec![0; length + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(length);
                Reply::Bulk(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
        },
        "*" => {
            let count = usize::try_from(number()?).unwrap_or(0);
            Reply::Array((0..count).map(|_| read_reply(reader)).collect::<Result<_, _>>()?)
        }
        _ => return Err(invalid(format!("an unknown reply `{line}`"))),
    })
}

/// A private `redis-server` that speaks TLS only (no plain port), with the certificate and key
/// in `cert.pem` and `key.pem` of a directory and the authority in its `ca.pem`; killed when
/// dropped.
#[derive(Debug)]
pub struct TlsRedisServer {
    child: Child,
    port: u16,
    ca: std::path::PathBuf,
}

impl TlsRedisServer {
    /// Starts one on a free port, with the files of `dir`, and waits until it answers `PING`
    /// over TLS.
    ///
    /// # Panics
    /// When it cannot be started (a `redis-server` built without TLS) or does not answer.
    pub fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let file = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &file("cert.pem"), "--tls-key-file", &file("key.pem")])
            .args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start redis-server: {error}"));
        let server = Self { child, port, ca: dir.join("ca.pem") };
        let until = Instant::now() + START_WITHIN;
        while server.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < until, "redis-server with TLS on port {port} did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` over TLS with `args`: what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.ca.display().to_string(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run redis-cli: {error}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
