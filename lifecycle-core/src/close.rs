//! Resources a component owns and releases when it stops: the fields a derived component closes.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::text::joined;
use crate::{BoxError, Tasks};

/// A resource that must be released, not just dropped: a pool whose connections go back to the
/// server, a channel whose receiver must see the end, a file to flush.
///
/// `#[derive(Component)]` closes the fields marked `#[component(close)]` after the component's
/// stop method, in reverse declaration order, each even when another failed.
///
/// ```
/// use lifecycle_core::{BoxError, Close};
///
/// struct AuditLog {
///     file: tokio::sync::Mutex<Vec<u8>>,
/// }
///
/// impl Close for AuditLog {
///     async fn close(&self) -> Result<(), BoxError> {
///         let buffered = self.file.lock().await;
///         // flush `buffered` to disk here
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a resource lifecycle can close",
    label = "does not implement `Close`",
    note = "implement `lifecycle_core::Close` for it, or remove `#[component(close)]` from the field"
)]
pub trait Close: Send + Sync {
    /// Releases the resource. Called once, when its component stops.
    fn close(&self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Cancels the token.
impl Close for CancellationToken {
    async fn close(&self) -> Result<(), BoxError> {
        self.cancel();
        Ok(())
    }
}

/// Closes the tracker and waits for its tasks.
impl Close for TaskTracker {
    async fn close(&self) -> Result<(), BoxError> {
        TaskTracker::close(self);
        self.wait().await;
        Ok(())
    }
}

/// Closes the task set and waits for its tasks.
impl Close for Tasks {
    async fn close(&self) -> Result<(), BoxError> {
        Tasks::close(self);
        self.wait().await;
        Ok(())
    }
}

impl<T: Close> Close for Arc<T> {
    fn close(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        T::close(self)
    }
}

/// Closes the value if there is one.
impl<T: Close> Close for Option<T> {
    async fn close(&self) -> Result<(), BoxError> {
        match self {
            Some(value) => value.close().await,
            None => Ok(()),
        }
    }
}

/// Fields of a component that failed to close, in the order they were closed.
#[derive(Debug)]
pub struct CloseError {
    failures: Vec<(&'static str, BoxError)>,
}

impl CloseError {
    #[cfg_attr(not(feature = "macros"), allow(dead_code))]
    pub(crate) fn new(failures: Vec<(&'static str, BoxError)>) -> Self {
        Self { failures }
    }

    /// Each field that failed, with its error.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, &BoxError)> {
        self.failures.iter().map(|(field, error)| (*field, error))
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not close ")?;
        joined(f, &self.failures, "; ", |f, (field, error)| write!(f, "field `{field}`: {error}"))
    }
}

impl std::error::Error for CloseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures.first().map(|(_, error)| &**error as &(dyn std::error::Error + 'static))
    }
}
