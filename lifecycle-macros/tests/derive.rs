//! A derived component behaves exactly like the same component written by hand: same name,
//! dependencies, options, hook order, timeouts and report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::testing::{self, TestRun, builder};
use lifecycle_core::{
    BoxError, Close, Component, ComponentId, ComponentOptions, Context, Dep, Dependency, Failure, Health,
    Outcome, Registry, Report, RestartPolicy, Stage,
};

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, event: impl Into<String>) {
    log.lock().unwrap().push(event.into());
}

/// A resource that records when it is closed.
struct Resource {
    name: &'static str,
    log: Log,
    fail: bool,
}

impl Close for Resource {
    async fn close(&self) -> Result<(), BoxError> {
        push(&self.log, format!("close {}", self.name));
        if self.fail { Err(format!("{} would not close", self.name).into()) } else { Ok(()) }
    }
}

// ---- derived ---------------------------------------------------------------------------------

#[derive(Component)]
#[component(name = "db", start = connect, stop = disconnect, health = ping, start_timeout = "2s", stop_timeout = "150ms")]
struct DerivedDb {
    log: Log,
    #[component(close)]
    pool: Resource,
    #[component(close)]
    journal: Resource,
    hang_on_stop: bool,
}

impl DerivedDb {
    async fn connect(&self, ctx: &Context) -> Result<(), BoxError> {
        push(&self.log, format!("start {}", ctx.name()));
        Ok(())
    }

    async fn disconnect(&self) -> Result<(), std::io::Error> {
        push(&self.log, "stop db");
        if self.hang_on_stop {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn ping(&self) -> Health {
        Health::Degraded("replica lag".into())
    }
}

#[derive(Component)]
#[component(start = Self::begin, critical = false)]
struct DerivedWorker {
    db: Dep<DerivedDb>,
    log: Log,
}

impl DerivedWorker {
    async fn begin(&self, ctx: &Context) -> Result<(), BoxError> {
        push(&self.log, format!("start {} after {}", ctx.name(), self.db.dep_name()));
        Ok(())
    }
}

impl DerivedDb {
    fn dep_name(&self) -> &'static str {
        "db"
    }
}

/// No hooks at all: only resource fields, which are still closed.
#[derive(Component)]
struct Holder {
    #[component(close)]
    token: lifecycle_core::CancellationToken,
    #[component(skip)]
    _unrelated: Option<Dep<DerivedDb>>,
}

/// Restarted after a failure, with its own backoff and budget.
#[derive(Component)]
#[component(restart = "on_failure", backoff = "10ms..40ms", max_restarts = "3 per 1m")]
struct Restarting;

/// Every restart key, on a tuple struct.
#[derive(Component)]
#[component(
    critical = false,
    restart = "on_failure",
    jitter = 0,
    backoff = "1.5s..1m",
    max_restarts = "10 per 1h"
)]
struct Jittered(#[component(optional)] Dep<Restarting>);

/// Keeps running while the database is down: both dependencies are optional.
#[derive(Component)]
#[component(restart = "never")]
struct Enricher {
    #[component(optional)]
    db: Dep<DerivedDb>,
    #[component(dep, optional)]
    worker: WorkerDep,
}

/// Ends the run once it is done (a batch job); a bare key means true.
#[derive(Component)]
#[component(run_to_completion)]
struct Batch;

/// An alias of `Dep<T>`, which the derive cannot see through without `dep`.
type WorkerDep = Dep<Restarting>;

// ---- the same, by hand -----------------------------------------------------------------------

struct HandDb {
    log: Log,
    pool: Resource,
    journal: Resource,
    hang_on_stop: bool,
}

impl Component for HandDb {
    fn name(&self) -> ComponentId {
        "db".into()
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().start_timeout(Duration::from_secs(2)).stop_timeout(Duration::from_millis(150))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        push(&self.log, format!("start {}", ctx.name()));
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        push(&self.log, "stop db");
        if self.hang_on_stop {
            std::future::pending::<()>().await;
        }
        let journal = self.journal.close().await;
        let pool = self.pool.close().await;
        journal.and(pool)
    }

    async fn health(&self) -> Health {
        Health::Degraded("replica lag".into())
    }
}

struct HandWorker {
    db: Dep<HandDb>,
    log: Log,
}

impl Component for HandWorker {
    fn name(&self) -> ComponentId {
        "derived_worker".into()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.db.dependency()]
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().critical(false)
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        push(&self.log, format!("start {} after db", ctx.name()));
        Ok(())
    }
}

// ---- tests -------------------------------------------------------------------------------------

fn resource(name: &'static str, log: &Log, fail: bool) -> Resource {
    Resource { name, log: log.clone(), fail }
}

async fn run(registry: Registry) -> Report {
    let mut run = TestRun::run(registry);
    run.ready().await;
    let health = run.handle().health().await;
    assert_eq!(health[0].1, Health::Degraded("replica lag".into()));
    run.stop().await
}

async fn derived(hang: bool, fail_close: bool) -> (Vec<String>, Report) {
    let log = Log::default();
    let mut b = builder();
    let db = b
        .add(DerivedDb {
            log: log.clone(),
            pool: resource("pool", &log, fail_close),
            journal: resource("journal", &log, false),
            hang_on_stop: hang,
        })
        .dep();
    b.add(DerivedWorker { db, log: log.clone() });
    let report = run(b.build().unwrap()).await;
    let events = log.lock().unwrap().clone();
    (events, report)
}

async fn by_hand(hang: bool, fail_close: bool) -> (Vec<String>, Report) {
    let log = Log::default();
    let mut b = builder();
    let db = b
        .add(HandDb {
            log: log.clone(),
            pool: resource("pool", &log, fail_close),
            journal: resource("journal", &log, false),
            hang_on_stop: hang,
        })
        .dep();
    b.add(HandWorker { db, log: log.clone() });
    let report = run(b.build().unwrap()).await;
    let events = log.lock().unwrap().clone();
    (events, report)
}

/// The report without its timings.
fn shape(report: &Report) -> Vec<String> {
    report
        .components
        .iter()
        .map(|c| {
            let outcome = match &c.outcome {
                Outcome::Failed { stage, failure: Failure::TimedOut(_) } => format!("timed out ({stage})"),
                other => other.to_string(),
            };
            format!("{} critical={} {}", c.name, c.critical, outcome)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_component_matches_the_hand_written_one() {
    let (derived_events, derived_report) = derived(false, false).await;
    let (hand_events, hand_report) = by_hand(false, false).await;
    assert_eq!(
        derived_events,
        vec!["start db", "start derived_worker after db", "stop db", "close journal", "close pool"],
        "start in dependency order; stop method, then resource fields in reverse declaration order"
    );
    assert_eq!(derived_events, hand_events);
    assert_eq!(shape(&derived_report), shape(&hand_report));
    assert_eq!(
        shape(&derived_report),
        vec!["db critical=true stopped", "derived_worker critical=false stopped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_stop_timeout_matches_the_hand_written_one() {
    let (_, derived_report) = derived(true, false).await;
    let (_, hand_report) = by_hand(true, false).await;
    assert_eq!(shape(&derived_report), shape(&hand_report));
    assert_eq!(shape(&derived_report)[0], "db critical=true timed out (stopping)");
    let after = |r: &Report| match r.components[0].outcome {
        Outcome::Failed { failure: Failure::TimedOut(after), .. } => after,
        _ => unreachable!(),
    };
    assert!(
        after(&derived_report) >= Duration::from_millis(150)
            && after(&derived_report) < Duration::from_secs(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_that_fails_to_close_does_not_keep_the_others_open() {
    let (events, report) = derived(false, true).await;
    assert_eq!(events[events.len() - 2..], ["close journal".to_string(), "close pool".to_string()]);
    match &report.components[0].outcome {
        Outcome::Failed { stage: Stage::Stopping, failure: Failure::Error(error) } => {
            assert_eq!(error.to_string(), "could not close field `pool`: pool would not close");
        }
        other => panic!("expected a stop failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_struct_without_hooks_still_closes_its_resource_fields() {
    let token = lifecycle_core::CancellationToken::new();
    let holder = Holder { token: token.clone(), _unrelated: None };
    assert_eq!(holder.name().as_str(), "holder");
    assert!(holder.dependencies().is_empty(), "a skipped Dep field is not a dependency");
    let mut b = builder();
    b.add(holder);
    let registry = b.build().unwrap();
    let handle = registry.handle();
    handle.shutdown().request("at once", 0);
    // Requested before the run: nothing starts, so nothing is closed...
    assert!(registry.run().await.is_success());
    assert!(!token.is_cancelled());

    let mut b = builder();
    b.add(Holder { token: token.clone(), _unrelated: None });
    let report = testing::run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(report.is_success(), "{report}");
    assert!(token.is_cancelled(), "...but once started, the field is closed at stop");
}

#[test]
fn derived_declarations_match() {
    let log = Log::default();
    let db = DerivedDb {
        log: log.clone(),
        pool: resource("pool", &log, false),
        journal: resource("journal", &log, false),
        hang_on_stop: false,
    };
    assert_eq!(db.name().as_str(), "db");
    assert_eq!(
        db.options(),
        ComponentOptions::new()
            .start_timeout(Duration::from_secs(2))
            .stop_timeout(Duration::from_millis(150))
    );
}

#[test]
fn derived_restart_policy_matches() {
    assert_eq!(
        Restarting.options(),
        ComponentOptions::new().restart(
            RestartPolicy::on_failure()
                .backoff(Duration::from_millis(10), Duration::from_millis(40))
                .max_restarts(3, Duration::from_secs(60))
        )
    );
    let mut b = builder();
    let restarting = b.add(Restarting).dep();
    assert_eq!(
        Jittered(restarting.clone()).options(),
        ComponentOptions::new().critical(false).restart(
            RestartPolicy::on_failure()
                .backoff(Duration::from_millis(1_500), Duration::from_secs(60))
                .max_restarts(10, Duration::from_secs(3_600))
                .jitter(0.0)
        )
    );
    b.add(Jittered(restarting));
    // Built, not run: `build` checks the policies again, and accepts what the derive let through.
    let _ = b.build().unwrap();
}

#[test]
fn derived_optional_dependencies_match() {
    let log = Log::default();
    let mut b = builder();
    let db = b
        .add(DerivedDb {
            log: log.clone(),
            pool: resource("pool", &log, false),
            journal: resource("journal", &log, false),
            hang_on_stop: false,
        })
        .dep();
    let worker = b.add(Restarting).dep();
    let enricher = Enricher { db: db.clone(), worker: worker.clone() };
    assert_eq!(enricher.dependencies(), vec![db.dependency().optional(), worker.dependency().optional()]);
    assert_eq!(enricher.options(), ComponentOptions::new().restart(RestartPolicy::never()));
    assert!(Jittered(worker.clone()).dependencies()[0].is_optional());
    b.add(enricher);
    let _ = b.build().unwrap();
}

#[test]
fn derived_run_to_completion_matches() {
    assert_eq!(Batch.options(), ComponentOptions::new().run_to_completion(true));
}

/// Only a drain written: the run spends no task on the start and stop the derive leaves to the
/// trait, and still runs the drain.
#[derive(Component)]
#[component(drain = quiesce)]
struct DrainsOnly {
    log: Log,
}

impl DrainsOnly {
    async fn quiesce(&self, ctx: &Context) -> Result<(), BoxError> {
        assert!(!ctx.token().is_cancelled(), "a drain runs before the stop cancels the token");
        push(&self.log, "drain drains_only");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_drain_runs_when_it_is_the_only_hook_written() {
    let log = Log::default();
    let mut b = builder();
    b.add(DrainsOnly { log: log.clone() });
    let report = testing::run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(report.is_success(), "{report}");
    assert_eq!(*log.lock().unwrap(), ["drain drains_only"]);
    assert_eq!(shape(&report), ["drains_only critical=true stopped"]);
}
