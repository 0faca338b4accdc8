//! genesis-gate: a Kubernetes admission webhook and policy engine.
//!
//! The API server sends AdmissionReviews to [`server`], which hands each body
//! to [`admission`] for parsing and to [`engine`] for evaluation against the
//! policies of [`policy`]. Policies are CEL, compiled and evaluated by
//! [`expression`]; the cluster objects they read come from [`lookup`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod cli;
pub mod engine;
pub mod expression;
pub mod lookup;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod server;
pub mod suite;
pub mod tls;
