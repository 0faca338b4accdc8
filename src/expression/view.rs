//! Borrowed views of parsed JSON as CEL values.
//!
//! Converting a Pod review into `cel::Value`s costs more than parsing it
//! (`benches/expression.rs` measures both). A view instead reads the
//! `serde_json::Value` in place:
//! selecting a field boxes a view of the child (a pointer and an empty
//! cache), and strings are `CelString`s that borrow the JSON's bytes.

mod list;
mod map;

pub(crate) use list::ListView;
pub(crate) use map::MapView;

use cel::common::traits;
use cel::common::types::{CelBool, CelDouble, CelInt, CelNull, CelString, Kind};
use cel::common::value::Val;
use cel::ExecutionError;
use serde_json::Value as Json;

/// A JSON value as a CEL value: `null`, `bool`, `int` for integers that fit
/// an `i64`, `double` for every other number, a borrowed `string`, or a view
/// of an object (a `map`) or an array (a `list`).
#[derive(Debug, Clone)]
pub(crate) enum JsonVal<'a> {
    Null(CelNull),
    Bool(CelBool),
    Int(CelInt),
    Double(CelDouble),
    String(CelString<'a>),
    Map(MapView<'a>),
    List(ListView<'a>),
}

impl<'a> JsonVal<'a> {
    pub(crate) fn new(json: &'a Json) -> Self {
        match json {
            Json::Null => JsonVal::Null(CelNull),
            Json::Bool(b) => JsonVal::Bool(CelBool::from(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => JsonVal::Int(CelInt::from(i)),
                // Without serde_json's arbitrary_precision, every number is an f64.
                None => JsonVal::Double(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
            },
            Json::String(s) => JsonVal::String(CelString::from(s.as_str())),
            Json::Object(map) => JsonVal::Map(MapView::new(map)),
            Json::Array(items) => JsonVal::List(ListView::new(items)),
        }
    }

    pub(crate) fn as_val(&self) -> &(dyn Val + 'a) {
        match self {
            JsonVal::Null(v) => v,
            JsonVal::Bool(v) => v,
            JsonVal::Int(v) => v,
            JsonVal::Double(v) => v,
            JsonVal::String(v) => v,
            JsonVal::Map(v) => v,
            JsonVal::List(v) => v,
        }
    }

    pub(crate) fn into_boxed(self) -> Box<dyn Val + 'a> {
        match self {
            JsonVal::Null(v) => Box::new(v),
            JsonVal::Bool(v) => Box::new(v),
            JsonVal::Int(v) => Box::new(v),
            JsonVal::Double(v) => Box::new(v),
            JsonVal::String(v) => Box::new(v),
            JsonVal::Map(v) => Box::new(v),
            JsonVal::List(v) => Box::new(v),
        }
    }
}

/// Lends the values of a slice, as [`traits::Iterable`] requires.
pub(crate) struct Lend<'b, 'a>(pub(crate) std::slice::Iter<'b, JsonVal<'a>>);

impl<'b, 'v, 'a: 'v> traits::Iterator<'b, 'v> for Lend<'b, 'a> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|v| v.as_val() as &(dyn Val + 'v))
    }
}

/// Returns the string a map is indexed with. JSON objects have string keys
/// only, so a key of another CEL key type is missing rather than wrong, as
/// in a CEL `map`.
pub(crate) fn string_key(key: &dyn Val) -> Result<&str, ExecutionError> {
    if let Some(s) = key.downcast_ref::<CelString>() {
        return Ok(s.inner());
    }
    match key.get_type().kind() {
        Kind::Int | Kind::UInt | Kind::Boolean | Kind::Double => {
            let text = super::convert::to_json(key).map(|json| json.to_string());
            Err(ExecutionError::no_such_key(&text.unwrap_or_default()))
        }
        _ => Err(unexpected(key, "map key")),
    }
}

pub(crate) fn unexpected(value: &dyn Val, want: &str) -> ExecutionError {
    ExecutionError::UnexpectedType {
        got: value.get_type().name().to_owned(),
        want: want.to_owned(),
    }
}
