//! `lifecycle-ctl`: sends one command to a service's control socket
//! (`lifecycle_handoff::ControlSocket`) and exits 0 only once it took effect.
//!
//! ```text
//! lifecycle-ctl [--timeout SECONDS] SOCKET reload|upgrade|status
//! ```
//!
//! Exit codes: 0 done (the answer on standard output), 1 refused (the reason on standard
//! error), 2 no answer (no service at the socket, or none in time), 64 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lifecycle_handoff::{CommandError, send_command};

const USAGE: &str = "usage: lifecycle-ctl [--timeout SECONDS] SOCKET reload|upgrade|status\n\
                     sends the command to the service's control socket and waits for it to take effect \
                     (default timeout 60 s)\n\
                     exit codes: 0 done, 1 refused (with the reason), 2 no answer, 64 bad usage";

/// What the command line asks for.
struct Request {
    socket: PathBuf,
    command: String,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Option<Request>, String> {
    let mut timeout = Duration::from_secs(60);
    let mut positional = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a number of seconds")?;
                let seconds: f64 =
                    value.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86_400.0).ok_or(
                        format!("--timeout is `{value}`: expected seconds, more than 0 and at most 86400"),
                    )?;
                timeout = Duration::from_secs_f64(seconds);
            }
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other => positional.push(other.to_owned()),
        }
    }
    match <[String; 2]>::try_from(positional) {
        Ok([socket, command]) if ["reload", "upgrade", "status"].contains(&command.as_str()) => {
            Ok(Some(Request { socket: socket.into(), command, timeout }))
        }
        Ok([_, command]) => Err(format!("unknown command `{command}`; use reload, upgrade or status")),
        Err(_) => Err("expected a socket path and a command".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let request = match parse(&args) {
        Ok(Some(request)) => request,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("error: {error}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(send_command(&request.socket, &request.command, request.timeout)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(CommandError::Refused(reason)) => {
            eprintln!("{} refused: {reason}", request.command);
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
