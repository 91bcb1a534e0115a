//! `kubectl idsync …`: the same binary, installed (or linked) as
//! `kubectl-idsync` on PATH, which kubectl runs for `kubectl idsync`.
//!
//! - `resync connection|category|all|profile …` creates a ResyncRequest,
//!   naming the user who asks (`spec.requestedBy`, from the API server's
//!   SelfSubjectReview: the chart's admission policy checks it), and with
//!   `--wait` follows it to the end, exiting non-zero unless it succeeded.
//! - `status` sums up Connections, IdentityProfiles and running requests,
//!   problems first.
//!
//! kubectl passes its own flags through to a plugin, so `-n`, `--context`
//! and `--kubeconfig` are read here, as kubectl reads them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};

use idsync_api::resync_request::{Phase, Scope, TargetPhase};
use idsync_api::{Category, Connection, IdentityProfile, ResyncRequest, ResyncRequestSpec, SyncMode};

/// Where to connect, as kubectl's own flags say it.
#[derive(Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// The namespace; default: the kubeconfig context's.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file; default: $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ResyncCommand {
    /// Sync Connections by name.
    Connection {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        options: ResyncOptions,
        /// Apply a sync the import safeguard held back (an admin's action).
        #[arg(long)]
        confirm_deletes: bool,
    },
    /// Sync every Connection of a category (HRIS, IdP, Infrastructure,
    /// VersionControl, MDM, SecurityTraining).
    Category {
        #[arg(value_name = "CATEGORY")]
        category: String,
        #[command(flatten)]
        options: ResyncOptions,
    },
    /// Sync every Connection in the namespace.
    All {
        #[command(flatten)]
        options: ResyncOptions,
    },
    /// Process IdentityProfiles (scope Identities).
    Profile {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Only these identity ids.
        #[arg(long, value_delimiter = ',', value_name = "ID,…")]
        identities: Vec<String>,
        /// Apply a Manual profile's pending changes (an admin's action).
        #[arg(long, conflicts_with = "identities")]
        apply_pending_changes: bool,
        /// Apply a run the identity safeguard held back (an admin's
        /// action).
        #[arg(long)]
        confirm_removals: bool,
        /// Compute and report, commit nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        follow: Follow,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ResyncOptions {
    /// Read everything (a Full sync) instead of what changed since the
    /// last cursor.
    #[arg(long)]
    full: bool,
    /// Compute and report, commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also process the IdentityProfiles that use the synced connections.
    #[arg(long)]
    identities: bool,
    #[command(flatten)]
    follow: Follow,
}

#[derive(Args, Debug, Clone)]
pub struct Follow {
    /// Follow the request until it finishes; exit 1 unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
    /// Print only `resyncrequest.idsync.dev/NAME` (as kubectl's -o name).
    #[arg(short = 'o', long, value_parser = ["name"])]
    output: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 10m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?} is not a duration such as 90s, 10m or 1h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// A kube client and namespace from kubectl's flags.
pub async fn connect(args: &KubeArgs) -> anyhow::Result<(Client, String)> {
    crate::tls::install_crypto_provider();
    let options = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.context("cannot use the kubeconfig")?
        }
        None => match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(_) if args.context.is_none() => Config::infer().await.context("no kubeconfig and not in a cluster")?,
            Err(error) => return Err(anyhow::Error::new(error).context("cannot use the kubeconfig")),
        },
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok((client, namespace))
}

/// The user the API server sees (`kubectl auth whoami`).
async fn whoami(client: &Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("cannot ask the API server who you are (SelfSubjectReview)")?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .context("the API server did not say who you are")
}

pub async fn resync(command: ResyncCommand, args: KubeArgs) -> anyhow::Result<ExitCode> {
    let (client, namespace) = connect(&args).await?;
    let mut spec: ResyncRequestSpec =
        serde_json::from_value(serde_json::json!({"target": {}})).context("the empty request")?;
    let (prefix, follow) = match command {
        ResyncCommand::Connection { names, options, confirm_deletes } => {
            spec.target.connections = Some(names.clone());
            spec.confirm_deletes = confirm_deletes;
            sync_options(&mut spec, &options);
            (format!("resync-{}-", names.join("-")), options.follow)
        }
        ResyncCommand::Category { category, options } => {
            let parsed: Category = serde_json::from_value(serde_json::Value::String(category.clone()))
                .with_context(|| format!("{category:?} is not a category: HRIS, IdP, Infrastructure, VersionControl, MDM or SecurityTraining"))?;
            spec.target.category = Some(parsed);
            sync_options(&mut spec, &options);
            (format!("resync-{}-", category.to_lowercase()), options.follow)
        }
        ResyncCommand::All { options } => {
            spec.target.all = Some(true);
            sync_options(&mut spec, &options);
            ("resync-all-".to_string(), options.follow)
        }
        ResyncCommand::Profile { names, identities, apply_pending_changes, confirm_removals, dry_run, follow } => {
            spec.target.profiles = Some(names.clone());
            spec.scope = Scope::Identities;
            spec.identities = identities;
            spec.apply_pending_changes = apply_pending_changes;
            spec.confirm_removals = confirm_removals;
            spec.dry_run = dry_run;
            (format!("process-{}-", names.join("-")), follow)
        }
    };
    spec.requested_by = Some(whoami(&client).await?);
    let request = ResyncRequest {
        metadata: ObjectMeta { generate_name: Some(generate_name(&prefix)), ..Default::default() },
        spec,
        status: None,
    };
    let api: Api<ResyncRequest> = Api::namespaced(client, &namespace);
    let created = match api.create(&PostParams::default(), &request).await {
        Ok(created) => created,
        // The API server's own words (an admission policy's, a schema's).
        Err(kube::Error::Api(status)) => bail!("{}", status.message),
        Err(error) => return Err(anyhow::Error::new(error).context("cannot create the ResyncRequest")),
    };
    let name = created.name_any();
    let mut out = std::io::stdout().lock();
    if follow.output.as_deref() == Some("name") {
        writeln!(out, "resyncrequest.idsync.dev/{name}")?;
    } else {
        writeln!(out, "resyncrequest.idsync.dev/{name} created")?;
    }
    out.flush()?;
    drop(out);
    if !follow.wait {
        return Ok(ExitCode::SUCCESS);
    }
    match tokio::time::timeout(follow.timeout, wait_for(&api, &name)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "resyncrequest.idsync.dev/{name} did not finish within {}s; it goes on: kubectl get rr {name} -n {namespace} -w",
            follow.timeout.as_secs()
        ),
    }
}

fn sync_options(spec: &mut ResyncRequestSpec, options: &ResyncOptions) {
    if options.full {
        spec.mode = SyncMode::Full;
    }
    spec.dry_run = options.dry_run;
    if options.identities {
        spec.scope = Scope::AccountsAndIdentities;
    }
}

/// A name prefix the API server can extend by five characters: lower case,
/// at most 58 characters, ending in `-`.
fn generate_name(prefix: &str) -> String {
    let mut name: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(57).collect();
    while name.ends_with('-') {
        name.pop();
    }
    name.push('-');
    name
}

/// Prints each target's and profile's phase as it changes, then the
/// request's outcome; the exit code says whether it succeeded.
async fn wait_for(api: &Api<ResyncRequest>, name: &str) -> anyhow::Result<ExitCode> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api.clone(), config).applied_objects());
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let request = event.context("lost the watch on the request")?;
        let dry_run = request.spec.dry_run;
        let Some(status) = request.status.as_ref() else { continue };
        let mut out = std::io::stdout().lock();
        for part in parts(status) {
            let line = format!("{:?}{}", part.phase, message(part.message));
            if said.get(&part.name) != Some(&line) && part.phase != TargetPhase::Pending {
                writeln!(out, "{}: {line}", part.name)?;
                said.insert(part.name, line);
            }
        }
        out.flush()?;
        let Some(phase) = status.phase.filter(|p| p.is_finished()) else { continue };
        let complete = idsync_api::conditions::find(&status.conditions, idsync_api::conditions::COMPLETE);
        let summary = complete.map(|c| c.message.clone()).unwrap_or_default();
        writeln!(out, "resyncrequest.idsync.dev/{name} {phase:?}{}", message(&summary))?;
        // The preview: what a dry run would change, or the first changes a
        // real run made.
        let verb = if dry_run { "would change" } else { "changed" };
        for part in parts(status).into_iter().filter(|p| !p.preview.is_empty()) {
            writeln!(out, "{} {verb}:", part.name)?;
            for line in part.preview {
                writeln!(out, "  {line}")?;
            }
        }
        out.flush()?;
        return Ok(if phase == Phase::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    bail!("the watch on resyncrequest.idsync.dev/{name} ended before it finished")
}

/// One connection (`hr`) or profile (`profile employees`) of a request,
/// as `--wait` reports it.
struct Part<'a> {
    name: String,
    phase: TargetPhase,
    message: &'a str,
    preview: &'a [String],
}

fn parts(status: &idsync_api::ResyncRequestStatus) -> Vec<Part<'_>> {
    let targets = status.targets.iter().map(|t| Part {
        name: t.connection.clone(),
        phase: t.phase,
        message: &t.message,
        preview: &t.preview,
    });
    let profiles = status.profiles.iter().map(|p| Part {
        name: format!("profile {}", p.profile),
        phase: p.phase,
        message: &p.message,
        preview: &p.preview,
    });
    targets.chain(profiles).collect()
}

fn message(text: &str) -> String {
    if text.is_empty() { String::new() } else { format!(": {text}") }
}

/// `kubectl idsync status`: what needs attention first, then the counts.
pub async fn status(args: KubeArgs, output: Option<String>) -> anyhow::Result<ExitCode> {
    let (client, namespace) = connect(&args).await?;
    let connections: Vec<Connection> = Api::<Connection>::namespaced(client.clone(), &namespace)
        .list(&Default::default())
        .await
        .context("cannot list Connections")?
        .items;
    let profiles: Vec<IdentityProfile> = Api::<IdentityProfile>::namespaced(client.clone(), &namespace)
        .list(&Default::default())
        .await
        .context("cannot list IdentityProfiles")?
        .items;
    let requests: Vec<ResyncRequest> = Api::<ResyncRequest>::namespaced(client, &namespace)
        .list(&Default::default())
        .await
        .context("cannot list ResyncRequests")?
        .items;
    let mut out = std::io::stdout().lock();
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        idsync_api::conditions::find(conditions, idsync_api::conditions::READY)
            .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()))
    };
    let connection_readiness: Vec<_> = connections
        .iter()
        .map(|c| {
            let conditions = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            (format!("connection {}", c.name_any()), ready(conditions))
        })
        .collect();
    let profile_readiness = profiles.iter().map(|p| {
        let conditions = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        (format!("profile {}", p.name_any()), ready(conditions))
    });
    let mut problems = Vec::new();
    for (what, readiness) in connection_readiness.iter().cloned().chain(profile_readiness) {
        match readiness {
            Some((true, ..)) => {}
            Some((false, reason, text)) => problems.push(format!("{what}: {reason}{}", message(&text))),
            None => problems.push(format!("{what}: not reconciled yet")),
        }
    }
    let running: Vec<RunningRequest> = requests
        .iter()
        .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
        .map(|r| RunningRequest {
            name: r.name_any(),
            target: r.status.as_ref().map(|s| s.target.clone()).unwrap_or_default(),
        })
        .collect();
    let summary = StatusSummary {
        namespace,
        needs_attention: problems,
        connections: ConnectionsSummary {
            total: connections.len(),
            ready: connection_readiness.iter().filter(|(_, r)| r.as_ref().is_some_and(|r| r.0)).count(),
            accounts: connections.iter().filter_map(|c| c.status.as_ref().and_then(|s| s.account_count)).sum(),
        },
        identity_profiles: ProfilesSummary {
            total: profiles.len(),
            identities: profiles.iter().filter_map(|p| p.status.as_ref().and_then(|s| s.identity_count)).sum(),
        },
        resync_requests: RequestsSummary { total: requests.len(), running },
    };
    match output.as_deref() {
        Some("json") => super::output::render_item(&summary, super::output::ItemFormat::Json, &mut out)?,
        Some("yaml") => super::output::render_item(&summary, super::output::ItemFormat::Yaml, &mut out)?,
        _ => write_summary(&summary, &mut out)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What `status` says, as `-o json|yaml` prints it.
#[derive(serde::Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusSummary {
    namespace: String,
    needs_attention: Vec<String>,
    connections: ConnectionsSummary,
    identity_profiles: ProfilesSummary,
    resync_requests: RequestsSummary,
}

#[derive(serde::Serialize, Debug)]
struct ConnectionsSummary {
    total: usize,
    ready: usize,
    accounts: u64,
}

#[derive(serde::Serialize, Debug)]
struct ProfilesSummary {
    total: usize,
    identities: u64,
}

#[derive(serde::Serialize, Debug)]
struct RequestsSummary {
    total: usize,
    /// Running or pending.
    running: Vec<RunningRequest>,
}

#[derive(serde::Serialize, Debug)]
struct RunningRequest {
    name: String,
    target: String,
}

fn write_summary(summary: &StatusSummary, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "namespace {}", summary.namespace)?;
    if summary.needs_attention.is_empty() {
        writeln!(out, "nothing needs attention")?;
    } else {
        writeln!(out, "needs attention:")?;
        for problem in &summary.needs_attention {
            writeln!(out, "  {problem}")?;
        }
    }
    let c = &summary.connections;
    writeln!(out, "connections: {} ({} ready), {} accounts", c.total, c.ready, c.accounts)?;
    let p = &summary.identity_profiles;
    writeln!(out, "identity profiles: {}, {} identities", p.total, p.identities)?;
    let r = &summary.resync_requests;
    writeln!(out, "resync requests: {} running or pending, {} in all", r.running.len(), r.total)?;
    for running in &r.running {
        writeln!(out, "  {} ({})", running.name, running.target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn generated_names_are_dns_labels_with_room_for_the_suffix() {
        assert_eq!(generate_name("resync-hr-"), "resync-hr-");
        assert_eq!(generate_name("resync-HR_Export-"), "resync-hr-export-");
        let long = generate_name(&format!("resync-{}-", "a".repeat(80)));
        assert!(long.len() <= 58 && long.ends_with('-'), "{long}");
    }
}

/// The store-reading commands (`identities`, `runs`, `accounts`) read the
/// operator's store, which lives in its pod: under `kubectl idsync` they
/// run there, through `kubectl exec` (the image has the same binary and its
/// data folder is the default `--store`). `--operator-namespace` (default
/// `idsync`) and `--operator` (the Deployment, default `idsync`) say where;
/// `--context` and `--kubeconfig` go to kubectl.
pub const STORE_COMMANDS: [&str; 3] = ["identities", "runs", "accounts"];

/// The `kubectl` arguments that run `args` (a store command and its flags)
/// in the operator's pod.
pub fn exec_arguments(args: &[String]) -> Vec<String> {
    let mut namespace = "idsync".to_string();
    let mut deployment = "idsync".to_string();
    let mut kubectl_flags = Vec::new();
    let mut forwarded = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |inline: Option<String>| inline.or_else(|| rest.next().cloned()).unwrap_or_default();
        match flag {
            "--operator-namespace" => namespace = value(inline),
            "--operator" => deployment = value(inline),
            "--context" | "--kubeconfig" => {
                let v = value(inline);
                kubectl_flags.push(format!("{flag}={v}"));
            }
            _ => forwarded.push(arg.clone()),
        }
    }
    let mut out = kubectl_flags;
    out.extend(["exec".to_string(), "-n".to_string(), namespace, format!("deploy/{deployment}"), "--".to_string()]);
    out.push("idsync".to_string());
    out.extend(forwarded);
    out
}

/// Runs a store command in the operator's pod and exits as it did.
pub fn exec_in_operator(args: &[String]) -> anyhow::Result<ExitCode> {
    let status = std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string()))
        .args(exec_arguments(args))
        .status()
        .context("cannot run kubectl to reach the operator's pod")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod exec_tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn store_commands_run_in_the_operators_pod() {
        assert_eq!(
            exec_arguments(&strings(&["identities", "list", "--profile", "employees", "-n", "people"])),
            strings(&[
                "exec",
                "-n",
                "idsync",
                "deploy/idsync",
                "--",
                "idsync",
                "identities",
                "list",
                "--profile",
                "employees",
                "-n",
                "people"
            ])
        );
        assert_eq!(
            exec_arguments(&strings(&[
                "runs",
                "list",
                "--connection",
                "hr",
                "--operator-namespace",
                "iam",
                "--operator=idsync-eu",
                "--context",
                "prod",
            ])),
            strings(&[
                "--context=prod",
                "exec",
                "-n",
                "iam",
                "deploy/idsync-eu",
                "--",
                "idsync",
                "runs",
                "list",
                "--connection",
                "hr"
            ])
        );
    }
}
