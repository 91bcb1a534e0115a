//! devcluster: an in-process Kubernetes API server for `idsync dev` and the
//! end-to-end tests, served over HTTPS on 127.0.0.1 (a CA made at start and
//! written into the kubeconfig: kubectl sends bearer tokens only over TLS)
//! with a bearer token.
//!
//! It behaves like a real API server wherever idsync, kube-rs or `kubectl`
//! depend on it: discovery, CRDs that become served (with structural-schema
//! validation, defaults, pruning and CEL rules — the same admission code as
//! `idsync validate`), uid / creationTimestamp / a global monotonically
//! increasing resourceVersion, 409 on stale writes, generation, the status
//! subresource, finalizers and deletionTimestamp, garbage collection by
//! ownerReferences, JSON merge / JSON / strategic-merge / server-side apply
//! patches, list with label and field selectors and `limit` + `continue`,
//! watch with bookmarks, timeouts and `410 Gone`, `kubectl get` Tables from
//! printer columns, metadata-only lists, gets and watches
//! (`PartialObjectMetadata`), and `metav1.Status` errors. It counts the
//! reads it answers, by representation ([`DevCluster::reads`]). Dry runs
//! (`dryRun=All`, in the query or a delete's body) change nothing, and any
//! other value is a 422. Updates ratchet validation as Kubernetes 1.30+ does
//! (an unchanged value the schema now refuses may stay). Every request is
//! authorized by RBAC (see `authz`): Roles, ClusterRoles with aggregation
//! (`admin`, `edit` and `view` as on a cluster), RoleBindings and
//! ClusterRoleBindings to users, groups and service accounts, refused with
//! the API server's 403 and words; users are bearer tokens
//! ([`DevCluster::add_user`], [`DevCluster::client_as`]), the kubeconfig's
//! is `kubernetes-admin`, a cluster-admin; `kubectl auth can-i [--list]`
//! and `whoami` answer; each user's allowed calls are tallied
//! ([`DevCluster::accesses`]). kubectl's protobuf bodies for Secrets,
//! ConfigMaps, Namespaces, the RBAC kinds and the self reviews are read
//! (`kubectl create secret generic …`, `kubectl create rolebinding …`,
//! `kubectl auth can-i …`). Unknown fields dropped under the default field
//! validation come back as `Warning` headers. `/healthz`,
//! `/readyz`, `/livez`, `kubectl cluster-info` and `kubectl auth whoami`
//! answer as on a real cluster, and a plain-HTTP request gets the 400 Go's
//! HTTPS server sends.
//!
//! Where it differs from a real API server (none of which idsync relies on):
//! - One process, one lock, objects in memory: nothing survives a restart.
//! - Garbage collection and namespace deletion happen immediately, inside
//!   the delete, instead of eventually; Foreground propagation behaves like
//!   Background.
//! - A deleted CRD removes its objects at once, without waiting for their
//!   finalizers.
//! - A strategic merge patch of a built-in kind is applied as a JSON merge
//!   patch: the kinds served here have no list whose patch strategy would
//!   make a difference to idsync or kubectl's use of them.
//! - Server-side apply tracks ownership with a simplified field-set model;
//!   see `apply.rs` for exactly where it simplifies.
//! - Pages of a list (`continue`) read the current state, not a snapshot at
//!   the first page's resourceVersion; `resourceVersionMatch` is ignored.
//! - RBAC without escalation checks (a user who may write bindings may
//!   bind any role), impersonation, or anonymous requests; aggregation
//!   happens inside the write that changed a ClusterRole.
//! - No admission webhooks or aggregated discovery (clients fall back to
//!   the per-group documents). Protobuf is read only for the request bodies
//!   of the kinds above and never answered (clients accept JSON).
//! - CEL rule failures render the offending value by its JSON type.

pub mod admission_policy;
pub mod age;
pub mod api;
pub mod apply;
pub mod authz;
pub mod builtin_tables;
pub mod discovery;
pub mod error;
pub mod events;
pub mod jsonpath;
pub mod metadata;
pub mod openapi;
pub mod protobuf;
pub mod reads;
pub mod representation;
pub mod request;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;
pub mod writes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch as notify;

use api::State;
use error::ApiError;
use resources::Registry;
use store::{EventType, Store};

/// How a devcluster is started.
#[derive(Clone, Debug)]
pub struct Config {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Where the kubeconfig is written; none writes no file.
    pub kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from, at most.
    pub history_limit: usize,
    /// How long they are kept (etcd's compaction interval, five minutes in
    /// Kubernetes); tests shorten it to exercise relists after 410 Gone.
    pub history_window: Duration,
    /// How often an idle watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            kubeconfig: None,
            history_limit: 10_000,
            history_window: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(15),
        }
    }
}

/// Settings every request handler reads.
pub struct ServerConfig {
    pub token: String,
    pub address: String,
    pub bookmark_interval: Duration,
}

/// State shared by all connections.
pub struct Shared {
    pub state: Mutex<State>,
    /// The latest revision, so watches wake on every commit.
    pub changes: notify::Sender<u64>,
    /// Bumped to end every open watch (as an API server restart would).
    pub watch_epoch: notify::Sender<u64>,
    pub config: ServerConfig,
    /// The reads answered, for tests.
    pub reads: reads::Reads,
    /// The writes accepted, for tests.
    pub writes: writes::Writes,
    /// The users and the RBAC policy (see `authz`); reachable without the
    /// state lock, and safe to call under it.
    pub authz: Arc<authz::Authorizer>,
}

impl Shared {
    pub fn lock(&self) -> Result<MutexGuard<'_, State>, ApiError> {
        self.state.lock().map_err(|_| ApiError::internal("the devcluster's state is poisoned by an earlier panic"))
    }

    /// Runs a write under the lock and wakes the watches. A write that
    /// changed RBAC objects re-aggregates ClusterRoles and refreshes the
    /// policy before the lock is released, so the next request sees it.
    pub fn write<T>(&self, f: impl FnOnce(&mut State) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let (result, revision) = {
            let mut state = self.lock()?;
            let before = state.store.revision();
            let result = f(&mut state);
            self.authz.after_write(&mut state.store, before);
            (result, state.store.revision())
        };
        self.changes.send_replace(revision);
        result
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: std::io::Error },
    #[error("cannot build a client for the devcluster: {0}")]
    Client(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Whether a connection begins with a TLS handshake record (0x16).
async fn starts_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// What Go's TLS server (and so the API server) answers a plain-HTTP
/// request on its HTTPS port, instead of a TLS alert a person cannot read.
async fn refuse_plain_http(stream: tokio::net::TcpStream) {
    let answer: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
                          Client sent an HTTP request to an HTTPS server.\n";
    // Read what the client sent first: closing with unread data would reset
    // the connection before the client reads the answer.
    let mut request = [0u8; 8192];
    if stream.readable().await.is_ok() {
        let _ = stream.try_read(&mut request);
    }
    // Small enough for one write; tokio's `io-util` is not needed for it.
    if stream.writable().await.is_ok() {
        let _ = stream.try_write(answer);
    }
}

/// A running devcluster. Dropping it stops the server.
pub struct DevCluster {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: Option<PathBuf>,
    ca_der: Vec<u8>,
    ca_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DevCluster {
    /// Starts a devcluster with the namespaces `default` and `kube-system`.
    pub async fn start(config: Config) -> Result<Self, DevClusterError> {
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| DevClusterError::Bind { port: config.port, source })?;
        let addr = listener.local_addr().map_err(|source| DevClusterError::Bind { port: config.port, source })?;
        let token = new_token();
        let tls = tls::generate()?;
        let mut store = Store::new(config.history_limit, config.history_window);
        for ns in ["default", "kube-system", "kube-public"] {
            let object = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": api::now_rfc3339()},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"}
            });
            store.put("namespaces", "", ns, object, EventType::Added);
        }
        let authz = Arc::new(authz::Authorizer::default());
        authz.install(&mut store);
        authz.users.add(token.clone(), authz::users::user_info(authz::ADMIN, "", &[authz::bootstrap::ADMIN_GROUP]));
        let (changes, _) = notify::channel(store.revision());
        let (watch_epoch, _) = notify::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { registry: Registry::with_builtins(), store }),
            changes,
            watch_epoch,
            config: ServerConfig { token, address: addr.to_string(), bookmark_interval: config.bookmark_interval },
            reads: reads::Reads::default(),
            writes: writes::Writes::default(),
            authz,
        });
        if let Some(path) = &config.kubeconfig {
            write_kubeconfig(path, addr, &shared.config.token, &tls.ca_pem)
                .map_err(|source| DevClusterError::Kubeconfig { path: path.clone(), source })?;
        }
        let (shutdown, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        let acceptor = tls.acceptor.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = server_shared.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if !starts_tls(&stream).await {
                                refuse_plain_http(stream).await;
                                return;
                            }
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let service = service_fn(move |req| server::handle(shared.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
        });
        Ok(DevCluster {
            shared,
            addr,
            kubeconfig: config.kubeconfig,
            ca_der: tls.ca_der,
            ca_pem: tls.ca_pem,
            shutdown: Some(shutdown),
        })
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The kubeconfig of this devcluster, as written to disk.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(self.addr, self.token(), &self.ca_pem)
    }

    /// The kubeconfig with, besides the admin's context `idsync-dev` (the
    /// current one), a user and a context `idsync-dev-NAME` for each
    /// `(NAME, token)` given (tokens from [`DevCluster::add_user`]), so
    /// `kubectl --context idsync-dev-NAME` acts as that user.
    pub fn kubeconfig_yaml_with_users(&self, users: &[(&str, &str)]) -> String {
        let yaml = self.kubeconfig_yaml();
        let mut user_entries = String::new();
        let mut context_entries = String::new();
        for (name, token) in users {
            let id = format!("idsync-dev-{name}");
            user_entries.push_str(&format!("- name: {id}\n  user:\n    token: {token}\n"));
            context_entries.push_str(&format!(
                "- name: {id}\n  context:\n    cluster: idsync-dev\n    user: {id}\n    namespace: default\n"
            ));
        }
        // Users go after the admin's user, contexts after its context.
        yaml.replacen("contexts:\n", &format!("{user_entries}contexts:\n"), 1).replacen(
            "current-context:",
            &format!("{context_entries}current-context:"),
            1,
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.kubeconfig.as_deref()
    }

    /// A new bearer token for the user `username` in `groups` (plus
    /// `system:authenticated`, and a service account's groups for a
    /// `system:serviceaccount:NS:NAME` name). The user may do what RBAC
    /// bindings grant it: nothing but discovery and the self reviews until
    /// one is made.
    pub fn add_user(&self, username: &str, groups: &[&str]) -> String {
        let token = new_token();
        let uid = uuid::Uuid::new_v4().to_string();
        self.shared.authz.users.add(token.clone(), authz::users::user_info(username, &uid, groups));
        token
    }

    /// A kube-rs client authenticating with `token` (the kubeconfig's, or
    /// one [`DevCluster::add_user`] returned).
    pub fn client_for_token(&self, token: &str) -> Result<kube::Client, DevClusterError> {
        let url: http::Uri =
            self.url().parse().map_err(|e: http::uri::InvalidUri| DevClusterError::Client(e.to_string()))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_string();
        config.auth_info.token = Some(token.to_string().into());
        config.root_cert = Some(vec![self.ca_der.clone()]);
        kube::Client::try_from(config).map_err(|e| DevClusterError::Client(e.to_string()))
    }

    /// A kube-rs client acting as `user`, granted exactly `rules`: a new
    /// token for `user`, and a ClusterRole `devcluster:client-as:USER` with
    /// those rules bound to it cluster-wide (stored as any other RBAC
    /// object, so `kubectl get clusterrole` shows it). Calling it again for
    /// the same user replaces the rules.
    pub fn client_as(
        &self,
        user: &str,
        rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    ) -> Result<kube::Client, DevClusterError> {
        let token = self.add_user(user, &[]);
        let name = format!("devcluster:client-as:{user}");
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": rules,
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        });
        self.shared
            .write(|state| {
                authz::bootstrap::put_or_replace(&mut state.store, authz::rbac::CLUSTER_ROLES, role, "rules");
                authz::bootstrap::put_or_replace(
                    &mut state.store,
                    authz::rbac::CLUSTER_ROLE_BINDINGS,
                    binding,
                    "subjects",
                );
                Ok(())
            })
            .map_err(|e| DevClusterError::Client(e.message))?;
        self.client_for_token(&token)
    }

    /// The distinct calls (verb, group, resource) `user` made and was
    /// allowed, sorted.
    pub fn accesses(&self, user: &str) -> Vec<authz::Access> {
        self.shared.authz.users.accesses(user)
    }

    /// The authorizer (users and RBAC policy), e.g. to `check` a request.
    pub fn authorizer(&self) -> Arc<authz::Authorizer> {
        self.shared.authz.clone()
    }

    /// A kube-rs client for this devcluster, as the kubeconfig's admin.
    pub fn client(&self) -> Result<kube::Client, DevClusterError> {
        self.client_for_token(self.token())
    }

    /// Drops all watch history, as an etcd compaction does: watches resuming
    /// from an older resourceVersion get `410 Gone`.
    pub fn compact_history(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.store.compact();
        }
        let revision = self.shared.state.lock().map(|s| s.store.revision()).unwrap_or_default();
        self.shared.changes.send_replace(revision);
    }

    /// Ends every open watch, as an API server restart or a watch timeout
    /// does; clients re-watch from the last resourceVersion they saw.
    pub fn close_watches(&self) {
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// How many gets, lists and watches of each resource were answered, in
    /// which representation (so a test can tell that a client was sent
    /// Secrets' metadata only, never their data).
    pub fn reads(&self) -> Vec<reads::ReadCount> {
        self.shared.reads.counts()
    }

    /// The sequence number of the latest accepted write: the writes after
    /// it are what [`DevCluster::writes_since`] returns.
    pub fn write_mark(&self) -> u64 {
        self.shared.writes.mark()
    }

    /// The writes accepted after `mark` (from [`DevCluster::write_mark`]),
    /// oldest first, by every user; dry runs are not among them.
    pub fn writes_since(&self, mark: u64) -> Vec<writes::Write> {
        self.shared.writes.since(mark)
    }

    /// The latest resourceVersion.
    pub fn revision(&self) -> u64 {
        self.shared.state.lock().map(|s| s.store.revision()).unwrap_or_default()
    }

    /// Stops accepting connections.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bearer token: 256 random bits.
fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A kubeconfig for the devcluster: one cluster (trusting its CA), one user with the bearer
/// token, one context named `idsync-dev` using the `default` namespace.
pub fn kubeconfig_yaml(addr: SocketAddr, token: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: idsync-dev
  cluster:
    server: https://{addr}
    certificate-authority-data: {ca}
users:
- name: idsync-dev
  user:
    token: {token}
contexts:
- name: idsync-dev
  context:
    cluster: idsync-dev
    user: idsync-dev
    namespace: default
current-context: idsync-dev
preferences: {{}}
"
    )
}

fn write_kubeconfig(path: &Path, addr: SocketAddr, token: &str, ca_pem: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, kubeconfig_yaml(addr, token, ca_pem))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // It holds a credential.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
