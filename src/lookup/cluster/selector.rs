//! Label selectors in the API's string form, parsed into kube's
//! [`Selector`] so the watch cache can filter and compare them.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// A label selector string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// Parses a label selector such as `a=b,c in (d,e),!f`.
///
/// Supports the operators of the Kubernetes label selector grammar that
/// kube's [`Expression`] can hold: `=`, `==`, `!=`, `in`, `notin`, bare
/// keys (exists) and `!key` (does not exist). The numeric `gt` and `lt`
/// operators (`>`, `<`) are rejected.
pub fn parse(selector: &str) -> Result<Selector, SelectorError> {
    let fail = |reason: String| SelectorError {
        selector: selector.to_owned(),
        reason,
    };
    let mut expressions = Vec::new();
    for term in split_terms(selector).map_err(fail)? {
        let term = term.trim();
        if term.is_empty() {
            if selector.trim().is_empty() {
                continue;
            }
            return Err(fail("empty requirement between commas".to_owned()));
        }
        expressions.push(parse_term(term).map_err(fail)?);
    }
    Ok(expressions.into_iter().collect())
}

/// Checks that every object `narrower` selects is also selected by `wider`.
/// The check is conservative: it holds when each requirement of `wider`
/// appears in `narrower` as written.
pub fn implies(narrower: &Selector, wider: &Selector) -> bool {
    let narrower: Vec<Expression> = narrower.clone().into_iter().collect();
    wider
        .clone()
        .into_iter()
        .all(|required| narrower.iter().any(|expression| expression == &required))
}

/// Splits on the commas that are not inside `( )`.
fn split_terms(selector: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in selector.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced ')'".to_owned())?;
            }
            ',' if depth == 0 => {
                terms.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".to_owned());
    }
    terms.push(&selector[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Expression, String> {
    if let Some(key) = term.strip_prefix('!') {
        if key.contains('=') {
            return Err(format!("{term:?} mixes '!' with a value"));
        }
        return Ok(Expression::DoesNotExist(checked_key(key)?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Expression::NotEqual(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    if let Some((key, value)) = term.split_once("==") {
        return Ok(Expression::Equal(checked_key(key)?, checked_value(value)?));
    }
    if let Some((key, value)) = term.split_once('=') {
        return Ok(Expression::Equal(checked_key(key)?, checked_value(value)?));
    }
    if term.contains('>') || term.contains('<') {
        return Err(format!(
            "{term:?} uses a numeric comparison, which lookups do not support"
        ));
    }
    if let Some(open) = term.find('(') {
        return parse_set_term(term, open);
    }
    Ok(Expression::Exists(checked_key(term)?))
}

/// Parses `key in (a,b)` or `key notin (a,b)`; `open` is the index of `(`.
fn parse_set_term(term: &str, open: usize) -> Result<Expression, String> {
    let Some(inner) = term[open + 1..].trim_end().strip_suffix(')') else {
        return Err(format!("{term:?} does not end with ')'"));
    };
    let mut head = term[..open].split_whitespace();
    let (Some(key), Some(operator), None) = (head.next(), head.next(), head.next()) else {
        return Err(format!("{term:?} is not of the form 'key in (values)'"));
    };
    let key = checked_key(key)?;
    let values = inner
        .split(',')
        .map(checked_value)
        .collect::<Result<BTreeSet<String>, String>>()?;
    match operator {
        "in" => Ok(Expression::In(key, values)),
        "notin" => Ok(Expression::NotIn(key, values)),
        other => Err(format!(
            "unknown operator {other:?} in {term:?}; expected 'in' or 'notin'"
        )),
    }
}

fn checked_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("a requirement has an empty key".to_owned());
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || "()!=,".contains(c))
    {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_owned())
}

fn checked_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .any(|c| c.is_whitespace() || "()!=,".contains(c))
    {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::core::SelectorExt;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_supported_operator() {
        let selector = parse("a=b, c==d,e!=f,g in (h, i),j notin (k),l,!m").unwrap();
        let expressions: Vec<Expression> = selector.into_iter().collect();
        assert_eq!(
            expressions,
            vec![
                Expression::Equal("a".into(), "b".into()),
                Expression::Equal("c".into(), "d".into()),
                Expression::NotEqual("e".into(), "f".into()),
                Expression::In("g".into(), ["h".into(), "i".into()].into()),
                Expression::NotIn("j".into(), ["k".into()].into()),
                Expression::Exists("l".into()),
                Expression::DoesNotExist("m".into()),
            ]
        );
    }

    #[test]
    fn empty_selector_selects_everything() {
        let selector = parse("").unwrap();
        assert!(selector.selects_all());
    }

    #[test]
    fn parsed_selector_matches_labels() {
        let selector = parse("sei.io/fork-genesis=true,sei.io/node in (a,b)").unwrap();
        assert!(selector.matches(&labels(&[
            ("sei.io/fork-genesis", "true"),
            ("sei.io/node", "a")
        ])));
        assert!(!selector.matches(&labels(&[
            ("sei.io/fork-genesis", "true"),
            ("sei.io/node", "c")
        ])));
        assert!(!selector.matches(&labels(&[("sei.io/node", "a")])));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "a=b,,c",
            "a in (b",
            "a in b)",
            "a >5",
            "a foo (b)",
            "=b",
            "!a=b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn narrower_selector_implies_wider() {
        let watch = parse("sei.io/fork-genesis=true").unwrap();
        let lookup = parse("sei.io/node=a, sei.io/fork-genesis==true").unwrap();
        assert!(implies(&lookup, &watch));
        assert!(!implies(&watch, &lookup));
        assert!(implies(&watch, &parse("").unwrap()));
        assert!(!implies(&parse("").unwrap(), &watch));
    }
}
