//! The ldap provider against a real OpenLDAP (`scripts/slapd.sh`): each test
//! starts its own throwaway slapd on a free port, seeds it with `ldapadd` and
//! drives the connector directly; the last test runs an ldap Connection
//! through the operator.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use idsync::connectors::ldap::LdapConnector;
use idsync::connectors::{Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan};
use idsync::model::Account;
use idsync_api::fixtures::ConnectionBuilder;
use idsync_api::{Connection, SyncMode};

const ADMIN: &str = "cn=admin,dc=example,dc=com";
const PASSWORD: &str = "admin-secret";
const PEOPLE: &str = "ou=people,dc=example,dc=com";

struct Slapd {
    dir: tempfile::TempDir,
    pid_file: PathBuf,
    port: u16,
    /// The ldaps:// port, when started with TLS.
    tls_port: Option<u16>,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Slapd {
    fn start(tls: bool, syncprov: bool) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slapd.sh");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let mut command = Command::new("bash");
            command.arg(script).arg(dir.path()).arg(port.to_string()).env("SLAPD_ROOTPW", PASSWORD);
            if let Some(tls_port) = tls_port {
                command.env("SLAPD_LDAPS_PORT", tls_port.to_string());
            }
            if !syncprov {
                command.env("SLAPD_NO_SYNCPROV", "1");
            }
            let out = command.output().unwrap();
            if out.status.success() {
                let pid_file = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
                return Slapd { dir, pid_file, port, tls_port };
            }
            last = format!(
                "scripts/slapd.sh failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("{last}");
    }

    /// Kills the server at once (SIGKILL).
    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let status = Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
            assert!(status.success());
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn tool(&self, tool: &str, args: &[&str], input: &str) {
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.url(), "-D", ADMIN, "-w", PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Written from a thread: the tool's output could fill its pipe first.
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn add(&self, ldif: &str) {
        self.tool("ldapadd", &[], ldif);
    }

    fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif);
    }

    /// Starts a server with `users` users (`user0001`…) and groups:
    /// engineering (users 1–10), sales (users 5–20), all (every user).
    fn seeded(users: usize) -> Slapd {
        Slapd::seeded_with(users, false, true)
    }

    fn seeded_with(users: usize, tls: bool, syncprov: bool) -> Slapd {
        let slapd = Slapd::start(tls, syncprov);
        let mut ldif = String::from(
            "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,dc=example,dc=com\nobjectClass: organizationalUnit\nou: groups\n\n",
        );
        for i in 1..=users {
            ldif.push_str(&user_ldif(&format!("user{i:04}"), i));
        }
        let group = |name: &str, range: std::ops::RangeInclusive<usize>| {
            if range.clone().all(|i| i > users) {
                return String::new();
            }
            let mut g = format!("dn: cn={name},ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {name}\n");
            for i in range.filter(|i| *i <= users) {
                g.push_str(&format!("member: uid=user{i:04},{PEOPLE}\n"));
            }
            g.push('\n');
            g
        };
        ldif.push_str(&group("engineering", 1..=10));
        ldif.push_str(&group("sales", 5..=20));
        ldif.push_str(&group("all", 1..=users));
        slapd.add(&ldif);
        slapd
    }
}

fn user_ldif(uid: &str, i: usize) -> String {
    let mut ldif = format!(
        "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: User {i:04}\nsn: Surname{i}\n\
         mail: {uid}@example.com\n"
    );
    if i == 1 {
        ldif.push_str("telephoneNumber: +1 555 0001\ntelephoneNumber: +1 555 0002\n");
    }
    ldif.push('\n');
    ldif
}

/// The Connection `idp` to `slapd`'s people, bound as its admin, with
/// ten-second requests.
fn directory(slapd: &Slapd) -> ConnectionBuilder {
    Connection::test("idp").ldap(&slapd.url(), PEOPLE).bind_dn(ADMIN).credentials("ldap").request_timeout_seconds(10)
}

fn connector(connection: ConnectionBuilder, page_size: u32, password: &str) -> LdapConnector {
    try_connector(connection, page_size, password, None).unwrap()
}

fn try_connector(
    connection: ConnectionBuilder,
    page_size: u32,
    password: &str,
    ca: Option<Vec<u8>>,
) -> Result<LdapConnector, ConnectorError> {
    idsync::tls::install_crypto_provider();
    let spec = connection.page_size(page_size).spec();
    let mut inputs = ProviderInputs {
        secret: BTreeMap::from([("password".to_string(), password.as_bytes().to_vec())]),
        csv_data: None,
    };
    if let Some(ca) = ca {
        inputs.secret.insert("ca.crt".to_string(), ca);
    }
    LdapConnector::new(&spec, spec.expect_ldap(), &inputs)
}

async fn read(c: &mut LdapConnector, mode: SyncMode, cursor: Option<&str>) -> (ReadPlan, Vec<Page>, Option<String>) {
    let plan = c.begin(mode, cursor).await.unwrap();
    let mut pages = Vec::new();
    while let Some(page) = c.next_page().await.unwrap() {
        assert_eq!(page.number, pages.len() as u64 + 1);
        pages.push(page);
    }
    (plan, pages, c.cursor())
}

fn accounts(pages: &[Page]) -> Vec<Account> {
    pages.iter().flat_map(|p| p.accounts.iter().cloned()).collect()
}

fn by_username(accounts: &[Account], username: &str) -> Account {
    accounts.iter().find(|a| a.username.as_deref() == Some(username)).cloned().unwrap()
}

#[tokio::test]
async fn full_sync_maps_every_user_with_groups() {
    let slapd = Slapd::seeded(300);
    for groups in [directory(&slapd), directory(&slapd).group_base_dn("ou=groups,dc=example,dc=com")] {
        let extra = groups.extra_attribute("sn").extra_attribute("telephoneNumber");
        let mut c = connector(extra.clone(), 100, PASSWORD);
        let (plan, pages, cursor) = read(&mut c, SyncMode::Full, None).await;
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: None });
        assert!(cursor.is_some(), "syncprov gives a cookie");
        assert_eq!(pages.len(), 3, "{extra:?}");
        let all = accounts(&pages);
        assert_eq!(all.len(), 300);
        assert!(pages.iter().all(|p| p.deleted.is_empty()));

        let a = by_username(&all, "user0001");
        assert_eq!(a.id.len(), 36, "an entryUUID: {}", a.id);
        assert_eq!(a.email.as_deref(), Some("user0001@example.com"));
        assert_eq!(a.display_name.as_deref(), Some("User 0001"));
        assert!(a.enabled);
        assert_eq!(a.groups, vec!["all", "engineering"], "{extra:?}");
        assert_eq!(a.attributes["dn"], format!("uid=user0001,{PEOPLE}"));
        assert_eq!(a.attributes["sn"], "Surname1");
        assert_eq!(a.attributes["telephoneNumber"], serde_json::json!(["+1 555 0001", "+1 555 0002"]));
        assert_eq!(by_username(&all, "user0007").groups, vec!["all", "engineering", "sales"]);
        assert_eq!(by_username(&all, "user0300").groups, vec!["all"]);
        assert!(!by_username(&all, "user0300").attributes.contains_key("telephoneNumber"));
    }
}

#[tokio::test]
async fn paging_reads_every_user_once() {
    let slapd = Slapd::seeded(500);
    let mut c = connector(directory(&slapd), 7, PASSWORD);
    let (_, pages, _) = read(&mut c, SyncMode::Full, None).await;
    assert!(pages.iter().all(|p| p.accounts.len() <= 7));
    assert_eq!(pages.len(), 500usize.div_ceil(7));
    let ids: HashSet<String> = accounts(&pages).into_iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), 500);
    assert_eq!(accounts(&pages).len(), 500);
}

/// A Full read fetches the next page while the caller handles this one: a
/// read abandoned with a page in flight leaves nothing behind for the next
/// read, and a deletion made between two full reads is seen by the second.
#[tokio::test]
async fn a_read_abandoned_mid_way_leaves_the_next_one_whole() {
    let slapd = Slapd::seeded(50);
    let mut c = connector(directory(&slapd), 10, PASSWORD);
    c.begin(SyncMode::Full, None).await.unwrap();
    let first = c.next_page().await.unwrap().unwrap();
    assert_eq!((first.number, first.accounts.len()), (1, 10));
    // Page 2 is in flight now; a new read starts over.
    let (_, pages, _) = read(&mut c, SyncMode::Full, None).await;
    assert_eq!(pages.len(), 5);
    let ids: HashSet<String> = accounts(&pages).into_iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), 50);

    slapd.tool("ldapdelete", &[&format!("uid=user0031,{PEOPLE}")], "");
    let (_, pages, _) = read(&mut c, SyncMode::Full, None).await;
    let after = accounts(&pages);
    assert_eq!(after.len(), 49);
    assert!(after.iter().all(|a| a.username.as_deref() != Some("user0031")));
}

#[tokio::test]
async fn delta_reads_changes_and_deletions_with_the_cookie() {
    let slapd = Slapd::seeded(40);
    let mut c = connector(directory(&slapd), 5, PASSWORD);

    let (plan, pages, _) = read(&mut c, SyncMode::Delta, None).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.unwrap().contains("no cursor"));
    let before = accounts(&pages);
    assert_eq!(before.len(), 40);
    let cursor = c.cursor().unwrap();
    let deleted_id = by_username(&before, "user0003").id;

    slapd.modify(&format!("dn: uid=user0002,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: new2@example.com\n"));
    slapd.add(&user_ldif("user9999", 9999));
    slapd.tool("ldapdelete", &[&format!("uid=user0003,{PEOPLE}")], "");

    let (plan, pages, next) = read(&mut c, SyncMode::Delta, Some(&cursor)).await;
    assert_eq!(plan, ReadPlan { kind: ReadKind::Delta, reason: None });
    let changed = accounts(&pages);
    let mut names: Vec<_> = changed.iter().map(|a| a.username.clone().unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["user0002", "user9999"]);
    assert_eq!(by_username(&changed, "user0002").email.as_deref(), Some("new2@example.com"));
    assert_eq!(by_username(&changed, "user0002").id, by_username(&before, "user0002").id);
    let deleted: Vec<String> = pages.iter().flat_map(|p| p.deleted.clone()).collect();
    assert_eq!(deleted, vec![deleted_id]);
    let next = next.unwrap();
    assert_ne!(next, cursor);
    assert!(c.capabilities().delta_deletions, "syncprov deltas carry deletions");

    // Nothing changed since: an empty delta.
    let (plan, pages, _) = read(&mut c, SyncMode::Delta, Some(&next)).await;
    assert_eq!(plan.kind, ReadKind::Delta, "{plan:?}");
    assert!(accounts(&pages).is_empty() && pages.iter().all(|p| p.deleted.is_empty()));

    // A cursor that is not ours: a Full read saying why.
    let (plan, pages, cursor) = read(&mut c, SyncMode::Delta, Some("garbage")).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.as_deref().unwrap().contains("cursor"), "{plan:?}");
    assert_eq!(accounts(&pages).len(), 40);
    assert!(cursor.is_some());
    // A modifyTimestamp cursor on a server with syncprov: the same.
    let (plan, _, cursor) = read(&mut c, SyncMode::Delta, Some("ts:20261122041900Z")).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.as_deref().unwrap().contains("not an LDAP sync cookie"), "{plan:?}");
    assert!(cursor.unwrap().starts_with("ldapsync1:"));

    // A well-formed cookie from before the server's session log: the server
    // answers with a present phase, which cannot name deletions.
    use base64::Engine as _;
    let old = base64::engine::general_purpose::STANDARD.encode("rid=000,csn=20000101000000.000000Z#000000#000#000000");
    let (plan, pages, _) = read(&mut c, SyncMode::Delta, Some(&format!("ldapsync1:{old}"))).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.as_deref().unwrap().contains("present phase"), "{plan:?}");
    assert_eq!(accounts(&pages).len(), 40);
}

#[tokio::test]
async fn rename_keeps_the_id() {
    let slapd = Slapd::seeded(10);
    let mut c = connector(directory(&slapd), 50, PASSWORD);
    let (_, pages, cursor) = read(&mut c, SyncMode::Full, None).await;
    let before = by_username(&accounts(&pages), "user0004");

    slapd.tool("ldapmodrdn", &["-r", &format!("uid=user0004,{PEOPLE}"), "uid=renamed4"], "");

    let (plan, pages, _) = read(&mut c, SyncMode::Delta, cursor.as_deref()).await;
    assert_eq!(plan.kind, ReadKind::Delta);
    let changed = accounts(&pages);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].id, before.id);
    assert_eq!(changed[0].username.as_deref(), Some("renamed4"));
    assert!(pages.iter().all(|p| p.deleted.is_empty()));

    let (_, pages, _) = read(&mut c, SyncMode::Full, None).await;
    let after = by_username(&accounts(&pages), "renamed4");
    assert_eq!(after.id, before.id);
    assert_eq!(after.attributes["dn"], format!("uid=renamed4,{PEOPLE}"));
    // The group's member DN follows the rename (memberof refint).
    assert_eq!(after.groups, vec!["all", "engineering"]);
}

#[tokio::test]
async fn wrong_password_is_unauthorized_and_never_shown() {
    let slapd = Slapd::seeded(1);
    let wrong = "wrong-Pa55word-xyz";
    let mut c = connector(directory(&slapd), 50, wrong);
    let e = c.begin(SyncMode::Full, None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
    assert!(e.is_stalled());
    let shown = format!("{e} {e:?} {c:?}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(shown.contains("49"), "{shown}");
}

#[tokio::test]
async fn ldaps_and_start_tls_verify_the_certificate() {
    let slapd = Slapd::seeded_with(12, true, true);
    let ca = std::fs::read(slapd.dir.path().join("tls/ca.crt")).unwrap();
    let ldaps = format!("ldaps://127.0.0.1:{}", slapd.tls_port.unwrap());
    let cases = [
        (directory(&slapd).ldap_url(&ldaps), Some(ca.clone())),
        (directory(&slapd).start_tls(), Some(ca.clone())),
        (directory(&slapd).ldap_url(&ldaps).insecure_skip_tls_verify(), None),
    ];
    for (extra, ca) in cases {
        let mut c = try_connector(extra.clone(), 5, PASSWORD, ca).unwrap();
        let (plan, pages, _) = read(&mut c, SyncMode::Full, None).await;
        assert_eq!(plan.kind, ReadKind::Full);
        assert_eq!(accounts(&pages).len(), 12, "{extra:?}");
    }
    // Without the CA the certificate is not trusted.
    for extra in [directory(&slapd).ldap_url(&ldaps), directory(&slapd).start_tls()] {
        let mut c = try_connector(extra.clone(), 5, PASSWORD, None).unwrap();
        let e = c.begin(SyncMode::Full, None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Transport { .. }), "{extra:?}: {e:?}");
        assert!(!e.to_string().contains(PASSWORD));
    }
}

#[tokio::test]
async fn delta_by_modify_timestamp_without_syncprov() {
    let slapd = Slapd::seeded_with(30, false, false);
    let mut c = connector(directory(&slapd).extra_attribute("modifyTimestamp"), 7, PASSWORD);

    let (plan, pages, _) = read(&mut c, SyncMode::Delta, None).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.unwrap().contains("no cursor"));
    let (plan, pages2, cursor) = read(&mut c, SyncMode::Full, None).await;
    assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: None });
    assert_eq!(accounts(&pages), accounts(&pages2));
    let before = accounts(&pages);
    assert_eq!(before.len(), 30);
    let cursor = cursor.unwrap();
    let second = cursor.strip_prefix("ts:").unwrap_or_else(|| panic!("a modifyTimestamp cursor: {cursor}"));
    let highest = before.iter().map(|a| a.attributes["modifyTimestamp"].as_str().unwrap()).max().unwrap();
    assert_eq!(second, highest);
    assert_eq!(
        c.capabilities(),
        idsync::connectors::Capabilities { delta: true, delta_deletions: false, groups: true },
        "no syncprov: deltas without deletions"
    );

    // Changes land in a later second than the cursor's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    slapd.modify(&format!("dn: uid=user0002,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: new2@example.com\n"));
    slapd.add(&user_ldif("user9999", 9999));
    slapd.tool("ldapdelete", &[&format!("uid=user0003,{PEOPLE}")], "");

    let (plan, pages, next) = read(&mut c, SyncMode::Delta, Some(&cursor)).await;
    assert_eq!(plan, ReadPlan { kind: ReadKind::Delta, reason: None });
    assert!(pages.iter().all(|p| p.deleted.is_empty()), "no deletions in these deltas");
    let changed = accounts(&pages);
    let stamp = |a: &Account| a.attributes["modifyTimestamp"].as_str().unwrap().to_string();
    let newer: BTreeSet<String> =
        changed.iter().filter(|a| stamp(a).as_str() > second).map(|a| a.username.clone().unwrap()).collect();
    assert_eq!(newer, BTreeSet::from(["user0002".to_string(), "user9999".to_string()]));
    // Anything else came again only because it shares the cursor's second,
    // or because deleting user0003 changed its groups, whose members a
    // Delta reads again whole.
    let left_groups = &by_username(&before, "user0003").groups;
    for a in changed.iter().filter(|a| stamp(a).as_str() <= second) {
        assert!(stamp(a) == second || a.groups.iter().any(|g| left_groups.contains(g)), "{a:?}");
    }
    assert!(!changed.iter().any(|a| a.username.as_deref() == Some("user0003")));
    assert_eq!(by_username(&changed, "user0002").email.as_deref(), Some("new2@example.com"));
    assert_eq!(by_username(&changed, "user0002").id, by_username(&before, "user0002").id);
    let next = next.unwrap();
    assert!(next.as_str() > cursor.as_str(), "{next} after {cursor}");

    // Nothing changed since: only what shares the cursor's second, the cursor stays.
    let (plan, pages, again) = read(&mut c, SyncMode::Delta, Some(&next)).await;
    assert_eq!(plan.kind, ReadKind::Delta);
    assert!(accounts(&pages).iter().all(|a| format!("ts:{}", stamp(a)) == next));
    assert_eq!(again.as_deref(), Some(next.as_str()));

    // A sync cookie on a server without syncprov: a Full read saying why.
    let (plan, pages, cursor) = read(&mut c, SyncMode::Delta, Some("ldapsync1:cmlkPTAwMA==")).await;
    assert_eq!(plan.kind, ReadKind::Full);
    assert!(plan.reason.as_deref().unwrap().contains("not a modifyTimestamp cursor"), "{plan:?}");
    assert_eq!(accounts(&pages).len(), 30);
    assert_eq!(cursor, Some(next));
}

/// One sync of `connection` through the sync engine into `store`.
async fn sync(
    connection: ConnectionBuilder,
    store: &std::sync::Arc<dyn idsync::store::Store>,
    conn: &str,
    mode: SyncMode,
) -> idsync::sync::job::SyncReport {
    let job = idsync::sync::job::SyncJob {
        connection: idsync::model::ConnectionRef::new("default", conn),
        mode,
        trigger: idsync::model::Trigger::Requested,
        request: None,
        holder: "test".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: Default::default(),
        settings_hash: "ldap".into(),
        full_sync_interval: std::time::Duration::from_secs(24 * 3600),
        max_duration: std::time::Duration::from_secs(600),
    };
    let connector = Box::new(connector(connection, 4, PASSWORD));
    let report = idsync::sync::job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    assert_eq!(report.outcome, idsync::model::RunOutcome::Succeeded, "{report:?}");
    report
}

/// Username → groups of every stored account of `conn`.
fn stored_groups(store: &std::sync::Arc<dyn idsync::store::Store>, conn: &str) -> BTreeMap<String, Vec<String>> {
    let conn = idsync::model::ConnectionRef::new("default", conn);
    store
        .list_accounts(&conn, None, 10_000)
        .unwrap()
        .into_iter()
        .map(|a| (a.username.clone().unwrap_or_default(), a.groups))
        .collect()
}

/// The changes a run recorded, one line each, sorted.
fn recorded(store: &std::sync::Arc<dyn idsync::store::Store>, report: &idsync::sync::job::SyncReport) -> Vec<String> {
    let mut lines: Vec<String> = store
        .run_changes(report.run.unwrap(), 0, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, change)| change.summary())
        .collect();
    lines.sort();
    lines
}

fn groups_of(names: &[&str]) -> Vec<String> {
    names.iter().map(|g| g.to_string()).collect()
}

/// slapd's memberof overlay changes a member's `memberOf` without moving
/// its `modifyTimestamp` or `entryCSN`, so a delta that only asked for
/// changed users missed who joined or left a group until the next Full.
/// Both group modes (memberOf, groupBaseDn) and both delta mechanisms
/// (content synchronisation, modifyTimestamp) now read the changed groups'
/// members and take the group off whoever left.
async fn group_changes_reach_deltas(syncprov: bool) {
    use idsync::store::{SqliteStore, Store};

    let slapd = Slapd::seeded_with(20, false, syncprov);
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let modes = [
        ("member-of", directory(&slapd)),
        ("group-base", directory(&slapd).group_base_dn("ou=groups,dc=example,dc=com")),
    ];
    for (conn, connection) in &modes {
        let first = sync(connection.clone(), &store, conn, SyncMode::Full).await;
        assert_eq!(first.counts.created, 20, "{conn}: {first:?}");
        assert_eq!(stored_groups(&store, conn)["user0003"], groups_of(&["all", "engineering"]), "{conn}");
    }
    let before: BTreeMap<&str, _> = modes.iter().map(|(conn, _)| (*conn, stored_groups(&store, conn))).collect();

    // In a later second than the cursor (modifyTimestamp has seconds).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // user0015 joins engineering, user0003 leaves it, and user0002 (who
    // stays in it) also gets a new e-mail address.
    slapd.modify(&format!(
        "dn: cn=engineering,ou=groups,dc=example,dc=com\nchangetype: modify\nadd: member\nmember: uid=user0015,{PEOPLE}\n-\n\
         delete: member\nmember: uid=user0003,{PEOPLE}\n"
    ));
    slapd.modify(&format!("dn: uid=user0002,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: new2@example.com\n"));

    for (conn, connection) in &modes {
        let delta = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
        assert_eq!(delta.mode, SyncMode::Delta, "{conn}: {delta:?}");
        assert_eq!((delta.counts.created, delta.counts.updated, delta.counts.deleted), (0, 3, 0), "{conn}: {delta:?}");
        let after = stored_groups(&store, conn);
        assert_eq!(after["user0015"], groups_of(&["all", "engineering", "sales"]), "{conn}");
        assert_eq!(after["user0003"], groups_of(&["all"]), "{conn}");
        let touched: Vec<&String> = after.keys().filter(|name| after[*name] != before[conn][*name]).collect();
        assert_eq!(touched, ["user0003", "user0015"], "{conn}: no one else's groups changed");
        let changes = recorded(&store, &delta);
        assert_eq!(changes.len(), 3, "{conn}: user0002 changed once: {changes:?}");
        assert!(changes[0].contains("email user0002@example.com → new2@example.com"), "{conn}: {changes:?}");
        assert!(changes[1].ends_with(r#"groups ["all","engineering"] → ["all"]"#), "{conn}: {changes:?}");
        assert!(
            changes[2].ends_with(r#"groups ["all","sales"] → ["all","engineering","sales"]"#),
            "{conn}: {changes:?}"
        );

        // Nothing changed since: the next delta changes nothing.
        let quiet = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
        assert_eq!(quiet.mode, SyncMode::Delta, "{conn}: {quiet:?}");
        assert_eq!((quiet.counts.created, quiet.counts.updated, quiet.counts.deleted), (0, 0, 0), "{conn}: {quiet:?}");
    }

    // A renamed group: its members carry the new name, no one the old.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    slapd.tool("ldapmodrdn", &["-r", "cn=sales,ou=groups,dc=example,dc=com", "cn=revenue"], "");
    for (conn, connection) in &modes {
        let delta = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
        assert_eq!((delta.mode, delta.counts.updated), (SyncMode::Delta, 16), "{conn}: {delta:?}");
        let after = stored_groups(&store, conn);
        assert_eq!(after["user0005"], groups_of(&["all", "engineering", "revenue"]), "{conn}");
        assert_eq!(after["user0020"], groups_of(&["all", "revenue"]), "{conn}");
        assert!(after.values().all(|groups| !groups.contains(&"sales".to_string())), "{conn}: {after:?}");
        let quiet = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
        assert_eq!(quiet.counts.updated, 0, "{conn}: {quiet:?}");
    }

    if syncprov {
        // A deleted group took its membership with it: content
        // synchronisation names the deleted entry, which is no account, and
        // the engine takes the groups that are gone off their members.
        slapd.tool("ldapdelete", &["cn=revenue,ou=groups,dc=example,dc=com"], "");
        for (conn, connection) in &modes {
            let delta = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
            assert_eq!(
                (delta.mode, delta.counts.updated, delta.counts.deleted),
                (SyncMode::Delta, 16, 0),
                "{conn}: {delta:?}"
            );
            assert!(delta.message.contains("taken off their members: revenue"), "{conn}: {}", delta.message);
            let after = stored_groups(&store, conn);
            assert_eq!(after["user0005"], groups_of(&["all", "engineering"]), "{conn}");
            assert!(after.values().all(|groups| !groups.contains(&"revenue".to_string())), "{conn}: {after:?}");
            let quiet = sync(connection.clone(), &store, conn, SyncMode::Delta).await;
            assert_eq!(quiet.counts.updated, 0, "{conn}: {quiet:?}");
        }
    }
}

#[tokio::test]
async fn group_changes_reach_content_sync_deltas() {
    group_changes_reach_deltas(true).await;
}

#[tokio::test]
async fn group_changes_reach_modify_timestamp_deltas() {
    group_changes_reach_deltas(false).await;
}

/// The ldap provider through the operator: a wrong password stalls the
/// Connection, the right one syncs, and a server killed mid-sync changes
/// nothing in the store.
#[tokio::test(flavor = "multi_thread")]
async fn an_ldap_connection_through_the_operator() {
    use std::time::Duration;

    use idsync::store::{AccountStore, SqliteStore};

    use idsync::model::ConnectionRef;
    use idsync_api::ResyncRequest;
    use idsync_api::resync_request::{Phase, TargetPhase};
    use kube::api::Api;
    use serde_json::{Value, json};

    let slapd = Slapd::seeded(300);
    let common::operator::Started { h, operator, data, .. } = common::operator::start_operator().await;
    let apply = |value: Value| h.apply_json(value);
    let create = |name: &'static str| h.create_request(ResyncRequest::test(name).connections(["idp"]).full());
    let finished = |name: &'static str| h.finished_request(name, Duration::from_secs(60));
    let wrong = "not-the-Password-0815";
    let secret = |password: &str| json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials", "metadata": {"name": "ldap-creds"}, "stringData": {"password": password}});
    apply(secret(wrong)).await;
    let idp = Connection::test("idp").ldap(&slapd.url(), PEOPLE).bind_dn(ADMIN).credentials("ldap-creds").page_size(1);
    apply(serde_json::to_value(idp.build()).expect("json")).await;

    create("bad-password").await;
    let refused = finished("bad-password").await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let connection = Api::<Connection>::namespaced(h.client.clone(), "default").get("idp").await.unwrap();
    let conditions = connection.status.unwrap().conditions;
    let stalled = idsync_api::conditions::find(&conditions, "Stalled").cloned().unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "Unauthorized"), "{stalled:?}");
    assert!(!stalled.message.contains(wrong), "{stalled:?}");

    apply(secret(PASSWORD)).await;
    let started = std::time::Instant::now();
    create("good-password").await;
    let good = finished("good-password").await;
    eprintln!("a full sync of 300 users, one a page: {:?}", started.elapsed());
    assert_eq!(good.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", good.status);
    let store = SqliteStore::open(&data.path().join("idsync.db")).unwrap();
    let conn = ConnectionRef { namespace: "default".into(), name: "idp".into() };
    let before = store.list_accounts(&conn, None, 10_000).unwrap();
    assert_eq!(before.len(), 300);
    assert!(before.iter().all(|a| a.id.len() == 36));

    // A change and more users, so that one a page takes long enough for
    // the kill to land mid-read.
    slapd.modify(&format!("dn: uid=user0002,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: new2@example.com\n"));
    let more: String = (1000..3000).map(|i| user_ldif(&format!("user{i:04}"), i)).collect();
    slapd.add(&more);
    create("dies").await;
    let requests: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    common::eventually(Duration::from_secs(20), || async {
        let r = requests.get("dies").await.ok()?;
        (r.status?.targets.first()?.phase == TargetPhase::Running).then_some(())
    })
    .await
    .expect("the sync started");
    // At once: an LDAP read of a few thousand entries takes only seconds.
    slapd.kill();
    let died = finished("dies").await;
    assert_eq!(died.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed), "{:?}", died.status);
    eprintln!("killed mid-sync: {:?}", died.status);
    assert_eq!(store.list_accounts(&conn, None, 10_000).unwrap(), before, "a sync whose server died changed the store");
    operator.stop().await;
}
