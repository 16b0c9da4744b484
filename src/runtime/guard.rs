//! Running user callbacks so that a panic costs one connection, never the process.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::runtime::stats;

/// Runs `f`; a panic is caught, logged with its message and counted. `None` means it panicked.
///
/// Unwind safety: state the callback shares through `RefCell`s may be left half-updated by a
/// panic, exactly as after an early return; the caller closes the connection involved, which is
/// the documented consequence of a panicking handler.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    guarded_with_message(what, f).ok()
}

/// [`guarded`], keeping the panic's message.
pub(crate) fn guarded_with_message<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| caught(what, &*payload))
}

/// Counts and logs a caught panic; its message.
fn caught(what: &str, payload: &(dyn Any + Send)) -> String {
    let message = panic_message(payload);
    stats::with(|c| stats::bump(&c.panics));
    tracing::error!("panic in {what}: {message}");
    message
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A future whose panics are caught, logged and counted like [`guarded`]'s: it resolves to
/// the panic's message if polling it panicked.
pub(crate) struct GuardedFuture<F: ?Sized> {
    what: &'static str,
    inner: std::pin::Pin<Box<F>>,
}

impl<F: std::future::Future + ?Sized> GuardedFuture<F> {
    pub(crate) fn new(what: &'static str, inner: std::pin::Pin<Box<F>>) -> Self {
        GuardedFuture { what, inner }
    }
}

impl<F: std::future::Future + ?Sized> std::future::Future for GuardedFuture<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let what = self.what;
        match catch_unwind(AssertUnwindSafe(|| self.inner.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(payload) => std::task::Poll::Ready(Err(caught(what, &*payload))),
        }
    }
}
