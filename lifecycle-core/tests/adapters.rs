//! The ready-made components: a value closed at stop, and a component made of closures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lifecycle_core::{BoxError, Close, FnComponent, Managed};
use support::{Log, builder, run_until_ready_then_stop};

#[derive(Default)]
struct Cache {
    closed: AtomicBool,
}

impl Close for Cache {
    async fn close(&self) -> Result<(), BoxError> {
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_values_are_closed_after_what_depends_on_them() {
    let log = Log::default();
    let mut b = builder();
    let cache = b.add(Managed::new("cache", Cache::default())).dep();
    let flushed = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flushed);
    b.add(Managed::with_close("buffer", Vec::<u8>::new(), move |_buffer| {
        let seen = Arc::clone(&seen);
        async move {
            seen.store(true, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    }));
    let (start_log, stop_log, cache_seen) = (log.clone(), log.clone(), cache.clone());
    b.add(
        FnComponent::new("user")
            .depends_on(&cache)
            .on_start(move |ctx| {
                let log = start_log.clone();
                async move {
                    log.push(ctx.name().as_str(), "start-end");
                    Ok::<(), BoxError>(())
                }
            })
            .on_stop(move |ctx| {
                let (log, cache) = (stop_log.clone(), cache_seen.clone());
                async move {
                    assert!(!cache.closed.load(Ordering::SeqCst), "the cache outlives its user");
                    log.push(ctx.name().as_str(), "stop-end");
                    Ok::<(), BoxError>(())
                }
            }),
    );
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert!(report.is_success(), "{report}");
    assert!(cache.closed.load(Ordering::SeqCst));
    assert!(flushed.load(Ordering::SeqCst));
    assert_eq!(log.order("start-end"), vec!["user"]);
    assert_eq!(log.order("stop-end"), vec!["user"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_from_a_hook_appear_in_the_report() {
    let mut b = builder();
    b.add(FnComponent::new("http").on_stop(|ctx| async move {
        ctx.note("drained 3 requests, cut 0");
        Ok::<(), BoxError>(())
    }));
    let report = run_until_ready_then_stop(b.build().unwrap()).await;
    assert_eq!(report.component("http").unwrap().notes, vec!["drained 3 requests, cut 0"]);
    assert!(report.to_string().contains("  `http`: drained 3 requests, cut 0\n"), "{report}");
}
