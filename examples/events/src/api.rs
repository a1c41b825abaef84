//! The gRPC API (`proto/events.proto`): reads from the database, and a feed of what this
//! instance records. Errors never show the database's URL: a client gets `UNAVAILABLE` and the
//! log has the cause.

use std::pin::Pin;

use events::proto::events_server::Events;
use events::proto::{CountReply, CountRequest, Event, FollowRequest, GetRequest};
use futures_util::Stream;
use lifecycle_core::Dep;
use lifecycle_grpc::tonic::{self, Request, Response, Status};
use lifecycle_sqlx::PgPool;
use lifecycle_sqlx::sqlx::{self, Row};
use tokio::sync::broadcast;

pub(crate) struct Api {
    pub(crate) db: Dep<PgPool>,
    /// Each event as it is recorded (first time only).
    pub(crate) recorded: broadcast::Sender<Event>,
}

fn unavailable(error: impl std::fmt::Display) -> Status {
    tracing::warn!(%error, "gRPC call failed");
    Status::unavailable("the database is not available")
}

#[tonic::async_trait]
impl Events for Api {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Event>, Status> {
        let id = request.into_inner().id;
        let pool = self.db.pool().map_err(unavailable)?;
        let row = sqlx::query("SELECT id, subject, payload FROM events WHERE id = $1")
            .bind(&id)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found(format!("no event `{id}`")))?;
        Ok(Response::new(Event {
            id: row.try_get("id").map_err(unavailable)?,
            subject: row.try_get("subject").map_err(unavailable)?,
            payload: row.try_get("payload").map_err(unavailable)?,
        }))
    }

    async fn count(&self, _request: Request<CountRequest>) -> Result<Response<CountReply>, Status> {
        let pool = self.db.pool().map_err(unavailable)?;
        let count =
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.map_err(unavailable)?;
        Ok(Response::new(CountReply { count }))
    }

    type FollowStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn follow(&self, request: Request<FollowRequest>) -> Result<Response<Self::FollowStream>, Status> {
        let max = match request.into_inner().max {
            0 => u32::MAX,
            max => max,
        };
        let events = futures_util::stream::unfold(
            (self.recorded.subscribe(), 0),
            move |(mut feed, sent)| async move {
                if sent == max {
                    return None;
                }
                loop {
                    match feed.recv().await {
                        Ok(event) => return Some((Ok(event), (feed, sent + 1))),
                        // A follower too slow to keep up misses some; the feed goes on.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(events)))
    }
}
