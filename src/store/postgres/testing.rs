//! A throwaway PostgreSQL for tests and benchmarks: one cluster per test
//! process, started on first use with `scripts/postgres.sh` (which installs
//! Debian's `postgresql` when it is missing), and a fresh database for each
//! caller, so tests never see each other's rows. The cluster stops when the
//! process that started it ends.
//!
//! Not for production: the cluster runs with fsync off.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::PgOptions;

/// The superuser the script creates, and its password.
pub const USER: &str = "idsync";
pub const PASSWORD: &str = "idsync-test";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    /// Its folder (data, logs, socket).
    pub dir: PathBuf,
}

impl Cluster {
    /// The URL of database `db`, without the password (pass it apart, as
    /// production does from a Secret).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Options for database `db` with the password.
    /// The CA of a TLS cluster's server certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("tls/ca.crt")).expect("a TLS cluster's CA")
    }

    pub fn options(&self, db: &str) -> PgOptions {
        PgOptions { password: Some(PASSWORD.to_string()), ..PgOptions::new(self.url(db)) }
    }

    /// Creates an empty database with a new unique name and returns it.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut client = self
            .options("postgres")
            .config()
            .expect("config")
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the throwaway PostgreSQL on port {}: {e}", self.port));
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        name
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TLS_CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The process's cluster, started on first call. Panics with the script's
/// output when it cannot start: a test that needs PostgreSQL fails rather
/// than passing without it.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| start(false))
}

/// A second cluster with TLS on, its server certificate signed by a
/// throwaway CA (`Cluster::ca_pem`).
pub fn tls_cluster() -> &'static Cluster {
    TLS_CLUSTER.get_or_init(|| start(true))
}

/// A fresh, empty database on the process's cluster.
pub fn fresh_database() -> PgOptions {
    let cluster = cluster();
    cluster.options(&cluster.create_database())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn start(tls: bool) -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
    // Kept for the life of the process: the cluster's files are in it.
    let root = std::env::temp_dir().join(format!("idsync-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).expect("temp dir");
    let dir = root.join("pg");
    let mut last = String::new();
    // A free port can be taken between the probe and the server's bind.
    for _ in 0..3 {
        let port = free_port();
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .arg(port.to_string())
            .env("PG_TLS", if tls { "1" } else { "0" })
            .output()
            .expect("run postgres.sh");
        if out.status.success() {
            stop_with_this_process(&dir);
            return Cluster { port, dir };
        }
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir);
    }
    panic!("cannot start a throwaway PostgreSQL with {}:\n{last}", script.display());
}

/// Stops the cluster once this process is gone, however it ends: a small
/// shell watches the process and runs `pg_ctl stop` after it.
fn stop_with_this_process(dir: &std::path::Path) {
    let pid = std::process::id();
    let data = dir.join("data");
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         bin=$(ls -d /usr/lib/postgresql/*/bin | head -n1); \
         if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- \"$bin/pg_ctl\" -D '{}' -m immediate stop; \
         else \"$bin/pg_ctl\" -D '{}' -m immediate stop; fi; rm -rf '{}'",
        data.display(),
        data.display(),
        dir.parent().unwrap_or(dir).display()
    );
    let _ = Command::new("setsid")
        .args(["bash", "-c", &stop])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
