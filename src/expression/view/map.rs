//! A JSON object as a CEL `map`.

use super::{string_key, JsonVal, Lend};
use cel::common::traits::{self, Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{CelInt, CelString, Kind, Type, MAP_TYPE};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use serde_json::{Map, Value as Json};
use std::sync::OnceLock;

/// A JSON object as a CEL `map` with string keys.
#[derive(Debug)]
pub(crate) struct MapView<'a> {
    map: &'a Map<String, Json>,
    /// The keys comprehensions iterate over, built on first use.
    keys: OnceLock<Vec<JsonVal<'a>>>,
}

impl<'a> MapView<'a> {
    pub(crate) fn new(map: &'a Map<String, Json>) -> Self {
        MapView {
            map,
            keys: OnceLock::new(),
        }
    }
}

impl Clone for MapView<'_> {
    fn clone(&self) -> Self {
        MapView::new(self.map)
    }
}

impl<'a> Val for MapView<'a> {
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

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }

    /// Equal to any `map` with the same keys and equal values, views and
    /// `CelMap`s alike.
    fn equals(&self, other: &dyn Val) -> bool {
        let (Some(sizer), Some(indexer)) = (other.as_sizer(), other.as_indexer()) else {
            return false;
        };
        other.get_type().kind() == Kind::Map
            && *sizer.size().inner() == self.map.len() as i64
            && self.map.iter().all(|(key, value)| {
                indexer
                    .get(&CelString::from(key.as_str()))
                    .is_ok_and(|theirs| JsonVal::new(value).as_val().equals(&*theirs))
            })
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

impl Indexer for MapView<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = string_key(idx)?;
        match self.map.get(key) {
            Some(value) => Ok(CowVal::Owned(JsonVal::new(value).into_boxed())),
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

impl Container for MapView<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        match string_key(value) {
            Ok(key) => Ok(self.map.contains_key(key)),
            Err(ExecutionError::NoSuchKey(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl Iterable for MapView<'_> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        let keys = self.keys.get_or_init(|| {
            let keys = self.map.keys();
            keys.map(|k| JsonVal::String(CelString::from(k.as_str())))
                .collect()
        });
        Box::new(Lend(keys.iter()))
    }
}

impl Sizer for MapView<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.map.len() as i64)
    }
}

impl Zeroer for MapView<'_> {
    fn is_zero_value(&self) -> bool {
        self.map.is_empty()
    }
}
