//! `genesis-gate serve`: wires policies, lookups, metrics and the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{load_policies, ServeArgs};
use crate::engine::{Engine, Gate};
use crate::lookup::cluster::{ClusterMetrics, ClusterOptions, ClusterSource};
use crate::lookup::config::{find_cluster, ConfigSearch};
use crate::lookup::{FileSource, ObjectSource};
use crate::metrics::Metrics;
use crate::server::{self, ServerOptions};

/// Time a live read of the API server may take. A deny is confirmed by
/// live reads and each policy reads in turn, so this stays well under the
/// server's 4 s request timeout.
const LIVE_READ_BUDGET: Duration = Duration::from_secs(1);

/// How often the policy folder is checked for changes.
const POLICY_POLL_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        cert_dir,
        client_ca,
        policies,
        context,
        no_cluster,
        max_body_bytes,
    } = args;
    let metrics = Arc::new(Metrics::new());
    let policy_set = load_policies(policies.as_deref())
        .context("the policies are invalid, so the webhook did not start")?;
    tracing::info!(
        policies = policy_set.len(),
        source = %policies.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded".to_owned()),
        "loaded policies"
    );
    let source = lookup_source(&context, no_cluster, &policy_set, &metrics).await?;
    let engine = Arc::new(Engine::new(policy_set, source, metrics.clone()));

    let certificates = crate::tls::ensure_dev_certificates(&cert_dir)
        .with_context(|| format!("failed to prepare certificates in {}", cert_dir.display()))?;
    tracing::info!(
        ca = %certificates.ca_file.display(),
        cert = %certificates.cert_file.display(),
        created = certificates.created,
        "serving certificate; clients trust the CA file"
    );

    let shutdown = shutdown_signal();
    let reload =
        policies.map(|dir| tokio::spawn(watch_policies(dir, engine.clone(), metrics.clone())));
    let options = ServerOptions {
        listen,
        cert_file: certificates.cert_file,
        key_file: certificates.key_file,
        client_ca,
        body_limit: max_body_bytes,
        ..ServerOptions::default()
    };
    let gate = Arc::new(Gate::new(engine));
    let result = server::serve(options, gate, metrics, shutdown).await;
    if let Some(reload) = reload {
        reload.abort();
    }
    result.map_err(Into::into)
}

/// Returns the cluster's watch cache when a kubeconfig or in-cluster config is
/// found, else the `--context` files.
async fn lookup_source(
    context: &[PathBuf],
    no_cluster: bool,
    policies: &crate::policy::PolicySet,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn ObjectSource>> {
    if !no_cluster {
        if let Some(found) = find_cluster(&ConfigSearch::from_env()).await {
            if !context.is_empty() {
                tracing::warn!("a cluster was found, so --context files are not used; pass --no-cluster to use them");
            }
            let requirements = policies.watch_requirements();
            let options = ClusterOptions {
                live_read_budget: LIVE_READ_BUDGET,
                server_url: found.server_url.clone(),
                metrics: ClusterMetrics::register(metrics),
            };
            let source = ClusterSource::start(found.client, requirements, options);
            tracing::info!(source = %source.describe(), "serving lookups from the cluster");
            return Ok(Arc::new(source));
        }
    }
    let files = FileSource::load(context).context("failed to read --context")?;
    if context.is_empty() {
        tracing::warn!("no cluster found and no --context given: every lookup finds nothing, so pods that mount a claim are denied as the claim is missing");
    } else {
        tracing::info!(source = %files.describe(), "serving lookups from --context files");
    }
    Ok(Arc::new(files))
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// Hashes the policy files' names and contents, to notice a change.
fn fingerprint(dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in entries {
        path.hash(&mut hasher);
        std::fs::read(&path).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Reloads the policy folder when its files change. An invalid set is
/// rejected and logged; the last good set stays active.
///
/// The folder is polled rather than watched for events: a ConfigMap volume
/// changes by a symlink swap that some event backends miss, and reading a
/// handful of small files each second costs little.
pub async fn watch_policies(dir: PathBuf, engine: Arc<Engine>, metrics: Arc<Metrics>) {
    let mut last = fingerprint(&dir);
    let mut interval = tokio::time::interval(POLICY_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let current = fingerprint(&dir);
        if current == last {
            continue;
        }
        last = current;
        match crate::policy::load_dir(&dir) {
            Ok(set) => {
                let count = set.len();
                engine.replace_policies(set);
                metrics.record_reload(true);
                tracing::info!(dir = %dir.display(), policies = count, "reloaded policies");
            }
            Err(error) => {
                metrics.record_reload(false);
                tracing::error!(
                    dir = %dir.display(),
                    %error,
                    "rejected the changed policies; the last good set stays active"
                );
            }
        }
    }
}
