//! An nginx the drill runs as its own child, in a directory of its own, proxying one port to the
//! instance that serves: the blue-green deployment the other modes are compared with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::Error;
use crate::process::{self, Logs};

/// A running nginx.
#[derive(Debug)]
pub(crate) struct Nginx {
    binary: PathBuf,
    dir: PathBuf,
    /// The port clients connect to.
    pub(crate) port: u16,
    master: Pid,
}

impl Nginx {
    /// The nginx executable: `explicit`, else `nginx` on `PATH`, else the Debian location.
    pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf, Error> {
        if let Some(path) = explicit {
            if !path.is_file() {
                return Err(format!("--nginx {}: no such file", path.display()).into());
            }
            return Ok(path.to_path_buf());
        }
        // /usr/sbin is often missing from a non-root PATH, and it is where Debian puts nginx.
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/usr/local/nginx/sbin".into()])
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                "--mode nginx needs nginx, which is not installed: run `apt-get install nginx` \
                 (or give its path with --nginx PATH)"
                    .into()
            })
    }

    /// Starts nginx on a free port in front of the instance on `upstream`, and waits until
    /// `/readyz` answers 200 through it.
    pub(crate) async fn start(
        binary: PathBuf,
        dir: &Path,
        upstream: u16,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("temp"))
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let port = process::free_port()?;
        let mut nginx = Self { binary, dir, port, master: Pid::from_raw(0) };
        nginx.write_config(upstream)?;
        let mut command = nginx.command();
        nginx.master = process::spawn(&mut command, &Logs::new(&nginx.dir, "nginx"))?;
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        while !crate::service::is_ready(address).await {
            if let Some(exit) = process::reap(nginx.master)? {
                return Err(format!(
                    "nginx ended ({exit}) before serving: see {}",
                    nginx.error_log().display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx did not answer 200 on /readyz within {timeout:?}: see {}",
                    nginx.error_log().display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(nginx)
    }

    /// The error log, for messages on failure.
    pub(crate) fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Where the error log of an nginx started in the drill's directory `dir` is.
    pub(crate) fn error_log_in(dir: &Path) -> PathBuf {
        dir.join("nginx").join("error.log")
    }

    /// Points the upstream at `upstream`, reloads, and waits until the workers that still used
    /// the old upstream have exited: past that point no request can reach the old instance.
    pub(crate) async fn switch(&self, upstream: u16, timeout: Duration) -> Result<(), Error> {
        let old_workers = process::children(self.master);
        self.write_config(upstream)?;
        let mut reload = self.command();
        reload.args(["-s", "reload"]);
        let output = tokio::task::spawn_blocking(move || reload.output())
            .await
            .map_err(|error| format!("nginx -s reload: {error}"))?
            .map_err(|error| format!("cannot run nginx -s reload: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "nginx -s reload failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        if old_workers.is_empty() {
            // The kernel does not list children (no CONFIG_PROC_CHILDREN): give the old workers
            // time to finish their requests instead.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        for worker in old_workers {
            if process::wait_exit(worker, deadline.saturating_duration_since(Instant::now())).await?.is_none()
            {
                return Err(format!(
                    "nginx's old worker (pid {worker}) still runs {timeout:?} after the reload: see {}",
                    self.error_log().display()
                )
                .into());
            }
        }
        Ok(())
    }

    /// Stops nginx gracefully (SIGQUIT) and waits for its exit.
    pub(crate) async fn stop(self, timeout: Duration) -> Result<(), Error> {
        process::send(self.master, Signal::SIGQUIT)?;
        if process::wait_exit(self.master, timeout).await?.is_none() {
            // Best effort: the error says what matters.
            let _ = process::send(self.master, Signal::SIGKILL);
            return Err(format!("nginx did not exit within {timeout:?} of SIGQUIT; killed it").into());
        }
        Ok(())
    }

    /// `nginx` with the prefix, configuration and error log in the drill's directory, so that it
    /// runs as any user and touches nothing of the system's nginx.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-e")
            .arg(self.error_log());
        command
    }

    /// Writes the configuration, replacing the old one in one rename so that a reload never
    /// reads half a file.
    fn write_config(&self, upstream: u16) -> Result<(), Error> {
        let config = config(&self.dir, self.port, upstream);
        let path = self.dir.join("nginx.conf");
        let partial = self.dir.join("nginx.conf.partial");
        std::fs::write(&partial, config)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|error| format!("cannot write {}: {error}", path.display()).into())
    }
}

/// The configuration: one worker, in the foreground, every path inside `dir`, a keep-alive
/// upstream as a production proxy would have.
fn config(dir: &Path, port: u16, upstream: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;

    upstream service {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_every_path_in_its_directory_and_proxies_to_the_upstream() {
        let config = config(Path::new("/tmp/drill/nginx"), 8000, 9001);
        assert!(config.contains("listen 127.0.0.1:8000;"));
        assert!(config.contains("server 127.0.0.1:9001;"));
        let paths: Vec<&str> = config
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|value| value.starts_with('/') && value.len() > 1)
            .collect();
        assert_eq!(paths.len(), 7, "pid, error log and five temporary paths: {paths:?}");
        assert!(paths.iter().all(|path| path.starts_with("/tmp/drill/nginx/")), "{paths:?}");
    }
}
