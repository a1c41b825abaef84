//! Mistakes in how components are put together are refused at `build()` with a message that
//! names the components at fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifecycle_core::{BuildError, Component, Dependency, Registry};
use support::{Log, Probe, builder};

fn build_error(probes: Vec<Probe>) -> BuildError {
    let mut b = builder();
    for probe in probes {
        b.add(probe);
    }
    b.build().expect_err("build must fail")
}

#[test]
fn duplicate_name_names_both_types() {
    struct Cache;
    impl Component for Cache {}
    mod other {
        pub(super) struct Cache;
        impl lifecycle_core::Component for Cache {}
    }
    let mut b = Registry::builder();
    b.add(Cache);
    b.add(other::Cache);
    let error = b.build().unwrap_err();
    assert!(matches!(error, BuildError::DuplicateName { .. }));
    assert_eq!(
        error.to_string(),
        "component name `cache` is used twice: by `build_errors::duplicate_name_names_both_types::Cache` and by \
         `build_errors::duplicate_name_names_both_types::other::Cache`; give one of them another name"
    );
}

#[test]
fn missing_dependency_names_both_sides_and_suggests_close_names() {
    let log = Log::default();
    let error = build_error(vec![Probe::new("database", &log), Probe::new("api", &log).deps(&["databse"])]);
    assert_eq!(
        error.to_string(),
        "component `api` depends on `databse`, which is not registered; did you mean `database`?"
    );

    let error = build_error(vec![Probe::new("api", &log).deps(&["metrics"])]);
    assert_eq!(error.to_string(), "component `api` depends on `metrics`, which is not registered");
}

#[test]
fn missing_dependency_by_type_names_the_type() {
    struct Pool;
    impl Component for Pool {}
    struct Api;
    impl Component for Api {
        fn dependencies(&self) -> Vec<Dependency> {
            vec![Dependency::on_type::<Pool>()]
        }
    }
    let log = Log::default();
    let mut b = Registry::builder();
    b.add(Api);
    b.add(Probe::new("pool_main", &log));
    let error = b.build().unwrap_err();
    assert_eq!(
        error.to_string(),
        "component `api` depends on type `build_errors::missing_dependency_by_type_names_the_type::Pool`, which is \
         not registered; did you mean `pool_main`?"
    );
}

#[test]
fn ambiguous_dependency_by_type_lists_the_candidates() {
    let log = Log::default();
    let mut b = Registry::builder();
    b.add(Probe::new("primary", &log));
    b.add(Probe::new("replica", &log));
    b.add(Probe::new("api", &log)).depends_on(Dependency::on_type::<Probe>());
    let error = b.build().unwrap_err();
    assert!(matches!(error, BuildError::AmbiguousDependency { .. }));
    assert!(
        error.to_string().ends_with(
            "but 3 components have that type (`primary`, `replica`, `api`); depend on one by name"
        ),
        "{error}"
    );
}

#[test]
fn cycle_prints_its_path() {
    let log = Log::default();
    let error = build_error(vec![
        Probe::new("a", &log).deps(&["b"]),
        Probe::new("b", &log).deps(&["c"]),
        Probe::new("c", &log).deps(&["a"]),
        Probe::new("d", &log).deps(&["a"]),
    ]);
    assert_eq!(
        error.to_string(),
        "dependency cycle: `a` depends on `b`, which depends on `c`, which depends on `a`"
    );
}

#[test]
fn dependency_on_itself_is_a_cycle() {
    let log = Log::default();
    let error = build_error(vec![Probe::new("loner", &log).deps(&["loner"])]);
    assert_eq!(error.to_string(), "dependency cycle: `loner` depends on `loner` (itself)");
}

#[test]
fn a_typo_never_suggests_the_component_itself() {
    let log = Log::default();
    // `ticker` misspells its own dependency `tickers`: suggesting `ticker` would be nonsense.
    let error = build_error(vec![Probe::new("ticker", &log).deps(&["tickers"])]);
    assert_eq!(error.to_string(), "component `ticker` depends on `tickers`, which is not registered");
}

#[test]
fn a_name_taken_twice_by_one_type_says_so() {
    struct Named(&'static str);
    impl Component for Named {
        fn name(&self) -> lifecycle_core::ComponentId {
            self.0.into()
        }
    }
    let mut b = builder();
    b.add(Named("cache"));
    b.add(Named("cache"));
    let error = b.build().unwrap_err();
    assert_eq!(
        error.to_string(),
        "component name `cache` is used twice: two components of type \
         `build_errors::a_name_taken_twice_by_one_type_says_so::Named` have it; give one of them another name"
    );
}

#[test]
fn build_reports_every_problem_at_once() {
    let log = Log::default();
    let mut b = builder();
    b.shutdown_deadline(std::time::Duration::ZERO);
    b.add(Probe::new("api", &log).deps(&["databse"]));
    b.add(Probe::new("database", &log));
    b.add(Probe::new("a", &log).deps(&["b"]));
    b.add(Probe::new("b", &log).deps(&["a"]));
    let error = b.build().unwrap_err();
    assert_eq!(error.problems().len(), 3, "{error}");
    assert_eq!(
        error.to_string(),
        "3 problems:\n  \
         - setting `shutdown_deadline` is 0ns, but must be more than zero\n  \
         - component `api` depends on `databse`, which is not registered; did you mean `database`?\n  \
         - dependency cycle: `a` depends on `b`, which depends on `a`"
    );
}

#[test]
fn settings_out_of_range_are_errors_naming_the_setting_not_panics() {
    use std::time::Duration;
    let mut b = builder();
    b.shutdown_deadline(Duration::MAX).watchdog_grace(Duration::from_secs(3600));
    b.add(
        Probe::new("db", &Log::default())
            .options(lifecycle_core::ComponentOptions::new().stop_timeout(Duration::MAX)),
    );
    let error = b.build().unwrap_err();
    let text = error.to_string();
    for needle in [
        "setting `shutdown_deadline` is",
        "setting `watchdog_grace` is 3600s, but must be between 1 ns and 60 s",
        "component `db`: option `stop_timeout` is",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
}

#[test]
fn a_long_chain_builds_without_overflowing_the_stack() {
    let log = Log::default();
    let names: Vec<String> = (0..20_000).map(|i| format!("n{i}")).collect();
    let probes = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let deps: Vec<&str> = if i == 0 { vec![] } else { vec![names[i - 1].as_str()] };
            Probe::new(n, &log).deps(&deps)
        })
        .collect::<Vec<_>>();
    let mut b = builder();
    for probe in probes {
        b.add(probe);
    }
    assert!(b.build().is_ok());
}

#[test]
fn restart_policies_that_cannot_work_name_the_component_and_the_setting() {
    use std::time::Duration;

    use lifecycle_core::{ComponentOptions, RestartPolicy};
    let log = Log::default();
    let with = |name: &str, policy: RestartPolicy| {
        Probe::new(name, &log).options(ComponentOptions::new().restart(policy))
    };
    let error = build_error(vec![
        with("no_budget", RestartPolicy::on_failure().max_restarts(0, Duration::from_secs(60))),
        with(
            "backwards",
            RestartPolicy::on_failure().backoff(Duration::from_secs(5), Duration::from_secs(1)),
        ),
        with("always", RestartPolicy::always()),
        with("fine", RestartPolicy::on_failure()),
    ]);
    let text = error.to_string();
    for needle in [
        "component `no_budget`: option `max_restarts` is 0, but must be at least 1",
        "component `backwards`: option `backoff` is 5s..1s, but must be an initial delay no greater than the maximum",
        "component `always`: option `restart` is always, but must be `never` or `on_failure`",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    assert!(!text.contains("`fine`"), "{text}");
}

#[test]
fn a_restart_policy_on_a_component_that_cannot_start_twice_is_refused() {
    use lifecycle_core::{ComponentOptions, RestartPolicy};
    struct TakesItsListener;
    impl Component for TakesItsListener {
        fn options(&self) -> ComponentOptions {
            ComponentOptions::new().restart(RestartPolicy::on_failure())
        }
        fn restartable(&self) -> bool {
            false
        }
    }
    let mut b = builder();
    b.add(TakesItsListener);
    let error = b.build().unwrap_err().to_string();
    assert_eq!(
        error,
        "component `takes_its_listener`: option `restart` is on_failure, but must be `never`: this component's \
         start cannot run twice (it is not restartable)"
    );
}

#[test]
fn a_component_that_cannot_start_twice_cannot_depend_on_one_that_restarts() {
    use lifecycle_core::{ComponentOptions, RestartPolicy};
    struct Server;
    impl Component for Server {
        fn dependencies(&self) -> Vec<Dependency> {
            vec![Dependency::on("api")]
        }
        fn restartable(&self) -> bool {
            false
        }
    }
    let log = Log::default();
    let mut b = builder();
    b.add(Probe::new("db", &log).options(ComponentOptions::new().restart(RestartPolicy::on_failure())));
    b.add(Probe::new("api", &log).deps(&["db"]));
    b.add(Server);
    let error = b.build().unwrap_err();
    assert!(matches!(error, BuildError::NotRestartable { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "component `server` cannot start twice (it is not restartable), but a restart of `db` would restart it, \
         as it depends on it; remove the restart policy of `db`"
    );
}
