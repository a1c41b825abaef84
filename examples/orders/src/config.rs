//! Configuration from flags and the environment, with errors that name the setting.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything the service reads at start.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) database_url: String,
    pub(crate) redis_url: Option<String>,
    pub(crate) etcd_endpoints: Vec<String>,
    pub(crate) drain_delay: Duration,
    pub(crate) shutdown_deadline: Duration,
}

const USAGE: &str = "usage: orders [--listen ADDR] [--database-url URL] [--redis-url URL] [--drain-delay SECONDS] \
                     [--shutdown-deadline SECONDS]\n\
                     environment: LISTEN_ADDR, DATABASE_URL (default sqlite://orders.db), REDIS_URL (no cache when unset), \
                     ETCD_ENDPOINTS (comma-separated; registers under /services/orders when set), DRAIN_DELAY, SHUTDOWN_DEADLINE";

impl Config {
    /// Flags win over the environment, which wins over the defaults.
    pub(crate) fn load() -> Result<Self, String> {
        let mut listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let mut database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://orders.db".into());
        let mut redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        let mut drain_delay = std::env::var("DRAIN_DELAY").unwrap_or_else(|_| "0".into());
        let mut shutdown_deadline = std::env::var("SHUTDOWN_DEADLINE").unwrap_or_else(|_| "25".into());
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let slot = match flag.as_str() {
                "--listen" => &mut listen,
                "--database-url" => &mut database_url,
                "--drain-delay" => &mut drain_delay,
                "--shutdown-deadline" => &mut shutdown_deadline,
                "--redis-url" => {
                    redis_url =
                        Some(args.next().ok_or_else(|| format!("--redis-url needs a value\n{USAGE}"))?);
                    continue;
                }
                "--help" | "-h" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            };
            *slot = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        }
        Ok(Self {
            listen: listen
                .parse()
                .map_err(|e| format!("listen address `{listen}` (LISTEN_ADDR or --listen): {e}"))?,
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
        })
    }
}

fn seconds(text: &str, what: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{what} is `{text}`: expected a number of seconds"))
}
