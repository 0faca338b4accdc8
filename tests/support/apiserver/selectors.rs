//! The selectors the stand-in serves, parsed and matched on JSON objects.

use serde_json::Value;

/// The equality-based label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`),
/// written apart from the code under test so that a shared mistake cannot
/// hide.
#[derive(Clone, Debug, Default)]
pub(super) struct LabelFilter(Vec<(String, LabelTest)>);

#[derive(Clone, Debug)]
enum LabelTest {
    Equals(String),
    NotEquals(String),
    Exists,
    Absent,
}

impl LabelFilter {
    pub(super) fn parse(text: &str) -> Result<LabelFilter, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains('(') {
                return Err(format!("set-based selector {term:?} is not served"));
            }
            let parsed = if let Some(key) = term.strip_prefix('!') {
                (key.to_owned(), LabelTest::Absent)
            } else if let Some((key, value)) = term.split_once("!=") {
                (key.to_owned(), LabelTest::NotEquals(value.to_owned()))
            } else if let Some((key, value)) = term.split_once("==") {
                (key.to_owned(), LabelTest::Equals(value.to_owned()))
            } else if let Some((key, value)) = term.split_once('=') {
                (key.to_owned(), LabelTest::Equals(value.to_owned()))
            } else {
                (term.to_owned(), LabelTest::Exists)
            };
            terms.push(parsed);
        }
        Ok(LabelFilter(terms))
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, test)| {
            let value = labels[key.as_str()].as_str();
            match test {
                LabelTest::Equals(expected) => value == Some(expected.as_str()),
                LabelTest::NotEquals(expected) => value != Some(expected.as_str()),
                LabelTest::Exists => value.is_some(),
                LabelTest::Absent => value.is_none(),
            }
        })
    }
}

/// Field selectors on `metadata.name` and `metadata.namespace`.
#[derive(Clone, Debug, Default)]
pub(super) struct FieldFilter(Vec<(String, String)>);

impl FieldFilter {
    pub(super) fn parse(text: &str) -> Result<FieldFilter, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Some((field, value)) = term.split_once('=') else {
                return Err(format!("field selector {term:?} is not served"));
            };
            let field = field.trim_end_matches('=');
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field selector on {field:?} is not served"));
            }
            terms.push((field.to_owned(), value.to_owned()));
        }
        Ok(FieldFilter(terms))
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, expected)| {
            let name = field.trim_start_matches("metadata.");
            object["metadata"][name].as_str() == Some(expected.as_str())
        })
    }
}
