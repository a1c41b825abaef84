//! `#[derive(Component)]` and `#[lifecycle_core::main]`. Use them through `lifecycle-core`, which
//! re-exports both behind its default `macros` feature.
//!
//! Each macro is a small compiler: it parses its input into a typed tree that keeps the user's
//! tokens (`ast`, `attr`), checks it (`valid`), and writes the code (`expand`, `entry`). A mistake is reported on the user's token with the valid options, and whatever can
//! still be expanded is, so one mistake does not cascade into ten.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod crate_path;
mod duration;
mod entry;
mod expand;
mod restart;
mod valid;

/// Implements `lifecycle_core::Component` for a struct.
///
/// ```
/// use lifecycle_core::{BoxError, CancellationToken, Component, Context, Dep, Health};
///
/// #[derive(Component)]
/// struct Database;
///
/// #[derive(Component)]
/// struct Cache;
///
/// #[derive(Component)]
/// #[component(
///     name = "orders",         // default: the type name in snake_case ("order_service")
///     start = open,            // `async fn(&self) -> Result<(), E>`, or with `ctx: &Context`
///     drain = deregister,      // same forms; runs when the service turns unready
///     stop = flush,            // same forms; runs before the `close` fields are closed
///     reload = reread,         // same forms; on SIGHUP or `LifecycleHandle::reload`
///     health = check,          // `async fn(&self) -> Health`
///     start_timeout = "5s",    // human durations: "250ms", "1m30s", "1.5s"
///     stop_timeout = "1m30s",
///     critical = false,        // default true: a failure stops the whole service
///     run_to_completion = false, // true: the run ends (exit 0) once this is done, as for a batch job
///     restart = "on_failure",  // default "never"; "always" is for tasks, not components
///     backoff = "100ms..30s",  // first delay..longest, doubling (this and the next two need
///     max_restarts = "5 per 1m", // `on_failure`); more restarts in the window escalate
///     jitter = 0.2,            // the share of each delay taken off at random, 0 to 1
///     depends_on(Database),    // dependencies by type, checked by the compiler
/// )]
/// struct OrderService {
///     db: Dep<Database>,        // a `Dep<T>` field is a dependency by itself
///     #[component(optional)]
///     cache: Dep<Cache>,        // runs on while it is down or restarting: ask `cache.is_up()`
///     #[component(close)]
///     shutdown: CancellationToken, // a resource (`lifecycle_core::Close`) closed after `stop`,
///                                  // fields in reverse declaration order
///     #[component(skip)]
///     replica: Option<Dep<Database>>, // not a dependency
/// }
///
/// impl OrderService {
///     async fn open(&self, ctx: &Context) -> Result<(), BoxError> { Ok(()) }
///     async fn deregister(&self) -> Result<(), BoxError> { Ok(()) }
///     async fn reread(&self) -> Result<(), BoxError> { Ok(()) }
///     async fn flush(&self) -> Result<(), std::io::Error> { Ok(()) }
///     async fn check(&self) -> Health { Health::Healthy }
/// }
/// ```
///
/// A struct without any attribute is a component that does nothing at start and closes its
/// `close` fields at stop. Generic structs are supported (the impl requires
/// `Self: Send + Sync + 'static`); lifetime parameters, enums and unions are not. When
/// `lifecycle-core` is renamed in `Cargo.toml`, the derive follows; `crate = "path"` overrides.
#[proc_macro_derive(Component, attributes(component))]
pub fn derive_component(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

/// Runs an `async fn` that returns a `RegistryBuilder` (or `Result<RegistryBuilder, E>` with
/// `E: Display`) as the whole program: catches the run's signals first thing (a `SIGTERM` that
/// arrives during the setup or while the function runs is kept for the run, not fatal), builds a
/// tokio runtime (multi-threaded unless `flavor = "current_thread"`), awaits the function,
/// applies the options, runs the registry, writes the report to standard error when the run
/// failed, and exits with the report's exit code (without waiting for abandoned tasks).
///
/// To act when the service turns ready (print its address, tell a supervisor), register a
/// callback on the builder with `RegistryBuilder::on_ready`.
///
/// `setup = path` names a function `fn() -> Result<T, E>` (`E: Display`) that runs first, while
/// the process has one thread, and whose value becomes the function's one argument: the place
/// for what must happen before any thread exists, such as changing the environment (taking
/// inherited sockets with `lifecycle_handoff::Listeners::inherit`) or setting up logging. An
/// error ends the process with exit code 1.
///
/// ```no_run
/// use lifecycle_core::RegistryBuilder;
///
/// /// Runs while the process has one thread, before the runtime exists.
/// fn setup() -> Result<String, std::env::VarError> {
///     std::env::var("REGION")
/// }
///
/// #[lifecycle_core::main(setup = setup)]
/// async fn main(region: String) -> RegistryBuilder {
///     println!("serving {region}");
///     RegistryBuilder::new()
/// }
/// ```
///
/// ```no_run
/// use lifecycle_core::RegistryBuilder;
///
/// #[lifecycle_core::main(
///     shutdown_deadline = "25s", // the global deadline, from the shutdown request
///     drain_delay = "5s",        // unready but serving, before anything stops
///     signals = "TERM, INT",     // the default shutdown signals (SIGHUP reloads unless listed here);
///                                // `signals = false` for none
///     flavor = "multi_thread",   // the default; "current_thread" for one thread
///     worker_threads = 2,        // default: one per core (multi_thread only)
///     report = "always",         // default "on_failure"
///     restart = "on_failure",    // the default restart policy, for every component that sets
///     backoff = "100ms..30s",    // none and can restart with all that depends on it
///     max_restarts = "5 per 1m", // (`RegistryBuilder::default_restart`); written as on a
///     jitter = 0.2,              // derived component
/// )]
/// async fn main() -> RegistryBuilder {
///     RegistryBuilder::new()
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::main(args.into(), item.into()).into()
}
