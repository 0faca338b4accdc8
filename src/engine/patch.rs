//! JSON Patch operations produced by a mutation expression, applied to the
//! raw JSON of the object.

use json_patch::{AddOperation, PatchOperation};
use jsonptr::PointerBuf;
use serde_json::Value;

/// Turns a mutation's result, a list of `{op, path, value, from}` maps,
/// into operations, and applies them to `object`.
///
/// Unlike plain RFC 6902, an `add` whose parent does not exist first adds
/// the missing parents (an object, or an array where the next token is `-`
/// or an index), so that a policy can add an annotation to an object with
/// no `metadata.annotations`. The added parents are part of the returned
/// operations, so the API server, which applies the patch to its own copy,
/// reaches the same result.
pub fn apply(object: &mut Value, result: &Value) -> Result<Vec<PatchOperation>, String> {
    let Value::Array(items) = result else {
        return Err(format!(
            "a JSONPatch expression must yield a list of operations, not {}",
            crate::admission::json_type(result)
        ));
    };
    let mut applied = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let operation: PatchOperation = serde_json::from_value(item.clone()).map_err(|error| {
            format!("operation {index} ({item}) is not a JSON Patch operation: {error}")
        })?;
        let mut operations = Vec::new();
        if let PatchOperation::Add(add) = &operation {
            operations.extend(missing_parents(object, &add.path));
        }
        operations.push(operation);
        for operation in operations {
            json_patch::patch(object, std::slice::from_ref(&operation))
                .map_err(|error| format!("operation {index} ({item}) failed: {error}"))?;
            applied.push(operation);
        }
    }
    Ok(applied)
}

/// Returns the `add` operations that create the missing ancestors of `path`.
fn missing_parents(object: &Value, path: &jsonptr::Pointer) -> Vec<PatchOperation> {
    let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    let mut operations = Vec::new();
    let mut current = Some(object);
    let mut prefix = PointerBuf::new();
    for (depth, token) in tokens
        .iter()
        .enumerate()
        .take(tokens.len().saturating_sub(1))
    {
        let next = current.and_then(|value| match value {
            Value::Object(map) => map.get(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        });
        prefix.push_back(token.as_str());
        if next.is_none() {
            let child = &tokens[depth + 1];
            let empty = if child == "-" || child.parse::<usize>().is_ok() {
                Value::Array(Vec::new())
            } else {
                Value::Object(Default::default())
            };
            operations.push(PatchOperation::Add(AddOperation {
                path: prefix.clone(),
                value: empty,
            }));
        }
        current = next;
    }
    operations
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::apply;

    #[test]
    fn add_creates_missing_annotations() {
        let mut object = json!({"metadata": {"name": "job"}});
        let ops = json!([{"op": "add", "path": "/metadata/annotations/karpenter.sh~1do-not-disrupt", "value": "true"}]);
        let applied = apply(&mut object, &ops).unwrap();
        assert_eq!(
            object["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"],
            "true"
        );
        assert_eq!(applied.len(), 2, "the parent add is part of the patch");
    }

    #[test]
    fn add_creates_missing_array_for_append() {
        let mut object = json!({"spec": {}});
        let ops = json!([{"op": "add", "path": "/spec/volumes/-", "value": {"name": "data"}}]);
        apply(&mut object, &ops).unwrap();
        assert_eq!(object["spec"]["volumes"], json!([{"name": "data"}]));
    }

    #[test]
    fn tilde_and_slash_keys_are_escaped() {
        let mut object = json!({"metadata": {"labels": {}}});
        let ops = json!([{"op": "add", "path": "/metadata/labels/a~0b~1c", "value": "x"}]);
        apply(&mut object, &ops).unwrap();
        assert_eq!(object["metadata"]["labels"]["a~b/c"], "x");
    }

    #[test]
    fn non_list_result_is_rejected() {
        let mut object = json!({});
        let error = apply(&mut object, &json!({"op": "add"})).unwrap_err();
        assert!(error.contains("list of operations"), "{error}");
    }

    #[test]
    fn unknown_op_is_rejected_with_its_index() {
        let mut object = json!({});
        let error = apply(&mut object, &json!([{"op": "merge", "path": "/a"}])).unwrap_err();
        assert!(error.starts_with("operation 0"), "{error}");
    }
}
