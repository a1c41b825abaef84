//! A configurable test component that records what happens to it, with timestamps.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Dependency, Outcome, Report,
};

/// What a hook does.
#[derive(Clone, Copy, Debug, Default)]
pub enum Hook {
    #[default]
    Succeed,
    /// Sleeps (cooperatively), then succeeds.
    Sleep(Duration),
    Fail,
    Panic,
    /// Never returns, ignoring cancellation.
    Hang,
    /// Blocks its runtime thread for this long.
    BlockThread(Duration),
}

/// The task a component spawns at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Ends when the component's token is cancelled.
    Cooperative,
    /// Never ends.
    IgnoresCancellation,
    /// Fails after this long.
    FailsAfter(Duration),
    /// Panics after this long.
    PanicsAfter(Duration),
    /// A `spawn_blocking` that never returns.
    BlockingForever,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    pub component: String,
    pub what: &'static str,
}

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    pub fn push(&self, component: &str, what: &'static str) {
        self.0.lock().unwrap().push(Event { at: Instant::now(), component: component.into(), what });
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// When `component` recorded `what`, if it did.
    pub fn at(&self, component: &str, what: &str) -> Option<Instant> {
        self.events().into_iter().find(|e| e.component == component && e.what == what).map(|e| e.at)
    }

    /// The components that recorded `what`, in order.
    pub fn order(&self, what: &str) -> Vec<String> {
        self.events().into_iter().filter(|e| e.what == what).map(|e| e.component).collect()
    }
}

#[derive(Clone)]
pub struct Probe {
    pub name: String,
    pub deps: Vec<String>,
    pub start: Hook,
    pub drain: Hook,
    pub stop: Hook,
    pub reload: Hook,
    pub task: Option<Task>,
    pub options: ComponentOptions,
    pub log: Log,
}

impl Probe {
    pub fn new(name: &str, log: &Log) -> Self {
        Self {
            name: name.into(),
            deps: Vec::new(),
            start: Hook::Succeed,
            drain: Hook::Succeed,
            stop: Hook::Succeed,
            reload: Hook::Succeed,
            task: None,
            options: ComponentOptions::new(),
            log: log.clone(),
        }
    }

    pub fn deps(mut self, deps: &[&str]) -> Self {
        self.deps = deps.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn start(mut self, hook: Hook) -> Self {
        self.start = hook;
        self
    }

    pub fn drain(mut self, hook: Hook) -> Self {
        self.drain = hook;
        self
    }

    pub fn stop(mut self, hook: Hook) -> Self {
        self.stop = hook;
        self
    }

    pub fn reload(mut self, hook: Hook) -> Self {
        self.reload = hook;
        self
    }

    pub fn task(mut self, task: Task) -> Self {
        self.task = Some(task);
        self
    }

    pub fn options(mut self, options: ComponentOptions) -> Self {
        self.options = options;
        self
    }

    async fn hook(&self, hook: Hook, what: &'static str) -> Result<(), BoxError> {
        match hook {
            Hook::Succeed => Ok(()),
            Hook::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Hook::Fail => Err(format!("{what} of {} failed on purpose", self.name).into()),
            Hook::Panic => panic!("{what} of {} panicked on purpose", self.name),
            Hook::Hang => std::future::pending().await,
            Hook::BlockThread(d) => {
                std::thread::sleep(d);
                Ok(())
            }
        }
    }
}

impl Component for Probe {
    fn name(&self) -> ComponentId {
        ComponentId::from(self.name.clone())
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.deps.iter().map(|d| Dependency::on(d.clone())).collect()
    }

    fn options(&self) -> ComponentOptions {
        self.options
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        self.log.push(&self.name, "start-begin");
        let result = self.hook(self.start, "start").await;
        if result.is_ok() {
            if let Some(task) = self.task {
                spawn_task(ctx, task, self.log.clone(), self.name.clone());
            }
            self.log.push(&self.name, "start-end");
        }
        result
    }

    async fn drain(&self, ctx: &Context) -> Result<(), BoxError> {
        self.log.push(&self.name, "drain-begin");
        assert!(!ctx.lifecycle().is_ready(), "readiness drops before any drain hook runs");
        assert_eq!(ctx.lifecycle().phase(), lifecycle_core::Phase::Draining);
        let result = self.hook(self.drain, "drain").await;
        self.log.push(&self.name, "drain-end");
        result
    }

    async fn stop(&self, ctx: &Context) -> Result<(), BoxError> {
        assert!(ctx.token().is_cancelled(), "the token is cancelled before the stop hook");
        self.log.push(&self.name, "stop-begin");
        let result = self.hook(self.stop, "stop").await;
        self.log.push(&self.name, "stop-end");
        result
    }

    async fn reload(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.log.push(&self.name, "reload-begin");
        let result = self.hook(self.reload, "reload").await;
        self.log.push(&self.name, "reload-end");
        result
    }
}

fn spawn_task(ctx: &Context, task: Task, log: Log, name: String) {
    let token = ctx.token().clone();
    match task {
        Task::Cooperative => {
            ctx.tasks().spawn("cooperative", async move {
                token.cancelled().await;
                log.push(&name, "task-end");
            });
        }
        Task::IgnoresCancellation => {
            ctx.tasks().spawn("stubborn", std::future::pending::<()>());
        }
        Task::FailsAfter(d) => {
            ctx.tasks().spawn("doomed", async move {
                tokio::time::sleep(d).await;
                Err::<(), _>(std::io::Error::other("lost the connection"))
            });
        }
        Task::PanicsAfter(d) => {
            ctx.tasks().spawn("reckless", async move {
                tokio::time::sleep(d).await;
                panic!("task panicked on purpose") as ()
            });
        }
        Task::BlockingForever => {
            ctx.tasks().spawn_blocking("blocking_forever", || -> () {
                loop {
                    std::thread::park();
                }
            });
        }
    }
}

#[allow(unused_imports)]
pub use lifecycle_core::testing::{builder, run_until_ready_then_stop};

pub fn outcome<'a>(report: &'a Report, name: &str) -> &'a Outcome {
    &report.component(name).unwrap_or_else(|| panic!("no component {name} in report")).outcome
}

pub fn is_stopped(report: &Report, name: &str) -> bool {
    matches!(outcome(report, name), Outcome::Stopped)
}
