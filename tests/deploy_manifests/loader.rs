//! Renders a kustomization without kustomize, for the subset of its fields
//! that `deploy/` uses, so the manifest tests run where kustomize is absent.
//!
//! Supported: `resources` (files and directories), `patches` given by `path`
//! whose documents contain no lists (for those, a strategic merge patch is a
//! JSON merge patch), `secretGenerator` with `files` and
//! `disableNameSuffixHash: true`, and `replacements` from one field to
//! `*`-wildcard field paths. Any other field is rejected, so a kustomization
//! that outgrows the subset fails here instead of rendering differently from
//! kustomize. Where kustomize is installed, a test compares the two.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
    #[serde(default)]
    secret_generator: Vec<SecretGenerator>,
    #[serde(default)]
    replacements: Vec<Replacement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretGenerator {
    name: String,
    namespace: String,
    #[serde(rename = "type")]
    secret_type: String,
    files: Vec<String>,
    options: GeneratorOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    disable_name_suffix_hash: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replacement {
    source: ReplacementSource,
    targets: Vec<ReplacementTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReplacementSource {
    kind: String,
    name: String,
    field_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReplacementTarget {
    select: TargetSelector,
    field_paths: Vec<String>,
    #[serde(default)]
    options: TargetOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSelector {
    kind: String,
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetOptions {
    #[serde(default)]
    create: bool,
}

/// Renders the kustomization in `dir` into its objects, in the order the
/// resources list them, generated Secrets last.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let file = dir.join("kustomization.yaml");
    let text = fs::read_to_string(&file)
        .map_err(|error| format!("failed to read {}: {error}", file.display()))?;
    let kustomization: Kustomization = serde_yaml_ng::from_str(&text).map_err(|error| {
        format!(
            "{} uses a field the test loader does not support: {error}",
            file.display()
        )
    })?;
    if kustomization.kind != "Kustomization" {
        return Err(format!(
            "{} has kind {} ({}), expected Kustomization",
            file.display(),
            kustomization.kind,
            kustomization.api_version
        ));
    }

    let mut objects = Vec::new();
    for resource in &kustomization.resources {
        let path = dir.join(resource);
        if path.is_dir() {
            objects.extend(render(&path)?);
        } else {
            objects.extend(read_documents(&path)?);
        }
    }
    for generator in &kustomization.secret_generator {
        objects.push(generate_secret(dir, generator)?);
    }
    for patch in &kustomization.patches {
        for document in read_documents(&dir.join(&patch.path))? {
            apply_patch(&mut objects, &document, &patch.path)?;
        }
    }
    for replacement in &kustomization.replacements {
        apply_replacement(&mut objects, replacement)?;
    }
    ensure_unique(&objects)?;
    Ok(objects)
}

/// Parses every non-empty document of a multi-document YAML file.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|error| error.to_string())?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn read_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = fs::read_to_string(path)
        .map_err(|error| format!("failed to read {}: {error}", path.display()))?;
    parse_documents(&text).map_err(|error| format!("invalid YAML in {}: {error}", path.display()))
}

/// Formats the identity by which kustomize matches an object: apiVersion, kind,
/// namespace (empty when cluster-scoped) and name.
pub fn identity(object: &Value) -> String {
    let field = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    format!(
        "{} {} {}/{}",
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

fn ensure_unique(objects: &[Value]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for object in objects {
        let id = identity(object);
        if !seen.insert(id.clone()) {
            return Err(format!("two objects have the identity {id}"));
        }
    }
    Ok(())
}

fn generate_secret(dir: &Path, generator: &SecretGenerator) -> Result<Value, String> {
    if !generator.options.disable_name_suffix_hash {
        return Err(format!(
            "secretGenerator {} needs disableNameSuffixHash: true, since the test loader \
             does not compute kustomize's name hash",
            generator.name
        ));
    }
    let mut data = Map::new();
    for entry in &generator.files {
        // `key=path` names the key; a bare path uses its file name.
        let (key, path) = match entry.split_once('=') {
            Some((key, path)) => (key, path),
            None => {
                let name = Path::new(entry).file_name().and_then(|name| name.to_str());
                (name.unwrap_or(entry), entry.as_str())
            }
        };
        let file = dir.join(path);
        let bytes = fs::read(&file)
            .map_err(|error| format!("failed to read {}: {error}", file.display()))?;
        data.insert(key.to_owned(), Value::String(encode_like_kustomize(&bytes)));
    }
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": generator.name, "namespace": generator.namespace },
        "type": generator.secret_type,
        "data": data,
    }))
}

/// Base64 as kustomize's secretGenerator writes it: an encoding of 70
/// characters or more is split into lines of 70, each ending in `\n`. The
/// API server's decoder skips the line breaks.
fn encode_like_kustomize(bytes: &[u8]) -> String {
    const LINE_LENGTH: usize = 70;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    if encoded.len() < LINE_LENGTH {
        return encoded;
    }
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / LINE_LENGTH + 1);
    for line in encoded.as_bytes().chunks(LINE_LENGTH) {
        wrapped.extend(line.iter().copied().map(char::from));
        wrapped.push('\n');
    }
    wrapped
}

fn apply_patch(objects: &mut [Value], patch: &Value, file: &str) -> Result<(), String> {
    if contains_list(patch) {
        return Err(format!(
            "patch {file} contains a list, whose strategic merge the test loader does not model"
        ));
    }
    let matches = |object: &Value| {
        [
            "/apiVersion",
            "/kind",
            "/metadata/name",
            "/metadata/namespace",
        ]
        .iter()
        .all(|pointer| match patch.pointer(pointer) {
            Some(expected) => object.pointer(pointer) == Some(expected),
            None => true,
        })
    };
    let mut targets = objects.iter_mut().filter(|object| matches(object));
    let target = targets
        .next()
        .ok_or_else(|| format!("patch {file} matches no object: {}", identity(patch)))?;
    merge(target, patch);
    if targets.next().is_some() {
        return Err(format!("patch {file} matches more than one object"));
    }
    Ok(())
}

fn contains_list(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(map) => map.values().any(contains_list),
        _ => false,
    }
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` removes.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn apply_replacement(objects: &mut [Value], replacement: &Replacement) -> Result<(), String> {
    let source = &replacement.source;
    let source_object = objects
        .iter()
        .find(|object| kind_and_name(object) == (source.kind.as_str(), source.name.as_str()))
        .ok_or_else(|| {
            format!(
                "replacement source {} {} not found",
                source.kind, source.name
            )
        })?;
    let segments = parse_field_path(&source.field_path)?;
    let value = lookup(source_object, &segments)
        .ok_or_else(|| format!("replacement source field {} is missing", source.field_path))?
        .clone();

    for target in &replacement.targets {
        let selected = (target.select.kind.as_str(), target.select.name.as_str());
        let mut found = false;
        for object in objects
            .iter_mut()
            .filter(|object| kind_and_name(object) == selected)
        {
            found = true;
            for field_path in &target.field_paths {
                let segments = parse_field_path(field_path)?;
                assign(object, &segments, &value, target.options.create)
                    .map_err(|error| format!("{field_path} of {}: {error}", identity(object)))?;
            }
        }
        if !found {
            return Err(format!(
                "replacement target {} {} not found",
                selected.0, selected.1
            ));
        }
    }
    Ok(())
}

fn kind_and_name(object: &Value) -> (&str, &str) {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    (kind, name)
}

/// Splits a kustomize field path into its segments. Segments are separated
/// by `.`, but one in brackets may contain dots (`data.[ca.crt]`), and `*`
/// matches every item of a list.
fn parse_field_path(path: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let (segment, after) = if let Some(bracketed) = rest.strip_prefix('[') {
            let end = bracketed
                .find(']')
                .ok_or_else(|| format!("unclosed bracket in field path {path}"))?;
            (&bracketed[..end], &bracketed[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        segments.push(segment.to_owned());
        rest = after.strip_prefix('.').unwrap_or(after);
    }
    Ok(segments)
}

fn lookup<'a>(value: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(value, |current, segment| current.get(segment.as_str()))
}

fn assign(
    target: &mut Value,
    segments: &[String],
    value: &Value,
    create: bool,
) -> Result<(), String> {
    let Some((segment, rest)) = segments.split_first() else {
        *target = value.clone();
        return Ok(());
    };
    if segment == "*" {
        let items = target
            .as_array_mut()
            .ok_or("`*` applied to a field that is not a list")?;
        return items
            .iter_mut()
            .try_for_each(|item| assign(item, rest, value, create));
    }
    let map = target
        .as_object_mut()
        .ok_or_else(|| format!("{segment} is not in an object"))?;
    if !create && !map.contains_key(segment) {
        return Err(format!("{segment} is missing and create is false"));
    }
    let child = map
        .entry(segment.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    assign(child, rest, value, create)
}
