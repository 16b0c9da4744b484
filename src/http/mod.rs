//! HTTP/1.1 (`Worker::http("http://0.0.0.0:8080")`): requests in, responses out.
//!
//! ```no_run
//! use oxwork::{http::Response, run_all, Worker};
//!
//! fn main() -> oxwork::Result<()> {
//!     let mut w = Worker::http("http://0.0.0.0:8080")?;
//!     w.count(4);
//!     w.on_message(|c, req| {
//!         let r = match req.path() {
//!             "/" => Response::text("Hello World"),
//!             _ => Response::new(404).body("not here"),
//!         };
//!         c.send(r);
//!     });
//!     run_all()
//! }
//! ```
//!
//! Parsing is httparse's (a well-kept, fuzzed parser); framing, limits and encoding are here.

mod codec;
mod forwarded;
mod multipart;
mod request;
mod response;
mod worker;

pub(crate) use codec::{encode_standalone, error_reply};
pub use codec::{Http, HttpLimits};
pub(crate) use request::get_request;
pub use request::{Request, UploadedFile};
pub use response::{chunk, HeaderError, HttpOutput, Response, SseEvent};
