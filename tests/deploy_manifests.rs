//! Checks the manifests in `deploy/`: each kustomization renders into
//! objects that parse as their Kubernetes types with no unknown field, and
//! the objects are wired to each other (Service, webhooks, RBAC,
//! certificates, probes, security context).
//!
//! The renders come from the loader in `deploy_manifests/loader.rs`. Where
//! `kustomize` or `kubectl` is on PATH, one test also renders with it and
//! compares; without either, that test prints why it skipped.

// A test crate's root resolves modules beside itself, and a file there
// would become a test target of its own.
#[path = "deploy_manifests/loader.rs"]
mod loader;
#[path = "deploy_manifests/manifests.rs"]
mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use manifests::{Bundle, Certificate};

const CERT_DIR: &str = "/etc/genesis-gate/tls";
const VALIDATE_PATH: &str = "/validate";
const MUTATE_PATH: &str = "/mutate";
/// Stands in for the `ca.pem` of `genesis-gate certs` in the static-certs
/// render; the manifests only copy its bytes.
const TEST_CA_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nZGVwbG95LW1hbmlmZXN0cyB0ZXN0IENB\n-----END CERTIFICATE-----\n";

struct Render {
    name: &'static str,
    dir: PathBuf,
    documents: Vec<Value>,
    bundle: Bundle,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Renders the base and both overlays, once per test run.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let static_certs = prepare_static_certs();
        vec![
            render("base", deploy_dir().join("base")),
            render("cert-manager", deploy_dir().join("overlays/cert-manager")),
            render("static-certs", static_certs),
        ]
    })
}

fn render_named(name: &str) -> &'static Render {
    renders()
        .iter()
        .find(|render| render.name == name)
        .unwrap_or_else(|| panic!("no render named {name}"))
}

fn render(name: &'static str, dir: PathBuf) -> Render {
    let documents = loader::render(&dir)
        .unwrap_or_else(|error| panic!("{name}: failed to render {}: {error}", dir.display()));
    let bundle = Bundle::parse(&documents)
        .unwrap_or_else(|error| panic!("{name}: invalid manifests:\n{error}"));
    Render {
        name,
        dir,
        documents,
        bundle,
    }
}

/// Copies `deploy/` to a scratch folder and writes the files that
/// `genesis-gate certs --out deploy/overlays/static-certs` would, since the
/// repository keeps no keys. Returns the overlay folder of the copy.
fn prepare_static_certs() -> PathBuf {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-manifests");
    match fs::remove_dir_all(&scratch) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            panic!("failed to clear {}: {error}", scratch.display())
        }
        _ => {}
    }
    copy_dir(&deploy_dir(), &scratch.join("deploy"));
    let overlay = scratch.join("deploy/overlays/static-certs");
    let files = [
        (
            "tls.crt",
            "-----BEGIN CERTIFICATE-----\nc2VydmluZw==\n-----END CERTIFICATE-----\n",
        ),
        (
            "tls.key",
            "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n",
        ),
        ("ca.pem", TEST_CA_PEM),
    ];
    for (name, contents) in files {
        fs::write(overlay.join(name), contents).expect("scratch folder is writable");
    }
    overlay
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("scratch folder is writable");
    for entry in fs::read_dir(from).expect("deploy/ is readable") {
        let entry = entry.expect("deploy/ is readable");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("scratch folder is writable");
        }
    }
}

/// A kustomize that renders these folders: a program and the arguments
/// before the folder.
type KustomizeCommand = (&'static str, &'static [&'static str]);

/// Finds `kustomize` or a `kubectl` with kustomize embedded, at v5 or later
/// (older ones lack fields the overlays use), or returns why none fits.
fn find_kustomize() -> Result<KustomizeCommand, String> {
    let candidates: [(&str, &[&str], &[&str]); 2] = [
        ("kustomize", &["build"], &["version"]),
        ("kubectl", &["kustomize"], &["version", "--client"]),
    ];
    let mut reasons = Vec::new();
    for (program, build, version) in candidates {
        let output = match Command::new(program).args(version).output() {
            Ok(output) => output,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                reasons.push(format!("{program} is not on PATH"));
                continue;
            }
            Err(error) => {
                reasons.push(format!("failed to run {program}: {error}"));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        match kustomize_major_version(&text) {
            Some(major) if major >= 5 => return Ok((program, build)),
            Some(major) => reasons.push(format!("{program} has kustomize v{major}, older than v5")),
            None => reasons.push(format!("{program} reports no kustomize version")),
        }
    }
    Err(reasons.join("; "))
}

/// Reads the major version from `kustomize version` (`v5.5.0`, or
/// `{Version:kustomize/v4.5.7 ...}` before v5) or in the
/// `Kustomize Version: v5.5.0` line of `kubectl version --client`.
fn kustomize_major_version(text: &str) -> Option<u32> {
    let version = text.lines().find_map(|line| {
        let line = line.trim();
        line.strip_prefix("Kustomize Version: v")
            .or_else(|| line.split_once("kustomize/v").map(|(_, after)| after))
            .or_else(|| line.strip_prefix('v'))
    })?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn kustomize_build(command: KustomizeCommand, dir: &Path) -> Result<String, String> {
    let (program, args) = command;
    let output = Command::new(program)
        .args(args)
        .arg(dir)
        .output()
        .map_err(|error| format!("failed to run {program}: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{program} failed on {}: {stderr}", dir.display()));
    }
    String::from_utf8(output.stdout).map_err(|error| error.to_string())
}

/// One webhook of either configuration kind, with the fields both share.
struct Webhook<'a> {
    mutating: bool,
    configuration: &'a str,
    name: &'a str,
    client_config: &'a WebhookClientConfig,
    rules: &'a [RuleWithOperations],
    namespace_selector: Option<&'a LabelSelector>,
    match_conditions: &'a [MatchCondition],
    admission_review_versions: &'a [String],
    side_effects: &'a str,
    timeout_seconds: Option<i32>,
    failure_policy: Option<&'a str>,
    reinvocation_policy: Option<&'a str>,
}

fn webhooks(bundle: &Bundle) -> Vec<Webhook<'_>> {
    let mut all = Vec::new();
    for configuration in &bundle.validating {
        let configuration_name = configuration.metadata.name.as_deref().unwrap_or("");
        for webhook in configuration.webhooks.iter().flatten() {
            all.push(Webhook {
                mutating: false,
                configuration: configuration_name,
                name: &webhook.name,
                client_config: &webhook.client_config,
                rules: webhook.rules.as_deref().unwrap_or_default(),
                namespace_selector: webhook.namespace_selector.as_ref(),
                match_conditions: webhook.match_conditions.as_deref().unwrap_or_default(),
                admission_review_versions: &webhook.admission_review_versions,
                side_effects: &webhook.side_effects,
                timeout_seconds: webhook.timeout_seconds,
                failure_policy: webhook.failure_policy.as_deref(),
                reinvocation_policy: None,
            });
        }
    }
    for configuration in &bundle.mutating {
        let configuration_name = configuration.metadata.name.as_deref().unwrap_or("");
        for webhook in configuration.webhooks.iter().flatten() {
            all.push(Webhook {
                mutating: true,
                configuration: configuration_name,
                name: &webhook.name,
                client_config: &webhook.client_config,
                rules: webhook.rules.as_deref().unwrap_or_default(),
                namespace_selector: webhook.namespace_selector.as_ref(),
                match_conditions: webhook.match_conditions.as_deref().unwrap_or_default(),
                admission_review_versions: &webhook.admission_review_versions,
                side_effects: &webhook.side_effects,
                timeout_seconds: webhook.timeout_seconds,
                failure_policy: webhook.failure_policy.as_deref(),
                reinvocation_policy: webhook.reinvocation_policy.as_deref(),
            });
        }
    }
    all
}

fn webhook_named<'a>(bundle: &'a Bundle, name: &str) -> Webhook<'a> {
    webhooks(bundle)
        .into_iter()
        .find(|webhook| webhook.name == name)
        .unwrap_or_else(|| panic!("no webhook named {name}"))
}

fn the_deployment(bundle: &Bundle) -> &Deployment {
    assert_eq!(bundle.deployments.len(), 1, "expected one Deployment");
    &bundle.deployments[0]
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the Deployment has a pod template spec")
}

fn the_container(deployment: &Deployment) -> &Container {
    let containers = &pod_spec(deployment).containers;
    assert_eq!(containers.len(), 1, "expected one container");
    &containers[0]
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default()
}

fn namespace_of(deployment: &Deployment) -> &str {
    deployment
        .metadata
        .namespace
        .as_deref()
        .expect("the Deployment has a namespace")
}

/// Returns whether `selector` (matchLabels only) selects pods labelled `labels`.
fn label_selector_selects(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    !match_labels.is_empty()
        && selector.match_expressions.is_none()
        && match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// Returns whether a Service `selector` selects pods labelled `labels`.
fn service_selects(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_some_and(|selector| {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    })
}

#[test]
fn webhook_paths_match_configuration_kind() {
    for render in renders() {
        for webhook in webhooks(&render.bundle) {
            let reference = webhook
                .client_config
                .service
                .as_ref()
                .expect("service reference");
            let expected = if webhook.mutating {
                MUTATE_PATH
            } else {
                VALIDATE_PATH
            };
            assert_eq!(
                reference.path.as_deref(),
                Some(expected),
                "{}: webhook {}",
                render.name,
                webhook.name
            );
        }
    }
}

/// Resolves `port`, a number or a name, to a port of `container`.
fn resolve_port(container: &Container, port: &IntOrString) -> Option<i32> {
    let ports = container.ports.as_deref().unwrap_or_default();
    match port {
        IntOrString::Int(number) => ports
            .iter()
            .find(|candidate| candidate.container_port == *number)
            .map(|candidate| candidate.container_port),
        IntOrString::String(name) => ports
            .iter()
            .find(|candidate| candidate.name.as_deref() == Some(name.as_str()))
            .map(|candidate| candidate.container_port),
    }
}

/// Returns the value of the container argument `--flag=value`.
fn flag<'a>(container: &'a Container, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    container
        .args
        .iter()
        .flatten()
        .find_map(|argument| argument.strip_prefix(prefix.as_str()))
}

fn the_service<'a>(bundle: &'a Bundle, namespace: &str, name: &str) -> &'a Service {
    bundle
        .services
        .iter()
        .find(|service| {
            service.metadata.namespace.as_deref() == Some(namespace)
                && service.metadata.name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no Service {namespace}/{name}"))
}

#[test]
fn renders_parse_into_typed_objects() {
    for render in renders() {
        let bundle = &render.bundle;
        assert_eq!(bundle.namespaces.len(), 1, "{}: Namespace", render.name);
        assert_eq!(
            bundle.service_accounts.len(),
            1,
            "{}: ServiceAccount",
            render.name
        );
        assert_eq!(
            bundle.cluster_roles.len(),
            1,
            "{}: ClusterRole",
            render.name
        );
        assert_eq!(
            bundle.cluster_role_bindings.len(),
            1,
            "{}: ClusterRoleBinding",
            render.name
        );
        assert_eq!(bundle.deployments.len(), 1, "{}: Deployment", render.name);
        assert_eq!(
            bundle.disruption_budgets.len(),
            1,
            "{}: PodDisruptionBudget",
            render.name
        );
        assert_eq!(bundle.services.len(), 1, "{}: Service", render.name);
        assert_eq!(
            bundle.validating.len(),
            1,
            "{}: validating configuration",
            render.name
        );
        assert_eq!(
            bundle.mutating.len(),
            1,
            "{}: mutating configuration",
            render.name
        );
    }
    assert_eq!(
        render_named("base").bundle.secrets.len(),
        0,
        "the base ships no Secret"
    );
    assert_eq!(
        render_named("static-certs").bundle.secrets.len(),
        1,
        "static-certs Secret"
    );
    assert_eq!(
        render_named("cert-manager").bundle.certificates.len(),
        2,
        "CA and serving"
    );
    assert_eq!(
        render_named("cert-manager").bundle.issuers.len(),
        2,
        "self-signed and CA"
    );
}

#[test]
fn round_trip_rejects_misspelt_field() {
    let base = render_named("base");
    let mut deployment = base
        .documents
        .iter()
        .find(|document| document["kind"] == "Deployment")
        .expect("the base has a Deployment")
        .clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] =
        serde_json::json!({ "httpGet": { "path": "/readyz", "port": 8443 } });

    let error = manifests::typed::<Deployment>(&deployment)
        .expect_err("a misspelt field must not survive the round trip");
    assert!(
        error.contains(".spec.template.spec.containers[0].readinessprobe"),
        "the error names the field: {error}"
    );
}

#[test]
fn loader_rejects_unsupported_kustomization_field() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-manifests-unsupported");
    fs::create_dir_all(&dir).expect("scratch folder is writable");
    let kustomization = "apiVersion: kustomize.config.k8s.io/v1beta1\n\
                         kind: Kustomization\n\
                         namePrefix: staging-\n\
                         resources: []\n";
    fs::write(dir.join("kustomization.yaml"), kustomization).expect("scratch folder is writable");

    let error = loader::render(&dir).expect_err("namePrefix is outside the subset");
    assert!(
        error.contains("namePrefix"),
        "the error names the field: {error}"
    );
}

#[test]
fn kustomize_version_read_from_each_format() {
    let kubectl = "Client Version: v1.32.4\nKustomize Version: v5.5.0\n";
    assert_eq!(kustomize_major_version(kubectl), Some(5), "kubectl 1.32");
    assert_eq!(kustomize_major_version("v5.8.1\n"), Some(5), "kustomize v5");
    let old_kustomize = "{Version:kustomize/v4.5.7 GitCommit:56d82a8 BuildDate:2022-08-02}\n";
    assert_eq!(
        kustomize_major_version(old_kustomize),
        Some(4),
        "kustomize v4"
    );
    let old_kubectl = "Client Version: version.Info{Major:\"1\", GitVersion:\"v1.20.5\"}\n";
    assert_eq!(kustomize_major_version(old_kubectl), None, "kubectl 1.20");
}

#[test]
fn loader_matches_kustomize() {
    let command = match find_kustomize() {
        Ok(command) => command,
        Err(reason) => {
            eprintln!(
                "skipping loader_matches_kustomize: {reason}; install kubectl 1.27 or later \
                 (it embeds kustomize v5) to compare the loader with kustomize"
            );
            return;
        }
    };
    for render in renders() {
        let output = kustomize_build(command, &render.dir)
            .unwrap_or_else(|error| panic!("{}: {error}", render.name));
        let built = loader::parse_documents(&output).unwrap_or_else(|error| {
            panic!("{}: kustomize printed invalid YAML: {error}", render.name)
        });

        let by_identity = |documents: &[Value]| -> BTreeMap<String, Value> {
            documents
                .iter()
                .map(|document| (loader::identity(document), document.clone()))
                .collect()
        };
        let expected = by_identity(&built);
        let actual = by_identity(&render.documents);
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{}: the loader and kustomize render different objects",
            render.name
        );
        for (id, object) in &expected {
            assert_eq!(
                &actual[id], object,
                "{}: {id} differs from kustomize",
                render.name
            );
        }
    }
}

#[test]
fn webhooks_call_the_service() {
    for render in renders() {
        let bundle = &render.bundle;
        let deployment = the_deployment(bundle);
        let container = the_container(deployment);
        for webhook in webhooks(bundle) {
            let context = format!("{}: webhook {}", render.name, webhook.name);
            assert_eq!(
                webhook.client_config.url, None,
                "{context}: url instead of service"
            );
            let reference = webhook
                .client_config
                .service
                .as_ref()
                .expect("service reference");
            assert_eq!(
                reference.namespace,
                namespace_of(deployment),
                "{context}: namespace"
            );

            let service = the_service(bundle, &reference.namespace, &reference.name);
            let spec = service.spec.as_ref().expect("Service spec");
            assert!(
                service_selects(spec.selector.as_ref(), &pod_labels(deployment)),
                "{context}"
            );
            let port = spec
                .ports
                .iter()
                .flatten()
                .find(|port| Some(port.port) == reference.port)
                .unwrap_or_else(|| panic!("{context}: Service has no port {:?}", reference.port));
            assert_eq!(port.port, 443, "{context}: Service port");
            let target = port.target_port.as_ref().expect("Service targetPort");
            assert_eq!(
                resolve_port(container, target),
                Some(8443),
                "{context}: targetPort"
            );
        }
    }
}

#[test]
fn webhook_rules_cover_exact_resources_and_operations() {
    let expected: BTreeSet<(bool, &str, &str, &str, &str)> = [
        (false, "", "v1", "pods", "CREATE"),
        (false, "", "v1", "persistentvolumeclaims", "UPDATE"),
        (false, "apps", "v1", "statefulsets", "CREATE"),
        (false, "apps", "v1", "statefulsets", "UPDATE"),
        (false, "batch", "v1", "jobs", "CREATE"),
        (true, "batch", "v1", "jobs", "CREATE"),
    ]
    .into_iter()
    .collect();

    for render in renders() {
        let mut covered = BTreeSet::new();
        for webhook in webhooks(&render.bundle) {
            for rule in webhook.rules {
                assert_eq!(
                    rule.scope.as_deref(),
                    Some("Namespaced"),
                    "{}",
                    webhook.name
                );
                for group in rule.api_groups.iter().flatten() {
                    for version in rule.api_versions.iter().flatten() {
                        for resource in rule.resources.iter().flatten() {
                            for operation in rule.operations.iter().flatten() {
                                covered.insert((
                                    webhook.mutating,
                                    group.as_str(),
                                    version.as_str(),
                                    resource.as_str(),
                                    operation.as_str(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            covered, expected,
            "{}: (mutating, group, version, resource, op)",
            render.name
        );
    }
}

#[test]
fn webhooks_follow_admission_contract() {
    for render in renders() {
        let all = webhooks(&render.bundle);
        let names: BTreeSet<&str> = all.iter().map(|webhook| webhook.name).collect();
        assert_eq!(
            names.len(),
            all.len(),
            "{}: webhook names are unique",
            render.name
        );

        for webhook in &all {
            let context = format!("{}: webhook {}", render.name, webhook.name);
            assert!(
                webhook.name.ends_with(".genesis-gate.sei.io"),
                "{context}: name"
            );
            assert_eq!(
                webhook.configuration, "genesis-gate",
                "{context}: configuration"
            );
            assert_eq!(webhook.admission_review_versions, ["v1"], "{context}");
            assert_eq!(webhook.side_effects, "None", "{context}: sideEffects");
            assert_eq!(
                webhook.timeout_seconds,
                Some(5),
                "{context}: timeoutSeconds"
            );
            assert!(
                webhook.failure_policy.is_some(),
                "{context}: failurePolicy is explicit"
            );
        }

        let gate = webhook_named(&render.bundle, "gate.genesis-gate.sei.io");
        assert!(!gate.mutating, "{}: the gate validates", render.name);
        assert_eq!(
            gate.failure_policy,
            Some("Fail"),
            "{}: gate failurePolicy",
            render.name
        );
        let gate_resources: Vec<_> = gate
            .rules
            .iter()
            .flat_map(|rule| rule.resources.iter().flatten())
            .collect();
        assert_eq!(
            gate_resources,
            ["pods"],
            "{}: the gate reviews pods",
            render.name
        );

        let mutate = webhook_named(&render.bundle, "mutate.genesis-gate.sei.io");
        assert!(
            mutate.mutating,
            "{}: mutate.genesis-gate.sei.io mutates",
            render.name
        );
        assert_eq!(
            mutate.reinvocation_policy,
            Some("IfNeeded"),
            "{}",
            render.name
        );
        assert_eq!(
            mutate.failure_policy,
            Some("Fail"),
            "{}: mutate failurePolicy",
            render.name
        );
    }
}

#[test]
fn namespace_selector_excludes_own_namespace_and_kube_system() {
    for render in renders() {
        let namespace = namespace_of(the_deployment(&render.bundle));
        for webhook in webhooks(&render.bundle) {
            let context = format!("{}: webhook {}", render.name, webhook.name);
            let selector = webhook.namespace_selector.expect("namespaceSelector");
            let excluded: BTreeSet<&str> = selector
                .match_expressions
                .iter()
                .flatten()
                .filter(|requirement| {
                    requirement.key == "kubernetes.io/metadata.name"
                        && requirement.operator == "NotIn"
                })
                .flat_map(|requirement| requirement.values.iter().flatten())
                .map(String::as_str)
                .collect();
            assert!(
                excluded.contains(namespace),
                "{context}: excludes {namespace}"
            );
            assert!(
                excluded.contains("kube-system"),
                "{context}: excludes kube-system"
            );
        }
    }
}

/// The (group, resource) a lookup of `api_version` and `kind` reads, for the
/// kinds the shipped policies may look up.
fn resource_of(api_version: &str, kind: &str) -> (String, String) {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let resource = match kind {
        "Pod" => "pods",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        "Job" => "jobs",
        "ConfigMap" => "configmaps",
        "Namespace" => "namespaces",
        other => panic!("add the resource of kind {other} to resource_of"),
    };
    (group.to_owned(), resource.to_owned())
}

#[test]
fn rbac_grants_only_lookup_reads() {
    // The grants follow from the lookups the shipped policies declare.
    let policies = genesis_gate::policy::load_embedded().expect("embedded policies load");
    let looked_up: Vec<(String, String)> = policies
        .watch_requirements()
        .iter()
        .map(|r| resource_of(&r.api_version, &r.kind))
        .collect();
    assert!(
        !looked_up.is_empty(),
        "the shipped policies look up objects"
    );
    let expected: BTreeSet<(&str, &str, &str)> = ["get", "list", "watch"]
        .into_iter()
        .flat_map(|verb| {
            looked_up
                .iter()
                .map(move |(group, resource)| (group.as_str(), resource.as_str(), verb))
        })
        .collect();

    for render in renders() {
        let role = &render.bundle.cluster_roles[0];
        assert!(
            role.aggregation_rule.is_none(),
            "{}: aggregationRule",
            render.name
        );
        let mut granted = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            assert!(
                rule.resource_names.is_none(),
                "{}: resourceNames",
                render.name
            );
            assert!(
                rule.non_resource_urls.is_none(),
                "{}: nonResourceURLs",
                render.name
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                    }
                }
            }
        }
        assert_eq!(
            granted, expected,
            "{}: (group, resource, verb)",
            render.name
        );
    }
}

#[test]
fn role_binding_grants_deployment_service_account() {
    for render in renders() {
        let bundle = &render.bundle;
        let deployment = the_deployment(bundle);
        let account = pod_spec(deployment)
            .service_account_name
            .as_deref()
            .expect("the Deployment names its ServiceAccount");
        let namespace = namespace_of(deployment);
        let service_account = &bundle.service_accounts[0];
        assert_eq!(
            service_account.metadata.name.as_deref(),
            Some(account),
            "{}",
            render.name
        );
        assert_eq!(
            service_account.metadata.namespace.as_deref(),
            Some(namespace)
        );

        let binding = &bundle.cluster_role_bindings[0];
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{}", render.name);
        assert_eq!(
            Some(&binding.role_ref.name),
            bundle.cluster_roles[0].metadata.name.as_ref(),
            "{}: roleRef names the ClusterRole",
            render.name
        );
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{}: one subject", render.name);
        assert_eq!(subjects[0].kind, "ServiceAccount", "{}", render.name);
        assert_eq!(subjects[0].name, account, "{}", render.name);
        assert_eq!(
            subjects[0].namespace.as_deref(),
            Some(namespace),
            "{}",
            render.name
        );
    }
}

#[test]
fn probes_target_health_paths_on_container_port() {
    for render in renders() {
        let container = the_container(the_deployment(&render.bundle));
        let listen = flag(container, "--listen").expect("--listen flag");
        let listen_port: i32 = listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("--listen={listen} has no port"));
        assert_eq!(listen_port, 8443, "{}: --listen", render.name);

        let probes = [
            ("readiness", container.readiness_probe.as_ref(), "/readyz"),
            ("liveness", container.liveness_probe.as_ref(), "/healthz"),
        ];
        for (kind, probe, path) in probes {
            let context = format!("{}: {kind} probe", render.name);
            let get = probe
                .and_then(|probe| probe.http_get.as_ref())
                .expect(&context);
            assert_eq!(get.path.as_deref(), Some(path), "{context}: path");
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"), "{context}: scheme");
            assert_eq!(
                resolve_port(container, &get.port),
                Some(listen_port),
                "{context}: port"
            );
        }
    }
}

#[test]
fn deployment_runs_restricted() {
    for render in renders() {
        let deployment = the_deployment(&render.bundle);
        let pod = pod_spec(deployment)
            .security_context
            .as_ref()
            .expect("pod securityContext");
        let container = the_container(deployment)
            .security_context
            .as_ref()
            .expect("container securityContext");
        let context = render.name;

        assert_eq!(
            pod.run_as_non_root,
            Some(true),
            "{context}: pod runAsNonRoot"
        );
        let uid = pod.run_as_user.expect("pod runAsUser is fixed");
        assert_ne!(uid, 0, "{context}: runAsUser");
        assert_eq!(
            container.run_as_user.unwrap_or(uid),
            uid,
            "{context}: one UID"
        );
        assert_eq!(
            container.allow_privilege_escalation,
            Some(false),
            "{context}"
        );
        assert_eq!(container.read_only_root_filesystem, Some(true), "{context}");
        let capabilities = container.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            capabilities.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{context}"
        );
        assert!(capabilities.add.is_none(), "{context}: no capability added");
        for seccomp in [&pod.seccomp_profile, &container.seccomp_profile] {
            let profile = seccomp.as_ref().expect("seccompProfile");
            assert_eq!(profile.type_, "RuntimeDefault", "{context}: seccompProfile");
        }
    }
}

#[test]
fn image_user_matches_deployment_uid() {
    let dockerfile = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("Dockerfile is readable");
    let user = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets USER");
    let (uid, gid) = user.trim().split_once(':').expect("USER is uid:gid");

    let deployment = the_deployment(&render_named("base").bundle);
    let pod = pod_spec(deployment)
        .security_context
        .as_ref()
        .expect("pod securityContext");
    assert_eq!(
        pod.run_as_user.map(|id| id.to_string()).as_deref(),
        Some(uid),
        "runAsUser"
    );
    assert_eq!(
        pod.run_as_group.map(|id| id.to_string()).as_deref(),
        Some(gid),
        "runAsGroup"
    );
}

#[test]
fn deployment_survives_node_loss() {
    for render in renders() {
        let bundle = &render.bundle;
        let deployment = the_deployment(bundle);
        let labels = pod_labels(deployment);
        let spec = deployment.spec.as_ref().expect("Deployment spec");
        assert_eq!(spec.replicas, Some(2), "{}: replicas", render.name);
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|strategy| strategy.rolling_update.as_ref())
            .expect("rolling update");
        assert_eq!(
            rolling.max_unavailable,
            Some(IntOrString::Int(0)),
            "{}",
            render.name
        );

        let constraints = pod_spec(deployment).topology_spread_constraints.as_deref();
        let by_node = constraints
            .unwrap_or_default()
            .iter()
            .find(|constraint| constraint.topology_key == "kubernetes.io/hostname")
            .unwrap_or_else(|| panic!("{}: no spread across nodes", render.name));
        assert_eq!(by_node.max_skew, 1, "{}: maxSkew", render.name);
        assert!(
            label_selector_selects(by_node.label_selector.as_ref(), &labels),
            "{}: spread",
            render.name
        );

        let budget = bundle.disruption_budgets[0]
            .spec
            .as_ref()
            .expect("PDB spec");
        assert_eq!(
            budget.min_available,
            Some(IntOrString::Int(1)),
            "{}",
            render.name
        );
        assert!(
            label_selector_selects(budget.selector.as_ref(), &labels),
            "{}: PDB selector",
            render.name
        );
        assert_eq!(
            bundle.disruption_budgets[0].metadata.namespace.as_deref(),
            Some(namespace_of(deployment)),
            "{}: PDB namespace",
            render.name
        );
    }
}

#[test]
fn container_has_requests_and_limits() {
    for render in renders() {
        let container = the_container(the_deployment(&render.bundle));
        let resources = container.resources.as_ref().expect("resources");
        for (kind, quantities) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            let quantities = quantities.as_ref().unwrap_or_else(|| panic!("no {kind}"));
            for resource in ["cpu", "memory"] {
                assert!(
                    quantities.contains_key(resource),
                    "{}: {kind}.{resource}",
                    render.name
                );
            }
        }
    }
}

#[test]
fn termination_grace_outlasts_drain() {
    for render in renders() {
        let bundle = &render.bundle;
        let deployment = the_deployment(bundle);
        let grace = pod_spec(deployment)
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        let pre_stop = the_container(deployment)
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
            .and_then(|handler| handler.sleep.as_ref())
            .map_or(0, |sleep| sleep.seconds);
        // The drain waits for in-flight reviews, each of which the API
        // server abandons after the webhook's timeoutSeconds.
        let longest_review = webhooks(bundle)
            .iter()
            .filter_map(|webhook| webhook.timeout_seconds)
            .max()
            .expect("webhooks set timeoutSeconds");
        assert!(
            grace > pre_stop + i64::from(longest_review),
            "{}: grace {grace}s must exceed preStop {pre_stop}s + review timeout {longest_review}s",
            render.name
        );
    }
}

#[test]
fn deployment_mounts_tls_secret_at_cert_dir() {
    for render in renders() {
        let deployment = the_deployment(&render.bundle);
        let container = the_container(deployment);
        assert_eq!(
            flag(container, "--cert-dir"),
            Some(CERT_DIR),
            "{}",
            render.name
        );

        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| mount.mount_path == CERT_DIR)
            .unwrap_or_else(|| panic!("{}: nothing mounted at {CERT_DIR}", render.name));
        assert_eq!(
            mount.read_only,
            Some(true),
            "{}: read-only mount",
            render.name
        );
        let secret = tls_volume(deployment);
        let paths: BTreeSet<&str> = secret
            .items
            .iter()
            .flatten()
            .map(|item| item.path.as_str())
            .collect();
        assert_eq!(
            paths,
            ["ca.pem", "tls.crt", "tls.key"].into(),
            "{}",
            render.name
        );
        assert_eq!(
            secret.default_mode,
            Some(0o440),
            "{}: defaultMode",
            render.name
        );
    }
}

fn tls_volume(deployment: &Deployment) -> &k8s_openapi::api::core::v1::SecretVolumeSource {
    let container = the_container(deployment);
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.mount_path == CERT_DIR)
        .expect("TLS mount");
    pod_spec(deployment)
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == mount.name)
        .and_then(|volume| volume.secret.as_ref())
        .expect("the TLS mount is a Secret volume")
}

fn tls_secret_name(deployment: &Deployment) -> &str {
    tls_volume(deployment)
        .secret_name
        .as_deref()
        .expect("secretName")
}

fn serving_certificate(render: &Render) -> &Certificate {
    let secret_name = tls_secret_name(the_deployment(&render.bundle));
    render
        .bundle
        .certificates
        .iter()
        .find(|certificate| certificate.spec.secret_name == secret_name)
        .unwrap_or_else(|| panic!("no Certificate writes Secret {secret_name}"))
}

#[test]
fn serving_certificate_covers_service_names() {
    let render = render_named("cert-manager");
    let certificate = serving_certificate(render);
    let dns_names = certificate.spec.dns_names.as_deref().unwrap_or_default();
    for webhook in webhooks(&render.bundle) {
        let reference = webhook
            .client_config
            .service
            .as_ref()
            .expect("service reference");
        let service_name = format!("{}.{}.svc", reference.name, reference.namespace);
        for name in [
            service_name.clone(),
            format!("{service_name}.cluster.local"),
        ] {
            assert!(
                dns_names.contains(&name),
                "dnsNames lack {name} for {}",
                webhook.name
            );
        }
    }
    for name in [
        "genesis-gate.genesis-gate.svc",
        "genesis-gate.genesis-gate.svc.cluster.local",
    ] {
        assert!(
            dns_names.iter().any(|dns_name| dns_name == name),
            "dnsNames lack {name}"
        );
    }
    let deployment = the_deployment(&render.bundle);
    assert_eq!(
        certificate.metadata.namespace.as_deref(),
        Some(namespace_of(deployment))
    );
}

#[test]
fn serving_certificate_chains_to_self_signed_ca() {
    let render = render_named("cert-manager");
    let bundle = &render.bundle;
    let issuer = |reference: &manifests::IssuerRef| {
        assert_eq!(reference.kind.as_deref(), Some("Issuer"), "issuerRef kind");
        bundle
            .issuers
            .iter()
            .find(|issuer| issuer.metadata.name.as_deref() == Some(reference.name.as_str()))
            .unwrap_or_else(|| panic!("no Issuer {}", reference.name))
    };

    let serving = serving_certificate(render);
    assert_ne!(
        serving.spec.is_ca,
        Some(true),
        "the serving certificate is no CA"
    );
    let ca_issuer = issuer(&serving.spec.issuer_ref);
    let ca_secret = &ca_issuer
        .spec
        .ca
        .as_ref()
        .expect("the serving issuer is a CA issuer")
        .secret_name;

    let ca = bundle
        .certificates
        .iter()
        .find(|certificate| &certificate.spec.secret_name == ca_secret)
        .unwrap_or_else(|| panic!("no Certificate writes the CA Secret {ca_secret}"));
    assert_eq!(ca.spec.is_ca, Some(true), "the CA Certificate sets isCA");
    let root = issuer(&ca.spec.issuer_ref);
    assert!(
        root.spec.self_signed.is_some(),
        "the CA is signed by a selfSigned Issuer"
    );

    let namespace = namespace_of(the_deployment(bundle));
    for object in [
        &serving.metadata,
        &ca.metadata,
        &ca_issuer.metadata,
        &root.metadata,
    ] {
        assert_eq!(
            object.namespace.as_deref(),
            Some(namespace),
            "{:?}",
            object.name
        );
    }
}

#[test]
fn cert_manager_injects_ca_into_both_configurations() {
    let render = render_named("cert-manager");
    let certificate = serving_certificate(render);
    let expected = format!(
        "{}/{}",
        certificate.metadata.namespace.as_deref().unwrap_or(""),
        certificate.metadata.name.as_deref().unwrap_or("")
    );
    let annotations = render
        .bundle
        .validating
        .iter()
        .map(|configuration| &configuration.metadata)
        .chain(
            render
                .bundle
                .mutating
                .iter()
                .map(|configuration| &configuration.metadata),
        );
    for metadata in annotations {
        let value = metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get("cert-manager.io/inject-ca-from"));
        assert_eq!(
            value,
            Some(&expected),
            "{:?}: inject-ca-from",
            metadata.name
        );
    }
    for webhook in webhooks(&render.bundle) {
        assert!(
            webhook.client_config.ca_bundle.is_none(),
            "{}: injected, not set",
            webhook.name
        );
    }
}

#[test]
fn static_certs_set_ca_bundle_of_every_webhook() {
    let render = render_named("static-certs");
    for webhook in webhooks(&render.bundle) {
        let bundle = webhook.client_config.ca_bundle.as_ref().expect("caBundle");
        assert_eq!(
            bundle.0,
            TEST_CA_PEM.as_bytes(),
            "{}: caBundle",
            webhook.name
        );
    }
}

#[test]
fn static_certs_secret_holds_mounted_keys() {
    let render = render_named("static-certs");
    let deployment = the_deployment(&render.bundle);
    let secret = &render.bundle.secrets[0];
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(tls_secret_name(deployment))
    );
    assert_eq!(
        secret.metadata.namespace.as_deref(),
        Some(namespace_of(deployment))
    );
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));

    let data = secret.data.as_ref().expect("Secret data");
    for item in tls_volume(deployment).items.iter().flatten() {
        assert!(
            data.contains_key(&item.key),
            "the Secret lacks the mounted key {}",
            item.key
        );
    }
    assert_eq!(
        data["ca.crt"].0,
        TEST_CA_PEM.as_bytes(),
        "ca.crt holds ca.pem"
    );
}

/// Reads the `request` of a recorded AdmissionReview in `tests/fixtures/`.
fn recorded_request(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admissionreviews")
        .join(file);
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    let review: Value = serde_json::from_str(&text).expect("fixture is JSON");
    review["request"].clone()
}

/// Evaluates the webhook's matchConditions as the API server does: the
/// request is sent when every condition is true. An error is what the API
/// server would turn into the failurePolicy.
fn sends(webhook: &Webhook<'_>, request: &Value) -> Result<bool, String> {
    let mut context = cel::Context::default();
    for (name, value) in [
        ("request", request),
        ("object", &request["object"]),
        ("oldObject", &request["oldObject"]),
    ] {
        let value = cel::to_value(value).map_err(|error| error.to_string())?;
        context.add_variable_from_value(name, value);
    }
    let mut all = true;
    for condition in webhook.match_conditions {
        let program = cel::Program::compile(&condition.expression)
            .map_err(|error| format!("{} does not compile: {error}", condition.name))?;
        match program.execute(&context) {
            Ok(cel::Value::Bool(result)) => all &= result,
            Ok(other) => return Err(format!("{} returned {other:?}", condition.name)),
            Err(error) => return Err(format!("{} failed: {error}", condition.name)),
        }
    }
    Ok(all)
}

/// Recorded requests of every kind and operation the conditions may see.
const RECORDED: [&str; 6] = [
    "0003-Job-CREATE.json",
    "0007-StatefulSet-CREATE.json",
    "0010-Pod-CREATE.json",
    "0022-PersistentVolumeClaim-UPDATE.json",
    "0023-Job-DELETE.json",
    "0051-Pod_ephemeralcontainers-UPDATE.json",
];

#[test]
fn match_conditions_never_fail() {
    for render in renders() {
        for webhook in webhooks(&render.bundle) {
            for file in RECORDED {
                let result = sends(&webhook, &recorded_request(file));
                assert!(
                    result.is_ok(),
                    "{}: {} on {file}: {result:?}",
                    render.name,
                    webhook.name
                );
            }
        }
    }
}

#[test]
fn match_conditions_pass_kinds_they_do_not_filter() {
    let bundle = &render_named("base").bundle;
    let cases = [
        ("gate.genesis-gate.sei.io", "0023-Job-DELETE.json"),
        ("gate.genesis-gate.sei.io", "0007-StatefulSet-CREATE.json"),
        ("claims.genesis-gate.sei.io", "0010-Pod-CREATE.json"),
        ("jobs.genesis-gate.sei.io", "0023-Job-DELETE.json"),
        (
            "mutate.genesis-gate.sei.io",
            "0022-PersistentVolumeClaim-UPDATE.json",
        ),
    ];
    for (name, file) in cases {
        let sent = sends(&webhook_named(bundle, name), &recorded_request(file));
        assert_eq!(sent, Ok(true), "{name} on {file}");
    }
}

#[test]
fn gate_condition_sends_only_pods_with_claims() {
    let gate = webhook_named(&render_named("base").bundle, "gate.genesis-gate.sei.io");
    let with_claim = recorded_request("0010-Pod-CREATE.json");
    assert_eq!(sends(&gate, &with_claim), Ok(true), "pod mounting a claim");

    let mut projected_only = with_claim.clone();
    let volumes = projected_only["object"]["spec"]["volumes"]
        .as_array_mut()
        .expect("the recorded pod has volumes");
    volumes.retain(|volume| volume.get("persistentVolumeClaim").is_none());
    assert!(
        !volumes.is_empty(),
        "the recorded pod has a volume besides its claim"
    );
    assert_eq!(
        sends(&gate, &projected_only),
        Ok(false),
        "pod with only a projected volume"
    );

    let mut ephemeral = projected_only.clone();
    ephemeral["object"]["spec"]["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(
            serde_json::json!({"name": "data", "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"labels": {"sei.io/fork-genesis": "true"}},
                "spec": {"accessModes": ["ReadWriteOnce"]}
            }}}),
        );
    assert_eq!(
        sends(&gate, &ephemeral),
        Ok(true),
        "pod with a generic ephemeral volume"
    );

    let mut no_volumes = with_claim.clone();
    no_volumes["object"]["spec"]
        .as_object_mut()
        .expect("pod spec")
        .remove("volumes");
    assert_eq!(sends(&gate, &no_volumes), Ok(false), "pod without volumes");

    let ephemeral = recorded_request("0051-Pod_ephemeralcontainers-UPDATE.json");
    assert_eq!(
        sends(&gate, &ephemeral),
        Ok(true),
        "pod update mounting a claim"
    );
}

#[test]
fn claims_condition_sends_only_fork_genesis_claims() {
    let claims = webhook_named(&render_named("base").bundle, "claims.genesis-gate.sei.io");
    let fork_genesis = recorded_request("0022-PersistentVolumeClaim-UPDATE.json");
    assert_eq!(
        sends(&claims, &fork_genesis),
        Ok(true),
        "fork-genesis claim"
    );

    let mut plain = fork_genesis.clone();
    for object in ["object", "oldObject"] {
        let metadata = plain[object]["metadata"]
            .as_object_mut()
            .expect("claim metadata");
        metadata.remove("labels");
        metadata.remove("annotations");
    }
    assert_eq!(
        sends(&claims, &plain),
        Ok(false),
        "claim without the fork-genesis mark"
    );

    let mut label_removed = plain.clone();
    label_removed["oldObject"]["metadata"]["labels"] =
        serde_json::json!({ "sei.io/fork-genesis": "true" });
    assert_eq!(
        sends(&claims, &label_removed),
        Ok(true),
        "update that removes the label"
    );
}

#[test]
fn job_conditions_send_only_bootstrap_jobs() {
    let bundle = &render_named("base").bundle;
    let bootstrap = recorded_request("0003-Job-CREATE.json");
    let mut other = bootstrap.clone();
    other["object"]["metadata"]["name"] = Value::from("nightly-report");
    other["object"]["metadata"]
        .as_object_mut()
        .expect("Job metadata")
        .remove("labels");

    for name in ["jobs.genesis-gate.sei.io", "mutate.genesis-gate.sei.io"] {
        let webhook = webhook_named(bundle, name);
        assert_eq!(
            sends(&webhook, &bootstrap),
            Ok(true),
            "{name}: bootstrap Job"
        );
        assert_eq!(sends(&webhook, &other), Ok(false), "{name}: unrelated Job");
    }
}

#[test]
fn pod_conditions_sit_on_pod_only_webhooks() {
    for render in renders() {
        for webhook in webhooks(&render.bundle) {
            let reads_volumes = webhook
                .match_conditions
                .iter()
                .any(|condition| condition.expression.contains("spec.volumes"));
            if !reads_volumes {
                continue;
            }
            for rule in webhook.rules {
                let resources: Vec<_> = rule.resources.iter().flatten().collect();
                assert_eq!(resources, ["pods"], "{}: {}", render.name, webhook.name);
                assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
            }
        }
    }
}
