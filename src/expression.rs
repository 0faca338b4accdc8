//! CEL expressions: compilation, the Kubernetes function library, and a
//! borrowed view of request JSON as CEL values.
//!
//! - [`Expression::compile`] parses once at load, reports the position of a
//!   syntax error, and rejects calls of undeclared functions.
//! - [`Activation`] binds borrowed `serde_json::Value`s as CEL variables
//!   without converting them: cel reads them through views.
//! - [`Expression::evaluate`] returns the result converted to JSON.
//!
//! Expressions are compiled and evaluated with cel 0.15's standard library,
//! its optional syntax (`a.?b`, `optional.of`), and its strings, lists and
//! math extensions. On top of those come the Kubernetes functions
//! `jsonpatch.escapeKey` and the quantity library: `quantity`, `isQuantity`,
//! `compareTo`, `isLessThan`, `isGreaterThan`, `asInteger`,
//! `asApproximateFloat`, `isInteger`, `sign`, `add`, `sub`, and
//! `string(quantity)`.

mod activation;
mod ast;
mod convert;
mod env;
mod functions;
mod quantity;
mod results;
mod view;

#[cfg(test)]
mod tests;

pub use activation::Activation;

use cel::common::types::CelBool;
use cel::common::value::Val;
use cel::{Context, IdedExpr, ParseErrors, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The deepest AST an expression may have. The interpreter recurses once per
/// level, so an expression such as a chain of 1,500 `+` terms overflows the
/// stack of a worker thread; this limit keeps evaluation far from that.
pub const MAX_DEPTH: usize = 200;

/// The maximum length of an expression's source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// The stack of the thread that compiles one expression: enough to parse,
/// and then reject, the deepest expression that fits `MAX_SOURCE_BYTES`.
const COMPILE_STACK_BYTES: usize = 256 * 1024 * 1024;

/// A compiled CEL expression and its source text.
pub struct Expression {
    source: String,
    ast: IdedExpr,
    roots: BTreeSet<String>,
    members: BTreeMap<String, BTreeSet<String>>,
    read_whole: BTreeSet<String>,
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

impl Expression {
    /// Parses `source`, expanding the macros (`has`, `all`, `exists`,
    /// `exists_one`, `map`, `filter`, `sortBy`).
    ///
    /// # Errors
    ///
    /// Fails with the position of the first syntax error, or of the first
    /// call of a function that no overload declares, such as a misspelt
    /// `startWith`.
    pub fn compile(source: &str) -> Result<Expression, CompileError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CompileError {
                message: format!(
                    "the expression is {} bytes, more than the limit of {MAX_SOURCE_BYTES}; \
                     split it into variables",
                    source.len()
                ),
                line: 1,
                column: 1,
            });
        }
        // The parser recurses once per nesting level, and so does dropping
        // the parse tree, before the depth check below can reject it. A
        // thread with a large stack keeps a deep expression an error rather
        // than a stack overflow; loading is rare, so the thread costs little.
        let owned = source.to_owned();
        std::thread::Builder::new()
            .name("cel-compile".to_owned())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || Expression::compile_here(&owned))
            .map_err(|error| CompileError {
                message: format!("failed to start the compiler thread: {error}"),
                line: 1,
                column: 1,
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(CompileError {
                    message: "the CEL compiler panicked on this expression".to_owned(),
                    line: 1,
                    column: 1,
                })
            })
    }

    fn compile_here(source: &str) -> Result<Expression, CompileError> {
        let program = env::shared()
            .compile(source)
            .map_err(|errors| syntax_error(&errors))?;
        let analysis = ast::Analysis::of(program.expression());
        if analysis.depth > MAX_DEPTH {
            return Err(CompileError {
                message: format!(
                    "the expression nests {} levels deep, more than the limit of {MAX_DEPTH}; \
                     split it into variables",
                    analysis.depth
                ),
                line: 1,
                column: 1,
            });
        }
        if let Some((function, id)) = analysis.unknown_function {
            let call = program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start);
            let (line, column) = position(source, name_offset(source, call as usize, &function));
            let message = format!(
                "undeclared function '{function}': check its spelling, its arguments and \
                 whether it is called on a value (x.f()) or globally (f(x))"
            );
            return Err(CompileError {
                message,
                line,
                column,
            });
        }
        let mut ast = program.expression().clone();
        ast::put_literals_right(&mut ast);
        Ok(Expression {
            source: source.to_owned(),
            ast,
            roots: analysis.roots,
            members: analysis.members,
            read_whole: analysis.read_whole,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Top-level identifiers the expression reads (`object`, `variables`, ...),
    /// sorted. Comprehension variables, function namespaces such as
    /// `jsonpatch` and type names such as `int` are not among them.
    pub fn roots(&self) -> Vec<String> {
        self.roots.iter().cloned().collect()
    }

    /// Field names selected directly on identifier `root`, sorted:
    /// `variables.a`, `variables["b"]`, `has(variables.c)` and
    /// `variables.?d` yield `a`, `b`, `c` and `d`.
    ///
    /// The list is complete only when [`Expression::reads_whole`] is false
    /// for `root`.
    pub fn members_of(&self, root: &str) -> Vec<String> {
        let members = self.members.get(root).into_iter().flatten();
        members.cloned().collect()
    }

    /// Returns whether the expression reads `root` other than by literal field
    /// names, e.g. `variables[name]`, `size(variables)` or
    /// `variables.exists(k, ...)`, so that any of its members may be read.
    pub fn reads_whole(&self, root: &str) -> bool {
        self.read_whole.contains(root)
    }

    /// Evaluates the expression and copies the result into JSON: a map with
    /// string keys becomes an object, bytes a base64 string, an optional its
    /// value or `null`, a quantity its canonical string (`1536Mi`).
    ///
    /// # Errors
    ///
    /// Fails with cel's error text, with the error of a failed entry of a
    /// map bound by [`Activation::bind_results`], when the deadline has
    /// passed, or when the result has no JSON form (a map with int keys).
    pub fn evaluate(&self, activation: &Activation<'_>) -> Result<serde_json::Value, EvalError> {
        self.evaluate_with(activation, convert::to_json)
    }

    /// Evaluates an expression that must yield a `bool`.
    ///
    /// # Errors
    ///
    /// As [`Expression::evaluate`], and when the result is of another type.
    pub fn evaluate_bool(&self, activation: &Activation<'_>) -> Result<bool, EvalError> {
        self.evaluate_with(activation, |value| match value.downcast_ref::<CelBool>() {
            Some(boolean) => Ok(*boolean.inner()),
            None => {
                let type_name = value.get_type().name();
                Err(EvalError(format!(
                    "expected a bool result, got a value of type {type_name}"
                )))
            }
        })
    }

    /// Evaluates against a context that resolves variables from the
    /// activation, and hands the result to `finish` while it may still
    /// borrow the bound JSON.
    fn evaluate_with<T>(
        &self,
        activation: &Activation<'_>,
        finish: impl FnOnce(&dyn Val) -> Result<T, EvalError>,
    ) -> Result<T, EvalError> {
        let bindings = &activation.bindings;
        bindings.check_deadline()?;
        let mut context = Context::with_env(env::shared().clone());
        context.set_variable_resolver(bindings);
        let result = Value::resolve_val(&self.ast, &context);
        bindings.check_lookups()?;
        let value = result.map_err(convert::eval_error)?;
        finish(&*value)
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// Converts parse errors into one error at the position of the first. The
/// message lists the others with their positions.
fn syntax_error(errors: &ParseErrors) -> CompileError {
    let Some(first) = errors.errors.first() else {
        let message = "the expression could not be parsed".to_owned();
        return CompileError {
            message,
            line: 1,
            column: 1,
        };
    };
    // Later errors follow from the first one and mostly repeat it in
    // parser terms, so only the first is reported.
    let message = plain_parse_message(&first.msg);
    let line = usize::try_from(first.pos.0).unwrap_or(1).max(1);
    let column = usize::try_from(first.pos.1).unwrap_or(1).max(1);
    CompileError {
        message,
        line,
        column,
    }
}

/// Returns the message inside a parser error that cel 0.15 formats with
/// `Debug`, such as `OtherError(ParseError { .., msg: "Recursion limit of 96
/// exceeded", .. })`; other messages are returned unchanged.
fn plain_parse_message(message: &str) -> String {
    let Some(start) = message.find("msg: \"") else {
        return message.to_owned();
    };
    let inner = &message[start + 6..];
    match inner.find('"') {
        Some(end) => format!("Syntax error: {}", &inner[..end]),
        None => message.to_owned(),
    }
}

/// Returns the byte offset of `function`'s name in a call whose `(`, where
/// cel places the call's node, is at byte `paren`. Returns `paren` if the
/// name is not right before it.
fn name_offset(source: &str, paren: usize, function: &str) -> usize {
    let name = function.rsplit('.').next().unwrap_or(function);
    match paren.checked_sub(name.len()) {
        Some(start) if source.get(start..paren) == Some(name) => start,
        _ => paren,
    }
}

/// Returns the 1-based line and column, counted in characters, of byte
/// `offset` of `source`.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}
