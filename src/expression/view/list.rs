//! A JSON array as a CEL `list`.

use super::{unexpected, JsonVal, Lend};
use cel::common::traits::{self, Adder, Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{CelInt, CelList, CelUInt, Kind, Type, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use serde_json::Value as Json;
use std::sync::OnceLock;

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
