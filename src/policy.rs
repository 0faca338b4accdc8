//! Policies: the YAML resources in `policies/`, their loading, and their
//! compiled form.
//!
//! The fields are those of Kubernetes `ValidatingAdmissionPolicy` and
//! `MutatingAdmissionPolicy` (`admissionregistration.k8s.io/v1`), in this
//! project's own API group so that one extension fits: `lookups`, the other
//! cluster objects a policy reads.

mod compile;
mod load;
mod model;

pub use compile::{
    CompileError, CompiledLookup, CompiledPolicy, LookupTarget, Mutation, Params, PolicySet,
    Validation, Variable,
};
pub use load::{embedded_sources, load_dir, load_embedded, load_sources, LoadError, PolicySource};
pub use model::*;
