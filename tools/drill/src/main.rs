//! Run with `cargo run --release -p lifecycle-drill -- --binary target/release/orders --mode graceful`:
//! the restart drill. It runs a service under keep-alive load, restarts it R times in one mode
//! (handoff, graceful, kill, reuseport, nginx) and reports every failed request by kind, the
//! latency in and out of restarts, the longest gap without a success and each restart's timing.
//! `--help` lists every option and the service contract.

mod cli;
mod drill;
mod load;
mod nginx;
mod process;
mod report;
mod service;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use cli::{Command, JsonOutput, Options};

/// Any error of the drill; each says what failed and where, for a person to read.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// The drill itself failed (see `--help`).
const DRILL_FAILED: u8 = 2;

fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(options)) => run(&options),
        Err(error) => {
            eprintln!("lifecycle-drill: {error}");
            ExitCode::from(DRILL_FAILED)
        }
    }
}

fn run(options: &Options) -> ExitCode {
    let dir = match working_directory() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("lifecycle-drill: {error}");
            return ExitCode::from(DRILL_FAILED);
        }
    };
    let outcome = process::become_subreaper().and_then(|()| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(drill::run(options, &dir))
    });
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("lifecycle-drill: {error}");
            show_logs(&dir);
            return ExitCode::from(DRILL_FAILED);
        }
    };

    // With the JSON on standard output, the table moves to standard error.
    match options.json {
        Some(JsonOutput::Stdout) => eprint!("\n{report}"),
        _ => print!("\n{report}"),
    }
    if let Err(error) = options.json.as_ref().map_or(Ok(()), |output| write_json(&report, output)) {
        eprintln!("lifecycle-drill: {error}");
        show_logs(&dir);
        return ExitCode::from(DRILL_FAILED);
    }
    if report.error.is_some() {
        show_logs(&dir);
        return ExitCode::from(DRILL_FAILED);
    }
    if options.keep {
        eprintln!("kept {}", dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&dir) {
        eprintln!("lifecycle-drill: cannot remove {}: {error}", dir.display());
    }
    if options.fail_on_errors && report.requests.failed > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A new directory for this run's logs, database, PID files and nginx configuration.
fn working_directory() -> Result<PathBuf, Error> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("lifecycle-drill-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    Ok(dir)
}

fn write_json(report: &report::Report, output: &JsonOutput) -> Result<(), Error> {
    let json = report.json()? + "\n";
    match output {
        JsonOutput::Stdout => print!("{json}"),
        JsonOutput::File(path) => {
            std::fs::write(path, json).map_err(|error| format!("cannot write {}: {error}", path.display()))?
        }
    }
    Ok(())
}

/// After a failure: where everything is kept, and the end of each log. A directory that is
/// still empty (the drill failed before starting anything) is removed instead.
fn show_logs(dir: &Path) {
    if std::fs::remove_dir(dir).is_ok() {
        return;
    }
    eprintln!("kept the working directory {}", dir.display());
    for log in service::logs(dir) {
        eprintln!("\n--- last lines of {} ---\n{}", log.display(), process::tail(&log, 30));
    }
}
