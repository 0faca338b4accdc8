//! Finds the Kubernetes API server that `serve` reads lookups from, in the
//! order kubectl uses: the files named by `KUBECONFIG`, else
//! `~/.kube/config`, else the in-cluster service account.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The places to look for a cluster configuration.
///
/// Tests build this by hand so that nothing from the machine's own
/// environment is read.
#[derive(Debug, Clone, Default)]
pub struct ConfigSearch {
    /// The value of `KUBECONFIG`: paths joined by the platform's path-list
    /// separator. When it names a file, `~/.kube/config` is not read.
    pub kubeconfig_env: Option<OsString>,
    /// The home directory, for `~/.kube/config`.
    pub home: Option<PathBuf>,
    /// Use this kubeconfig context instead of the current context.
    pub context: Option<String>,
    /// Whether to try the in-cluster service account configuration, which
    /// reads `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub in_cluster: bool,
}

impl ConfigSearch {
    /// Reads `KUBECONFIG`, `HOME` and `KUBERNETES_SERVICE_HOST` from the
    /// process environment.
    pub fn from_env() -> ConfigSearch {
        ConfigSearch {
            kubeconfig_env: std::env::var_os("KUBECONFIG"),
            home: std::env::var_os("HOME").map(PathBuf::from),
            context: None,
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// The source of a cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    Kubeconfig {
        paths: Vec<PathBuf>,
        context: Option<String>,
    },
    InCluster,
}

/// A client for the API server that was found.
#[derive(Clone)]
pub struct FoundCluster {
    pub client: Client,
    /// The API server's URL, for logs and `describe()`.
    pub server_url: String,
    pub origin: ConfigOrigin,
}

/// Builds a client from the first configuration found and logs which one at
/// info. Returns `None` when there is none or it is unusable, and logs why.
pub async fn find_cluster(search: &ConfigSearch) -> Option<FoundCluster> {
    let (named, paths) = kubeconfig_paths(search);
    let existing: Vec<PathBuf> = paths.into_iter().filter(|p| p.is_file()).collect();
    if !existing.is_empty() {
        return from_kubeconfig(existing, search.context.clone()).await;
    }
    if named {
        tracing::warn!(
            kubeconfig = ?search.kubeconfig_env,
            "KUBECONFIG names no existing file; set it to a kubeconfig file or unset it"
        );
    }
    if search.in_cluster {
        return from_service_account();
    }
    tracing::info!("no kubeconfig found and not running in a cluster; cluster lookups are off");
    None
}

/// Lists the kubeconfig paths to try, and whether `KUBECONFIG` named them.
fn kubeconfig_paths(search: &ConfigSearch) -> (bool, Vec<PathBuf>) {
    if let Some(value) = search.kubeconfig_env.as_ref().filter(|v| !v.is_empty()) {
        let paths = std::env::split_paths(value)
            .filter(|path| !path.as_os_str().is_empty())
            .collect();
        return (true, paths);
    }
    let home_config = search
        .home
        .as_ref()
        .map(|home| home.join(".kube").join("config"));
    (false, home_config.into_iter().collect())
}

fn read_kubeconfigs(
    paths: &[PathBuf],
) -> Result<Kubeconfig, (PathBuf, kube::config::KubeconfigError)> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let next = Kubeconfig::read_from(path).map_err(|e| (path.clone(), e))?;
        merged = Some(match merged {
            None => next,
            Some(kept) => kept.merge(next).map_err(|e| (path.clone(), e))?,
        });
    }
    Ok(merged.unwrap_or_default())
}

async fn from_kubeconfig(paths: Vec<PathBuf>, context: Option<String>) -> Option<FoundCluster> {
    let kubeconfig = match read_kubeconfigs(&paths) {
        Ok(kubeconfig) => kubeconfig,
        Err((path, error)) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot read kubeconfig; fix the file or point KUBECONFIG elsewhere, cluster lookups are off"
            );
            return None;
        }
    };
    let options = KubeConfigOptions {
        context: context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Config::from_custom_kubeconfig(kubeconfig, &options).await {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(
                paths = %display_paths(&paths),
                %error,
                "kubeconfig has no usable context; fix its current-context, cluster lookups are off"
            );
            return None;
        }
    };
    let origin = ConfigOrigin::Kubeconfig { paths, context };
    connect(config, origin)
}

fn from_service_account() -> Option<FoundCluster> {
    match Config::incluster() {
        Ok(config) => connect(config, ConfigOrigin::InCluster),
        Err(error) => {
            tracing::warn!(
                %error,
                "KUBERNETES_SERVICE_HOST is set but the in-cluster configuration is incomplete; cluster lookups are off"
            );
            None
        }
    }
}

fn connect(config: Config, origin: ConfigOrigin) -> Option<FoundCluster> {
    let server_url = config.cluster_url.to_string();
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(
                server = %server_url,
                %error,
                "cannot build a Kubernetes client; cluster lookups are off"
            );
            return None;
        }
    };
    match &origin {
        ConfigOrigin::Kubeconfig { paths, context } => tracing::info!(
            server = %server_url,
            kubeconfig = %display_paths(paths),
            context = context.as_deref().unwrap_or("(current)"),
            "cluster lookups use the API server from the kubeconfig"
        ),
        ConfigOrigin::InCluster => tracing::info!(
            server = %server_url,
            "cluster lookups use the in-cluster service account"
        ),
    }
    Some(FoundCluster {
        client,
        server_url,
        origin,
    })
}

fn display_paths(paths: &[PathBuf]) -> String {
    let displayed: Vec<String> = paths.iter().map(|p| Path::display(p).to_string()).collect();
    displayed.join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Returns a kubeconfig whose only cluster is on loopback, on a port
    /// where nothing listens, which is safe because building a client does
    /// not connect.
    fn loopback_kubeconfig(context: &str, port: u16) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {context}
  cluster:
    server: https://127.0.0.1:{port}
contexts:
- name: {context}
  context:
    cluster: {context}
    user: tester
current-context: {context}
users:
- name: tester
  user:
    token: test-token
"
        )
    }

    fn scratch_dir() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genesis-gate-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_home_config(home: &Path, text: &str) {
        let kube_dir = home.join(".kube");
        std::fs::create_dir_all(&kube_dir).unwrap();
        std::fs::write(kube_dir.join("config"), text).unwrap();
    }

    #[tokio::test]
    async fn finds_home_kubeconfig() {
        let home = scratch_dir();
        write_home_config(&home, &loopback_kubeconfig("home", 1));
        let search = ConfigSearch {
            home: Some(home.clone()),
            ..ConfigSearch::default()
        };
        let found = find_cluster(&search).await.expect("a kubeconfig in home");
        assert_eq!(found.server_url, "https://127.0.0.1:1/");
        assert_eq!(
            found.origin,
            ConfigOrigin::Kubeconfig {
                paths: vec![home.join(".kube").join("config")],
                context: None
            }
        );
    }

    #[tokio::test]
    async fn kubeconfig_variable_wins_over_home() {
        let home = scratch_dir();
        write_home_config(&home, &loopback_kubeconfig("home", 1));
        let named = scratch_dir().join("named-config");
        std::fs::write(&named, loopback_kubeconfig("named", 2)).unwrap();
        let search = ConfigSearch {
            kubeconfig_env: Some(named.clone().into_os_string()),
            home: Some(home),
            ..ConfigSearch::default()
        };
        let found = find_cluster(&search).await.expect("the named kubeconfig");
        assert_eq!(found.server_url, "https://127.0.0.1:2/");
    }

    #[tokio::test]
    async fn selects_the_requested_context() {
        let home = scratch_dir();
        let first = loopback_kubeconfig("first", 3);
        let second = loopback_kubeconfig("second", 4);
        let named_first = home.join("first");
        let named_second = home.join("second");
        std::fs::write(&named_first, first).unwrap();
        std::fs::write(&named_second, second).unwrap();
        let joined = std::env::join_paths([&named_first, &named_second]).unwrap();
        let search = ConfigSearch {
            kubeconfig_env: Some(joined),
            context: Some("second".to_owned()),
            ..ConfigSearch::default()
        };
        let found = find_cluster(&search).await.expect("merged kubeconfigs");
        assert_eq!(found.server_url, "https://127.0.0.1:4/");
    }

    #[tokio::test]
    async fn nothing_found_means_no_client() {
        let search = ConfigSearch {
            home: Some(scratch_dir()),
            ..ConfigSearch::default()
        };
        assert!(find_cluster(&search).await.is_none());
    }

    #[tokio::test]
    async fn missing_named_file_skips_home() {
        let home = scratch_dir();
        write_home_config(&home, &loopback_kubeconfig("home", 1));
        let search = ConfigSearch {
            kubeconfig_env: Some(home.join("absent").into_os_string()),
            home: Some(home),
            ..ConfigSearch::default()
        };
        assert!(find_cluster(&search).await.is_none());
    }

    #[tokio::test]
    async fn malformed_kubeconfig_means_no_client() {
        let home = scratch_dir();
        write_home_config(&home, "clusters: [this is not a kubeconfig");
        let search = ConfigSearch {
            home: Some(home),
            ..ConfigSearch::default()
        };
        assert!(find_cluster(&search).await.is_none());
    }
}
