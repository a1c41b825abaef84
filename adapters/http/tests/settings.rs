//! Settings that cannot work fail the server's start, each named with why, all at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifecycle_core::testing::{self, TestRun, within};
use lifecycle_core::{ComponentOptions, Outcome};
use lifecycle_http::HttpServer;
use lifecycle_http::axum::Router;

#[tokio::test]
async fn unworkable_settings_fail_the_start_naming_each() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut builder = testing::builder();
    builder.add(
        HttpServer::new("http", listener, Router::new())
            .max_connections(0)
            .header_read_timeout(Duration::ZERO)
            .request_timeout(Duration::ZERO)
            .soft_deadline(Duration::from_secs(5))
            .options(ComponentOptions::new().stop_timeout(Duration::from_secs(5))),
    );
    let report =
        within("the failed start", Duration::from_secs(10), TestRun::start(builder).finished()).await;
    assert!(!report.is_success());
    let http = report.components.iter().find(|c| c.name.as_str() == "http").unwrap();
    let Outcome::Failed { failure, .. } = &http.outcome else { panic!("{report}") };
    let text = failure.to_string();
    for expected in [
        "component `http`",
        "`max_connections` is 0",
        "`header_read_timeout` is 0",
        "`request_timeout` is 0: every request would time out",
        "`soft_deadline` (5s) is not shorter than the stop timeout (5s)",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
}
