//! Configuration from flags and the environment, with errors that name the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, error::ErrorKind};

/// Everything the service reads at start.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) database_url: String,
    /// Whether `database_url` is PostgreSQL's (else SQLite's).
    pub(crate) postgres: bool,
    pub(crate) redis_url: Option<String>,
    pub(crate) etcd_endpoints: Vec<String>,
    /// The address other machines reach this instance at, and its key in etcd.
    pub(crate) advertise: String,
    pub(crate) drain_delay: Duration,
    pub(crate) shutdown_deadline: Duration,
    /// Where the serving process writes its id (rewritten by each upgrade).
    pub(crate) pid_file: Option<PathBuf>,
    /// Where operator commands are served (`lifecycle-ctl SOCKET reload|upgrade|status`).
    pub(crate) control_socket: Option<PathBuf>,
    /// PostgreSQL connections opened before the service turns ready.
    pub(crate) warm_connections: u32,
    /// Bind with `SO_REUSEPORT`, so a second instance can start on the same port.
    pub(crate) reuse_port: bool,
    /// HTTPS: the certificate chain and key files (PEM), when set.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// How often the TLS files are checked for a change (`None`: only at a reload, `SIGHUP`).
    pub(crate) tls_watch: Option<Duration>,
    /// Where `/livez`, `/readyz` and `/metrics` are served instead of the public address.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Client connections served at once on the public address (default: from the descriptor
    /// limit).
    pub(crate) max_connections: Option<usize>,
    /// Secrets given as flags: the flags named, for a warning, and the arguments a successor
    /// gets instead of this process's (the secrets go to its environment).
    pub(crate) secret_flags: Vec<&'static str>,
    /// The part of cache keys that tells deployments apart: `CACHE_NAMESPACE`, or the database
    /// the orders live in (without credentials).
    pub(crate) cache_namespace: String,
    pub(crate) successor_args: Vec<String>,
}

/// The command line and the environment; a flag wins over its variable, which wins over the
/// default. Every value is checked here, and a bad one is refused naming the setting.
#[derive(Parser, Debug)]
#[command(
    name = "orders",
    about = "An order service: HTTP API, database, cache, background worker, graceful everything",
    after_help = "Signals: SIGTERM or SIGINT drain and stop it (a second one stops at once); SIGUSR2 upgrades it \
                  to the binary now on disk without refusing a connection; SIGHUP reloads what can change \
                  without a restart (the TLS certificate)."
)]
struct Args {
    /// Address the public HTTP API listens on.
    #[arg(long = "listen", env = "LISTEN_ADDR", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database: postgres://… or postgresql://… (PostgreSQL and its job queue) or sqlite://… (a
    /// file). A secret: prefer the environment or DATABASE_URL_FILE to the flag, which every local
    /// user can read (ps). [default: sqlite://orders.db]
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the database URL (a mounted secret).
    #[arg(long, env = "DATABASE_URL_FILE", value_name = "PATH", conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
    /// Redis for a cache in front of reads (redis://…); no cache when unset. A secret, as above.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// etcd endpoints, comma-separated: the instance registers under /services/orders.
    #[arg(long, env = "ETCD_ENDPOINTS", value_name = "URLS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The address registered in etcd [default: the listen address, or this host's name and
    /// port when listening on every interface].
    #[arg(long, env = "ADVERTISE_ADDR", value_name = "HOST:PORT")]
    advertise_addr: Option<String>,
    /// Seconds unready but serving after a shutdown request, for balancers to notice (0 to 3600).
    #[arg(long, env = "DRAIN_DELAY", value_name = "SECONDS", default_value = "0", value_parser = bounded_seconds)]
    drain_delay: Duration,
    /// Seconds from a shutdown request to the end of the process, whatever hangs (0 to 3600).
    #[arg(long, env = "SHUTDOWN_DEADLINE", value_name = "SECONDS", default_value = "25", value_parser = bounded_seconds)]
    shutdown_deadline: Duration,
    /// Where the serving process writes its id (rewritten by each upgrade).
    #[arg(long, env = "PID_FILE", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// A Unix socket for `lifecycle-ctl SOCKET reload|upgrade|status`, which exits 0 only once
    /// the command took effect.
    #[arg(long, env = "CONTROL_SOCKET", value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// PostgreSQL connections opened before the service turns ready (0 to 20, of 20).
    #[arg(long, env = "DATABASE_WARM_CONNECTIONS", value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    database_warm_connections: u32,
    /// Bind with SO_REUSEPORT, so a second instance can start on the same port.
    /// (1/0, true/false, yes/no, on/off.)
    #[arg(long, env = "LISTEN_REUSEPORT", value_parser = clap::builder::BoolishValueParser::new())]
    listen_reuseport: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key-file.
    #[arg(long, env = "TLS_CERT_FILE", value_name = "PATH", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM); needs --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE", value_name = "PATH", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Seconds between checks of the TLS files for a new certificate (0: only at SIGHUP; 0 to 3600).
    #[arg(long, env = "TLS_WATCH", value_name = "SECONDS", default_value = "5", value_parser = bounded_seconds)]
    tls_watch: Duration,
    /// Serve /livez, /readyz and /metrics at this address, not on the public one.
    #[arg(long = "admin-listen", env = "ADMIN_LISTEN_ADDR", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Public connections served at once (1 to 1000000) [default: from the descriptor limit].
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Cache keys are orders:NAMESPACE:ID [default: the database's host, port and name].
    #[arg(long, env = "CACHE_NAMESPACE", value_name = "NAME")]
    cache_namespace: Option<String>,
}

/// The flags that carry a secret: warned about, and kept out of a successor's arguments.
const SECRET_FLAGS: [&str; 2] = ["--database-url", "--redis-url"];

impl Config {
    /// Flags win over the environment, which wins over the defaults. `--help` prints the
    /// settings and exits 0.
    pub(crate) fn load() -> Result<Self, String> {
        let raw: Vec<String> = std::env::args().collect();
        // An empty variable counts as unset, as it always did here (an upgrade clears
        // DATABASE_URL_FILE for its successor that way).
        let command = Args::command().mut_args(|arg| match arg.get_env() {
            Some(name) if std::env::var_os(name).is_some_and(|value| value.is_empty()) => {
                arg.env(None::<&str>)
            }
            _ => arg,
        });
        let matches = match command.try_get_matches_from(&raw) {
            Ok(matches) => matches,
            Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                error.exit()
            }
            Err(error) => {
                let text = error.render().to_string();
                return Err(text.trim_start_matches("error: ").trim_end().to_owned());
            }
        };
        let args = Args::from_arg_matches(&matches).map_err(|error| error.to_string())?;
        let from_flag = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let secret_flags: Vec<&'static str> =
            [("database_url", SECRET_FLAGS[0]), ("redis_url", SECRET_FLAGS[1])]
                .into_iter()
                .filter(|(id, _)| from_flag(id))
                .map(|(_, flag)| flag)
                .collect();
        let database_url = match (args.database_url.filter(|u| !u.is_empty()), args.database_url_file) {
            (Some(url), _) => url,
            (None, Some(file)) if !file.as_os_str().is_empty() => std::fs::read_to_string(&file)
                .map(|text| text.trim().to_owned())
                .map_err(|error| format!("DATABASE_URL_FILE `{}` cannot be read: {error}", file.display()))?,
            (None, _) => "sqlite://orders.db".into(),
        };
        let postgres = database_kind(&database_url)?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let advertise = advertised(args.listen, args.advertise_addr, hostname.trim())?;
        let cache_namespace = match args.cache_namespace.filter(|n| !n.is_empty()) {
            Some(namespace) => namespace,
            None => database_identity(&database_url),
        };
        let nonempty = |path: Option<PathBuf>| path.filter(|p| !p.as_os_str().is_empty());
        Ok(Self {
            cache_namespace,
            postgres,
            advertise,
            listen: args.listen,
            redis_url: args.redis_url.filter(|u| !u.is_empty()),
            etcd_endpoints: args
                .etcd_endpoints
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            database_url,
            drain_delay: args.drain_delay,
            shutdown_deadline: args.shutdown_deadline,
            pid_file: nonempty(args.pid_file),
            control_socket: nonempty(args.control_socket),
            warm_connections: args.database_warm_connections,
            reuse_port: args.listen_reuseport,
            tls: nonempty(args.tls_cert_file).zip(nonempty(args.tls_key_file)),
            tls_watch: Some(args.tls_watch).filter(|interval| !interval.is_zero()),
            admin_listen: args.admin_listen,
            max_connections: args.max_connections.and_then(|n| usize::try_from(n).ok()),
            secret_flags,
            successor_args: without_secrets(raw.get(1..).unwrap_or_default()),
        })
    }
}

/// The arguments a successor gets: these, without the secret flags and their values (the
/// secrets go to its environment instead).
fn without_secrets(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if SECRET_FLAGS.contains(&arg.as_str()) {
            args.next();
        } else if !SECRET_FLAGS.iter().any(|flag| arg.starts_with(&format!("{flag}="))) {
            kept.push(arg.clone());
        }
    }
    kept
}

/// The address to advertise: `ADVERTISE_ADDR` when set; else the listen address when it names
/// one; else (listening on every interface: `0.0.0.0:8080`, the same on every host) this host's
/// name with the port, so that two instances never share one key nor advertise `0.0.0.0`.
fn advertised(listen: SocketAddr, configured: Option<String>, hostname: &str) -> Result<String, String> {
    if let Some(address) = configured.filter(|a| !a.trim().is_empty()) {
        return Ok(address.trim().to_owned());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    if hostname.is_empty() {
        return Err(format!(
            "listening on {listen} (every interface) with no host name: set ADVERTISE_ADDR to the address \
             others reach this instance at"
        ));
    }
    Ok(format!("{hostname}:{}", listen.port()))
}

/// The database a URL names, without what could be secret: host, port and database for a
/// server (`127.0.0.1:5432/orders`), the absolute path for a SQLite file.
fn database_identity(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    if url.to_ascii_lowercase().starts_with("sqlite") {
        let file = rest.split(['?', '#']).next().unwrap_or(rest).trim_start_matches("sqlite:");
        let path = std::path::Path::new(file);
        return std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_owned())
            .display()
            .to_string();
    }
    // The user information ends at the last `@` (a password may hold `@`, `?` or `#`), the
    // database at the query.
    let server = rest.rsplit_once('@').map_or(rest, |(_, server)| server);
    server.split(['?', '#']).next().unwrap_or(server).to_owned()
}

/// The longest duration a setting takes: beyond it, a typo (`1e20`) rather than a wish.
const LONGEST_SECONDS: f64 = 3_600.0;

/// A number of seconds from 0 to [`LONGEST_SECONDS`]; clap names the setting in its error.
fn bounded_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=LONGEST_SECONDS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected a number of seconds from 0 to {LONGEST_SECONDS}"))
}

/// Whether the database URL is PostgreSQL's (true) or SQLite's (false); anything else is an
/// error naming the setting, rather than a SQLite file named after the typo.
fn database_kind(url: &str) -> Result<bool, String> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase()).unwrap_or_default();
    match scheme.as_str() {
        "postgres" | "postgresql" => Ok(true),
        "sqlite" => Ok(false),
        _ => Err(format!(
            "database URL (DATABASE_URL or --database-url) has no known scheme: expected postgres://… or \
             sqlite://…, as in sqlite://orders.db (`{}`)",
            lifecycle_core::redact_url(url)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_known_by_their_scheme_or_refused() {
        assert_eq!(database_kind("postgres://u@h/db"), Ok(true));
        assert_eq!(database_kind("PostgreSQL://u@h/db"), Ok(true));
        assert_eq!(database_kind("sqlite://orders.db"), Ok(false));
        assert_eq!(database_kind("sqlite::memory:"), Ok(false));
        let error = database_kind("orders").unwrap_err();
        assert!(
            error.starts_with("database URL (DATABASE_URL or --database-url) has no known scheme"),
            "{error}"
        );
        let error = database_kind("mysql://u:secret@h/db").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn the_advertised_address_is_never_every_interface() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let one: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        assert_eq!(advertised(any, None, "web-3"), Ok("web-3:8080".to_owned()));
        assert_eq!(advertised(one, None, "web-3"), Ok("10.0.0.7:8080".to_owned()));
        assert_eq!(advertised(any, Some("192.0.2.1:80".into()), "web-3"), Ok("192.0.2.1:80".to_owned()));
        assert!(advertised(any, None, "").unwrap_err().contains("set ADVERTISE_ADDR"));
    }

    #[test]
    fn cache_namespaces_name_the_database_without_credentials() {
        assert_eq!(
            database_identity("postgres://orders:p@ss/w?rd#@db.internal:5432/orders?sslmode=require"),
            "db.internal:5432/orders"
        );
        assert_eq!(database_identity("postgresql://db:5432/shop"), "db:5432/shop");
        let sqlite = database_identity("sqlite://orders.db");
        assert!(sqlite.starts_with('/') && sqlite.ends_with("/orders.db"), "{sqlite}");
    }

    /// Parses `args` (after the program's name) with no variable of the environment.
    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let command = Args::command();
        // Only the command line: the test process's environment must not leak in.
        let command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command.try_get_matches_from(std::iter::once("orders").chain(args.iter().copied()))?;
        Args::from_arg_matches(&matches)
    }

    #[test]
    fn durations_are_bounded_and_name_their_setting() {
        assert_eq!(bounded_seconds("2.5"), Ok(Duration::from_millis(2_500)));
        for bad in ["1e20", "-1", "NaN", "inf", "soon", "3601"] {
            let error = parse(&[&format!("--drain-delay={bad}")]).unwrap_err().to_string();
            assert!(error.contains("--drain-delay <SECONDS>"), "{error}");
            assert!(error.contains("expected a number of seconds from 0 to 3600"), "{error}");
        }
    }

    #[test]
    fn counts_are_bounded_and_https_needs_both_files() {
        for (flag, bad) in [
            ("--max-connections", "0"),
            ("--max-connections", "1000001"),
            ("--database-warm-connections", "21"),
        ] {
            let error = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
        let error = parse(&["--tls-cert-file", "c.pem"]).unwrap_err().to_string();
        assert!(error.contains("--tls-key-file"), "{error}");
        let args = parse(&["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem", "--max-connections", "10"])
            .unwrap();
        assert_eq!(args.max_connections, Some(10));
        assert!(parse(&["--database-url", "sqlite://a.db", "--database-url-file", "f"]).is_err());
    }

    #[test]
    fn a_successor_gets_no_secret_in_its_arguments() {
        let args: Vec<String> = [
            "--listen",
            "127.0.0.1:1",
            "--database-url",
            "postgres://u:p@h/d",
            "--redis-url=redis://:p@h",
            "--pid-file",
            "f",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        assert_eq!(without_secrets(&args), ["--listen", "127.0.0.1:1", "--pid-file", "f"]);
    }
}
