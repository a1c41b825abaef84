//! Configuration from flags and the environment, with errors that name the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

const USAGE: &str = "usage: orders [--listen ADDR] [--database-url URL] [--redis-url URL] [--drain-delay SECONDS] \
                     [--shutdown-deadline SECONDS] [--pid-file PATH]\n\
                     environment: LISTEN_ADDR, DATABASE_URL (default sqlite://orders.db) or DATABASE_URL_FILE (a file holding \
                     it: secrets stay out of the arguments every local user can read), REDIS_URL (no cache when unset), \
                     ETCD_ENDPOINTS (comma-separated; registers under /services/orders when set), ADVERTISE_ADDR (the \
                     address registered; default the listen address, or this host's name and port when listening on \
                     every interface), DRAIN_DELAY, SHUTDOWN_DEADLINE, \
                     PID_FILE, CONTROL_SOCKET (a Unix socket for `lifecycle-ctl SOCKET reload|upgrade|status`, \
                     which exits 0 only once the command took effect), LISTEN_REUSEPORT=1 (bind with SO_REUSEPORT), \
                     DATABASE_WARM_CONNECTIONS (PostgreSQL connections opened before ready, default 16 of 20), \
                     TLS_CERT_FILE and TLS_KEY_FILE (PEM; serve HTTPS, and pick up new files at SIGHUP, and within \
                     TLS_WATCH seconds, default 5, 0 for only at SIGHUP), \
                     ADMIN_LISTEN_ADDR (serve /livez, /readyz, /metrics there, not on the public address), \
                     MAX_CONNECTIONS (public connections served at once, 1 to 1000000), \
                     CACHE_NAMESPACE (cache keys are orders:<namespace>:<id>; default: the database's host, port and name)\n\
                     SIGUSR2: zero-downtime upgrade to the binary now on disk; SIGHUP: reload (TLS certificate)";

impl Config {
    /// Flags win over the environment, which wins over the defaults.
    pub(crate) fn load() -> Result<Self, String> {
        let mut listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let mut database_url = database_url_from_environment()?;
        let mut redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        let mut drain_delay = std::env::var("DRAIN_DELAY").unwrap_or_else(|_| "0".into());
        let mut shutdown_deadline = std::env::var("SHUTDOWN_DEADLINE").unwrap_or_else(|_| "25".into());
        let mut pid_file = std::env::var("PID_FILE").unwrap_or_default();
        let warm = std::env::var("DATABASE_WARM_CONNECTIONS").unwrap_or_else(|_| "16".into());
        let warm_connections = warm
            .parse::<u32>()
            .ok()
            .filter(|&n| n <= 20)
            .ok_or_else(|| format!("DATABASE_WARM_CONNECTIONS is `{warm}`: expected 0 to 20"))?;
        let reuse_port = match std::env::var("LISTEN_REUSEPORT").unwrap_or_default().as_str() {
            "" | "0" => false,
            "1" => true,
            other => return Err(format!("LISTEN_REUSEPORT is `{other}`: expected 0 or 1")),
        };
        let mut args = std::env::args().skip(1);
        let (mut secret_flags, mut successor_args) = (Vec::new(), Vec::new());
        while let Some(flag) = args.next() {
            if !matches!(flag.as_str(), "--database-url" | "--redis-url") {
                successor_args.push(flag.clone());
            }
            let slot = match flag.as_str() {
                "--listen" => &mut listen,
                "--database-url" => {
                    secret_flags.push("--database-url");
                    &mut database_url
                }
                "--drain-delay" => &mut drain_delay,
                "--shutdown-deadline" => &mut shutdown_deadline,
                "--pid-file" => &mut pid_file,
                "--redis-url" => {
                    secret_flags.push("--redis-url");
                    redis_url =
                        Some(args.next().ok_or_else(|| format!("--redis-url needs a value\n{USAGE}"))?);
                    continue;
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            };
            *slot = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            if !matches!(flag.as_str(), "--database-url") {
                successor_args.push(slot.clone());
            }
        }
        let postgres = database_kind(&database_url)?;
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| format!("listen address `{listen}` (LISTEN_ADDR or --listen): {e}"))?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let advertise = advertised(listen, std::env::var("ADVERTISE_ADDR").ok(), hostname.trim())?;
        let cache_namespace = match std::env::var("CACHE_NAMESPACE").unwrap_or_default() {
            namespace if namespace.is_empty() => database_identity(&database_url),
            namespace => namespace,
        };
        Ok(Self {
            cache_namespace,
            postgres,
            advertise,
            listen,
            database_url,
            redis_url,
            etcd_endpoints: std::env::var("ETCD_ENDPOINTS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            drain_delay: seconds(&drain_delay, "drain delay (DRAIN_DELAY or --drain-delay)")?,
            shutdown_deadline: seconds(
                &shutdown_deadline,
                "shutdown deadline (SHUTDOWN_DEADLINE or --shutdown-deadline)",
            )?,
            pid_file: (!pid_file.is_empty()).then(|| pid_file.into()),
            control_socket: std::env::var_os("CONTROL_SOCKET")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            reuse_port,
            warm_connections,
            tls: tls_files(std::env::var("TLS_CERT_FILE").ok(), std::env::var("TLS_KEY_FILE").ok())?,
            tls_watch: Some(seconds(
                &std::env::var("TLS_WATCH").unwrap_or_else(|_| "5".into()),
                "TLS file check interval (TLS_WATCH)",
            )?)
            .filter(|interval| !interval.is_zero()),
            admin_listen: match std::env::var("ADMIN_LISTEN_ADDR").unwrap_or_default() {
                admin if admin.is_empty() => None,
                admin => Some(
                    admin.parse().map_err(|e| format!("admin address `{admin}` (ADMIN_LISTEN_ADDR): {e}"))?,
                ),
            },
            secret_flags,
            successor_args,
            max_connections: match std::env::var("MAX_CONNECTIONS").unwrap_or_default() {
                max if max.is_empty() => None,
                max => Some(
                    max.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| format!("MAX_CONNECTIONS is `{max}`: expected 1 to 1000000"))?,
                ),
            },
        })
    }
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

/// The database URL from `DATABASE_URL`, or read from the file `DATABASE_URL_FILE` names (a
/// mounted secret), or SQLite's default; never both variables.
fn database_url_from_environment() -> Result<String, String> {
    let from_variable = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let file = std::env::var("DATABASE_URL_FILE").ok().filter(|f| !f.is_empty());
    match (from_variable, file) {
        (Some(_), Some(_)) => Err("DATABASE_URL and DATABASE_URL_FILE are both set: set one".into()),
        (Some(url), None) => Ok(url),
        (None, Some(file)) => std::fs::read_to_string(&file)
            .map(|text| text.trim().to_owned())
            .map_err(|error| format!("DATABASE_URL_FILE `{file}` cannot be read: {error}")),
        (None, None) => Ok("sqlite://orders.db".into()),
    }
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

/// HTTPS files: both or neither.
fn tls_files(cert: Option<String>, key: Option<String>) -> Result<Option<(PathBuf, PathBuf)>, String> {
    match (cert.filter(|c| !c.is_empty()), key.filter(|k| !k.is_empty())) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((cert.into(), key.into()))),
        (Some(_), None) => Err("TLS_CERT_FILE is set but TLS_KEY_FILE is not: HTTPS needs both".into()),
        (None, Some(_)) => Err("TLS_KEY_FILE is set but TLS_CERT_FILE is not: HTTPS needs both".into()),
    }
}

/// The longest duration a setting takes: beyond it, a typo (`1e20`) rather than a wish.
const LONGEST_SECONDS: f64 = 3_600.0;

fn seconds(text: &str, what: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=LONGEST_SECONDS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!("{what} is `{text}`: expected a number of seconds from 0 to {LONGEST_SECONDS}")
        })
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

    #[test]
    fn https_needs_both_files() {
        assert_eq!(tls_files(None, Some(String::new())), Ok(None));
        assert!(tls_files(Some("c.pem".into()), Some("k.pem".into())).is_ok_and(|f| f.is_some()));
        assert!(tls_files(Some("c.pem".into()), None).unwrap_err().contains("TLS_KEY_FILE is not"));
        assert!(tls_files(None, Some("k.pem".into())).unwrap_err().contains("TLS_CERT_FILE is not"));
    }

    #[test]
    fn durations_are_bounded_and_name_their_setting() {
        assert_eq!(seconds("2.5", "drain delay"), Ok(Duration::from_millis(2_500)));
        for bad in ["1e20", "-1", "NaN", "inf", "soon", "3601"] {
            let error = seconds(bad, "drain delay (DRAIN_DELAY)").unwrap_err();
            assert!(error.starts_with("drain delay (DRAIN_DELAY) is"), "{error}");
        }
    }
}
