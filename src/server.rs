//! The HTTPS webhook server.
//!
//! [`app`] builds the routes; [`Server`] binds the listener, terminates TLS
//! with a certificate that is reloaded when its files change, and serves
//! HTTP/1.1 and HTTP/2 until shutdown. [`serve`] does both in one call.

mod listener;
mod options;
mod routes;

use bytes::Bytes;

use crate::admission::{Endpoint, RequestError};

pub use listener::{serve, Server, ServerError};
pub use options::{ServerOptions, DEFAULT_BODY_LIMIT, DEFAULT_LISTEN, DEFAULT_REQUEST_TIMEOUT};
pub use routes::{app, AppState};

/// The admission side that the HTTP layer serves.
#[async_trait::async_trait]
pub trait Reviewer: Send + Sync + 'static {
    /// Evaluates one AdmissionReview request body and returns the
    /// AdmissionReview response body as JSON.
    async fn review(&self, endpoint: Endpoint, body: Bytes) -> Result<Bytes, RequestError>;

    /// `Ok` once every lookup source has synced; otherwise the reason.
    fn ready(&self) -> Result<(), String>;
}
