//! The HTTPS webhook server.

use bytes::Bytes;

use crate::admission::{Endpoint, RequestError};

/// The admission side that the HTTP layer serves.
#[async_trait::async_trait]
pub trait Reviewer: Send + Sync + 'static {
    /// Evaluates one AdmissionReview request body and returns the
    /// AdmissionReview response body as JSON.
    async fn review(&self, endpoint: Endpoint, body: Bytes) -> Result<Bytes, RequestError>;

    /// `Ok` once every lookup source has synced; otherwise the reason.
    fn ready(&self) -> Result<(), String>;
}
