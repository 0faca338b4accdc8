//! Reading policy files: from a folder, or the set embedded in the binary.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::compile::{compile_policy, PolicySet};
use super::model::{PolicyDocument, API_VERSION};

/// The shipped policies, embedded so that `serve` runs with no files.
/// A test checks that this list matches the `policies/` folder.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "claim-gate.yaml",
        include_str!("../../policies/claim-gate.yaml"),
    ),
    (
        "halt-height-check.yaml",
        include_str!("../../policies/halt-height-check.yaml"),
    ),
    (
        "halt-height.yaml",
        include_str!("../../policies/halt-height.yaml"),
    ),
    (
        "job-wiring.yaml",
        include_str!("../../policies/job-wiring.yaml"),
    ),
    (
        "no-second-bootstrap.yaml",
        include_str!("../../policies/no-second-bootstrap.yaml"),
    ),
    (
        "one-way-completion.yaml",
        include_str!("../../policies/one-way-completion.yaml"),
    ),
    (
        "single-writer.yaml",
        include_str!("../../policies/single-writer.yaml"),
    ),
    (
        "statefulset-notice.yaml",
        include_str!("../../policies/statefulset-notice.yaml"),
    ),
];

/// A policy file's name and text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: String,
    pub text: String,
    /// The folder that relative `paramRef.file` paths start from; `None`
    /// for embedded policies.
    pub dir: Option<PathBuf>,
}

/// A policy set that failed to load. Every message names the file, and
/// where it applies the policy and the field.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("failed to read policy folder {path}: {message}")]
    Folder { path: String, message: String },
    #[error("failed to read policy file {file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: document {document} is not a valid policy: {message}")]
    Parse {
        file: String,
        document: usize,
        message: String,
    },
    #[error("{file}: policy {policy}: {message}")]
    Invalid {
        file: String,
        policy: String,
        message: String,
    },
    #[error("policy {policy} is defined twice: in {first} and in {second}; rename one")]
    Duplicate {
        policy: String,
        first: String,
        second: String,
    },
}

/// Returns the embedded policy files.
pub fn embedded_sources() -> Vec<PolicySource> {
    EMBEDDED
        .iter()
        .map(|(file, text)| PolicySource {
            file: format!("policies/{file} (embedded)"),
            text: (*text).to_owned(),
            dir: None,
        })
        .collect()
}

/// Loads and compiles the embedded policies.
pub fn load_embedded() -> Result<PolicySet, LoadError> {
    load_sources(&embedded_sources())
}

/// Loads and compiles every `*.yaml`, `*.yml` and `*.json` file directly
/// in `dir`. Subfolders, such as the policy test suites in `tests/`, are
/// not read.
pub fn load_dir(dir: &Path) -> Result<PolicySet, LoadError> {
    load_sources(&read_dir_sources(dir)?)
}

pub(crate) fn read_dir_sources(dir: &Path) -> Result<Vec<PolicySource>, LoadError> {
    let folder_error = |error: std::io::Error| LoadError::Folder {
        path: dir.display().to_string(),
        message: error.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder_error)? {
        let path = entry.map_err(folder_error)?.path();
        let is_policy = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if is_policy && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Folder {
            path: dir.display().to_string(),
            message: "it contains no policy files (*.yaml, *.yml, *.json); an empty set would \
                      enforce nothing"
                .to_owned(),
        });
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|error| LoadError::Read {
                file: path.display().to_string(),
                message: error.to_string(),
            })?;
            Ok(PolicySource {
                file: path.display().to_string(),
                text,
                dir: Some(dir.to_path_buf()),
            })
        })
        .collect()
}

/// Parses and compiles policy files into one set.
pub fn load_sources(sources: &[PolicySource]) -> Result<PolicySet, LoadError> {
    let mut policies = Vec::new();
    for source in sources {
        for (index, document) in parse_documents(source)?.into_iter().enumerate() {
            if document.api_version != API_VERSION {
                return Err(LoadError::Parse {
                    file: source.file.clone(),
                    document: index + 1,
                    message: format!(
                        "apiVersion {:?} is not supported; use {API_VERSION:?}",
                        document.api_version
                    ),
                });
            }
            let policy = compile_policy(document, source)?;
            if let Some(first) = policies
                .iter()
                .find(|p: &&super::CompiledPolicy| p.name == policy.name)
            {
                return Err(LoadError::Duplicate {
                    policy: policy.name.clone(),
                    first: first.file.clone(),
                    second: source.file.clone(),
                });
            }
            policies.push(policy);
        }
    }
    Ok(PolicySet::new(policies))
}

fn parse_documents(source: &PolicySource) -> Result<Vec<PolicyDocument>, LoadError> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(&source.text).enumerate() {
        let value =
            serde_yaml_ng::Value::deserialize(document).map_err(|error| LoadError::Parse {
                file: source.file.clone(),
                document: index + 1,
                message: error.to_string(),
            })?;
        if value.is_null() {
            continue; // an empty document, such as a trailing `---`
        }
        let policy = serde_yaml_ng::from_value(value).map_err(|error| LoadError::Parse {
            file: source.file.clone(),
            document: index + 1,
            message: error.to_string(),
        })?;
        documents.push(policy);
    }
    if documents.is_empty() {
        // Often a file caught half-written; loading it as "no policy"
        // would silently drop what it held.
        return Err(LoadError::Parse {
            file: source.file.clone(),
            document: 1,
            message: "the file contains no policy; delete it to remove its policies".to_owned(),
        });
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::EMBEDDED;

    #[test]
    fn embedded_list_matches_policy_folder() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
        let mut on_disk: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = EMBEDDED
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(
            embedded, on_disk,
            "add each policy file to EMBEDDED in src/policy/load.rs"
        );
    }
}
