//! Whether the service should get traffic: ready, degraded (ready, with named problems), or
//! unready; computed from the phase, each component's stage and its health check.

use std::fmt;

use tokio::time::Instant;

use crate::failure::Elapsed;
use crate::{ComponentId, ComponentStatus, Health, Phase, Stage};

/// The service's readiness, as [`LifecycleHandle::readiness`](crate::LifecycleHandle::readiness)
/// finds it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Readiness {
    /// Ready, degraded or unready.
    pub status: ReadinessStatus,
    /// The run's phase when it was asked.
    pub phase: Phase,
    /// What keeps it from being plainly ready, one entry per component at fault.
    pub problems: Vec<Problem>,
    /// Every component as it was judged.
    pub components: Vec<ComponentStatus>,
    /// The health of every component, in registration order (empty outside the ready phase).
    pub health: Vec<(ComponentId, Health)>,
}

/// The three answers a readiness probe can give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadinessStatus {
    /// Ready, and every component running and healthy.
    Ready,
    /// Ready, but an optional component is down, unhealthy or restarting, a component is
    /// restarting by its policy, or a component says it is degraded: traffic is still served.
    Degraded,
    /// Not ready: not in the ready phase (starting, draining, stopping), or a critical component
    /// is unhealthy or down for good.
    Unready,
}

impl fmt::Display for ReadinessStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadinessStatus::Ready => "ready",
            ReadinessStatus::Degraded => "degraded",
            ReadinessStatus::Unready => "unready",
        })
    }
}

/// One component's problem.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The component.
    pub component: ComponentId,
    /// Whether the problem makes the service unready (rather than degraded).
    pub fatal: bool,
    /// What is wrong, for people: `restarting (restart 2, next in 1.20s): task \`poll\` failed: ...`.
    pub what: String,
}

impl Readiness {
    /// Whether the service should get traffic: ready or degraded.
    pub fn is_ready(&self) -> bool {
        self.status != ReadinessStatus::Unready
    }

    /// Judges readiness from the phase, the statuses and the health of running components.
    pub(crate) fn judge(
        phase: Phase,
        statuses: Vec<ComponentStatus>,
        health: Vec<(ComponentId, Health)>,
    ) -> Self {
        if phase != Phase::Ready {
            return Self {
                status: ReadinessStatus::Unready,
                phase,
                problems: Vec::new(),
                components: statuses,
                health,
            };
        }
        let now = Instant::now();
        let mut problems = Vec::new();
        for status in &statuses {
            let problem = |fatal: bool, what: String| Problem { component: status.name.clone(), fatal, what };
            if status.stage == Some(Stage::Running) {
                match health.iter().find(|(name, _)| *name == status.name).map(|(_, h)| h) {
                    Some(Health::Degraded(why)) => problems.push(problem(false, format!("degraded: {why}"))),
                    Some(Health::Unhealthy(why)) => {
                        problems.push(problem(status.critical, format!("unhealthy: {why}")));
                    }
                    _ => {}
                }
                continue;
            }
            // Not running while the service is ready: restarting by its policy (or with a
            // dependency that is), or down for good (an optional component out of restarts).
            let last = status.last_failure.as_ref().map(|f| format!(": {f}")).unwrap_or_default();
            match (status.stage, &status.outcome) {
                (None, Some(outcome)) => {
                    problems.push(problem(status.critical, format!("down: {outcome}")));
                }
                _ if status.next_restart.is_some() => {
                    let next = status
                        .next_restart
                        .map(|at| format!(", next in {}", Elapsed(at.saturating_duration_since(now))))
                        .unwrap_or_default();
                    let what = format!("restarting (restart {}{next}){last}", status.restarts);
                    problems.push(problem(false, what));
                }
                (Some(Stage::Restarting) | None, _) => {
                    problems.push(problem(false, "waiting for a dependency to start again".to_owned()));
                }
                // Stopping for a restart, or starting again.
                (Some(stage), _) => problems.push(problem(false, format!("restarting ({stage})"))),
            }
        }
        let status = if problems.iter().any(|p| p.fatal) {
            ReadinessStatus::Unready
        } else if problems.is_empty() {
            ReadinessStatus::Ready
        } else {
            ReadinessStatus::Degraded
        };
        Self { status, phase, problems, components: statuses, health }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.status, self.phase)?;
        for problem in &self.problems {
            write!(f, "; `{}` {}", problem.component, problem.what)?;
        }
        Ok(())
    }
}
