//! The drill's sequence: start the service, warm up, restart it between stretches of steady
//! load, cool down, stop everything, and put the report together.

use std::path::Path;
use std::sync::Arc;

use crate::Error;
use crate::cli::Options;
use crate::load::{Load, LoadOptions, RestartWindows};
use crate::report::{Report, Timed};
use crate::service::Service;

/// Runs the drill in `dir`. An error before the load starts (the service never became ready)
/// is returned as such; after that, the load is stopped, the service too, and the report says
/// what went wrong next to what was measured until then.
pub(crate) async fn run(options: &Options, dir: &Path) -> Result<Report, Error> {
    let mut service = Service::start(options, dir).await?;
    eprintln!("{}: serving on {}, load starting", options.mode, service.address());
    let windows = Arc::new(RestartWindows::default());
    let load = Load::start(
        LoadOptions {
            address: service.address(),
            connections: options.connections,
            target: options.target.clone(),
            timeout: options.timeout,
            backoff: options.backoff,
            pause: options.pause,
        },
        Arc::clone(&windows),
    );
    tokio::time::sleep(options.warmup).await;

    let mut restarts = Vec::with_capacity(options.restarts);
    let mut error = None;
    for i in 0..options.restarts {
        if i > 0 {
            tokio::time::sleep(options.interval).await;
        }
        let at = load.elapsed();
        windows.open();
        let outcome = service.restart().await;
        windows.close();
        match outcome {
            Ok(restart) => {
                eprintln!(
                    "restart {}/{}: ready in {:.1} ms, done in {:.1} ms, pid {} ({}) -> {}",
                    i + 1,
                    options.restarts,
                    restart.ready.as_secs_f64() * 1000.0,
                    restart.done.as_secs_f64() * 1000.0,
                    restart.old_pid,
                    restart.old_exit,
                    restart.new_pid
                );
                restarts.push(Timed { at, restart });
            }
            Err(failed) => {
                error = Some(format!("restart {}: {failed}", i + 1));
                break;
            }
        }
    }
    if error.is_none() {
        tokio::time::sleep(options.cooldown).await;
    }

    let totals = load.stop().await?;
    let service_exit = match service.stop().await {
        Ok(exit) => Some(exit.to_string()),
        Err(failed) => {
            error.get_or_insert_with(|| format!("stopping the service: {failed}"));
            None
        }
    };
    Ok(Report::new(options, &totals, &restarts, service_exit, error))
}
