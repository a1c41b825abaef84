//! Restart policies: a failed component starts again with what depends on it, in order, and
//! nothing else is touched; a spent budget escalates by the component's criticality.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::testing::{TestRun, builder, eventually, within};
use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Dep, Dependency, ExitCause, Outcome, Phase,
    ReadinessStatus, RestartPolicy, ShutdownReason, Stage,
};
use tokio::sync::Notify;

/// What happened, in order: ("start", "cache"), ("stop", "api"), ...
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, String)>>>);

impl Events {
    fn push(&self, what: &str, component: &str) {
        self.0.lock().unwrap().push((what.to_owned(), component.to_owned()));
    }

    fn since(&self, mark: usize) -> Vec<String> {
        self.0.lock().unwrap()[mark..].iter().map(|(what, who)| format!("{what} {who}")).collect()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A component whose first `failing_starts` starts fail, and whose task fails when `fail` is
/// notified (or at once, with `task_fails_at_once`).
struct Flaky {
    name: &'static str,
    dependencies: Vec<Dependency>,
    options: ComponentOptions,
    events: Events,
    failing_starts: AtomicU32,
    task_fails_at_once: bool,
    fail: Arc<Notify>,
    /// How many times it started: what a dependent's `Dep` sees of the current instance.
    starts: AtomicU32,
}

impl Flaky {
    fn new(name: &'static str, events: &Events) -> Self {
        Self {
            name,
            dependencies: Vec::new(),
            options: ComponentOptions::new(),
            events: events.clone(),
            failing_starts: AtomicU32::new(0),
            task_fails_at_once: false,
            fail: Arc::new(Notify::new()),
            starts: AtomicU32::new(0),
        }
    }

    fn on(mut self, dependency: &'static str) -> Self {
        self.dependencies.push(Dependency::on(dependency));
        self
    }

    fn on_optionally(mut self, dependency: &'static str) -> Self {
        self.dependencies.push(Dependency::on(dependency).optional());
        self
    }

    fn restart(mut self, policy: RestartPolicy) -> Self {
        self.options = self.options.restart(policy);
        self
    }

    fn critical(mut self, critical: bool) -> Self {
        self.options = self.options.critical(critical);
        self
    }

    fn failing_starts(self, count: u32) -> Self {
        self.failing_starts.store(count, Ordering::SeqCst);
        self
    }

    fn task_fails_at_once(mut self) -> Self {
        self.task_fails_at_once = true;
        self
    }
}

impl Component for Flaky {
    fn name(&self) -> ComponentId {
        ComponentId::from(self.name)
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let left = self.failing_starts.load(Ordering::SeqCst);
        if left > 0 {
            self.failing_starts.store(left - 1, Ordering::SeqCst);
            self.events.push("failed-start", self.name);
            return Err(format!("{} cannot connect", self.name).into());
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.events.push("start", self.name);
        let token = ctx.token().clone();
        let fail = Arc::clone(&self.fail);
        let at_once = self.task_fails_at_once;
        ctx.tasks().spawn("work", async move {
            if at_once {
                return Err(std::io::Error::other("connection reset"));
            }
            tokio::select! {
                () = token.cancelled() => Ok(()),
                () = fail.notified() => Err(std::io::Error::other("connection reset")),
            }
        });
        Ok(())
    }

    async fn drain(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events.push("drain", self.name);
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events.push("stop", self.name);
        Ok(())
    }
}

/// Depends on `cache` through a typed handle, and records which start of it it saw.
struct Api {
    cache: Dep<Flaky>,
    events: Events,
    seen: Arc<Mutex<Vec<u32>>>,
}

impl Component for Api {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.cache.dependency()]
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push(self.cache.starts.load(Ordering::SeqCst));
        self.events.push("start", "api");
        Ok(())
    }

    async fn drain(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events.push("drain", "api");
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events.push("stop", "api");
        Ok(())
    }
}

fn quick(restarts: u32) -> RestartPolicy {
    RestartPolicy::on_failure()
        .backoff(Duration::from_millis(10), Duration::from_millis(40))
        .jitter(0.0)
        .max_restarts(restarts, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_stops_and_starts_exactly_the_dependents_in_order() {
    let events = Events::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut b = builder();
    b.add(Flaky::new("db", &events));
    let cache = b.add(Flaky::new("cache", &events).on("db").restart(quick(3))).dep();
    let fail = Arc::clone(&cache.fail);
    b.add(Api { cache, events: events.clone(), seen: Arc::clone(&seen) });
    b.add(Flaky::new("worker", &events).on("db"));
    b.add(Flaky::new("metrics", &events));
    let mut run = TestRun::start(b);
    run.ready().await;

    let mark = events.len();
    fail.notify_one();
    let handle = run.handle().clone();
    eventually("the cache is restarted", Duration::from_secs(5), || {
        handle.components().iter().any(|c| c.name.as_str() == "cache" && c.restarts == 1)
            && events.since(mark).last().is_some_and(|e| e == "start api")
    })
    .await;
    // Drains run together; then the stop in reverse order, the start in order.
    let mut sequence = events.since(mark);
    sequence[..2].sort();
    assert_eq!(sequence, ["drain api", "drain cache", "stop api", "stop cache", "start cache", "start api"]);
    assert_eq!(*seen.lock().unwrap(), [1, 2], "the dependent's handle sees the new start");
    assert_eq!(run.handle().phase(), Phase::Ready, "the service stayed up");

    let report = run.stop().await;
    assert!(report.is_success(), "a critical component that recovered is no failure:\n{report}");
    let cache = report.component("cache").unwrap();
    assert_eq!(cache.restarts, 1);
    assert!(matches!(cache.outcome, Outcome::Stopped), "{report}");
    assert_eq!(cache.failures.count, 1, "the failure that caused the restart is kept");
    assert!(report.to_string().contains("stopped, restarted once"), "{report}");
    for untouched in ["db", "worker", "metrics", "api"] {
        assert_eq!(report.component(untouched).unwrap().restarts, 0, "{untouched}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_component_failing_every_start_escalates_after_its_budget() {
    let events = Events::default();
    let mut b = builder();
    b.add(Flaky::new("db", &events).failing_starts(u32::MAX).restart(quick(3)));
    let report = TestRun::start(b).finished().await;
    assert_eq!(report.exit_code, 1, "{report}");
    assert!(matches!(report.reason, ShutdownReason::StartFailed { .. }), "{report}");
    let db = report.component("db").unwrap();
    assert_eq!(db.restarts, 3, "{report}");
    assert_eq!(db.failures.count, 4, "the first start and three restarts failed: {report}");
    assert!(matches!(db.outcome, Outcome::Failed { stage: Stage::Starting, .. }), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_component_failing_twice_then_succeeding_is_restarted_and_the_service_stays_up() {
    let events = Events::default();
    let mut b = builder();
    b.add(Flaky::new("db", &events).failing_starts(2).restart(quick(3)));
    b.add(Flaky::new("api", &events).on("db"));
    let mut run = TestRun::start(b);
    run.ready().await;
    assert_eq!(events.since(0), ["failed-start db", "failed-start db", "start db", "start api"]);
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    let db = report.component("db").unwrap();
    assert_eq!((db.restarts, db.failures.count), (2, 2), "{report}");
    assert!(matches!(db.outcome, Outcome::Stopped), "{report}");
}

#[tokio::test(start_paused = true)]
async fn the_backoff_doubles_between_restarts() {
    let events = Events::default();
    let mut b = builder();
    let policy = RestartPolicy::on_failure()
        .backoff(Duration::from_secs(1), Duration::from_secs(3))
        .jitter(0.0)
        .max_restarts(4, Duration::from_secs(600));
    b.add(Flaky::new("db", &events).failing_starts(4).restart(policy));
    let began = tokio::time::Instant::now();
    let mut run = TestRun::start(b);
    run.ready().await;
    // 1 s + 2 s + 3 s (the maximum) + 3 s, on tokio's paused clock.
    assert_eq!(began.elapsed().as_secs(), 9);
    let report = run.stop().await;
    assert_eq!(report.component("db").unwrap().restarts, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_task_failing_beyond_the_budget_stops_the_service() {
    let events = Events::default();
    let mut b = builder();
    b.add(Flaky::new("worker", &events).task_fails_at_once().restart(quick(2)));
    let report = within("the run", Duration::from_secs(10), TestRun::start(b).finished()).await;
    assert_eq!(report.exit_cause, ExitCause::ComponentFailed("worker".into()), "{report}");
    assert!(matches!(report.reason, ShutdownReason::ComponentFailed { .. }), "{report}");
    let worker = report.component("worker").unwrap();
    assert_eq!((worker.restarts, worker.failures.count), (2, 3), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_component_out_of_restarts_stays_down_and_its_dependents_carry_on() {
    let events = Events::default();
    let mut b = builder();
    b.add(Flaky::new("cache", &events).task_fails_at_once().critical(false).restart(quick(1)));
    b.add(Flaky::new("api", &events).on("cache"));
    let mut run = TestRun::start(b);
    run.ready().await;
    let handle = run.handle().clone();
    eventually("the cache gives up and the api is back", Duration::from_secs(5), || {
        let statuses = handle.components();
        statuses[0].outcome.is_some()
            && statuses[1].stage == Some(Stage::Running)
            && statuses[1].start_duration.is_some()
            && events.since(0).iter().filter(|e| *e == "start api").count() == 3
    })
    .await;
    assert_eq!(run.handle().phase(), Phase::Ready);
    let report = run.stop().await;
    assert_eq!(report.exit_code, 0, "an optional component's failure is not the service's:\n{report}");
    let cache = report.component("cache").unwrap();
    assert_eq!(cache.restarts, 1, "{report}");
    assert!(matches!(cache.outcome, Outcome::Failed { stage: Stage::Running, .. }), "{report}");
    assert!(matches!(report.component("api").unwrap().outcome, Outcome::Stopped), "{report}");
}

/// Spawns one supervised task at start, made by `make` with the attempt number.
struct Supervises {
    policy: RestartPolicy,
    attempts: Arc<AtomicU32>,
    /// What attempt `n` does: `Err` fails it, `Ok(true)` ends it, `Ok(false)` waits for the stop.
    plan: fn(u32) -> Result<bool, &'static str>,
}

impl Component for Supervises {
    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().critical(true)
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let attempts = Arc::clone(&self.attempts);
        let token = ctx.token().clone();
        let plan = self.plan;
        ctx.spawn_supervised("consumer", self.policy, move || {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let token = token.clone();
            async move {
                match plan(attempt) {
                    Err("panic") => panic!("attempt {attempt} panicked"),
                    Err(message) => Err(std::io::Error::other(format!("attempt {attempt}: {message}"))),
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        token.cancelled().await;
                        Ok(())
                    }
                }
            }
        })?;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_supervised_task_is_made_again_after_failures_and_panics_within_its_budget() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut b = builder();
    b.add(Supervises {
        policy: quick(5),
        attempts: Arc::clone(&attempts),
        plan: |attempt| match attempt {
            1 => Err("connection reset"),
            2 => Err("panic"),
            _ => Ok(false),
        },
    });
    let mut run = TestRun::start(b);
    run.ready().await;
    let handle = run.handle().clone();
    eventually("the third attempt runs", Duration::from_secs(5), || attempts.load(Ordering::SeqCst) == 3)
        .await;
    assert_eq!(handle.phase(), Phase::Ready, "the component was not restarted, only its task");
    let report = run.stop().await;
    assert!(report.is_success(), "failures within the budget are no failure of the service:\n{report}");
    let component = &report.components[0];
    assert_eq!(
        (component.task_restarts, component.restarts, component.failures.count),
        (2, 0, 2),
        "{report}"
    );
    let failures: Vec<String> = component.failures.iter().map(ToString::to_string).collect();
    assert_eq!(
        failures,
        [
            "task `consumer` failed: attempt 1: connection reset (running)",
            "task `consumer` panicked: attempt 2 panicked (running)"
        ]
    );
    assert!(report.to_string().contains("stopped, 2 task restarts"), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_supervised_task_past_its_budget_fails_its_component() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut b = builder();
    b.add(Supervises { policy: quick(2), attempts: Arc::clone(&attempts), plan: |_| Err("panic") });
    let report = TestRun::start(b).finished().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(report.exit_code, 1, "{report}");
    // The last attempt's panic is the task's failure, as it was.
    assert_eq!(
        report.reason.to_string(),
        "component `supervises` failed while running: task `consumer` panicked: attempt 3 panicked"
    );
    assert_eq!(report.components[0].task_restarts, 2);
}

#[tokio::test(start_paused = true)]
async fn an_always_task_is_made_again_when_it_ends_and_not_after_the_stop() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut b = builder();
    let policy = RestartPolicy::always()
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .max_restarts(3, Duration::from_secs(60));
    b.add(Supervises { policy, attempts: Arc::clone(&attempts), plan: |attempt| Ok(attempt < 3) });
    let mut run = TestRun::start(b);
    run.ready().await;
    eventually("the third attempt runs", Duration::from_secs(5), || attempts.load(Ordering::SeqCst) == 3)
        .await;
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "nothing is made once the component stops");
    assert_eq!(report.components[0].task_restarts, 2);
    assert!(report.components[0].failures.is_empty());
}

#[tokio::test]
async fn a_supervised_task_with_an_impossible_policy_is_refused_naming_the_component() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut b = builder();
    b.add(Supervises {
        policy: RestartPolicy::on_failure().max_restarts(0, Duration::from_secs(1)),
        attempts: Arc::clone(&attempts),
        plan: |_| Ok(true),
    });
    let report = TestRun::start(b).finished().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 0, "nothing was spawned");
    assert!(
        report
            .to_string()
            .contains("component `supervises`: option `max_restarts` is 0, but must be at least 1"),
        "{report}"
    );
}

/// Depends on `cache` optionally, and says whether it saw it up at its start.
struct Reader {
    cache: Dep<Flaky>,
    events: Events,
}

impl Component for Reader {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.cache.dependency().optional()]
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events
            .push(if self.cache.is_up() { "start-with-cache" } else { "start-without-cache" }, "reader");
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.events.push("stop", "reader");
        Ok(())
    }
}

fn slow(restarts: u32) -> RestartPolicy {
    RestartPolicy::on_failure()
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .max_restarts(restarts, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_touch_what_depends_on_it_optionally_and_the_service_is_degraded() {
    let events = Events::default();
    let mut b = builder();
    let cache = b.add(Flaky::new("cache", &events).critical(false).restart(slow(3))).dep();
    let fail = Arc::clone(&cache.fail);
    b.add(Reader { cache: cache.clone(), events: events.clone() });
    let mut run = TestRun::start(b);
    run.ready().await;
    assert!(cache.is_up());
    assert_eq!(run.handle().readiness().await.status, ReadinessStatus::Ready);

    let mark = events.len();
    fail.notify_one();
    let handle = run.handle().clone();
    // The restart waits an hour: long enough to look at the service meanwhile.
    eventually("the cache waits for its restart", Duration::from_secs(5), || {
        handle.components()[0].next_restart.is_some()
    })
    .await;
    assert!(!cache.is_up());
    assert_eq!(events.since(mark), ["drain cache", "stop cache"], "the reader was not touched");
    let readiness = handle.readiness().await;
    assert_eq!(readiness.status, ReadinessStatus::Degraded, "{readiness}");
    assert!(readiness.is_ready());
    assert_eq!(readiness.problems.len(), 1, "{readiness}");
    assert!(
        readiness.problems[0].what.starts_with("restarting (restart 1, next in ")
            && readiness.problems[0].what.ends_with("task `work` failed: connection reset (running)"),
        "{readiness}"
    );

    // A shutdown ends the wait: the reader stops, the cache is reported as it is.
    let report = within("the stop", Duration::from_secs(5), run.stop()).await;
    assert_eq!(report.exit_code, 0, "{report}");
    assert_eq!(events.since(mark).last().map(String::as_str), Some("stop reader"));
    let cache = report.component("cache").unwrap();
    assert_eq!(cache.restarts, 1);
    assert!(matches!(cache.outcome, Outcome::Failed { stage: Stage::Running, .. }), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_starts_without_an_optional_dependency_that_waits_to_start_again() {
    let events = Events::default();
    let mut b = builder();
    let cache =
        b.add(Flaky::new("cache", &events).failing_starts(u32::MAX).critical(false).restart(slow(3))).dep();
    b.add(Reader { cache, events: events.clone() });
    let mut run = TestRun::start(b);
    within("ready without the cache", Duration::from_secs(5), run.ready()).await;
    assert_eq!(events.since(0), ["failed-start cache", "start-without-cache reader"]);
    let readiness = run.handle().readiness().await;
    assert_eq!(readiness.status, ReadinessStatus::Degraded, "{readiness}");
    assert_eq!(readiness.problems[0].component.as_str(), "cache");
    let report = within("the stop", Duration::from_secs(5), run.stop()).await;
    assert_eq!(report.exit_code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_component_that_failed_to_start_makes_the_service_degraded_not_unready() {
    let events = Events::default();
    let mut b = builder();
    b.add(Flaky::new("cache", &events).failing_starts(1).critical(false));
    b.add(Flaky::new("db", &events));
    let mut run = TestRun::start(b);
    run.ready().await;
    let readiness = run.handle().readiness().await;
    assert_eq!(readiness.status, ReadinessStatus::Degraded, "{readiness}");
    assert_eq!(
        readiness.to_string(),
        "degraded (ready); `cache` down: failed: cache cannot connect (starting)"
    );
    let report = run.stop().await;
    assert_eq!(report.exit_code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_waiting_for_its_backoff_holds_up_no_other_restart() {
    let events = Events::default();
    let mut b = builder();
    let slow_one = b.add(Flaky::new("slow", &events).restart(slow(3))).dep();
    let quick_one = b.add(Flaky::new("quick", &events).restart(quick(3))).dep();
    let mut run = TestRun::start(b);
    run.ready().await;
    slow_one.fail.notify_one();
    let handle = run.handle().clone();
    eventually("`slow` waits for its hour", Duration::from_secs(5), || {
        handle.components()[0].next_restart.is_some()
    })
    .await;
    let mark = events.len();
    quick_one.fail.notify_one();
    // Up once its start hook returned and the run recorded it: wait for that, not the hook's event.
    eventually("`quick` is back meanwhile", Duration::from_secs(5), || {
        events.since(mark).contains(&"start quick".to_owned()) && quick_one.is_up()
    })
    .await;
    assert!(quick_one.is_up() && !slow_one.is_up());
    let report = within("the stop", Duration::from_secs(5), run.stop()).await;
    // `slow` never came back: a critical component down at the end is a failure.
    assert_eq!(report.exit_cause, ExitCause::ComponentFailed("slow".into()), "{report}");
    assert_eq!(report.component("quick").unwrap().restarts, 1);
}

/// Depends on `db` and cannot start twice.
struct TakesItsListener;

impl Component for TakesItsListener {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::on("db")]
    }

    fn restartable(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_restart_policy_applies_where_it_fits() {
    let events = Events::default();
    let mut b = builder();
    b.default_restart(quick(3));
    let db = b.add(Flaky::new("db", &events)).dep();
    b.add(TakesItsListener);
    let worker = b.add(Flaky::new("worker", &events).on("db")).dep();
    let opted_out =
        b.add(Flaky::new("opted_out", &events).restart(RestartPolicy::never()).critical(false)).dep();
    let mut run = TestRun::start(b);
    run.ready().await;

    // The worker took the default: restarted.
    worker.fail.notify_one();
    let handle = run.handle().clone();
    eventually("the worker is restarted", Duration::from_secs(5), || {
        handle.components().iter().any(|c| c.name.as_str() == "worker" && c.restarts == 1) && worker.is_up()
    })
    .await;
    // The one that opted out stays down.
    opted_out.fail.notify_one();
    eventually("the opted-out one is down", Duration::from_secs(5), || {
        handle.components().iter().any(|c| c.name.as_str() == "opted_out" && c.failures == 1)
    })
    .await;
    assert_eq!(handle.components().iter().find(|c| c.name.as_str() == "opted_out").unwrap().restarts, 0);
    // The database cannot take it (what depends on it cannot start twice): its failure stops the
    // service, as without a policy.
    db.fail.notify_one();
    let report = within("the run ends", Duration::from_secs(5), run.finished()).await;
    assert_eq!(report.exit_cause, ExitCause::ComponentFailed("db".into()), "{report}");
    assert_eq!(report.component("db").unwrap().restarts, 0);
}

#[test]
fn an_impossible_default_restart_policy_is_refused_naming_the_setting() {
    let mut b = builder();
    b.default_restart(RestartPolicy::always());
    let error = b.build().unwrap_err().to_string();
    assert!(
        error.starts_with("setting `default_restart` is always, but must be `never` or `on_failure`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_whose_start_is_retried_brings_back_every_dependent() {
    // x restarts; its first start again fails and is retried. o2 depends on q (hard) and on x
    // (optionally): it must come back once x and q are.
    let events = Events::default();
    let mut b = builder();
    let x = b.add(Flaky::new("x", &events).restart(quick(5))).dep();
    b.add(Flaky::new("q", &events).on("x"));
    b.add(Flaky::new("o2", &events).on("q").on_optionally("x"));
    let mut run = TestRun::start(b);
    run.ready().await;
    x.failing_starts.store(1, Ordering::SeqCst);
    x.fail.notify_one();
    let handle = run.handle().clone();
    // Two restarts of x: after its task failed, and after its first start again failed.
    eventually("every component is back", Duration::from_secs(5), || {
        let statuses = handle.components();
        statuses[0].restarts == 2 && statuses.iter().all(|c| c.stage == Some(Stage::Running))
    })
    .await;
    assert_eq!(handle.readiness_by_stage().status, ReadinessStatus::Ready);
    let report = run.stop().await;
    assert!(report.is_success(), "{report}");
}
