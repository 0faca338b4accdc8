//! CEL expressions: compilation, the Kubernetes function library, and a
//! borrowed view of request JSON as CEL values.
//!
//! Contract (implemented by the expression work):
//! - `Expression::compile` parses once at load and reports the position of
//!   a syntax error.
//! - `Activation` binds borrowed `serde_json::Value`s as CEL variables
//!   without converting them.
//! - `Expression::evaluate` returns the result converted to JSON.

use std::collections::BTreeMap;
use std::fmt;

/// A compiled CEL expression and its source text.
pub struct Expression {
    source: String,
}

/// A CEL syntax error with its 1-based line and column in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for CompileError {}

/// An error raised while evaluating an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// The variables of one evaluation, borrowed for `'a`.
pub struct Activation<'a> {
    _marker: std::marker::PhantomData<&'a ()>,
}

impl<'a> Activation<'a> {
    pub fn new() -> Self {
        Activation {
            _marker: std::marker::PhantomData,
        }
    }

    /// Binds `name` to a JSON value, viewed in place.
    pub fn bind_json(&mut self, _name: &str, _value: &'a serde_json::Value) {
        unimplemented!()
    }

    /// Binds `name` to a map whose entries are either values or the error
    /// their evaluation raised; reading an errored entry raises that error.
    pub fn bind_results(
        &mut self,
        _name: &str,
        _entries: &'a BTreeMap<String, Result<serde_json::Value, EvalError>>,
    ) {
        unimplemented!()
    }
}

impl Default for Activation<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Expression {
    pub fn compile(source: &str) -> Result<Expression, CompileError> {
        Ok(Expression {
            source: source.to_owned(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level identifiers the expression reads (`object`, `variables`, ...).
    pub fn roots(&self) -> Vec<String> {
        unimplemented!()
    }

    /// Field names selected directly on identifier `root`: `variables.a`
    /// and `variables["b"]` yield `a` and `b`.
    pub fn members_of(&self, _root: &str) -> Vec<String> {
        unimplemented!()
    }

    pub fn evaluate(&self, _activation: &Activation<'_>) -> Result<serde_json::Value, EvalError> {
        unimplemented!()
    }

    pub fn evaluate_bool(&self, _activation: &Activation<'_>) -> Result<bool, EvalError> {
        unimplemented!()
    }
}
