//! LDAP at 100,000 users against a local slapd (`scripts/slapd.sh`, loaded
//! with slapadd), side by side with its floor: `ldapsearch -E pr=1000` of
//! the same attributes. Prints, each the minimum of alternating runs:
//! ldapsearch, the connector alone, and a full sync through the whole engine
//! (connector, diff, staging, commit into a fresh store), the ratio, peak RSS
//! and RSS after; then an unchanged full resync, and deltas of 100 modified
//! entries (the connector's side alone, and through the engine), a delta
//! after a delta included. Run with `cargo bench --bench ldap`
//! (`LDAP_BENCH_USERS` to change the size, `LDAP_BENCH_ROUNDS` the rounds).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idsync::connectors::ldap::LdapConnector;
use idsync::connectors::{self, Connector, ProviderInputs};
use idsync::store::{SqliteStore, Store};
use idsync::sync::job;
use idsync_api::{Connection, ConnectionSpec, SyncMode};

const ADMIN: &str = "cn=admin,dc=example,dc=com";
const PASSWORD: &str = "admin-secret";
const PEOPLE: &str = "ou=people,dc=example,dc=com";
const PAGE: u32 = 1000;
/// Every user attribute of the generated entries (and the id): what both
/// ldapsearch and idsync ask for.
const EXTRA: [&str; 6] = ["sn", "givenName", "title", "departmentNumber", "telephoneNumber", "employeeNumber"];
const DEPARTMENTS: usize = 40;
const CHANGED: usize = 100;

fn users() -> usize {
    std::env::var("LDAP_BENCH_USERS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000)
}

fn rounds() -> usize {
    std::env::var("LDAP_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(3).max(1)
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} || test -x /usr/sbin/{name}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The directory: the base, people and groups, `n` users each in one
/// department group and, every tenth, in `managers` too.
fn ldif(n: usize) -> String {
    let mut out = String::with_capacity(n * 520);
    out.push_str(
        "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,dc=example,dc=com\nobjectClass: organizationalUnit\nou: groups\n\n",
    );
    for i in 0..n {
        let d = i % DEPARTMENTS;
        out.push_str(&format!(
            "dn: uid=user{i:06},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: user{i:06}\ncn: First{i} Last{i}\n\
             sn: Last{i}\ngivenName: First{i}\nmail: user{i:06}@example.com\ntitle: Title {}\n\
             departmentNumber: {d}\ntelephoneNumber: +1 555 {:07}\nemployeeNumber: E{i:06}\n\
             memberOf: cn=dept-{d},ou=groups,dc=example,dc=com\n",
            i % 90,
            i
        ));
        if i % 10 == 0 {
            out.push_str("memberOf: cn=managers,ou=groups,dc=example,dc=com\n");
        }
        out.push('\n');
    }
    let group = |out: &mut String, name: &str, members: &mut dyn Iterator<Item = usize>| {
        out.push_str(&format!("dn: cn={name},ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {name}\n"));
        for i in members {
            out.push_str(&format!("member: uid=user{i:06},{PEOPLE}\n"));
        }
        out.push('\n');
    };
    for d in 0..DEPARTMENTS {
        group(&mut out, &format!("dept-{d}"), &mut (d..n).step_by(DEPARTMENTS));
    }
    group(&mut out, "managers", &mut (0..n).step_by(10));
    out
}

struct Slapd {
    _dir: tempfile::TempDir,
    pid_file: PathBuf,
    port: u16,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl Slapd {
    fn start(ldif: &Path) -> Result<Slapd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slapd.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .env("SLAPD_ROOTPW", PASSWORD)
            .env("SLAPD_LDIF", ldif)
            .env("SLAPD_MAXSIZE", (4u64 << 30).to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("scripts/slapd.sh failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let pid_file = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Ok(Slapd { _dir: dir, pid_file, port })
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn ldapsearch(&self) -> Duration {
        let mut attrs = vec!["entryUUID", "uid", "mail", "cn", "memberOf"];
        attrs.extend(EXTRA);
        let started = Instant::now();
        let status = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-H", &self.url(), "-D", ADMIN, "-w", PASSWORD, "-b", PEOPLE])
            .args(["-E", &format!("pr={PAGE}/noprompt"), "(objectClass=inetOrgPerson)"])
            .args(attrs)
            .stdout(Stdio::null())
            .status()
            .expect("ldapsearch");
        assert!(status.success(), "ldapsearch failed");
        started.elapsed()
    }

    /// Modifies `count` users from `first` on, with ldapmodify.
    fn modify(&self, first: usize, count: usize, tag: &str) {
        let mut ldif = String::new();
        for i in (first..).step_by(users() / count).take(count) {
            ldif.push_str(&format!(
                "dn: uid=user{i:06},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {tag} {i}\n\n"
            ));
        }
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &self.url(), "-D", ADMIN, "-w", PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("ldapmodify");
        child.stdin.take().expect("stdin").write_all(ldif.as_bytes()).expect("write ldapmodify's input");
        assert!(child.wait().expect("ldapmodify").success(), "ldapmodify failed");
    }
}

fn spec(slapd: &Slapd) -> ConnectionSpec {
    let mut c = Connection::test("idp")
        .ldap(&slapd.url(), PEOPLE)
        .bind_dn(ADMIN)
        .credentials("ldap")
        .request_timeout_seconds(60)
        .page_size(PAGE)
        .max_delete_percent(100);
    for attr in EXTRA {
        c = c.extra_attribute(attr);
    }
    c.spec()
}

fn inputs() -> ProviderInputs {
    ProviderInputs { secret: BTreeMap::from([("password".to_string(), PASSWORD.as_bytes().to_vec())]), csv_data: None }
}

/// Reads everything (or the delta from `cursor`) with the connector alone:
/// the time, the accounts, deletions and the cursor after.
async fn connector_read(
    spec: &ConnectionSpec,
    mode: SyncMode,
    cursor: Option<&str>,
) -> (Duration, usize, usize, String) {
    let mut c = LdapConnector::new(spec, spec.expect_ldap(), &inputs()).expect("connector");
    let started = Instant::now();
    c.begin(mode, cursor).await.expect("begin");
    let (mut accounts, mut deleted) = (0, 0);
    while let Some(page) = c.next_page().await.expect("page") {
        accounts += page.accounts.len();
        deleted += page.deleted.len();
    }
    (started.elapsed(), accounts, deleted, c.cursor().expect("a cursor"))
}

struct Synced {
    elapsed: Duration,
    line: String,
}

async fn sync(store: &Arc<dyn Store>, spec: &ConnectionSpec, mode: SyncMode) -> Synced {
    let connector = connectors::build(spec, inputs()).expect("connector");
    let job = common::job_for("idp", spec, mode);
    let started = Instant::now();
    let report = job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    let elapsed = started.elapsed();
    let c = report.counts;
    let line = format!(
        "{:?} {:?}: created {} updated {} deleted {} unchanged {}, {} pages",
        report.mode, report.outcome, c.created, c.updated, c.deleted, c.unchanged, report.pages
    );
    Synced { elapsed, line }
}

fn fresh_store(dir: &Path, n: usize) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join(format!("idsync-{n}.db"))).expect("store"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    for needed in ["slapd", "slapadd", "ldapsearch", "ldapmodify"] {
        if !tool(needed) {
            eprintln!(
                "ldap bench: {needed} is missing; install OpenLDAP's server and tools first:\n  \
                 sudo apt-get install -y --no-install-recommends slapd ldap-utils"
            );
            return ExitCode::FAILURE;
        }
    }
    idsync::tls::install_crypto_provider();
    let n = users();
    let dir = tempfile::tempdir().expect("temp dir");
    let ldif_path = dir.path().join("users.ldif");
    let generated = Instant::now();
    std::fs::write(&ldif_path, ldif(n)).expect("write the LDIF");
    let slapd = match Slapd::start(&ldif_path) {
        Ok(slapd) => slapd,
        Err(e) => {
            eprintln!("ldap bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("slapd: {n} users loaded with slapadd in {:.1} s; pages of {PAGE}", generated.elapsed().as_secs_f64());
    let spec = spec(&slapd);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    // Alternating runs: ldapsearch, the connector alone, a first full sync
    // through the engine into a fresh store; the minimum of each.
    let (mut floor, mut alone, mut full) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut full_peak, mut full_after, mut last_line) = (0.0f64, 0.0f64, String::new());
    let mut store = None;
    for round in 0..rounds() {
        floor = floor.min(slapd.ldapsearch());
        let (took, accounts, _, _) = runtime.block_on(connector_read(&spec, SyncMode::Full, None));
        assert_eq!(accounts, n, "the connector read every user");
        alone = alone.min(took);
        let fresh = fresh_store(dir.path(), round);
        common::reset_peak_rss();
        let synced = runtime.block_on(sync(&fresh, &spec, SyncMode::Full));
        if synced.elapsed < full {
            full = synced.elapsed;
            full_peak = common::peak_rss_mib();
            full_after = common::rss_mib();
        }
        last_line = synced.line;
        store = Some(fresh);
    }
    let store = store.expect("a store");
    let ratio = |d: Duration| d.as_secs_f64() / floor.as_secs_f64();
    println!("ldapsearch -E pr={PAGE}/noprompt      {:>9.3} s  (floor)", floor.as_secs_f64());
    println!("idsync connector alone, full read {:>9.3} s  {:.2}x the floor", alone.as_secs_f64(), ratio(alone));
    println!(
        "idsync full sync (engine)         {:>9.3} s  {:.2}x the floor  peak RSS {:.0} MiB, after {:.0} MiB  [{last_line}]",
        full.as_secs_f64(),
        ratio(full),
        full_peak,
        full_after
    );

    runtime.block_on(async {
        common::reset_peak_rss();
        let resync = sync(&store, &spec, SyncMode::Full).await;
        println!(
            "idsync unchanged full resync      {:>9.3} s  {:.2}x the floor  peak RSS {:.0} MiB, after {:.0} MiB  [{}]",
            resync.elapsed.as_secs_f64(),
            ratio(resync.elapsed),
            common::peak_rss_mib(),
            common::rss_mib(),
            resync.line
        );

        // Deltas: the connector's side from a cursor taken now, and the
        // engine's from the store's cursor (the resync's), twice.
        let (_, _, _, mut cursor) = connector_read(&spec, SyncMode::Full, None).await;
        for (round, tag) in ["first", "second"].into_iter().enumerate() {
            slapd.modify(round, CHANGED, tag);
            let (took, accounts, deleted, next) = connector_read(&spec, SyncMode::Delta, Some(&cursor)).await;
            assert_eq!(accounts, CHANGED, "the delta read the changed users");
            println!(
                "{tag} delta, connector alone       {:>9.1} ms  ({accounts} accounts, {deleted} deletions)",
                ms(took)
            );
            cursor = next;
            common::reset_peak_rss();
            let delta = sync(&store, &spec, SyncMode::Delta).await;
            println!(
                "{tag} delta, {CHANGED} changed (engine) {:>9.1} ms  peak RSS {:.0} MiB, after {:.0} MiB  [{}]",
                ms(delta.elapsed),
                common::peak_rss_mib(),
                common::rss_mib(),
                delta.line
            );
        }
    });
    ExitCode::SUCCESS
}
