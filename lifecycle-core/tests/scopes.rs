//! Scopes opened while the service runs: their components start in order and stop in reverse,
//! their end comes back to the owner as a report, the owner's stop stops them first, and they
//! nest, with paths that say where they sit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::testing::{TestRun, builder, eventually, within};
use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Dependency, FnComponent, Outcome, Phase,
    Scope, ScopeError, ShutdownReason,
};
use tokio::sync::mpsc;

type Events = Arc<Mutex<Vec<String>>>;

/// Records its start and stop, with its path, and spawns one task that runs until cancelled.
struct Recorder {
    name: &'static str,
    on: Vec<&'static str>,
    events: Events,
    fails_to_start: bool,
}

impl Recorder {
    fn new(name: &'static str, on: &[&'static str], events: &Events) -> Self {
        Self { name, on: on.to_vec(), events: Arc::clone(events), fails_to_start: false }
    }
}

impl Component for Recorder {
    fn name(&self) -> ComponentId {
        self.name.into()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.on.iter().map(|d| Dependency::on(*d)).collect()
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        if self.fails_to_start {
            return Err("no such tenant".into());
        }
        let token = ctx.token().clone();
        ctx.tasks().spawn("work", async move { token.cancelled().await });
        self.events.lock().unwrap().push(format!("start {}", ctx.path()));
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        self.events.lock().unwrap().push(format!("stop {}", ctx.path()));
        Ok(())
    }
}

/// A scope to open: its name, whether its session fails to start, where to send the result.
type OpenRequest = (&'static str, bool, tokio::sync::oneshot::Sender<Result<Scope, ScopeError>>);

/// Owns scopes: opens the ones asked for on its channel, and hands them back.
struct Owner {
    events: Events,
    requests: Mutex<Option<mpsc::UnboundedReceiver<OpenRequest>>>,
}

impl Component for Owner {
    fn name(&self) -> ComponentId {
        "tenants".into()
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_secs(5))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(mut requests) = self.requests.lock().unwrap().take() else { return Ok(()) };
        let (ctx2, events) = (ctx.clone(), Arc::clone(&self.events));
        let token = ctx.token().clone();
        ctx.tasks().spawn("opener", async move {
            while let Some(Some((name, failing, reply))) = token.run_until_cancelled(requests.recv()).await {
                let mut scope = ctx2.scope(name);
                scope.add(Recorder::new("pool", &[], &events));
                let mut session = Recorder::new("session", &["pool"], &events);
                session.fails_to_start = failing;
                scope.add(session);
                let _ = reply.send(scope.start().await);
            }
        });
        Ok(())
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        self.events.lock().unwrap().push(format!("stop {}", ctx.path()));
        Ok(())
    }
}

type Opener = mpsc::UnboundedSender<OpenRequest>;

fn service(events: &Events) -> (TestRun, Opener) {
    let (open, requests) = mpsc::unbounded_channel();
    let mut b = builder();
    b.add(Owner { events: Arc::clone(events), requests: Mutex::new(Some(requests)) });
    (TestRun::start(b), open)
}

async fn open(opener: &Opener, name: &'static str, failing: bool) -> Result<Scope, ScopeError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    opener.send((name, failing, reply)).unwrap();
    within("the scope's start", Duration::from_secs(5), answer).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_starts_in_order_stops_in_reverse_and_reports_to_its_owner() {
    let events = Events::default();
    let (mut run, opener) = service(&events);
    run.ready().await;
    let scope = open(&opener, "acme", false).await.unwrap();
    assert_eq!(scope.path(), "tenants/acme");
    assert_eq!(scope.handle().phase(), Phase::Ready);
    let open_now = run.handle().scopes();
    assert_eq!(open_now.len(), 1);
    assert_eq!(open_now[0].path, "tenants/acme");
    assert_eq!(open_now[0].components.len(), 2);

    let report = scope.stop().await;
    assert!(report.is_success(), "{report}");
    assert_eq!(
        *events.lock().unwrap(),
        [
            "start tenants/acme/pool",
            "start tenants/acme/session",
            "stop tenants/acme/session",
            "stop tenants/acme/pool"
        ]
    );
    let handle = run.handle().clone();
    eventually("the scope is gone from the list", Duration::from_secs(5), || handle.scopes().is_empty())
        .await;
    assert!(run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_that_fails_to_start_comes_back_as_an_error_with_its_report_and_the_service_carries_on() {
    let events = Events::default();
    let (mut run, opener) = service(&events);
    run.ready().await;
    let error = open(&opener, "broken", true).await.unwrap_err();
    assert!(matches!(error, ScopeError::Start { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "scope `tenants/broken` did not start: component `session` failed to start: no such tenant"
    );
    let report = error.report().unwrap();
    assert!(matches!(report.component("pool").unwrap().outcome, Outcome::Stopped), "rolled back: {report}");
    assert_eq!(run.handle().phase(), Phase::Ready, "the owner and the service carry on");
    let report = run.stop().await;
    assert!(report.is_success(), "the failure was the owner's to handle:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_stop_stops_its_open_scopes_first() {
    let events = Events::default();
    let (mut run, opener) = service(&events);
    run.ready().await;
    let _a = open(&opener, "a", false).await.unwrap();
    let _b = open(&opener, "b", false).await.unwrap();
    let report = within("the service's stop", Duration::from_secs(10), run.stop()).await;
    assert!(report.is_success(), "{report}");
    // The owner's entry in the report names them.
    assert_eq!(
        report.component("tenants").unwrap().notes,
        [
            "scope `tenants/a` stopped with it: `pool` stopped, `session` stopped",
            "scope `tenants/b` stopped with it: `pool` stopped, `session` stopped"
        ]
    );
    let events = events.lock().unwrap().clone();
    let owner_stop = events.iter().position(|e| e == "stop tenants").unwrap();
    for scope in ["a", "b"] {
        for component in ["pool", "session"] {
            let at = events.iter().position(|e| *e == format!("stop tenants/{scope}/{component}")).unwrap();
            assert!(at < owner_stop, "{scope}/{component} stopped before its owner: {events:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_scope_ends_at_once_and_says_so() {
    let events = Events::default();
    let (mut run, opener) = service(&events);
    run.ready().await;
    let mut scope = open(&opener, "acme", false).await.unwrap();
    scope.abort();
    let report = within("the abort", Duration::from_secs(5), scope.join()).await;
    assert_eq!(report.exit_code, 1, "{report}");
    assert_eq!(report.reason.to_string(), "shutdown requested: aborted by its owner");
    assert!(run.stop().await.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_nobody_waits_for_that_fails_is_a_failure_of_its_owner() {
    let mut b = builder();
    b.add(FnComponent::new("batches").on_start(|ctx| {
        let ctx = ctx.clone();
        async move {
            let mut scope = ctx.scope("nightly");
            scope.add(
                FnComponent::new("job")
                    .on_start(|ctx| {
                        ctx.tasks().spawn("run", async {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<(), _>(std::io::Error::other("disk full"))
                        });
                        async { Ok::<(), std::io::Error>(()) }
                    })
                    .options(ComponentOptions::new().run_to_completion(true)),
            );
            drop(scope.start().await?); // nobody keeps it
            Ok::<(), BoxError>(())
        }
    }));
    let report = within("the run", Duration::from_secs(10), TestRun::start(b).finished()).await;
    assert_eq!(report.exit_code, 1, "{report}");
    match &report.reason {
        ShutdownReason::ComponentFailed { component, task, .. } => {
            assert_eq!((component.as_str(), task.as_str()), ("batches", "scope nightly"));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_nest_and_their_paths_say_where_they_sit() {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    let mut b = builder();
    b.add(FnComponent::new("tenants").on_start(move |ctx| {
        let (ctx, seen) = (ctx.clone(), Arc::clone(&seen));
        async move {
            let mut tenant = ctx.scope("acme");
            let inner_seen = Arc::clone(&seen);
            tenant.add(FnComponent::new("sessions").on_start(move |ctx| {
                let (ctx, seen) = (ctx.clone(), Arc::clone(&inner_seen));
                async move {
                    let mut session = ctx.scope("42");
                    let leaf_seen = Arc::clone(&seen);
                    session.add(FnComponent::new("conn").on_start(move |ctx| {
                        leaf_seen.lock().unwrap().push(ctx.path());
                        async { Ok::<(), std::io::Error>(()) }
                    }));
                    let session = session.start().await?;
                    seen.lock().unwrap().push(session.path().to_owned());
                    drop(session); // stays open until its owner stops
                    Ok::<(), BoxError>(())
                }
            }));
            let tenant = tenant.start().await?;
            seen.lock().unwrap().push(tenant.path().to_owned());
            drop(tenant);
            Ok::<(), BoxError>(())
        }
    }));
    let mut run = TestRun::start(b);
    run.ready().await;
    assert_eq!(
        *paths.lock().unwrap(),
        ["tenants/acme/sessions/42/conn", "tenants/acme/sessions/42", "tenants/acme"]
    );
    let scopes = run.handle().scopes();
    assert_eq!(scopes.len(), 1);
    assert_eq!(scopes[0].handle.scopes()[0].path, "tenants/acme/sessions/42");
    let report = within("the stop", Duration::from_secs(10), run.stop()).await;
    assert!(report.is_success(), "nested scopes stop with their owners:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_opened_through_the_handle_is_the_services_and_stops_before_any_component() {
    let events = Events::default();
    let mut b = builder();
    b.add(Recorder::new("db", &[], &events));
    let mut run = TestRun::start(b);
    run.ready().await;
    let mut batch = run.handle().scope("batch");
    batch.add(Recorder::new("job", &[], &events));
    let scope = batch.start().await.unwrap();
    assert_eq!(scope.path(), "batch");
    assert_eq!(run.handle().scopes()[0].path, "batch");
    drop(scope); // still open: the run stops it
    let report = within("the stop", Duration::from_secs(10), run.stop()).await;
    assert!(report.is_success(), "{report}");
    let events = events.lock().unwrap().clone();
    assert_eq!(events, ["start db", "start batch/job", "stop batch/job", "stop db"]);
}

/// A scope component whose stop never ends.
struct HungStop;

impl Component for HungStop {
    fn name(&self) -> ComponentId {
        "hung".into()
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_secs(3600))
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        std::future::pending().await
    }
}

/// Opens a scope with a hung stop at its first start; its task fails when told to.
struct RestartingOwner {
    fail: Arc<tokio::sync::Notify>,
    starts: Arc<std::sync::atomic::AtomicU32>,
    stops: Arc<std::sync::atomic::AtomicU32>,
}

impl Component for RestartingOwner {
    fn name(&self) -> ComponentId {
        "owner".into()
    }

    fn options(&self) -> ComponentOptions {
        let policy = lifecycle_core::RestartPolicy::on_failure()
            .backoff(Duration::from_millis(10), Duration::from_millis(10))
            .max_restarts(3, Duration::from_secs(60));
        ComponentOptions::new().restart(policy).stop_timeout(Duration::from_millis(200))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        if self.starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let mut scope = ctx.scope("s");
            scope.add(HungStop);
            drop(scope.start().await?);
        }
        let (fail, token) = (Arc::clone(&self.fail), ctx.token().clone());
        ctx.tasks().spawn("work", async move {
            tokio::select! {
                () = token.cancelled() => Ok(()),
                () = fail.notified() => Err(std::io::Error::other("connection reset")),
            }
        });
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_aborted_with_its_restarting_owner_leaves_no_trace() {
    let fail = Arc::new(tokio::sync::Notify::new());
    let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stops = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut b = builder();
    b.add(RestartingOwner {
        fail: Arc::clone(&fail),
        starts: Arc::clone(&starts),
        stops: Arc::clone(&stops),
    });
    let mut run = TestRun::start(b);
    run.ready().await;
    fail.notify_one();
    let handle = run.handle().clone();
    // The restart's stop gives up on the hung scope at the owner's stop timeout; the new start
    // aborts what is left of the old one, the scope's task with it.
    eventually("the owner is back", Duration::from_secs(5), || {
        starts.load(std::sync::atomic::Ordering::SeqCst) == 2 && handle.phase() == Phase::Ready
    })
    .await;
    eventually("the aborted scope is off the list", Duration::from_secs(5), || handle.scopes().is_empty())
        .await;
    let report = within("the stop", Duration::from_secs(5), run.stop()).await;
    // The restart's stop was given up on while the scope hung (before the owner's own hook);
    // the final stop ran the owner's hook, no longer held by the scope.
    assert_eq!(stops.load(std::sync::atomic::Ordering::SeqCst), 1, "{report}");
    assert!(matches!(report.component("owner").unwrap().outcome, Outcome::Stopped), "{report}");
}
