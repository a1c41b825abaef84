//! A reload runs every running component's reload hook in dependency order, and whatever a
//! reload does (fail, panic, hang), the service runs on as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lifecycle_core::testing::{TestRun, assert_clean, eventually, within};
use lifecycle_core::{ComponentOptions, Failure, Phase, ReloadCause, ReloadError, ReloadOutcome, Stage};
use support::{Hook, Log, Probe, builder, is_stopped};

fn outcome_of<'a>(report: &'a lifecycle_core::ReloadReport, name: &str) -> &'a ReloadOutcome {
    &report
        .components
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .unwrap_or_else(|| panic!("{name} in {report}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_runs_every_running_components_hook_after_what_it_depends_on() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("api", &log).deps(&["cache", "db"]).reload(Hook::Sleep(Duration::from_millis(5))));
    b.add(Probe::new("cache", &log).deps(&["db"]).reload(Hook::Sleep(Duration::from_millis(20))));
    b.add(Probe::new("db", &log).reload(Hook::Sleep(Duration::from_millis(20))));
    let mut run = TestRun::start(b);
    run.ready().await;

    let report = within("the reload", Duration::from_secs(5), run.handle().reload()).await.unwrap();
    assert!(report.is_success(), "{report}");
    assert_eq!(report.cause, ReloadCause::Requested);
    assert_eq!(report.components.len(), 3, "{report}");
    assert_eq!(log.order("reload-begin"), ["db", "cache", "api"]);
    assert!(log.at("db", "reload-end") <= log.at("cache", "reload-begin"));
    assert!(log.at("cache", "reload-end") <= log.at("api", "reload-begin"));
    assert_eq!(run.handle().reload_counts().total, 1);
    assert_eq!(run.handle().reload_counts().failed, 0);
    assert_eq!(run.handle().phase(), Phase::Ready);
    assert!(run.handle().components().iter().all(|c| c.stage == Some(Stage::Running)));
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_panics_or_hangs_leaves_its_component_running_and_says_so() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("config", &log).reload(Hook::Fail));
    b.add(Probe::new("certs", &log).reload(Hook::Panic));
    b.add(
        Probe::new("slow", &log)
            .reload(Hook::Hang)
            .options(ComponentOptions::new().start_timeout(Duration::from_millis(100))),
    );
    b.add(Probe::new("api", &log).deps(&["config", "certs", "slow"]));
    let mut run = TestRun::start(b);
    run.ready().await;

    let report = within("the reload", Duration::from_secs(5), run.handle().reload()).await.unwrap();
    assert!(!report.is_success());
    assert!(
        matches!(outcome_of(&report, "config"), ReloadOutcome::Failed(Failure::Error(e)) if e.to_string().contains("reload of config failed")),
        "{report}"
    );
    assert!(matches!(outcome_of(&report, "certs"), ReloadOutcome::Failed(Failure::Panic(_))), "{report}");
    assert!(matches!(outcome_of(&report, "slow"), ReloadOutcome::Failed(Failure::TimedOut(_))), "{report}");
    // What depends on them still reloads, with what they have.
    assert!(matches!(outcome_of(&report, "api"), ReloadOutcome::Reloaded), "{report}");
    let text = report.to_string();
    assert!(text.contains("1 of 4 components reloaded"), "{text}");
    assert!(text.contains("config:") && text.contains("certs:") && text.contains("slow:"), "{text}");
    assert_eq!(run.handle().reload_counts().failed, 1);

    // Nothing stopped: the service is ready, every component runs, and a second reload works.
    assert_eq!(run.handle().phase(), Phase::Ready);
    assert!(run.handle().is_ready());
    assert!(run.handle().components().iter().all(|c| c.stage == Some(Stage::Running)));
    let again = within("a second reload", Duration::from_secs(5), run.handle().reload()).await.unwrap();
    assert_eq!(again.components.len(), 4);
    assert_eq!(run.handle().reload_counts().total, 2);

    // The final report is a success (a reload is not the component's failure) and keeps a note.
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(report.exit_code, 0);
    assert!(is_stopped(&report, "config"), "{report}");
    let config = report.components.iter().find(|c| c.name.as_str() == "config").unwrap();
    assert!(config.notes.iter().any(|n| n.contains("reload on request failed")), "{:?}", config.notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_asked_for_during_the_start_run_once_when_it_is_ready() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).start(Hook::Sleep(Duration::from_millis(200))));
    let run = TestRun::start(b);
    let handle = run.handle().clone();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.reload().await })
        })
        .collect();
    for request in requests {
        let report = within("a reload queued during the start", Duration::from_secs(5), request)
            .await
            .unwrap()
            .unwrap();
        assert!(report.is_success(), "{report}");
    }
    assert!(log.at("db", "start-end") <= log.at("db", "reload-begin"), "the reload waited for the start");
    assert_eq!(log.order("reload-begin").len(), 1, "five requests, one reload");
    assert_eq!(handle.reload_counts().total, 1);
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_cancels_a_reload_in_progress_and_refuses_the_next() {
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).reload(Hook::Hang));
    let mut run = TestRun::start(b);
    run.ready().await;
    let handle = run.handle().clone();
    let reload = tokio::spawn({
        let handle = handle.clone();
        async move { handle.reload().await }
    });
    eventually("the reload hook to begin", Duration::from_secs(5), || log.at("db", "reload-begin").is_some())
        .await;
    handle.shutdown().request("test", 0);
    let report = within("the cancelled reload", Duration::from_secs(5), reload).await.unwrap().unwrap();
    assert!(matches!(outcome_of(&report, "db"), ReloadOutcome::Cancelled), "{report}");
    assert!(!report.has_failure(), "cut short, not failed: {report}");
    let counts = handle.reload_counts();
    assert_eq!((counts.total, counts.failed), (1, 0), "counted, not as failed");
    assert_eq!(handle.reload().await.unwrap_err(), ReloadError::ShuttingDown);
    let report = within("the stop", Duration::from_secs(5), run.finished()).await;
    assert!(report.is_success(), "{report}");
    assert!(is_stopped(&report, "db"), "{report}");
    assert_eq!(handle.reload().await.unwrap_err(), ReloadError::ShuttingDown);
}
