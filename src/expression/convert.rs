//! Conversion of evaluation results and errors out of CEL.

use super::quantity::Quantity;
use super::EvalError;
use base64::Engine as _;
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelOptional, CelString, CelType, CelUInt, Kind,
};
use cel::common::value::{FromVal, Val};
use cel::ExecutionError;
use serde_json::{Map, Number, Value as Json};

/// Copies a CEL value into JSON: a `map` with string keys becomes an object,
/// `bytes` a base64 string, an optional its value or `null`, a type its name
/// and a quantity its canonical string. Views are read through the same CEL
/// traits as any other value, so they convert like `CelMap` and `CelList`.
pub(crate) fn to_json(value: &dyn Val) -> Result<Json, EvalError> {
    let json = match value.get_type().kind() {
        Kind::NullType => Json::Null,
        Kind::Boolean => Json::Bool(*downcast::<CelBool>(value)?.inner()),
        Kind::Int => Json::from(*downcast::<CelInt>(value)?.inner()),
        Kind::UInt => Json::from(*downcast::<CelUInt>(value)?.inner()),
        Kind::Double => double(*downcast::<CelDouble>(value)?.inner())?,
        Kind::String => Json::String(downcast::<CelString>(value)?.inner().to_owned()),
        Kind::Bytes => {
            let bytes = downcast::<CelBytes>(value)?.inner();
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Kind::List => list(value)?,
        Kind::Map => map(value)?,
        Kind::Type => Json::String(downcast::<CelType>(value)?.name().to_owned()),
        _ => other(value)?,
    };
    Ok(json)
}

fn downcast<'b, T: FromVal<'b, 'b> + Val>(value: &'b dyn Val) -> Result<&'b T, EvalError> {
    value
        .downcast_ref::<T>()
        .ok_or_else(|| unconvertible(value))
}

fn unconvertible(value: &dyn Val) -> EvalError {
    let type_name = value.get_type().name();
    EvalError(format!(
        "a value of type {type_name} cannot be converted to JSON"
    ))
}

fn double(value: f64) -> Result<Json, EvalError> {
    Number::from_f64(value)
        .map(Json::Number)
        .ok_or_else(|| EvalError(format!("the double {value} has no JSON representation")))
}

fn list(value: &dyn Val) -> Result<Json, EvalError> {
    let iterable = value.as_iterable().ok_or_else(|| unconvertible(value))?;
    let mut items = Vec::new();
    let mut elements = iterable.iter();
    while let Some(element) = elements.next() {
        items.push(to_json(element)?);
    }
    Ok(Json::Array(items))
}

fn map(value: &dyn Val) -> Result<Json, EvalError> {
    let (Some(iterable), Some(indexer)) = (value.as_iterable(), value.as_indexer()) else {
        return Err(unconvertible(value));
    };
    let mut object = Map::new();
    let mut keys = iterable.iter();
    while let Some(key) = keys.next() {
        let Some(name) = key.downcast_ref::<CelString>() else {
            let type_name = key.get_type().name();
            return Err(EvalError(format!(
                "a map with a key of type {type_name} cannot be converted to a JSON object, \
                 whose keys are strings; convert the key with string()"
            )));
        };
        let entry = indexer.get(key).map_err(eval_error)?;
        object.insert(name.inner().to_owned(), to_json(&*entry)?);
    }
    Ok(Json::Object(object))
}

fn other(value: &dyn Val) -> Result<Json, EvalError> {
    if let Some(optional) = value.downcast_ref::<CelOptional>() {
        return optional.option().map_or(Ok(Json::Null), to_json);
    }
    if let Some(quantity) = value.downcast_ref::<Quantity>() {
        return Ok(Json::String(quantity.to_string()));
    }
    Err(unconvertible(value))
}

/// Converts an evaluation error into its text. cel's wording is kept, except
/// that a function error reads "`function`: `message`", as the Kubernetes
/// functions and the failed entries of a results map raise them.
pub(crate) fn eval_error(error: ExecutionError) -> EvalError {
    match error {
        ExecutionError::FunctionError { function, message } => {
            EvalError(format!("{function}: {message}"))
        }
        error => EvalError(error.to_string()),
    }
}
