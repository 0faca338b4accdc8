//! AdmissionReview `admission.k8s.io/v1`: parsing the request body at the
//! edge and building the response.

use std::fmt;

/// The webhook path a review arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate`: validating policies only; never patches.
    Validate,
    /// `/mutate`: mutating policies only.
    Mutate,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request body that is not a usable AdmissionReview. The HTTP layer
/// answers it with `status` and `message` as plain text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// HTTP status code, 4xx.
    pub status: u16,
    pub message: String,
}
