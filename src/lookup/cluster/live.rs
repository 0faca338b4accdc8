//! Reads that go to the API server now, bounded by a time budget.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::Client;
use serde_json::Value;

use crate::lookup::LookupError;

use super::kinds::ResolvedKind;
use super::object::RawObject;

/// Page size of a live list, the same as a watcher's list.
const LIST_PAGE_SIZE: u32 = 500;

/// Maps a kube client error to a lookup error, keeping the cause chain in
/// the message so the log shows why a connection failed.
pub fn map_kube_error(error: &kube::Error) -> LookupError {
    match error {
        kube::Error::Api(status) => LookupError::Api {
            code: status.code,
            message: status.message.clone(),
        },
        kube::Error::BuildRequest(_) => LookupError::InvalidRequest(error_chain(error)),
        kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_)
        | kube::Error::LinesCodecMaxLineLengthExceeded => {
            LookupError::InvalidResponse(error_chain(error))
        }
        _ => LookupError::Unreachable(error_chain(error)),
    }
}

/// Joins an error and its sources with `: `.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Several layers repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn object_api(client: &Client, kind: &ResolvedKind, namespace: Option<&str>) -> Api<RawObject> {
    match namespace {
        Some(namespace) if kind.namespaced => {
            Api::namespaced_with(client.clone(), namespace, &kind.resource)
        }
        _ => Api::all_with(client.clone(), &kind.resource),
    }
}

/// Gets one object; `Ok(None)` on 404.
pub async fn get(
    client: &Client,
    kind: &ResolvedKind,
    namespace: Option<&str>,
    name: &str,
    budget: Duration,
) -> Result<Option<Arc<Value>>, LookupError> {
    if kind.namespaced && namespace.is_none() {
        return Err(LookupError::MissingNamespace {
            kind: kind.resource.kind.clone(),
            name: name.to_owned(),
        });
    }
    let api = object_api(client, kind, namespace);
    let found = tokio::time::timeout(budget, api.get_opt(name))
        .await
        .map_err(|_| LookupError::Timeout(budget))?
        .map_err(|error| map_kube_error(&error))?;
    Ok(found.map(|object| object.with_type(&kind.resource).into_json()))
}

/// Lists objects, following `continue` tokens, within one budget for all
/// pages.
pub async fn list(
    client: &Client,
    kind: &ResolvedKind,
    namespace: Option<&str>,
    label_selector: Option<&str>,
    budget: Duration,
) -> Result<Vec<Arc<Value>>, LookupError> {
    let api = object_api(client, kind, namespace);
    tokio::time::timeout(budget, list_pages(&api, kind, label_selector))
        .await
        .map_err(|_| LookupError::Timeout(budget))?
}

async fn list_pages(
    api: &Api<RawObject>,
    kind: &ResolvedKind,
    label_selector: Option<&str>,
) -> Result<Vec<Arc<Value>>, LookupError> {
    let mut params = ListParams::default().limit(LIST_PAGE_SIZE);
    if let Some(selector) = label_selector {
        params = params.labels(selector);
    }
    let mut objects = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|error| map_kube_error(&error))?;
        objects.extend(
            page.items
                .into_iter()
                .map(|object| object.with_type(&kind.resource).into_json()),
        );
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn unbuildable_request_is_not_unreachable() {
        // kube-core refuses a GET with an empty name before sending it; the
        // message must not blame the network.
        let refused = kube::core::request::Error::Validation("A non-empty name is required".into());
        let mapped = map_kube_error(&kube::Error::BuildRequest(refused));
        assert!(
            matches!(mapped, LookupError::InvalidRequest(_)),
            "{mapped:?}"
        );
        assert!(
            !mapped.to_string().contains("could not be reached"),
            "{mapped}"
        );
    }

    #[test]
    fn api_status_keeps_its_code() {
        let status = Status::failure("jobs.batch is forbidden", "Forbidden").with_code(403);
        let mapped = map_kube_error(&kube::Error::Api(status.boxed()));
        assert!(
            matches!(mapped, LookupError::Api { code: 403, .. }),
            "{mapped:?}"
        );
    }

    #[test]
    fn undecodable_body_is_an_invalid_response() {
        let parse_error = serde_json::from_str::<Value>("{").unwrap_err();
        let mapped = map_kube_error(&kube::Error::SerdeError(parse_error));
        assert!(
            matches!(mapped, LookupError::InvalidResponse(_)),
            "{mapped:?}"
        );
    }
}
