//! A map of evaluation results as a CEL `map`, the way `variables` is bound:
//! reading an entry whose evaluation failed raises that failure.

use super::view::{string_key, JsonVal, Lend};
use super::EvalError;
use cel::common::traits::{self, Container, Indexer, Iterable, Sizer};
use cel::common::types::{CelInt, CelString, Type, MAP_TYPE};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

pub(crate) type Results = BTreeMap<String, Result<Json, EvalError>>;

#[derive(Debug)]
pub(crate) struct ResultsView<'a> {
    /// The name the map is bound to, which prefixes the errors it raises.
    name: Arc<str>,
    entries: &'a Results,
    /// The keys comprehensions iterate over, built on first use.
    keys: OnceLock<Vec<JsonVal<'a>>>,
}

impl<'a> ResultsView<'a> {
    pub(crate) fn new(name: &str, entries: &'a Results) -> Self {
        ResultsView {
            name: Arc::from(name),
            entries,
            keys: OnceLock::new(),
        }
    }
}

impl Clone for ResultsView<'_> {
    fn clone(&self) -> Self {
        ResultsView {
            name: Arc::clone(&self.name),
            entries: self.entries,
            keys: OnceLock::new(),
        }
    }
}

impl Val for ResultsView<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

impl Indexer for ResultsView<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = string_key(idx)?;
        match self.entries.get(key) {
            Some(Ok(value)) => Ok(CowVal::Owned(JsonVal::new(value).into_boxed())),
            Some(Err(error)) => Err(ExecutionError::FunctionError {
                function: format!("{}.{key}", self.name),
                message: error.0.clone(),
            }),
            None => Err(ExecutionError::no_such_key(key)),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for ResultsView<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        match string_key(value) {
            Ok(key) => Ok(self.entries.contains_key(key)),
            Err(ExecutionError::NoSuchKey(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl Iterable for ResultsView<'_> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        let keys = self.keys.get_or_init(|| {
            let keys = self.entries.keys();
            keys.map(|k| JsonVal::String(CelString::from(k.as_str())))
                .collect()
        });
        Box::new(Lend(keys.iter()))
    }
}

impl Sizer for ResultsView<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.entries.len() as i64)
    }
}
