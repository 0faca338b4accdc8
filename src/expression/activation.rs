//! The variables of an evaluation, and its deadline.

use super::results::ResultsView;
use super::view::JsonVal;
use super::EvalError;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How many variable lookups pass between two readings of the clock.
const LOOKUPS_PER_CLOCK_READ: u32 = 16;

/// The variables of one evaluation, borrowed for `'a`.
///
/// Bind the request's values once and evaluate every expression of a
/// policy against the same activation. Nothing is converted: selecting a
/// field boxes a view of it, and a list builds views of its elements only
/// when a comprehension iterates it.
pub struct Activation<'a> {
    pub(super) bindings: Bindings<'a>,
}

/// The bound values, which cel consults on every lookup of a variable.
pub(super) struct Bindings<'a> {
    /// Keyed by borrowed names: an activation is built for every
    /// expression a policy evaluates, and owned keys cost an allocation each.
    values: BTreeMap<&'a str, Bound<'a>>,
    deadline: Option<Deadline>,
    lookups: AtomicU32,
    expired: AtomicBool,
}

enum Bound<'a> {
    Json(JsonVal<'a>),
    Results(ResultsView<'a>),
}

struct Deadline {
    at: Instant,
    /// The time limit the deadline was set for, which the error reports.
    limit: Duration,
}

impl<'a> Activation<'a> {
    pub fn new() -> Self {
        Activation {
            bindings: Bindings {
                values: BTreeMap::new(),
                deadline: None,
                lookups: AtomicU32::new(0),
                expired: AtomicBool::new(false),
            },
        }
    }

    /// Binds `name` to a JSON value, viewed in place. An object is a `map`,
    /// an array a `list`, and a string a `string` borrowing its bytes. An
    /// integer that fits an `i64` is an `int`, any other number a `double`,
    /// and `null` is `null`. Binding a name again replaces it.
    pub fn bind_json(&mut self, name: &'a str, value: &'a serde_json::Value) {
        let bound = Bound::Json(JsonVal::new(value));
        self.bindings.values.insert(name, bound);
    }

    /// Binds `name` to a map whose entries are either values or the error
    /// their evaluation raised. Reading an errored entry raises that error,
    /// as `name.key: message`. Binding a name again replaces it.
    pub fn bind_results(
        &mut self,
        name: &'a str,
        entries: &'a BTreeMap<String, Result<serde_json::Value, EvalError>>,
    ) {
        let bound = Bound::Results(ResultsView::new(name, entries));
        self.bindings.values.insert(name, bound);
    }

    /// Sets the instant after which evaluations fail with "evaluation
    /// exceeded its time limit".
    ///
    /// NOTE: cel 0.15's only hook inside an evaluation is the variable
    /// resolver, so the deadline is checked when an evaluation starts and on
    /// every 16th lookup of a bound variable. A loop whose body reads only
    /// its own loop variable, such as `object.spec.containers.all(c, c.name
    /// != "")`, runs to its end first. Its length is bounded by the
    /// request's size.
    pub fn set_deadline(&mut self, deadline: Instant) {
        let limit = deadline.saturating_duration_since(Instant::now());
        self.bindings.deadline = Some(Deadline {
            at: deadline,
            limit,
        });
        self.bindings.expired.store(false, Ordering::Relaxed);
    }
}

impl Default for Activation<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Bindings<'_> {
    /// Fails if the deadline has passed, before an evaluation starts.
    pub(super) fn check_deadline(&self) -> Result<(), EvalError> {
        match &self.deadline {
            Some(deadline) if self.expired.load(Ordering::Relaxed) => Err(deadline.error()),
            Some(deadline) if Instant::now() >= deadline.at => {
                self.expired.store(true, Ordering::Relaxed);
                Err(deadline.error())
            }
            _ => Ok(()),
        }
    }

    /// Fails if a variable lookup found the deadline passed, after an
    /// evaluation: its result, or its error, is then not to be trusted.
    pub(super) fn check_lookups(&self) -> Result<(), EvalError> {
        match &self.deadline {
            Some(deadline) if self.expired.load(Ordering::Relaxed) => Err(deadline.error()),
            _ => Ok(()),
        }
    }

    fn lookup_expired(&self) -> bool {
        let Some(deadline) = &self.deadline else {
            return false;
        };
        if self.expired.load(Ordering::Relaxed) {
            return true;
        }
        let count = self.lookups.fetch_add(1, Ordering::Relaxed);
        if count % LOOKUPS_PER_CLOCK_READ == 0 && Instant::now() >= deadline.at {
            self.expired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl Deadline {
    fn error(&self) -> EvalError {
        // The limit was measured when the deadline was set, a little late:
        // round it to the millisecond the caller most likely chose.
        let millis = (self.limit.as_micros() + 500) / 1000;
        let limit = match millis {
            0 => format!("{}µs", self.limit.as_micros()),
            _ => format!("{millis}ms"),
        };
        EvalError(format!("evaluation exceeded its time limit of {limit}"))
    }
}

impl VariableResolver for Bindings<'_> {
    /// Returns the bound value, or nothing once the deadline has passed:
    /// the lookup then fails, which ends the evaluation, and
    /// [`Bindings::check_deadline`] reports why.
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        if self.lookup_expired() {
            return None;
        }
        let value: &dyn Val = match self.values.get(name)? {
            Bound::Json(value) => value.as_val(),
            Bound::Results(view) => view,
        };
        Some(CowVal::Borrowed(value))
    }
}
