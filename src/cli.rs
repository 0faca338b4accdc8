//! Command-line interface: `serve`, `review`, `test` and `certs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::admission::{Endpoint, Review};
use crate::engine::Engine;
use crate::lookup::{FileSource, ObjectSource};
use crate::metrics::Metrics;
use crate::policy::{self, PolicySet};

/// Kubernetes admission webhook that gates fork-genesis volumes until
/// their bootstrap Job has populated them.
#[derive(Debug, Parser)]
#[command(name = "genesis-gate", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the webhook over HTTPS.
    Serve(ServeArgs),
    /// Evaluate recorded AdmissionReviews offline and print the responses.
    Review(ReviewArgs),
    /// Run policy test suites.
    Test(TestArgs),
    /// Create a CA and a serving certificate for a Service and print the caBundle.
    Certs(CertsArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "GENESIS_GATE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// Folder with tls.crt and tls.key; a development CA and certificate are
    /// created there when it has none.
    #[arg(long, env = "GENESIS_GATE_CERT_DIR", default_value = "certs")]
    pub cert_dir: PathBuf,
    /// Serve only clients whose certificate this CA (PEM) signed.
    #[arg(long, env = "GENESIS_GATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Folder of policy files, watched for changes; default: the policies
    /// embedded in the binary.
    #[arg(long, env = "GENESIS_GATE_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Cluster objects for lookups, as YAML or JSON files or folders; used
    /// when no kubeconfig or in-cluster config is found.
    #[arg(long, env = "GENESIS_GATE_CONTEXT", value_delimiter = ',')]
    pub context: Vec<PathBuf>,
    /// Never read a cluster, even when a kubeconfig is found.
    #[arg(long, env = "GENESIS_GATE_NO_CLUSTER")]
    pub no_cluster: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "GENESIS_GATE_MAX_BODY_BYTES", default_value_t = crate::server::DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EndpointArg {
    /// Run the mutating policies, then the validating ones on the result,
    /// as the API server does.
    Both,
    Mutate,
    Validate,
}

#[derive(Debug, clap::Args)]
struct ReviewArgs {
    /// AdmissionReview JSON files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Cluster objects for lookups, as YAML or JSON files or folders.
    #[arg(long)]
    context: Vec<PathBuf>,
    /// Folder of policy files; default: the embedded policies.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// The webhook to act as.
    #[arg(long, value_enum, default_value = "both")]
    endpoint: EndpointArg,
    /// Print, per policy, whether it matched, what decided, and each
    /// variable and lookup.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Folder of test suites; default: `tests` inside the policy folder, or
    /// `policies/tests`.
    dir: Option<PathBuf>,
    /// Folder of policy files; default: the embedded policies.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Print the per-policy trace of every case.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Name of the webhook's Service.
    #[arg(long, default_value = "genesis-gate")]
    service: String,
    /// Namespace of the webhook's Service.
    #[arg(long, default_value = "genesis-gate")]
    namespace: String,
    /// Folder to write ca.pem, ca-key.pem, tls.crt and tls.key to.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
}

/// Parses the command line, runs the command, and maps errors to exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli));
    // A review abandoned at its timeout may still be evaluating on the
    // blocking pool; exit without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person at a terminal: a log collector reading
    // the pod's stderr would store the escape sequences as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Review(args) => review(args).await,
        Command::Test(args) => test(args).await,
        Command::Certs(args) => certs(args),
    }
}

/// Loads the policies from `dir`, or the embedded set.
pub fn load_policies(dir: Option<&Path>) -> anyhow::Result<PolicySet> {
    let set = match dir {
        Some(dir) => policy::load_dir(dir)?,
        None => policy::load_embedded()?,
    };
    Ok(set)
}

async fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let ReviewArgs {
        files,
        context,
        policies,
        endpoint,
        explain,
    } = args;
    let policies = load_policies(policies.as_deref())?;
    let source: Arc<dyn ObjectSource> = Arc::new(FileSource::load(&context)?);
    let engine = Engine::new(policies, source, Arc::new(Metrics::new()));
    for file in files {
        let body =
            std::fs::read(&file).with_context(|| format!("failed to read {}", file.display()))?;
        let output = review_one(&engine, &body, endpoint, explain)
            .await
            .with_context(|| format!("{} is not a usable AdmissionReview", file.display()))?;
        let mut output = output;
        output["file"] = json!(file.display().to_string());
        println!("{}", serde_json::to_string_pretty(&output)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn review_one(
    engine: &Engine,
    body: &[u8],
    endpoint: EndpointArg,
    explain: bool,
) -> anyhow::Result<Value> {
    let mut review = Review::parse(body).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut output = json!({});
    if matches!(endpoint, EndpointArg::Both | EndpointArg::Mutate) {
        let decision = engine.decide(Endpoint::Mutate, &review, explain).await;
        if !decision.verdict.patch.is_empty() {
            output["patch"] = serde_json::to_value(&decision.verdict.patch)?;
        }
        if let Some(patched) = &decision.patched {
            output["patchedObject"] = patched.clone();
        }
        if explain {
            output["mutateTrace"] = serde_json::to_value(&decision.traces)?;
        }
        let response = decision.verdict.clone().into_response(&review);
        output["mutate"] = crate::admission::review_json(response);
        if let Some(patched) = decision.patched {
            // The validating webhooks see the object as mutated.
            review.object = patched;
        }
    }
    if matches!(endpoint, EndpointArg::Both | EndpointArg::Validate) {
        let decision = engine.decide(Endpoint::Validate, &review, explain).await;
        if explain {
            output["validateTrace"] = serde_json::to_value(&decision.traces)?;
        }
        let response = decision.verdict.into_response(&review);
        output["validate"] = crate::admission::review_json(response);
    }
    Ok(output)
}

async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let TestArgs {
        dir,
        policies,
        explain,
    } = args;
    let set = Arc::new(load_policies(policies.as_deref())?);
    let dir = dir.unwrap_or_else(|| match &policies {
        Some(policies) => policies.join("tests"),
        None => PathBuf::from("policies/tests"),
    });
    let results = crate::suite::run_dir(&dir, &set, explain).await?;
    let failed = crate::suite::report(&results);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn certs(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let CertsArgs {
        service,
        namespace,
        out,
    } = args;
    let ca_bundle = crate::tls::create_for_service(&service, &namespace, &out)?;
    eprintln!(
        "wrote ca.pem, ca-key.pem, tls.crt and tls.key to {} for {service}.{namespace}.svc; \
         set this caBundle in both webhook configurations:",
        out.display()
    );
    println!("{ca_bundle}");
    Ok(ExitCode::SUCCESS)
}
