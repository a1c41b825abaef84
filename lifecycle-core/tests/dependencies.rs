//! Components reach what they depend on through typed, shared handles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use lifecycle_core::{BoxError, Component, Context, Dep, Dependency, DependencyError};

#[derive(Default)]
struct Database {
    queries: AtomicUsize,
}

impl Component for Database {}

impl Database {
    fn query(&self) -> usize {
        self.queries.fetch_add(1, Ordering::SeqCst) + 1
    }
}

struct Cache;
impl Component for Cache {}

/// Holds its dependency from construction.
struct Repository {
    db: Dep<Database>,
}

impl Component for Repository {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.db.dependency()]
    }

    async fn start(&self, _ctx: &Context) -> Result<(), BoxError> {
        self.db.query();
        Ok(())
    }
}

/// Looks its dependencies up by type from the context.
struct Reporter;

impl Component for Reporter {
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::on_type::<Database>(), Dependency::on("cache")]
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let db: Dep<Database> = ctx.dep()?;
        assert_eq!(db.id().as_str(), "database");
        db.query();
        ctx.dep_named::<Cache>("cache")?;

        let undeclared = ctx.dep::<Repository>().unwrap_err();
        assert!(matches!(undeclared, DependencyError::NotDeclared { .. }));
        assert_eq!(
            undeclared.to_string(),
            "component `reporter` asked for a dependency of type `dependencies::Repository`, but declares none of \
             that type (it declares: `database`, `cache`)"
        );
        let wrong = ctx.dep_named::<Database>("cache").unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "component `reporter` asked for dependency `cache` as `dependencies::Database`, but it is a \
             `dependencies::Cache`"
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handles_reach_the_shared_dependency() {
    let mut b = support::builder();
    let db = b.add(Database::default()).dep();
    b.add(Cache);
    b.add(Repository { db: db.clone() });
    b.add(Reporter);
    let report = support::run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(report.is_success(), "{report}");
    // Both starts reached the one shared instance, whichever ran first.
    assert_eq!(db.queries.load(Ordering::SeqCst), 2);
}
