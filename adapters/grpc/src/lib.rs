//! A tonic gRPC server as a lifecycle component, with the HTTP adapter's drain: the
//! `grpc.health.v1` service says `NOT_SERVING` first, then `GOAWAY`, calls in flight finish, and
//! response streams still open at the soft deadline end with `UNAVAILABLE`.
//!
//! ```no_run
//! use lifecycle_core::RegistryBuilder;
//! use lifecycle_grpc::GrpcServer;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut builder = RegistryBuilder::new();
//! // The listener is bound by the application (or inherited): the server never binds.
//! let listener = std::net::TcpListener::bind("127.0.0.1:50051")?;
//! builder.add(GrpcServer::new("grpc", listener)); // .add_service(GreeterServer::new(greeter))
//! # Ok(()) }
//! ```

mod call;
mod server;

pub use lifecycle_http::RequestContext;
pub use server::GrpcServer;
pub use {tonic, tonic_health};
