//! sqlx pools as lifecycle components: connected and checked at start (with backoff until the
//! start deadline), named after the component on the server, closed at stop (idle connections at
//! once, checked-out ones waited for until the stop timeout, when PostgreSQL cancels what they
//! still run), and a PostgreSQL job-queue worker that never loses a job.
//!
//! Enable the databases you use: `features = ["postgres"]`, `["sqlite"]`. sqlx is re-exported as
//! [`sqlx`], so its version is pinned once; add TLS with sqlx's own features.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), lifecycle_core::BuildError> {
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_sqlx::PgPool;
//!
//! let mut builder = RegistryBuilder::new();
//! let db = builder.add(PgPool::new("orders_db", "postgres://app:secret@127.0.0.1/orders").max_connections(20)).dep();
//! // Components that hold `db` (a `Dep<PgPool>`) start after it and stop before it;
//! // they query through `db.pool()?`.
//! # let _ = db;
//! # Ok(()) }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```

mod backend;
#[cfg(feature = "postgres")]
pub mod jobs;
mod pool;

pub use backend::{Backend, Interrupted};
pub use pool::SqlxPool;
pub use sqlx;

/// A PostgreSQL pool component.
#[cfg(feature = "postgres")]
pub type PgPool = SqlxPool<sqlx::Postgres>;

/// A SQLite pool component.
#[cfg(feature = "sqlite")]
pub type SqlitePool = SqlxPool<sqlx::Sqlite>;
