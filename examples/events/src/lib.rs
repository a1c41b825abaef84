//! The `events` example's gRPC API, generated from `proto/events.proto`: the service the binary
//! serves, and a client for its callers (the tests among them).

/// `events.v1`: the `Events` service's messages, server and client.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("events.v1");
}
