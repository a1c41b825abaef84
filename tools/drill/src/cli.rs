//! Command-line options, parsed by hand: a dozen flags do not need a parser crate.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The help text: every flag, the service contract and the exit codes.
pub(crate) const HELP: &str = "\
lifecycle-drill: run a service under load, restart it R times, count every failed request

USAGE:
    lifecycle-drill --binary PATH --mode MODE [OPTIONS] [-- SERVICE_ARGS...]

The drill starts the service, waits until GET /readyz answers 200, drives it over N HTTP/1.1
keep-alive connections, restarts it R times, stops it with SIGTERM and prints what the clients
saw. Clients never retry silently: a request that fails on a reused connection is a failure.
A connection the server closed is replaced before the next request; a request that hyper
reports as never written because its connection had just closed is sent once more on a new
connection, and counted apart (resent).

REQUIRED:
    --binary PATH          The service's executable. Arguments after `--` are passed to it.
    --mode MODE            How to restart it:
        handoff            SIGUSR2 to the pid in PID_FILE; done when PID_FILE holds a new pid and
                           the old process has exited (the service hands its listener over).
        graceful           SIGTERM, wait for the exit, start a new process, wait for /readyz.
        kill               SIGKILL, wait for the exit, start a new process, wait for /readyz.
        reuseport          Start the new process beside the old one (both with LISTEN_REUSEPORT=1
                           and a PID_FILE each). It is ready once its PID_FILE exists and 8
                           /readyz probes in a row on new connections answered 200 (either
                           process may answer a probe; a streak from the old one alone is
                           unlikely). After --settle, SIGTERM the old one and wait for its exit.
        nginx              Blue-green behind an nginx the drill runs on its own port: start the
                           other instance on its own port, wait for its /readyz, point the
                           upstream at it, reload nginx, wait for nginx's old workers to exit,
                           SIGTERM the old instance. Needs nginx (apt-get install nginx).

LOAD:
    --connections N        Concurrent connections, one task each [default: 50]
    --get PATH             Send GET PATH expecting 200, instead of POST /api/orders with
                           {\"item\":\"drill\",\"quantity\":1} expecting 201
    --timeout DURATION     Per request, connecting included; past it the request counts as a
                           timeout [default: 5s]
    --backoff DURATION     Pause after a failed request, so a service that is down is not
                           hammered with connection attempts (each attempt is a failed
                           request) [default: 10ms]
    --pause DURATION       Pause after each successful request, to measure latency below
                           saturation (0: back to back, the service at full load) [default: 0s]

SEQUENCE:
    --restarts N           Restarts to perform [default: 10]
    --warmup DURATION      Steady load before the first restart [default: 1s]
    --interval DURATION    Steady load between two restarts [default: 200ms]
    --cooldown DURATION    Steady load after the last restart [default: 500ms]
    --ready-timeout DURATION
                           Longest wait for a process to become ready, or for a restart to
                           complete [default: 30s]
    --stop-timeout DURATION
                           Longest wait for a process to exit after SIGTERM; it is then killed and
                           the drill fails [default: 30s]
    --settle DURATION      reuseport: wait between the new process being ready and SIGTERM to
                           the old one [default: 50ms]
    --drain-delay DURATION The service's DRAIN_DELAY (in seconds, as orders reads it) [default: 0s]
    --nginx PATH           nginx executable [default: `nginx` on PATH, or /usr/sbin/nginx]

OUTPUT:
    --json PATH            Also write the report as JSON to PATH; `-` writes it to standard output
                           and moves the table to standard error
    --fail-on-errors       Exit with 1 when any request failed
    --keep                 Keep the working directory (logs, database, nginx config) on success;
                           it is always kept when the drill fails
    -h, --help             Print this help

REPORT (tables on standard output, the same values as JSON with --json; times in ms):
    requests               sent (every attempt, a refused connection included), ok (the
                           expected status), failed by kind: refused, reset, early close (the
                           connection ended before the whole response), 5xx, timeout, other
                           status; failed during restarts; connections opened; resent
    latency                count, p50, p99 and max of the successful requests, connecting
                           included: all of them, those that overlapped no restart (steady) and
                           those that overlapped one (a restart lasts from its trigger to done)
    longest gap            the longest time without any successful response, when it began and
                           the restart it overlapped
    restarts               per restart: when it was triggered; ready, from the trigger to the new
                           process ready (/readyz 200; handoff: its pid in PID_FILE; reuseport:
                           see above); done, from the trigger to the old process's exit; the
                           failed requests that overlapped it; old and new pid; how the old one
                           ended

DURATIONS are a number and a unit: 500us, 250ms, 1.5s, 2m.

SERVICE ENVIRONMENT (set by the drill, everything else inherited):
    LISTEN_ADDR            127.0.0.1:PORT, a free port the drill picked
    DATABASE_URL           inherited when set, else sqlite://DIR/drill.db?mode=rwc
    PID_FILE               DIR/service.pid (reuseport and nginx, where two processes run at
                           once: DIR/service-N.pid, N counting processes from 0)
    LISTEN_REUSEPORT       1, in reuseport mode only
    DRAIN_DELAY            from --drain-delay, in seconds
DIR is a fresh directory under the system's temporary directory, which also holds the service's
standard output and error (service.stdout, service.stderr).

EXIT CODES:
    0    the drill ran (whatever the failed requests, unless --fail-on-errors)
    1    --fail-on-errors and at least one request failed
    2    the drill itself failed: bad arguments, a service that never became ready, a restart that
         did not complete, a process that did not exit
";

/// How the service is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RestartMode {
    /// SIGUSR2: the service execs its successor and hands it the listener.
    Handoff,
    /// SIGTERM, then a new process.
    Graceful,
    /// SIGKILL, then a new process.
    Kill,
    /// A new process on the same port with SO_REUSEPORT, then SIGTERM to the old one.
    Reuseport,
    /// Blue-green behind nginx.
    Nginx,
}

impl RestartMode {
    const ALL: [RestartMode; 5] = [Self::Handoff, Self::Graceful, Self::Kill, Self::Reuseport, Self::Nginx];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Handoff => "handoff",
            Self::Graceful => "graceful",
            Self::Kill => "kill",
            Self::Reuseport => "reuseport",
            Self::Nginx => "nginx",
        }
    }
}

impl fmt::Display for RestartMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What each request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `POST /api/orders` with a small order, expecting 201.
    CreateOrder,
    /// `GET` of this path, expecting 200.
    Get(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateOrder => f.write_str("POST /api/orders"),
            Self::Get(path) => write!(f, "GET {path}"),
        }
    }
}

/// Where the JSON report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JsonOutput {
    Stdout,
    File(PathBuf),
}

/// Everything the drill was asked to do.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) binary: PathBuf,
    pub(crate) service_args: Vec<OsString>,
    pub(crate) mode: RestartMode,
    pub(crate) connections: usize,
    pub(crate) target: Target,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Duration,
    pub(crate) pause: Duration,
    pub(crate) restarts: usize,
    pub(crate) warmup: Duration,
    pub(crate) interval: Duration,
    pub(crate) cooldown: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) stop_timeout: Duration,
    pub(crate) settle: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) nginx: Option<PathBuf>,
    pub(crate) json: Option<JsonOutput>,
    pub(crate) fail_on_errors: bool,
    pub(crate) keep: bool,
}

/// The outcome of parsing: a drill to run, or the help to print.
#[derive(Debug)]
pub(crate) enum Command {
    Run(Box<Options>),
    Help,
}

/// A mistake on the command line, shown with a pointer to `--help`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n(lifecycle-drill --help lists every option)", self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses the arguments that follow the program's name.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let mut binary = None;
    let mut mode = None;
    let mut options = Options {
        binary: PathBuf::new(),
        service_args: Vec::new(),
        mode: RestartMode::Graceful,
        connections: 50,
        target: Target::CreateOrder,
        timeout: Duration::from_secs(5),
        backoff: Duration::from_millis(10),
        pause: Duration::ZERO,
        restarts: 10,
        warmup: Duration::from_secs(1),
        interval: Duration::from_millis(200),
        cooldown: Duration::from_millis(500),
        ready_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(30),
        settle: Duration::from_millis(50),
        drain_delay: Duration::ZERO,
        nginx: None,
        json: None,
        fail_on_errors: false,
        keep: false,
    };
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|arg| usage(format!("argument {arg:?} is not UTF-8")))?;
        if arg == "--" {
            options.service_args = args.by_ref().collect();
            break;
        }
        // `--flag=value` and `--flag value` both work.
        let (flag, mut inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(OsString::from(value))),
            _ => (arg, None),
        };
        let mut value = || -> Result<OsString, UsageError> {
            inline.take().or_else(|| args.next()).ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--binary" => binary = Some(PathBuf::from(value()?)),
            "--mode" => mode = Some(restart_mode(&text(&flag, value()?)?)?),
            "--connections" => options.connections = positive(&flag, &text(&flag, value()?)?)?,
            "--get" => {
                let path = text(&flag, value()?)?;
                if !path.starts_with('/') {
                    return Err(usage(format!("--get takes a path starting with `/`, not `{path}`")));
                }
                options.target = Target::Get(path);
            }
            "--timeout" => options.timeout = nonzero_duration(&flag, value()?)?,
            "--backoff" => options.backoff = duration(&flag, value()?)?,
            "--pause" => options.pause = duration(&flag, value()?)?,
            "--restarts" => options.restarts = count(&flag, &text(&flag, value()?)?)?,
            "--warmup" => options.warmup = duration(&flag, value()?)?,
            "--interval" => options.interval = duration(&flag, value()?)?,
            "--cooldown" => options.cooldown = duration(&flag, value()?)?,
            "--ready-timeout" => options.ready_timeout = nonzero_duration(&flag, value()?)?,
            "--stop-timeout" => options.stop_timeout = nonzero_duration(&flag, value()?)?,
            "--settle" => options.settle = duration(&flag, value()?)?,
            "--drain-delay" => options.drain_delay = duration(&flag, value()?)?,
            "--nginx" => options.nginx = Some(PathBuf::from(value()?)),
            "--json" => {
                let path = value()?;
                options.json = Some(if path == "-" {
                    JsonOutput::Stdout
                } else {
                    JsonOutput::File(PathBuf::from(path))
                });
            }
            "--fail-on-errors" => options.fail_on_errors = true,
            "--keep" => options.keep = true,
            other => return Err(usage(format!("unknown option `{other}`"))),
        }
        if inline.is_some() {
            return Err(usage(format!("{flag} takes no value")));
        }
    }
    options.binary = binary.ok_or_else(|| usage("--binary PATH is required: the service to drill"))?;
    options.mode = mode.ok_or_else(|| usage(format!("--mode is required: one of {}", mode_names())))?;
    Ok(Command::Run(Box::new(options)))
}

fn text(flag: &str, value: OsString) -> Result<String, UsageError> {
    value.into_string().map_err(|value| usage(format!("{flag}: {value:?} is not UTF-8")))
}

fn mode_names() -> String {
    RestartMode::ALL.map(RestartMode::name).join(", ")
}

fn restart_mode(name: &str) -> Result<RestartMode, UsageError> {
    RestartMode::ALL
        .into_iter()
        .find(|mode| mode.name() == name)
        .ok_or_else(|| usage(format!("--mode `{name}` is not one of {}", mode_names())))
}

fn count(flag: &str, text: &str) -> Result<usize, UsageError> {
    text.parse().map_err(|_| usage(format!("{flag} takes a whole number, not `{text}`")))
}

fn positive(flag: &str, text: &str) -> Result<usize, UsageError> {
    match count(flag, text)? {
        0 => Err(usage(format!("{flag} must be at least 1"))),
        n => Ok(n),
    }
}

fn duration(flag: &str, value: OsString) -> Result<Duration, UsageError> {
    let value = text(flag, value)?;
    parse_duration(&value).map_err(|error| usage(format!("{flag}: {error}")))
}

fn nonzero_duration(flag: &str, value: OsString) -> Result<Duration, UsageError> {
    match duration(flag, value)? {
        Duration::ZERO => Err(usage(format!("{flag} must be more than zero"))),
        duration => Ok(duration),
    }
}

/// `250ms`, `1.5s`: a non-negative number and one of the units us, ms, s, m.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "" => return Err(format!("`{text}` needs a unit: us, ms, s or m (as in 250ms)")),
        _ => return Err(format!("`{text}` has an unknown unit `{unit}`: use us, ms, s or m")),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * seconds_per_unit)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("`{text}` is not a duration (as in 250ms)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, UsageError> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(options) => Ok(*options),
            Command::Help => Err(usage("help")),
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err_and(|e| e.contains("needs a unit")));
        assert!(parse_duration("5h").is_err_and(|e| e.contains("unknown unit `h`")));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn defaults_match_the_help() {
        let options = run(&["--binary", "target/release/orders", "--mode", "graceful"]).unwrap();
        assert_eq!(options.connections, 50);
        assert_eq!(options.restarts, 10);
        assert_eq!(options.warmup, Duration::from_secs(1));
        assert_eq!(options.interval, Duration::from_millis(200));
        assert_eq!(options.cooldown, Duration::from_millis(500));
        assert_eq!(options.timeout, Duration::from_secs(5));
        assert_eq!(options.target, Target::CreateOrder);
        assert_eq!(options.json, None);
        assert!(!options.fail_on_errors);
    }

    #[test]
    fn values_inline_or_separate_and_service_arguments_after_the_separator() {
        let options = run(&[
            "--binary=./svc",
            "--mode",
            "nginx",
            "--connections=8",
            "--get",
            "/healthz",
            "--json",
            "-",
            "--",
            "--listen",
            "ignored",
        ])
        .unwrap();
        assert_eq!(options.binary, PathBuf::from("./svc"));
        assert_eq!(options.mode, RestartMode::Nginx);
        assert_eq!(options.connections, 8);
        assert_eq!(options.target, Target::Get("/healthz".into()));
        assert_eq!(options.json, Some(JsonOutput::Stdout));
        assert_eq!(options.service_args, [OsString::from("--listen"), OsString::from("ignored")]);
    }

    #[test]
    fn mistakes_name_the_flag() {
        let error = |args: &[&str]| run(args).unwrap_err().0;
        assert!(error(&["--mode", "graceful"]).contains("--binary"));
        assert!(error(&["--binary", "x"]).contains("--mode is required: one of handoff, graceful"));
        assert!(error(&["--binary", "x", "--mode", "restart"]).contains("`restart` is not one of"));
        assert!(error(&["--binary", "x", "--mode", "kill", "--connections", "0"]).contains("at least 1"));
        assert!(
            error(&["--binary", "x", "--mode", "kill", "--interval"]).contains("--interval needs a value")
        );
        assert!(error(&["--binary", "x", "--mode", "kill", "--keep=yes"]).contains("--keep takes no value"));
        assert!(error(&["--binary", "x", "--mode", "kill", "--get", "api"]).contains("starting with `/`"));
        assert!(error(&["--verbose"]).contains("unknown option `--verbose`"));
    }

    #[test]
    fn help_wins_and_documents_every_flag() {
        assert!(matches!(parse([OsString::from("--help")]), Ok(Command::Help)));
        for flag in [
            "--binary",
            "--mode",
            "--connections",
            "--get",
            "--timeout",
            "--backoff",
            "--pause",
            "--restarts",
            "--warmup",
            "--interval",
            "--cooldown",
            "--ready-timeout",
            "--stop-timeout",
            "--settle",
            "--drain-delay",
            "--nginx",
            "--json",
            "--fail-on-errors",
            "--keep",
        ] {
            assert!(HELP.contains(flag), "{flag} is documented");
        }
        for mode in RestartMode::ALL {
            assert!(HELP.contains(&format!("        {mode} ")), "{mode} is documented");
        }
    }
}
