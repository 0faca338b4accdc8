//! Borrowed views of parsed JSON as CEL values.
//!
//! Converting a 5 KB Pod into `cel::Value`s costs tens of microseconds, more
//! than parsing it. A view instead reads the `serde_json::Value` in place:
//! selecting a field boxes a view of the child (a pointer and an empty
//! cache), and strings are `CelString`s that borrow the JSON's bytes.

use cel::common::traits::{self, Adder, Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelNull, CelString, CelUInt, Kind, Type, LIST_TYPE,
    MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use serde_json::{Map, Value as Json};
use std::sync::OnceLock;

/// A JSON value as CEL sees it: `null`, `bool`, `int` for integers that fit
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

/// Lends the values of a slice, as [`Iterable`] requires.
pub(crate) struct Lend<'b, 'a>(pub(crate) std::slice::Iter<'b, JsonVal<'a>>);

impl<'b, 'v, 'a: 'v> traits::Iterator<'b, 'v> for Lend<'b, 'a> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|v| v.as_val() as &(dyn Val + 'v))
    }
}

/// The string a map is indexed with. JSON objects have string keys only, so
/// another key type is missing rather than wrong, as in a CEL `map`.
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

fn unexpected(value: &dyn Val, want: &str) -> ExecutionError {
    ExecutionError::UnexpectedType {
        got: value.get_type().name().to_owned(),
        want: want.to_owned(),
    }
}

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

/// A JSON array as a CEL `list`.
#[derive(Debug)]
pub(crate) struct ListView<'a> {
    items: &'a [Json],
    /// The elements comprehensions borrow, built on first use.
    elements: OnceLock<Vec<JsonVal<'a>>>,
}

impl<'a> ListView<'a> {
    pub(crate) fn new(items: &'a [Json]) -> Self {
        ListView {
            items,
            elements: OnceLock::new(),
        }
    }

    fn elements(&self) -> &[JsonVal<'a>] {
        self.elements
            .get_or_init(|| self.items.iter().map(JsonVal::new).collect())
    }
}

impl Clone for ListView<'_> {
    fn clone(&self) -> Self {
        ListView::new(self.items)
    }
}

impl<'a> Val for ListView<'a> {
    fn get_type(&self) -> &Type {
        &LIST_TYPE
    }

    fn cel_type() -> &'static Type {
        &LIST_TYPE
    }

    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        Some(self)
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

    /// Equal to any `list` of the same length with equal elements in order.
    fn equals(&self, other: &dyn Val) -> bool {
        let (Some(sizer), Some(iterable)) = (other.as_sizer(), other.as_iterable()) else {
            return false;
        };
        if other.get_type().kind() != Kind::List || *sizer.size().inner() != self.len() {
            return false;
        }
        let mut theirs = iterable.iter();
        self.items.iter().all(|item| {
            theirs
                .next()
                .is_some_and(|other| JsonVal::new(item).as_val().equals(other))
        })
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

impl ListView<'_> {
    fn len(&self) -> i64 {
        self.items.len() as i64
    }
}

impl Indexer for ListView<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let position = if let Some(i) = idx.downcast_ref::<CelInt>() {
            *i.inner()
        } else if let Some(u) = idx.downcast_ref::<CelUInt>() {
            i64::try_from(*u.inner()).unwrap_or(i64::MAX)
        } else {
            return Err(unexpected(idx, "int"));
        };
        let out_of_bounds = || ExecutionError::IndexOutOfBounds(position.into());
        let index = usize::try_from(position).map_err(|_| out_of_bounds())?;
        // Borrow the element when a comprehension has built them already.
        if let Some(elements) = self.elements.get() {
            let element = elements.get(index).ok_or_else(out_of_bounds)?;
            return Ok(CowVal::Borrowed(element.as_val()));
        }
        let item = self.items.get(index).ok_or_else(out_of_bounds)?;
        Ok(CowVal::Owned(JsonVal::new(item).into_boxed()))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for ListView<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        let found = self.items.iter();
        Ok(found
            .map(JsonVal::new)
            .any(|item| item.as_val().equals(value)))
    }
}

impl Iterable for ListView<'_> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(Lend(self.elements().iter()))
    }
}

impl Sizer for ListView<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.len())
    }
}

impl Zeroer for ListView<'_> {
    fn is_zero_value(&self) -> bool {
        self.items.is_empty()
    }
}

/// `list + list`: a new `CelList` of the elements of both, the views among
/// them still borrowing the JSON.
impl Adder for ListView<'_> {
    fn add<'b, 'v>(&'b self, rhs: &(dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let iterable = rhs
            .as_iterable()
            .filter(|_| rhs.get_type().kind() == Kind::List);
        let Some(iterable) = iterable else {
            let types = vec!["list".to_owned(), rhs.get_type().name().to_owned()];
            return Err(ExecutionError::no_such_overload("_+_", types));
        };
        let mut sum: Vec<Box<dyn Val + 'v>> = Vec::with_capacity(self.items.len());
        sum.extend(
            self.items
                .iter()
                .map(|item| JsonVal::new(item).into_boxed()),
        );
        let mut theirs = iterable.iter();
        while let Some(item) = theirs.next() {
            sum.push(item.clone_as_boxed());
        }
        Ok(CowVal::owned(CelList::from(sum)))
    }
}
