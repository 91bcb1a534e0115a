//! The `ldap` provider: users of an LDAP directory (OpenLDAP or Active
//! Directory), read with `ldap3`.
//!
//! - **Connection**: `ldap://` (plain only on loopback, unless `startTls`),
//!   `ldaps://`, or `ldap://` upgraded with StartTLS. Certificates are
//!   verified against the system roots, or against the Secret's `ca.crt`
//!   when present, unless `insecureSkipTlsVerify`. A simple bind as `bindDn`
//!   with the Secret's `password` (no `bindDn`: anonymous). A rejected bind
//!   (resultCode 49) is [`ConnectorError::Unauthorized`]. Every operation is
//!   bounded by `requestTimeoutSeconds`. A read opens its own connection.
//! - **Full read**: a subtree search of `baseDn` with the user filter and the
//!   Simple Paged Results control (RFC 2696) of `pageSize`; each page the
//!   server answers is one [`Page`].
//! - **Mapping** (flavour defaults, `attributes` override the names):
//!   OpenLDAP: id `entryUUID`, username `uid`, email `mail`, display name
//!   `cn`, filter `(objectClass=inetOrgPerson)`. Active Directory: id
//!   `objectGUID` as the standard GUID string (see [`guid_string`]), username
//!   `sAMAccountName`, email `mail`, display name `displayName`, filter
//!   `(&(objectCategory=person)(objectClass=user))`, disabled when
//!   `userAccountControl` has ACCOUNTDISABLE (0x2). The entry's DN is kept as
//!   the `dn` attribute and every `extra` attribute under its name (one value:
//!   a string; several: an array of strings; binary values base64).
//! - **Groups**: from `memberOf` (each group DN's first RDN value, e.g.
//!   `cn=engineering,ou=groups,…` → `engineering`) or, when `groupBaseDn` is
//!   set, by searching the groups (`groupFilter`, default groupOfNames and
//!   groupOfUniqueNames) at the start of each read and mapping their
//!   `member`/`uniqueMember` DNs to users (Active Directory's default
//!   `groupFilter` is `(objectClass=group)`).
//! - **Group changes in Deltas**: slapd's memberof overlay (and Active
//!   Directory's memberOf back-link) changes a member's `memberOf` without
//!   moving its `modifyTimestamp`/`entryCSN`/`uSNChanged`, so a Delta also
//!   asks for the *group entries* changed since the cursor (by the same
//!   mechanism as the users, under `groupBaseDn` or else the naming context
//!   that holds `baseDn`), then, after the changed users, reads every
//!   current member of every group of those names (memberOf mode: users
//!   whose `memberOf` names one of them, `pageSize` at a time; groupBaseDn
//!   mode: the member DNs under `baseDn`, one by one), each once, and
//!   reports the names as complete ([`Connector::complete_groups`]): the
//!   engine takes them off whoever is no longer a member. A renamed group
//!   is a changed group under its new name. A deleted group's entry is
//!   gone, and with it who was in it: content synchronisation names it
//!   among the deleted entries, which are no stored account, and the
//!   engine then asks [`Connector::groups_present`] (one search of the
//!   group entries under the same base) and takes the groups that no
//!   longer exist off their members. `groupFilter` should therefore select
//!   every group `memberOf` names. Deltas by change stamp see no deletion:
//!   their periodic Full pass takes a deleted group off its members.
//! - **Deltas** (OpenLDAP flavour, when the root DSE lists the content
//!   synchronisation control `1.3.6.1.4.1.4203.1.9.1.1`, i.e. syncprov):
//!   RFC 4533 refreshOnly with the stored cookie. The read first asks for the
//!   changes without attributes (entryUUIDs and states only), then fetches
//!   the changed users by entryUUID, `pageSize` at a time; deleted entryUUIDs
//!   go to [`Page::deleted`]. When the server cannot answer from the cookie
//!   (e-syncRefreshRequired, or a present phase, which cannot name the
//!   deletions) or the cursor is not one idsync wrote, the read becomes a
//!   Full read and [`ReadPlan::reason`] says why. A Full read on such a server
//!   takes the current cookie *before* reading, so changes made during the
//!   read come again in the next delta.
//! - **Deltas by change stamp** (OpenLDAP without content synchronisation:
//!   `modifyTimestamp`; Active Directory: `uSNChanged`): every read asks for
//!   the stamp attribute and the cursor is the highest stamp it saw
//!   (`ts:20261122041900Z`, `usn:12345`, see [`Stamp`]). A Delta read
//!   searches `(&<userFilter>(<stamp>>=<cursor>))` (`>=`: a timestamp has
//!   second resolution, so users changed in the cursor's second come again;
//!   the engine counts them as unchanged; the cursor covers the changed
//!   group entries' stamps too) and yields upserts only: such
//!   deltas carry no deletions, so [`Capabilities::delta_deletions`] is false
//!   and the engine runs a Full pass every `fullSyncIntervalHours`. A change
//!   made during a read to an entry already read, with a stamp below the
//!   highest one seen, waits for that Full pass.
//! - **Capabilities** are asked before a read connects: until a read has
//!   seen the server advertise content synchronisation, `delta_deletions` is
//!   false (at worst a needless periodic Full pass, never a missed deletion).
//! - A cursor of another kind than the server's mode (a sync cookie on a
//!   server without syncprov, a `ts:` cursor on one with it) or none makes a
//!   Delta request a Full read, and [`ReadPlan::reason`] says why.
//!
//! The password is never put in an error or a log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::FutureExt;
use futures::future::BoxFuture;
use ldap3::asn1::{PL, StructureTag, TagClass, Types, parse_tag, parse_uint};
use ldap3::controls::{Control, ControlType, PagedResults, RawControl, RefreshMode, SyncRequest};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, ResultEntry, Scope};
use serde_json::Value;

mod entry;

pub use entry::{DecodeError, Entry, Values};

use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan, SECRET_FIELD};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, LdapFlavour, LdapSettings};

/// The content synchronisation request control (RFC 4533).
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";
const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
/// e-syncRefreshRequired: the server cannot resume from the cookie.
const SYNC_REFRESH_REQUIRED: u32 = 4096;
/// userAccountControl ACCOUNTDISABLE.
const UAC_ACCOUNTDISABLE: u32 = 0x2;
const CURSOR_PREFIX: &str = "ldapsync1:";
/// A filter no entry matches: reads the current cookie without entries.
/// The nil entryUUID first: with the entryUUID equality index every
/// syncprov setup has, slapd finds no candidate at once, where a filter of
/// presence tests alone makes it load and test every entry under the base
/// (100,000 entry reads before a Full read's first page).
const MATCH_NOTHING: &str = "(&(entryUUID=00000000-0000-0000-0000-000000000000)(!(objectClass=*)))";
const DEFAULT_GROUP_FILTER: &str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))";
/// Active Directory's groups are of class `group`.
const DEFAULT_AD_GROUP_FILTER: &str = "(objectClass=group)";
const FIELD: &str = "spec.provider.ldap";

/// A malformed content synchronisation control or message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncParseError {
    #[error("malformed {0}: not valid BER")]
    Ber(&'static str),
    #[error("malformed {0}: {1}")]
    Structure(&'static str, &'static str),
    #[error("unknown syncState state {0}")]
    UnknownState(u64),
}

/// A syncState entry state (RFC 4533 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Present,
    Add,
    Modify,
    Delete,
}

/// A parsed syncState control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub state: EntryState,
    pub entry_uuid: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
}

/// A parsed syncDone control.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    pub refresh_deletes: bool,
}

/// A parsed syncInfo intermediate message value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncInfo {
    NewCookie(Vec<u8>),
    RefreshDelete { cookie: Option<Vec<u8>> },
    RefreshPresent { cookie: Option<Vec<u8>> },
    SyncIdSet { cookie: Option<Vec<u8>>, refresh_deletes: bool, uuids: Vec<Vec<u8>> },
}

fn ber(bytes: &[u8], what: &'static str) -> Result<StructureTag, SyncParseError> {
    match parse_tag(bytes) {
        Ok((_, tag)) => Ok(tag),
        Err(_) => Err(SyncParseError::Ber(what)),
    }
}

fn children(tag: StructureTag, what: &'static str) -> Result<Vec<StructureTag>, SyncParseError> {
    match tag.payload {
        PL::C(children) => Ok(children),
        PL::P(_) => Err(SyncParseError::Structure(what, "expected a sequence")),
    }
}

fn primitive(tag: StructureTag, what: &'static str) -> Result<Vec<u8>, SyncParseError> {
    match tag.payload {
        PL::P(bytes) => Ok(bytes),
        PL::C(_) => Err(SyncParseError::Structure(what, "expected a primitive value")),
    }
}

fn is_universal(tag: &StructureTag, ty: Types) -> bool {
    tag.class == TagClass::Universal && tag.id == ty as u64
}

/// Parses a syncState control value.
pub fn parse_sync_state(value: &[u8]) -> Result<SyncState, SyncParseError> {
    const WHAT: &str = "syncState";
    let mut items = children(ber(value, WHAT)?, WHAT)?.into_iter();
    let state = items.next().ok_or(SyncParseError::Structure(WHAT, "no state"))?;
    if !is_universal(&state, Types::Enumerated) {
        return Err(SyncParseError::Structure(WHAT, "state is not an enumeration"));
    }
    let state = match parse_uint(primitive(state, WHAT)?.as_slice()) {
        Ok((_, n)) => n,
        Err(_) => return Err(SyncParseError::Ber(WHAT)),
    };
    let state = match state {
        0 => EntryState::Present,
        1 => EntryState::Add,
        2 => EntryState::Modify,
        3 => EntryState::Delete,
        other => return Err(SyncParseError::UnknownState(other)),
    };
    let uuid = items.next().ok_or(SyncParseError::Structure(WHAT, "no entryUUID"))?;
    let entry_uuid = primitive(uuid, WHAT)?;
    let cookie = items.next().map(|c| primitive(c, WHAT)).transpose()?;
    Ok(SyncState { state, entry_uuid, cookie })
}

/// Parses a syncDone control value.
pub fn parse_sync_done(value: &[u8]) -> Result<SyncDone, SyncParseError> {
    const WHAT: &str = "syncDone";
    let mut done = SyncDone::default();
    for item in children(ber(value, WHAT)?, WHAT)? {
        if is_universal(&item, Types::OctetString) {
            done.cookie = Some(primitive(item, WHAT)?);
        } else if is_universal(&item, Types::Boolean) {
            done.refresh_deletes = primitive(item, WHAT)?.first().is_some_and(|b| *b != 0);
        } else {
            return Err(SyncParseError::Structure(WHAT, "unexpected element"));
        }
    }
    Ok(done)
}

/// Parses the value of a syncInfo intermediate response.
pub fn parse_sync_info(value: &[u8]) -> Result<SyncInfo, SyncParseError> {
    const WHAT: &str = "syncInfo";
    let tag = ber(value, WHAT)?;
    if tag.class != TagClass::Context {
        return Err(SyncParseError::Structure(WHAT, "not a context-specific choice"));
    }
    let id = tag.id;
    if id == 0 {
        return Ok(SyncInfo::NewCookie(primitive(tag, WHAT)?));
    }
    if id > 3 {
        return Err(SyncParseError::Structure(WHAT, "unknown choice"));
    }
    let mut cookie = None;
    let mut flag = id != 3;
    let mut uuids = Vec::new();
    for item in children(tag, WHAT)? {
        if is_universal(&item, Types::OctetString) {
            cookie = Some(primitive(item, WHAT)?);
        } else if is_universal(&item, Types::Boolean) {
            flag = primitive(item, WHAT)?.first().is_some_and(|b| *b != 0);
        } else if id == 3 && is_universal(&item, Types::Set) {
            for uuid in children(item, WHAT)? {
                uuids.push(primitive(uuid, WHAT)?);
            }
        } else {
            return Err(SyncParseError::Structure(WHAT, "unexpected element"));
        }
    }
    Ok(match id {
        1 => SyncInfo::RefreshDelete { cookie },
        2 => SyncInfo::RefreshPresent { cookie },
        _ => SyncInfo::SyncIdSet { cookie, refresh_deletes: flag, uuids },
    })
}

/// The syncInfo value of an intermediate response entry, if it is one.
fn intermediate_sync_info(entry: &ResultEntry) -> Result<Option<SyncInfo>, SyncParseError> {
    let PL::C(items) = &entry.0.payload else {
        return Err(SyncParseError::Structure("intermediate response", "expected a sequence"));
    };
    let mut oid = None;
    let mut value = None;
    for item in items {
        match (item.id, &item.payload) {
            (0, PL::P(bytes)) => oid = Some(bytes.as_slice()),
            (1, PL::P(bytes)) => value = Some(bytes.as_slice()),
            _ => {}
        }
    }
    if oid != Some(SYNC_INFO_OID.as_bytes()) {
        return Ok(None);
    }
    let value = value.ok_or(SyncParseError::Structure("syncInfo", "no value"))?;
    parse_sync_info(value).map(Some)
}

/// An entryUUID (16 bytes, as in syncState) in its string form.
pub fn uuid_string(bytes: &[u8]) -> Option<String> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid::Uuid::from_bytes(bytes).hyphenated().to_string())
}

/// An Active Directory objectGUID (16 bytes) as the standard GUID string:
/// the first three fields are little-endian on the wire.
pub fn guid_string(bytes: &[u8]) -> Option<String> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(bytes).hyphenated().to_string())
}

/// Whether an Active Directory account is enabled, from its
/// userAccountControl value (a decimal number, possibly negative as AD
/// writes values with the high bit set); `None` when it is not a number.
pub fn uac_enabled(value: &str) -> Option<bool> {
    let value = value.trim();
    let flags = match value.parse::<u32>() {
        Ok(flags) => flags,
        Err(_) => value.parse::<i32>().ok()? as u32,
    };
    Some(flags & UAC_ACCOUNTDISABLE == 0)
}

/// The value of a DN's first RDN (`cn=engineering,ou=groups` →
/// `engineering`), with escapes resolved; `None` when there is none.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let mut raw = Vec::new();
    let mut in_value = false;
    let mut bytes = dn.trim().bytes().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                let Some(next) = bytes.next() else { break };
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(next), bytes.peek().copied().and_then(hex)) {
                    (Some(hi), Some(lo)) => {
                        bytes.next();
                        if in_value {
                            raw.push((hi * 16 + lo) as u8);
                        }
                    }
                    _ if in_value => raw.push(next),
                    _ => {}
                }
            }
            b'=' if !in_value => in_value = true,
            b',' | b'+' | b';' => break,
            _ if in_value => raw.push(b),
            _ => {}
        }
    }
    let value = String::from_utf8_lossy(&raw).trim().to_string();
    (in_value && !value.is_empty()).then_some(value)
}

/// A DN in a form for comparing: lower case, no spaces around separators.
fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// Which change stamp a server without content synchronisation is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampKind {
    /// OpenLDAP's operational `modifyTimestamp` (GeneralizedTime).
    ModifyTimestamp,
    /// Active Directory's `uSNChanged` (an integer).
    UsnChanged,
}

/// A change stamp: a cursor of a stamp mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stamp {
    /// A GeneralizedTime normalised to `YYYYMMDDHHMMSSZ` (UTC, seconds).
    Time(String),
    Usn(u64),
}

impl StampKind {
    pub fn attribute(self) -> &'static str {
        match self {
            StampKind::ModifyTimestamp => "modifyTimestamp",
            StampKind::UsnChanged => "uSNChanged",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            StampKind::ModifyTimestamp => "ts:",
            StampKind::UsnChanged => "usn:",
        }
    }

    /// A stamp attribute's value as the server writes it; `None` when it is
    /// not one (a GeneralizedTime must be UTC: `…Z`).
    pub fn parse_value(self, raw: &str) -> Option<Stamp> {
        let raw = raw.trim();
        match self {
            StampKind::UsnChanged => {
                if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                raw.parse().ok().map(Stamp::Usn)
            }
            StampKind::ModifyTimestamp => {
                let seconds = raw.get(..14).filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
                let rest = raw.get(14..)?;
                let rest = match rest.strip_prefix(['.', ',']) {
                    Some(fraction) => fraction.trim_start_matches(|c: char| c.is_ascii_digit()),
                    None => rest,
                };
                (rest == "Z").then(|| Stamp::Time(format!("{seconds}Z")))
            }
        }
    }

    /// A stored cursor of this kind; `None` when it is of another kind or
    /// malformed.
    pub fn parse_cursor(self, cursor: &str) -> Option<Stamp> {
        self.parse_value(cursor.strip_prefix(self.prefix())?)
    }
}

impl Stamp {
    pub fn kind(&self) -> StampKind {
        match self {
            Stamp::Time(_) => StampKind::ModifyTimestamp,
            Stamp::Usn(_) => StampKind::UsnChanged,
        }
    }

    fn value(&self) -> String {
        match self {
            Stamp::Time(t) => t.clone(),
            Stamp::Usn(n) => n.to_string(),
        }
    }

    /// The cursor as stored.
    pub fn cursor(&self) -> String {
        format!("{}{}", self.kind().prefix(), self.value())
    }

    /// The user filter restricted to entries stamped at or after this stamp.
    pub fn filter(&self, user_filter: &str) -> String {
        format!("(&{user_filter}({}>={}))", self.kind().attribute(), self.value())
    }
}

/// The highest of the stamps so far and one seen.
pub fn advance(highest: Option<Stamp>, seen: Option<Stamp>) -> Option<Stamp> {
    match (highest, seen) {
        (Some(h), Some(s)) => Some(h.max(s)),
        (h, s) => h.or(s),
    }
}

/// A cursor as stored: the server's cookie, base64.
fn encode_cursor(cookie: &[u8]) -> String {
    format!("{CURSOR_PREFIX}{}", BASE64.encode(cookie))
}

fn decode_cursor(cursor: &str) -> Option<Vec<u8>> {
    let cookie = BASE64.decode(cursor.strip_prefix(CURSOR_PREFIX)?).ok()?;
    (!cookie.is_empty()).then_some(cookie)
}

/// The password, never shown.
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The checked settings of one ldap Connection.
#[derive(Debug)]
struct Settings {
    url: String,
    address_policy: super::address::AddressPolicy,
    start_tls: bool,
    insecure: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    bind_dn: Option<String>,
    password: Password,
    base_dn: String,
    user_filter: String,
    group_base_dn: Option<String>,
    group_filter: String,
    flavour: LdapFlavour,
    id_attr: String,
    username_attr: String,
    email_attr: String,
    display_attr: String,
    extra: Vec<String>,
    page_size: u32,
    timeout: Duration,
}

impl Settings {
    /// The attributes every user search asks for (and the stamp attribute
    /// when reading in a stamp mode).
    fn user_attributes_with(&self, stamp: Option<StampKind>) -> Vec<String> {
        let mut attrs = self.user_attributes();
        if let Some(kind) = stamp
            && !attrs.iter().any(|a| a.eq_ignore_ascii_case(kind.attribute()))
        {
            attrs.push(kind.attribute().to_string());
        }
        attrs
    }

    /// The attributes every user search asks for.
    fn user_attributes(&self) -> Vec<String> {
        let mut attrs =
            vec![self.id_attr.clone(), self.username_attr.clone(), self.email_attr.clone(), self.display_attr.clone()];
        if self.group_base_dn.is_none() {
            attrs.push("memberOf".to_string());
        }
        if self.flavour == LdapFlavour::ActiveDirectory {
            attrs.push("userAccountControl".to_string());
        }
        attrs.extend(self.extra.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        attrs.retain(|a| seen.insert(a.to_lowercase()));
        attrs
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.password.0.clone()]
    }
}

/// Group memberships by normalized member DN (group mode only).
type GroupMap = HashMap<String, Vec<String>>;

enum Read {
    /// A paged search: a Full read, or a stamp mode's Delta read.
    Full {
        ldap: Ldap,
        /// The next page, being fetched and mapped in the background; None
        /// once the last page was served.
        pending: Option<Prefetch>,
        page: u64,
        groups: Option<Arc<GroupMap>>,
        /// The sync cookie cursor (content synchronisation mode).
        cursor: Option<String>,
        filter: Arc<str>,
        /// Stamp mode: which stamp, and the highest one so far.
        stamp: Option<(StampKind, Option<Stamp>)>,
    },
    Delta {
        ldap: Ldap,
        deleted: VecDeque<String>,
        changed: VecDeque<String>,
        page: u64,
        groups: Option<Arc<GroupMap>>,
        cursor: String,
        done: bool,
    },
    /// After the changed users of a Delta: the changed groups' members.
    Members {
        ldap: Ldap,
        members: Members,
        /// The paged results cookie of the filter in hand (empty: start it).
        cookie: Vec<u8>,
        page: u64,
        groups: Option<Arc<GroupMap>>,
    },
}

/// One page of a paged user search, fetched and mapped to accounts.
struct Fetched {
    accounts: Vec<Account>,
    /// Stamp mode: the highest stamp among the page's entries.
    highest: Option<Stamp>,
    /// The paged results cookie of the page after it (None: the last).
    next: Option<Vec<u8>>,
}

/// A page of a Full read being fetched and mapped on its own task, so that
/// the server's sending, ldap3's decoding and the mapping of page N+1 run
/// while the engine stores page N. One page ahead at most: memory stays
/// bounded by two pages whatever the directory's size. Dropping it (the
/// read ends or fails) stops the task.
struct Prefetch(tokio::task::JoinHandle<Result<Fetched, ConnectorError>>);

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Prefetch {
    fn spawn(
        settings: &Arc<Settings>,
        ldap: &Ldap,
        filter: &Arc<str>,
        stamp: Option<StampKind>,
        groups: &Option<Arc<GroupMap>>,
        cookie: Vec<u8>,
        number: u64,
    ) -> Prefetch {
        let (settings, mut ldap, filter, groups) = (settings.clone(), ldap.clone(), filter.clone(), groups.clone());
        Prefetch(tokio::spawn(async move {
            let attrs = settings.user_attributes_with(stamp);
            let (entries, next) = paged_search(&settings, &mut ldap, &settings.base_dn, &filter, attrs, cookie)
                .await
                .map_err(|e| e.with_page(Some(number)))?;
            let mut highest = None;
            if let Some(kind) = stamp {
                for entry in &entries {
                    let seen = entry.first_value(kind.attribute()).and_then(|v| kind.parse_value(&v));
                    highest = advance(highest, seen);
                }
            }
            let accounts = entries
                .iter()
                .map(|e| to_account(&settings, e, groups.as_deref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| source(number, e.to_string()))?;
            Ok(Fetched { accounts, highest, next })
        }))
    }

    /// The page, once fetched and mapped.
    async fn finish(mut self, number: u64) -> Result<Fetched, ConnectorError> {
        match (&mut self.0).await {
            Ok(result) => result,
            // Cancelled only by dropping it, so a panic: reported, not
            // passed on.
            Err(e) => Err(source(number, format!("reading the page failed: {e}"))),
        }
    }
}

/// The ldap connector.
pub struct LdapConnector {
    settings: Arc<Settings>,
    read: Option<Read>,
    cursor: Option<String>,
    /// Whether the server offered content synchronisation, once a read saw.
    sync: Option<bool>,
    /// A Delta read's members of changed groups, read after the users.
    members: Option<Members>,
    /// The changed groups whose members this Delta read returns.
    complete: Vec<String>,
    /// The accounts a Delta read with members to read has returned.
    emitted: HashSet<String>,
    /// Where the last read looked for groups.
    group_base: Option<String>,
}

impl fmt::Debug for LdapConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConnector")
            .field("settings", &self.settings)
            .field("reading", &self.read.is_some())
            .field("cursor", &self.cursor)
            .finish()
    }
}

fn config(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { field: format!("{FIELD}.{field}"), message: message.into() }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn tls_config(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, ConnectorError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |message: String| ConnectorError::Config { field: SECRET_FIELD.to_string(), message };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("key \"ca.crt\" is not a PEM certificate: {e}")))?;
        roots.add(cert).map_err(|e| bad(format!("key \"ca.crt\": unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("key \"ca.crt\" holds no PEM certificate".to_string()));
    }
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

impl LdapConnector {
    /// Checks the settings and reads the credentials; connects only when a
    /// read begins.
    pub fn new(spec: &ConnectionSpec, ldap: &LdapSettings, inputs: &ProviderInputs) -> Result<Self, ConnectorError> {
        let url = reqwest::Url::parse(ldap.url.trim())
            .map_err(|e| config("url", format!("{:?} is not a URL: {e}", ldap.url)))?;
        let host = url.host_str().unwrap_or_default().to_string();
        if host.is_empty() {
            return Err(config("url", "names no host"));
        }
        match url.scheme() {
            "ldaps" if ldap.start_tls => {
                return Err(config("startTls", "applies to ldap:// URLs only; ldaps:// is already encrypted"));
            }
            "ldaps" => {}
            "ldap" if ldap.start_tls || is_loopback(&host) => {}
            "ldap" => return Err(config("url", "a plain ldap:// URL needs startTls: true unless it is on loopback")),
            other => return Err(config("url", format!("scheme {other:?}: use ldap:// or ldaps://"))),
        }
        let bind_dn = ldap.bind_dn.as_deref().map(str::trim).filter(|d| !d.is_empty()).map(str::to_string);
        let password = match &bind_dn {
            Some(_) => inputs.required_secret_text("password")?,
            None => String::new(),
        };
        let tls = match inputs.secret.get("ca.crt") {
            Some(pem) if !ldap.insecure_skip_tls_verify => Some(tls_config(pem)?),
            _ => None,
        };
        let base_dn = ldap.base_dn.trim().to_string();
        if base_dn.is_empty() {
            return Err(config("baseDn", "must not be empty"));
        }
        let name = |field: &str, value: &Option<String>, default: &str| -> Result<String, ConnectorError> {
            match value.as_deref().map(str::trim) {
                None => Ok(default.to_string()),
                Some("") => Err(config(&format!("attributes.{field}"), "must name an attribute")),
                Some(v) => Ok(v.to_string()),
            }
        };
        let ad = ldap.flavour == LdapFlavour::ActiveDirectory;
        let a = &ldap.attributes;
        let mut extra = Vec::new();
        for (i, attr) in a.extra.iter().enumerate() {
            let attr = attr.trim();
            if attr.is_empty() {
                return Err(config(&format!("attributes.extra[{i}]"), "must name an attribute"));
            }
            extra.push(attr.to_string());
        }
        let filter = |field: &str, value: &Option<String>, default: &str| -> Result<String, ConnectorError> {
            let filter = value.as_deref().map(str::trim).unwrap_or(default).to_string();
            ldap3::parse_filter(&filter).map_err(|_| config(field, format!("{filter:?} is not an LDAP filter")))?;
            Ok(filter)
        };
        let settings = Settings {
            url: url.to_string(),
            address_policy: super::address::AddressPolicy::from_spec(spec),
            start_tls: ldap.start_tls,
            insecure: ldap.insecure_skip_tls_verify,
            tls,
            bind_dn,
            password: Password(password),
            base_dn,
            user_filter: filter(
                "userFilter",
                &ldap.user_filter,
                if ad { "(&(objectCategory=person)(objectClass=user))" } else { "(objectClass=inetOrgPerson)" },
            )?,
            group_base_dn: ldap.group_base_dn.as_deref().map(str::trim).filter(|d| !d.is_empty()).map(str::to_string),
            group_filter: filter(
                "groupFilter",
                &ldap.group_filter,
                if ad { DEFAULT_AD_GROUP_FILTER } else { DEFAULT_GROUP_FILTER },
            )?,
            flavour: ldap.flavour,
            id_attr: if ad { "objectGUID" } else { "entryUUID" }.to_string(),
            username_attr: name("username", &a.username, if ad { "sAMAccountName" } else { "uid" })?,
            email_attr: name("email", &a.email, "mail")?,
            display_attr: name("displayName", &a.display_name, if ad { "displayName" } else { "cn" })?,
            extra,
            page_size: spec.page_size.clamp(1, i32::MAX as u32),
            timeout: Duration::from_secs(u64::from(spec.request_timeout_seconds.max(1))),
        };
        Ok(LdapConnector {
            settings: Arc::new(settings),
            read: None,
            cursor: None,
            sync: None,
            members: None,
            complete: Vec::new(),
            emitted: HashSet::new(),
            group_base: None,
        })
    }
}

/// Maps an ldap3 error; `what` names the operation.
fn ldap_error(settings: &Settings, what: &str, error: LdapError) -> ConnectorError {
    let secrets = settings.secrets();
    match error {
        LdapError::LdapResult { result } => result_error(settings, what, &result),
        LdapError::Timeout { .. } => ConnectorError::Timeout {
            page: None,
            message: format!("{what}: no answer within {}s", settings.timeout.as_secs()),
        },
        other => ConnectorError::Transport {
            page: None,
            message: super::redact(&format!("{what}: {}: {other}", settings.url), &secrets),
        },
    }
}

/// Maps an unsuccessful LDAP result.
fn result_error(settings: &Settings, what: &str, result: &LdapResult) -> ConnectorError {
    let secrets = settings.secrets();
    let text = if result.text.trim().is_empty() { String::new() } else { format!(" ({})", result.text.trim()) };
    let message = super::redact(&format!("{what}: LDAP result code {}{text}", result.rc), &secrets);
    match result.rc {
        48..=50 => ConnectorError::Unauthorized { message },
        32 => ConnectorError::Config { field: format!("{FIELD}.baseDn"), message },
        87 => ConnectorError::Config { field: format!("{FIELD}.userFilter"), message },
        _ => ConnectorError::Source { page: None, message },
    }
}

async fn connect(settings: &Settings) -> Result<Ldap, ConnectorError> {
    super::address::check_url(&settings.url, settings.address_policy, "spec.provider.ldap.url").await?;
    let mut conn = LdapConnSettings::new().set_conn_timeout(settings.timeout).set_starttls(settings.start_tls);
    if settings.insecure {
        conn = conn.set_no_tls_verify(true);
    } else if let Some(tls) = &settings.tls {
        conn = conn.set_config(tls.clone());
    }
    let (driver, mut ldap) =
        LdapConnAsync::with_settings(conn, &settings.url).await.map_err(|e| ldap_error(settings, "connect", e))?;
    tokio::spawn(async move {
        if let Err(e) = driver.drive().await {
            tracing::debug!(error = %e, "ldap connection closed");
        }
    });
    if let Some(dn) = &settings.bind_dn {
        let result = ldap
            .with_timeout(settings.timeout)
            .simple_bind(dn, &settings.password.0)
            .await
            .map_err(|e| ldap_error(settings, "bind", e))?;
        if result.rc != 0 {
            return Err(result_error(settings, &format!("bind as {dn:?}"), &result));
        }
    }
    Ok(ldap)
}

/// What a read learns from the root DSE.
#[derive(Debug, Default)]
struct RootDse {
    /// It lists the content synchronisation control.
    sync: bool,
    naming_contexts: Vec<String>,
}

async fn root_dse(settings: &Settings, ldap: &mut Ldap) -> Result<RootDse, ConnectorError> {
    let (entries, _) = ldap
        .with_timeout(settings.timeout)
        .search("", Scope::Base, "(objectClass=*)", vec!["supportedControl", "namingContexts"])
        .await
        .and_then(|r| r.success())
        .map_err(|e| ldap_error(settings, "read the root DSE", e))?;
    let mut dse = RootDse::default();
    for entry in decode_entries(entries).map_err(|e| e.with_context("read the root DSE"))? {
        dse.sync |= entry.values("supportedControl").iter().any(|c| c == SYNC_REQUEST_OID);
        dse.naming_contexts.extend(entry.values("namingContexts"));
    }
    Ok(dse)
}

/// Where a Delta read looks for changed groups: `groupBaseDn`, or else the
/// naming context that holds `baseDn` (memberOf may name groups anywhere in
/// it), or `baseDn` itself when the server lists none that does.
fn group_search_base(settings: &Settings, naming_contexts: &[String]) -> String {
    if let Some(base) = &settings.group_base_dn {
        return base.clone();
    }
    let base = normalize_dn(&settings.base_dn);
    naming_contexts
        .iter()
        .filter(|nc| {
            let nc = normalize_dn(nc);
            !nc.is_empty() && (base == nc || base.ends_with(&format!(",{nc}")))
        })
        .max_by_key(|nc| nc.len())
        .cloned()
        .unwrap_or_else(|| settings.base_dn.clone())
}

/// Whether `dn` is `base` or below it.
fn is_within(dn: &str, base: &str) -> bool {
    let (dn, base) = (normalize_dn(dn), normalize_dn(base));
    dn == base || dn.ends_with(&format!(",{base}"))
}

fn sync_control(cookie: Option<Vec<u8>>) -> RawControl {
    let mut control: RawControl = SyncRequest { mode: RefreshMode::RefreshOnly, cookie, reload_hint: false }.into();
    control.crit = true;
    control
}

/// The entries of a search's answer, referrals and intermediate messages
/// left out.
fn decode_entries(entries: Vec<ResultEntry>) -> Result<Vec<Entry>, DecodeError> {
    entries.into_iter().filter(|e| !e.is_ref() && !e.is_intermediate()).map(Entry::decode).collect()
}

impl DecodeError {
    /// As a source error of the operation `what`.
    fn with_context(self, what: &str) -> ConnectorError {
        ConnectorError::Source { page: None, message: format!("{what}: {self}") }
    }
}

/// Why a user entry cannot become an account; each names the entry's DN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The id attribute is absent or empty.
    #[error("entry {dn:?} has no usable {attribute}")]
    NoId { dn: String, attribute: String },
    /// An Active Directory id attribute that is not a 16-byte GUID; worded
    /// as a missing one, since either way the entry has no id to go by.
    #[error("entry {dn:?} has no usable {attribute}")]
    BadGuid { dn: String, attribute: String, bytes: usize },
    #[error("entry {dn:?}: userAccountControl {value:?} is not a number")]
    BadUserAccountControl { dn: String, value: String },
}

impl EntryError {
    /// The DN of the entry refused.
    pub fn dn(&self) -> &str {
        match self {
            EntryError::NoId { dn, .. }
            | EntryError::BadGuid { dn, .. }
            | EntryError::BadUserAccountControl { dn, .. } => dn,
        }
    }
}

/// One user entry as an account.
fn to_account(settings: &Settings, entry: &Entry, groups: Option<&GroupMap>) -> Result<Account, EntryError> {
    let no_id = || EntryError::NoId { dn: entry.dn.clone(), attribute: settings.id_attr.clone() };
    let id = match settings.flavour {
        LdapFlavour::OpenLdap => entry.first_value(&settings.id_attr).ok_or_else(no_id)?,
        LdapFlavour::ActiveDirectory => {
            let bytes = entry.first_bytes(&settings.id_attr).ok_or_else(no_id)?;
            guid_string(bytes).ok_or_else(|| EntryError::BadGuid {
                dn: entry.dn.clone(),
                attribute: settings.id_attr.clone(),
                bytes: bytes.len(),
            })?
        }
    };
    let mut account = Account::new(id);
    account.username = entry.first_value(&settings.username_attr);
    account.email = entry.first_value(&settings.email_attr);
    account.display_name = entry.first_value(&settings.display_attr);
    if settings.flavour == LdapFlavour::ActiveDirectory
        && let Some(uac) = entry.first_value("userAccountControl")
    {
        account.enabled = uac_enabled(&uac)
            .ok_or_else(|| EntryError::BadUserAccountControl { dn: entry.dn.clone(), value: uac.clone() })?;
    }
    account.groups = match groups {
        Some(map) => map.get(&normalize_dn(&entry.dn)).cloned().unwrap_or_default(),
        None => entry.values("memberOf").iter().filter_map(|dn| first_rdn_value(dn)).collect(),
    };
    account.attributes.insert("dn".to_string(), Value::String(entry.dn.clone()));
    for name in &settings.extra {
        let mut vals = entry.values(name);
        let value = match vals.len() {
            0 => continue,
            1 => Value::String(vals.remove(0)),
            _ => Value::Array(vals.into_iter().map(Value::String).collect()),
        };
        account.attributes.insert(name.clone(), value);
    }
    account.normalize();
    Ok(account)
}

fn source(page: u64, message: String) -> ConnectorError {
    ConnectorError::Source { page: Some(page), message }
}

/// The paged results cookie of a search result, if the server sent one.
fn paged_cookie(result: &LdapResult) -> Option<Vec<u8>> {
    result.ctrls.iter().find_map(|Control(kind, raw)| {
        let ours = matches!(kind, Some(ControlType::PagedResults)) || raw.ctype == PAGED_RESULTS_OID;
        let value = raw.val.as_deref().filter(|_| ours)?;
        let tag = ber(value, "paged results").ok()?;
        let PL::C(items) = tag.payload else { return None };
        items.into_iter().nth(1).and_then(|c| match c.payload {
            PL::P(bytes) => Some(bytes),
            PL::C(_) => None,
        })
    })
}

/// One page of a paged search: the entries and the next page's cookie
/// (None: last page).
async fn paged_search(
    settings: &Settings,
    ldap: &mut Ldap,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
    cookie: Vec<u8>,
) -> Result<(Vec<Entry>, Option<Vec<u8>>), ConnectorError> {
    let control: RawControl = PagedResults { size: settings.page_size as i32, cookie }.into();
    let result = ldap
        .with_timeout(settings.timeout)
        .with_controls(vec![control])
        .search(base, Scope::Subtree, filter, attrs)
        .await
        .map_err(|e| ldap_error(settings, &format!("search {base:?}"), e))?;
    let (entries, result) = (result.0, result.1);
    if result.rc != 0 {
        return Err(result_error(settings, &format!("search {base:?}"), &result));
    }
    let next = paged_cookie(&result).filter(|c| !c.is_empty());
    let entries = decode_entries(entries).map_err(|e| e.with_context(&format!("search {base:?}")))?;
    Ok((entries, next))
}

/// Reads every group and maps member DNs to group names.
async fn read_groups(settings: &Settings, ldap: &mut Ldap, base: &str) -> Result<GroupMap, ConnectorError> {
    let mut map = GroupMap::new();
    let mut cookie = Vec::new();
    loop {
        let attrs = vec!["member".to_string(), "uniqueMember".to_string()];
        let (entries, next) = paged_search(settings, ldap, base, &settings.group_filter, attrs, cookie).await?;
        for entry in entries {
            let Some(name) = first_rdn_value(&entry.dn) else { continue };
            for member in entry.values("member").into_iter().chain(entry.values("uniqueMember")) {
                // uniqueMember may carry an optional UID after '#'.
                let member = member.rsplit_once("#'").map_or(member.as_str(), |(dn, _)| dn);
                map.entry(normalize_dn(member)).or_default().push(name.clone());
            }
        }
        match next {
            Some(next) => cookie = next,
            None => return Ok(map),
        }
    }
}

/// What a refreshOnly search from a cookie said.
#[derive(Debug, Default)]
struct Changes {
    changed: Vec<String>,
    deleted: Vec<String>,
    cookie: Option<Vec<u8>>,
    /// Why the changes cannot be used (the read must be Full).
    unusable: Option<String>,
}

/// Runs a refreshOnly content synchronisation of `base` and `filter` from
/// `cookie` (None: the current cookie only, with a filter nothing matches)
/// without attributes.
async fn sync_changes(
    settings: &Settings,
    ldap: &mut Ldap,
    base: &str,
    filter: &str,
    cookie: Option<Vec<u8>>,
) -> Result<Changes, ConnectorError> {
    let what = "content synchronisation";
    let filter = if cookie.is_some() { filter } else { MATCH_NOTHING };
    let mut stream = ldap
        .with_timeout(settings.timeout)
        .with_controls(vec![sync_control(cookie)])
        .streaming_search(base, Scope::Subtree, filter, vec!["1.1"])
        .await
        .map_err(|e| ldap_error(settings, what, e))?;
    let mut changes = Changes::default();
    let mut changed = std::collections::HashSet::new();
    let mut deleted = std::collections::HashSet::new();
    let mut present = false;
    let bad = |e: SyncParseError| ConnectorError::Source { page: None, message: format!("{what}: {e}") };
    while let Some(entry) = stream.next().await.map_err(|e| ldap_error(settings, what, e))? {
        if entry.is_ref() {
            continue;
        }
        if entry.is_intermediate() {
            match intermediate_sync_info(&entry).map_err(bad)? {
                Some(SyncInfo::NewCookie(c)) => changes.cookie = Some(c),
                Some(SyncInfo::RefreshDelete { cookie }) => changes.cookie = cookie.or(changes.cookie.take()),
                Some(SyncInfo::RefreshPresent { cookie }) => {
                    present = true;
                    changes.cookie = cookie.or(changes.cookie.take());
                }
                Some(SyncInfo::SyncIdSet { cookie, refresh_deletes, uuids }) => {
                    changes.cookie = cookie.or(changes.cookie.take());
                    if !refresh_deletes {
                        present = true;
                    }
                    for uuid in uuids {
                        let uuid = uuid_string(&uuid)
                            .ok_or_else(|| bad(SyncParseError::Structure("syncIdSet", "bad UUID")))?;
                        if refresh_deletes {
                            changed.remove(&uuid);
                            deleted.insert(uuid);
                        }
                    }
                }
                None => {}
            }
            continue;
        }
        let state = entry
            .1
            .iter()
            .find(|Control(_, raw)| raw.ctype == SYNC_STATE_OID)
            .and_then(|Control(_, raw)| raw.val.as_deref())
            .ok_or_else(|| bad(SyncParseError::Structure("syncState", "entry without the control")))
            .and_then(|v| parse_sync_state(v).map_err(bad))?;
        let uuid =
            uuid_string(&state.entry_uuid).ok_or_else(|| bad(SyncParseError::Structure("syncState", "bad UUID")))?;
        if let Some(c) = state.cookie {
            changes.cookie = Some(c);
        }
        match state.state {
            EntryState::Add | EntryState::Modify => {
                deleted.remove(&uuid);
                changed.insert(uuid);
            }
            EntryState::Delete => {
                changed.remove(&uuid);
                deleted.insert(uuid);
            }
            EntryState::Present => present = true,
        }
    }
    let result = stream.finish().await;
    if result.rc == SYNC_REFRESH_REQUIRED {
        changes.unusable = Some("the server cannot resume from the stored cookie (e-syncRefreshRequired)".into());
        return Ok(changes);
    }
    if result.rc != 0 {
        return Err(result_error(settings, what, &result));
    }
    let done = result
        .ctrls
        .iter()
        .find(|Control(_, raw)| raw.ctype == SYNC_DONE_OID)
        .and_then(|Control(_, raw)| raw.val.as_deref())
        .map(parse_sync_done)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    if let Some(c) = done.cookie.filter(|c| !c.is_empty()) {
        changes.cookie = Some(c);
    }
    if present || !done.refresh_deletes {
        changes.unusable =
            Some("the server answered the stored cookie with a present phase, which cannot name deletions".into());
    }
    changes.changed = changed.into_iter().collect();
    changes.changed.sort();
    changes.deleted = deleted.into_iter().collect();
    changes.deleted.sort();
    Ok(changes)
}

/// Every entry of a paged search.
async fn search_all(
    settings: &Settings,
    ldap: &mut Ldap,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
) -> Result<Vec<Entry>, ConnectorError> {
    let mut all = Vec::new();
    let mut cookie = Vec::new();
    loop {
        let (entries, next) = paged_search(settings, ldap, base, filter, attrs.clone(), cookie).await?;
        all.extend(entries);
        match next {
            Some(next) => cookie = next,
            None => return Ok(all),
        }
    }
}

/// Values joined into an LDAP OR filter of `attribute=value` terms.
fn any_of<'a>(attribute: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let terms: String = values.into_iter().map(|v| format!("({attribute}={})", ldap3::ldap_escape(v))).collect();
    format!("(|{terms})")
}

/// Terms per OR filter: long enough to need few searches, short enough for
/// any server's filter limits.
const FILTER_TERMS: usize = 50;

/// The groups a Delta read found changed: their DNs (group entries by their
/// change stamp or content synchronisation).
#[derive(Debug, Default)]
struct ChangedGroups {
    dns: Vec<String>,
}

impl ChangedGroups {
    /// Their names, as accounts list them (the first RDN value).
    fn names(&self) -> std::collections::BTreeSet<String> {
        self.dns.iter().filter_map(|dn| first_rdn_value(dn)).collect()
    }
}

/// The group entries of `base` stamped at or after `from`; raises `highest`
/// to the highest stamp among them, so the cursor covers group changes too.
async fn groups_changed_since(
    settings: &Settings,
    ldap: &mut Ldap,
    base: &str,
    from: &Stamp,
    highest: &mut Option<Stamp>,
) -> Result<ChangedGroups, ConnectorError> {
    let kind = from.kind();
    let filter = from.filter(&settings.group_filter);
    let entries = search_all(settings, ldap, base, &filter, vec![kind.attribute().to_string()]).await?;
    let mut changed = ChangedGroups::default();
    for entry in entries {
        let seen = entry.first_value(kind.attribute()).and_then(|v| kind.parse_value(&v));
        *highest = advance(highest.take(), seen);
        changed.dns.push(entry.dn);
    }
    Ok(changed)
}

/// The DNs of the group entries of `base` with these entryUUIDs.
async fn groups_by_uuid(
    settings: &Settings,
    ldap: &mut Ldap,
    base: &str,
    uuids: &[String],
) -> Result<ChangedGroups, ConnectorError> {
    let mut changed = ChangedGroups::default();
    for chunk in uuids.chunks(FILTER_TERMS) {
        let filter = format!("(&{}{})", settings.group_filter, any_of("entryUUID", chunk.iter().map(String::as_str)));
        let entries = search_all(settings, ldap, base, &filter, vec!["1.1".to_string()]).await?;
        changed.dns.extend(entries.into_iter().map(|e| e.dn));
    }
    Ok(changed)
}

/// What a Delta read reads after the changed users, so that every current
/// member of each changed group comes with its current groups.
#[derive(Debug, Default)]
struct Members {
    /// memberOf mode: user filters to page through under `baseDn`, each
    /// naming a chunk of the groups by DN.
    filters: VecDeque<String>,
    /// groupBaseDn mode: the member DNs, read one by one.
    dns: VecDeque<String>,
}

impl Members {
    fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.dns.is_empty()
    }
}

/// Plans the reading of the members of every group named as one of the
/// changed groups is (names are first RDN values, so two groups of one name
/// are one group to the accounts, and both are read).
async fn plan_members(
    settings: &Settings,
    ldap: &mut Ldap,
    group_base: &str,
    changed: &ChangedGroups,
    groups: Option<&GroupMap>,
) -> Result<Members, ConnectorError> {
    let names = changed.names();
    let mut members = Members::default();
    if names.is_empty() {
        return Ok(members);
    }
    if let Some(map) = groups {
        // groupBaseDn mode: the read already holds every group's members.
        let mut dns: Vec<&String> = map
            .iter()
            .filter(|(dn, of)| of.iter().any(|g| names.contains(g)) && is_within(dn, &settings.base_dn))
            .map(|(dn, _)| dn)
            .collect();
        dns.sort();
        members.dns = dns.into_iter().cloned().collect();
        return Ok(members);
    }
    // memberOf mode: every group entry of these names, then the users whose
    // memberOf names one of them.
    let mut by_type: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for dn in &changed.dns {
        let (Some(kind), Some(name)) = (dn.split('=').next().map(str::trim), first_rdn_value(dn)) else { continue };
        by_type.entry(kind.to_lowercase()).or_default().push(name);
    }
    let mut group_dns = std::collections::BTreeSet::new();
    for (kind, mut values) in by_type {
        values.sort();
        values.dedup();
        for chunk in values.chunks(FILTER_TERMS) {
            let filter = format!("(&{}{})", settings.group_filter, any_of(&kind, chunk.iter().map(String::as_str)));
            for entry in search_all(settings, ldap, group_base, &filter, vec!["1.1".to_string()]).await? {
                if first_rdn_value(&entry.dn).is_some_and(|n| names.contains(&n)) {
                    group_dns.insert(entry.dn);
                }
            }
        }
    }
    // The changed groups themselves, whatever their RDN attribute matched.
    group_dns.extend(changed.dns.iter().cloned());
    let group_dns: Vec<&str> = group_dns.iter().map(String::as_str).collect();
    for chunk in group_dns.chunks(FILTER_TERMS) {
        members.filters.push_back(format!("(&{}{})", settings.user_filter, any_of("memberOf", chunk.iter().copied())));
    }
    Ok(members)
}

impl LdapConnector {
    async fn begin_read(&mut self, mode: SyncMode, cursor: Option<&str>) -> Result<ReadPlan, ConnectorError> {
        self.read = None;
        self.cursor = None;
        self.members = None;
        self.complete = Vec::new();
        self.emitted = HashSet::new();
        let settings = self.settings.clone();
        let mut ldap = connect(&settings).await?;
        let dse = root_dse(&settings, &mut ldap).await?;
        let sync = settings.flavour == LdapFlavour::OpenLdap && dse.sync;
        self.sync = Some(sync);
        let stamp_kind = match (settings.flavour, sync) {
            (LdapFlavour::ActiveDirectory, _) => Some(StampKind::UsnChanged),
            (LdapFlavour::OpenLdap, false) => Some(StampKind::ModifyTimestamp),
            (LdapFlavour::OpenLdap, true) => None,
        };
        let groups = match &settings.group_base_dn {
            Some(base) => Some(Arc::new(read_groups(&settings, &mut ldap, base).await?)),
            None => None,
        };
        let group_base = group_search_base(&settings, &dse.naming_contexts);
        self.group_base = Some(group_base.clone());
        let mut reason = None;
        if mode == SyncMode::Delta {
            match (stamp_kind, cursor) {
                (_, None) => reason = Some("no cursor yet".to_string()),
                (Some(kind), Some(cursor)) => match kind.parse_cursor(cursor) {
                    None => {
                        reason = Some(format!(
                            "the stored cursor is not a {} cursor ({}…), the server's delta mode",
                            kind.attribute(),
                            kind.prefix()
                        ))
                    }
                    Some(from) => {
                        // Group changes move no member's stamp: the changed
                        // groups' members are read too, and the cursor
                        // covers the groups' stamps as well as the users'.
                        let mut highest = Some(from.clone());
                        let changed =
                            groups_changed_since(&settings, &mut ldap, &group_base, &from, &mut highest).await?;
                        self.plan_members(&mut ldap, &group_base, &changed, groups.as_deref()).await?;
                        let filter: Arc<str> = from.filter(&settings.user_filter).into();
                        let pending = Prefetch::spawn(&settings, &ldap, &filter, Some(kind), &groups, Vec::new(), 1);
                        self.read = Some(Read::Full {
                            ldap,
                            pending: Some(pending),
                            page: 0,
                            groups,
                            cursor: None,
                            filter,
                            stamp: Some((kind, highest)),
                        });
                        return Ok(ReadPlan { kind: ReadKind::Delta, reason: None });
                    }
                },
                (None, Some(cursor)) => match decode_cursor(cursor) {
                    None => reason = Some("the stored cursor is not an LDAP sync cookie".to_string()),
                    Some(cookie) => {
                        let changes = sync_changes(
                            &settings,
                            &mut ldap,
                            &settings.base_dn,
                            &settings.user_filter,
                            Some(cookie.clone()),
                        )
                        .await?;
                        // memberOf changes move no member's entryCSN: the
                        // groups changed since the same cookie are asked for.
                        let group_changes = match changes.unusable {
                            Some(_) => None,
                            None => Some(
                                sync_changes(
                                    &settings,
                                    &mut ldap,
                                    &group_base,
                                    &settings.group_filter,
                                    Some(cookie.clone()),
                                )
                                .await?,
                            ),
                        };
                        match group_deltas_unusable(&changes, group_changes.as_ref()) {
                            Some(why) => reason = Some(why),
                            None => {
                                let group_changes = group_changes.unwrap_or_default();
                                let changed =
                                    groups_by_uuid(&settings, &mut ldap, &group_base, &group_changes.changed).await?;
                                self.plan_members(&mut ldap, &group_base, &changed, groups.as_deref()).await?;
                                // No new cookie: nothing changed, the stored one stays valid.
                                let cookie = changes.cookie.unwrap_or(cookie);
                                self.read = Some(Read::Delta {
                                    ldap,
                                    deleted: changes.deleted.into(),
                                    changed: changes.changed.into(),
                                    page: 0,
                                    groups,
                                    cursor: encode_cursor(&cookie),
                                    done: false,
                                });
                                return Ok(ReadPlan { kind: ReadKind::Delta, reason: None });
                            }
                        }
                    }
                },
            }
        }
        self.members = None;
        self.complete = Vec::new();
        let cursor = if sync {
            let changes = sync_changes(&settings, &mut ldap, &settings.base_dn, MATCH_NOTHING, None).await?;
            changes.cookie.map(|c| encode_cursor(&c))
        } else {
            None
        };
        let filter: Arc<str> = settings.user_filter.as_str().into();
        let pending = Prefetch::spawn(&settings, &ldap, &filter, stamp_kind, &groups, Vec::new(), 1);
        self.read = Some(Read::Full {
            ldap,
            pending: Some(pending),
            page: 0,
            groups,
            cursor,
            filter,
            stamp: stamp_kind.map(|kind| (kind, None)),
        });
        Ok(ReadPlan { kind: ReadKind::Full, reason: reason.map(|r| format!("{r}: reading everything")) })
    }

    /// Plans reading the members of the changed groups after the changed
    /// users, and what the read will report as complete.
    async fn plan_members(
        &mut self,
        ldap: &mut Ldap,
        group_base: &str,
        changed: &ChangedGroups,
        groups: Option<&GroupMap>,
    ) -> Result<(), ConnectorError> {
        let members = plan_members(&self.settings, ldap, group_base, changed, groups).await?;
        self.complete = changed.names().into_iter().collect();
        if !self.complete.is_empty() {
            tracing::debug!(groups = ?self.complete, "ldap delta: reading the members of changed groups");
        }
        self.members = (!members.is_empty()).then_some(members);
        Ok(())
    }

    /// After the changed users: the members of the changed groups, a page
    /// at a time, leaving out accounts the read already returned.
    async fn next_members(&mut self, number: u64) -> Result<Option<Page>, ConnectorError> {
        let settings = self.settings.clone();
        let Some(Read::Members { ldap, members, cookie, .. }) = self.read.as_mut() else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        if let Some(filter) = members.filters.front().cloned() {
            let (found, next) = paged_search(
                &settings,
                ldap,
                &settings.base_dn,
                &filter,
                settings.user_attributes(),
                std::mem::take(cookie),
            )
            .await
            .map_err(|e| e.with_page(Some(number)))?;
            entries = found;
            match next {
                Some(next) => *cookie = next,
                None => {
                    members.filters.pop_front();
                }
            }
        } else if !members.dns.is_empty() {
            let size = settings.page_size as usize;
            let dns: Vec<String> = members.dns.drain(..members.dns.len().min(size)).collect();
            for dn in dns {
                if let Some(entry) = read_user(&settings, ldap, &dn).await.map_err(|e| e.with_page(Some(number)))? {
                    entries.push(entry);
                }
            }
        } else {
            return Ok(None);
        }
        let groups = match self.read.as_ref() {
            Some(Read::Members { groups, .. }) => groups.clone(),
            _ => None,
        };
        let mut accounts = Vec::new();
        for entry in &entries {
            let account = to_account(&settings, entry, groups.as_deref()).map_err(|e| source(number, e.to_string()))?;
            if self.emitted.insert(account.id.clone()) {
                accounts.push(account);
            }
        }
        Ok(Some(Page { number, accounts, deleted: Vec::new() }))
    }

    /// The end of the changed users: on to the changed groups' members, if
    /// any, else the end of the read.
    fn after_users(&mut self, ldap: Ldap, page: u64, groups: Option<Arc<GroupMap>>) -> bool {
        match self.members.take() {
            Some(members) => {
                self.read = Some(Read::Members { ldap, members, cookie: Vec::new(), page, groups });
                true
            }
            None => {
                self.read = None;
                false
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Page>, ConnectorError> {
        let settings = self.settings.clone();
        let Some(read) = self.read.as_mut() else {
            return Ok(None);
        };
        match read {
            Read::Full { ldap, pending, page, groups, cursor, filter, stamp } => {
                let Some(fetching) = pending.take() else {
                    self.cursor = match stamp.take() {
                        Some((_, highest)) => highest.map(|s| s.cursor()),
                        None => cursor.take(),
                    };
                    let (ldap, page, groups) = (ldap.clone(), *page, groups.take());
                    return self.after_users_next(ldap, page, groups).await;
                };
                *page += 1;
                let number = *page;
                let fetched = fetching.finish(number).await?;
                // The next page is asked for before this one is handed over:
                // the server and the decoding work on it while the engine
                // stores this one.
                let kind = stamp.as_ref().map(|(kind, _)| *kind);
                if let Some(next) = fetched.next {
                    *pending = Some(Prefetch::spawn(&settings, ldap, filter, kind, groups, next, number + 1));
                }
                if let Some((_, highest)) = stamp.as_mut() {
                    *highest = advance(highest.take(), fetched.highest);
                }
                let accounts = fetched.accounts;
                self.note_emitted(&accounts);
                Ok(Some(Page { number, accounts, deleted: Vec::new() }))
            }
            Read::Delta { ldap, deleted, changed, page, groups, cursor, done } => {
                if *done {
                    self.cursor = Some(std::mem::take(cursor));
                    let (ldap, page, groups) = (ldap.clone(), *page, groups.take());
                    return self.after_users_next(ldap, page, groups).await;
                }
                *page += 1;
                let number = *page;
                let size = settings.page_size as usize;
                let gone: Vec<String> = deleted.drain(..deleted.len().min(size)).collect();
                let ids: Vec<String> = changed.drain(..changed.len().min(size)).collect();
                let mut accounts = Vec::new();
                if !ids.is_empty() {
                    let any: String = ids.iter().map(|id| format!("(entryUUID={id})")).collect();
                    let filter = format!("(&{}(|{any}))", settings.user_filter);
                    let (entries, _) = ldap
                        .with_timeout(settings.timeout)
                        .search(&settings.base_dn, Scope::Subtree, &filter, settings.user_attributes())
                        .await
                        .and_then(|r| r.success())
                        .map_err(|e| ldap_error(&settings, "read changed entries", e).with_page(Some(number)))?;
                    let entries = decode_entries(entries)
                        .map_err(|e| e.with_context("read changed entries").with_page(Some(number)))?;
                    for entry in entries {
                        let account = to_account(&settings, &entry, groups.as_deref())
                            .map_err(|e| source(number, e.to_string()))?;
                        accounts.push(account);
                    }
                }
                *done = deleted.is_empty() && changed.is_empty();
                self.note_emitted(&accounts);
                Ok(Some(Page { number, accounts, deleted: gone }))
            }
            Read::Members { page, .. } => {
                *page += 1;
                let number = *page;
                let result = self.next_members(number).await?;
                if result.is_none() {
                    self.read = None;
                }
                Ok(result)
            }
        }
    }

    /// Moves on from the changed users to the groups' members and serves
    /// their first page, or ends the read.
    async fn after_users_next(
        &mut self,
        ldap: Ldap,
        page: u64,
        groups: Option<Arc<GroupMap>>,
    ) -> Result<Option<Page>, ConnectorError> {
        if !self.after_users(ldap, page, groups) {
            return Ok(None);
        }
        Box::pin(self.next()).await
    }

    /// Which of `names` still name a group entry (`groupFilter`) where the
    /// last read looked for groups; None before any read.
    async fn present_groups(&mut self, names: &[String]) -> Result<Option<Vec<String>>, ConnectorError> {
        let Some(base) = self.group_base.clone() else {
            return Ok(None);
        };
        let settings = self.settings.clone();
        let mut ldap = connect(&settings).await?;
        let groups = search_all(&settings, &mut ldap, &base, &settings.group_filter, vec!["1.1".to_string()]).await?;
        let existing: HashSet<String> = groups.iter().filter_map(|g| first_rdn_value(&g.dn)).collect();
        Ok(Some(names.iter().filter(|n| existing.contains(*n)).cloned().collect()))
    }

    /// Remembers the accounts a read with members to read returned, so that
    /// none is returned twice.
    fn note_emitted(&mut self, accounts: &[Account]) {
        if self.members.is_some() {
            self.emitted.extend(accounts.iter().map(|a| a.id.clone()));
        }
    }
}

/// Why a content-synchronisation Delta cannot be used, groups included: the
/// users' answer is unusable, or the groups' is.
fn group_deltas_unusable(users: &Changes, groups: Option<&Changes>) -> Option<String> {
    if let Some(why) = &users.unusable {
        return Some(why.clone());
    }
    groups.and_then(|g| g.unusable.as_ref()).map(|why| format!("groups: {why}"))
}

/// The user entry at `dn` (None: no such entry, outside `baseDn`, or not
/// one the user filter selects).
async fn read_user(settings: &Settings, ldap: &mut Ldap, dn: &str) -> Result<Option<Entry>, ConnectorError> {
    if !is_within(dn, &settings.base_dn) {
        return Ok(None);
    }
    let result = ldap
        .with_timeout(settings.timeout)
        .search(dn, Scope::Base, &settings.user_filter, settings.user_attributes())
        .await
        .map_err(|e| ldap_error(settings, &format!("read {dn:?}"), e))?;
    let (entries, result) = (result.0, result.1);
    match result.rc {
        0 => Ok(decode_entries(entries).map_err(|e| e.with_context(&format!("read {dn:?}")))?.into_iter().next()),
        // noSuchObject: a member DN whose entry is gone.
        32 => Ok(None),
        _ => Err(result_error(settings, &format!("read {dn:?}"), &result)),
    }
}

impl Connector for LdapConnector {
    fn capabilities(&self) -> Capabilities {
        // Asked before a read connects: deletions only once a read has seen
        // content synchronisation (a stamp mode's deltas carry none).
        let sync = self.settings.flavour == LdapFlavour::OpenLdap && self.sync == Some(true);
        Capabilities { delta: true, delta_deletions: sync, groups: true }
    }

    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        self.begin_read(mode, cursor).boxed()
    }

    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
        async move {
            let result = self.next().await;
            if result.is_err() {
                self.read = None;
            }
            result
        }
        .boxed()
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }

    fn complete_groups(&self) -> Vec<String> {
        self.complete.clone()
    }

    fn groups_present<'a>(
        &'a mut self,
        groups: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ConnectorError>> {
        self.present_groups(groups).boxed()
    }
}

#[cfg(test)]
#[path = "ldap_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::SearchEntry;

    #[test]
    fn object_guid_bytes_become_the_standard_guid_string() {
        // The GUID {01234567-89ab-cdef-0123-456789abcdef} as AD stores it.
        let bytes = [0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(guid_string(&bytes).unwrap(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(uuid_string(&bytes).unwrap(), "67452301-ab89-efcd-0123-456789abcdef");
        assert_eq!(guid_string(&bytes[..15]), None);
    }

    #[test]
    fn user_account_control_bit_2_disables() {
        assert_eq!(uac_enabled("512"), Some(true)); // NORMAL_ACCOUNT
        assert_eq!(uac_enabled("514"), Some(false)); // NORMAL_ACCOUNT | ACCOUNTDISABLE
        assert_eq!(uac_enabled("66050"), Some(false)); // + DONT_EXPIRE_PASSWORD
        assert_eq!(uac_enabled("66048"), Some(true));
        assert_eq!(uac_enabled("-2147483646"), Some(false)); // high bit set, as a signed value
        assert_eq!(uac_enabled("x"), None);
    }

    #[test]
    fn group_names_are_the_first_rdn_value() {
        assert_eq!(first_rdn_value("cn=engineering,ou=groups,dc=example,dc=com").unwrap(), "engineering");
        assert_eq!(first_rdn_value("CN = R\\2cD ,OU=x").unwrap(), "R,D");
        assert_eq!(first_rdn_value("cn=a\\,b+uid=x,dc=c").unwrap(), "a,b");
        assert_eq!(first_rdn_value(""), None);
        assert_eq!(normalize_dn("UID=a, OU=People,dc=Example"), "uid=a,ou=people,dc=example");
    }

    #[test]
    fn changed_groups_are_looked_for_in_the_naming_context_of_the_users() {
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "baseDn": "OU=People, DC=Example,DC=com"}));
        let c = LdapConnector::new(&s, &l, &ProviderInputs::default()).unwrap();
        let contexts = ["dc=other".to_string(), "dc=com".to_string(), "dc=example,dc=com".to_string()];
        assert_eq!(group_search_base(&c.settings, &contexts), "dc=example,dc=com", "the closest one");
        assert_eq!(group_search_base(&c.settings, &contexts[..1]), "OU=People, DC=Example,DC=com");
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "baseDn": "dc=x", "groupBaseDn": "ou=g,dc=x"}));
        let c = LdapConnector::new(&s, &l, &ProviderInputs::default()).unwrap();
        assert_eq!(group_search_base(&c.settings, &contexts), "ou=g,dc=x");

        assert!(is_within("uid=a,OU=People,dc=x", "ou=people, dc=x"));
        assert!(is_within("dc=x", "dc=x"));
        assert!(!is_within("uid=a,ou=otherpeople,dc=x", "ou=people,dc=x"));
        assert_eq!(
            any_of("memberOf", ["cn=a (b),dc=x", "cn=*"]),
            "(|(memberOf=cn=a \\28b\\29,dc=x)(memberOf=cn=\\2a))"
        );
        assert!(ldap3::parse_filter(any_of("memberOf", ["cn=a (b),dc=x"])).is_ok());
        let changed =
            ChangedGroups { dns: vec!["cn=eng,ou=a,dc=x".into(), "CN=eng,ou=b,dc=x".into(), "cn=ops,dc=x".into()] };
        assert_eq!(changed.names().into_iter().collect::<Vec<_>>(), ["eng", "ops"]);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor(b"rid=000,csn=20240101000000.000000Z#000000#000#000000");
        assert_eq!(decode_cursor(&cursor).unwrap(), b"rid=000,csn=20240101000000.000000Z#000000#000#000000");
        assert_eq!(decode_cursor("garbage"), None);
        assert_eq!(decode_cursor("ldapsync1:!!"), None);
        assert_eq!(decode_cursor("ldapsync1:"), None);
    }

    #[test]
    fn usn_changed_filters_and_cursors() {
        let kind = StampKind::UsnChanged;
        let stamp = kind.parse_value("12345").unwrap();
        assert_eq!(stamp, Stamp::Usn(12345));
        assert_eq!(stamp.cursor(), "usn:12345");
        assert_eq!(kind.parse_cursor("usn:12345"), Some(Stamp::Usn(12345)));
        assert_eq!(
            stamp.filter("(&(objectCategory=person)(objectClass=user))"),
            "(&(&(objectCategory=person)(objectClass=user))(uSNChanged>=12345))"
        );
        assert!(ldap3::parse_filter(stamp.filter("(objectClass=user)")).is_ok());
        for bad in ["usn:", "usn:-1", "usn:12a", "usn:99999999999999999999999", "ts:20261122041900Z", "12345"] {
            assert_eq!(kind.parse_cursor(bad), None, "{bad}");
        }
        assert_eq!(kind.parse_cursor("ldapsync1:cmlkPTAwMA=="), None);
        // The highest seen wins, numerically.
        let mut highest = kind.parse_cursor("usn:900");
        for seen in ["1000", "950", "x", "10000", "9999"] {
            highest = advance(highest, kind.parse_value(seen));
        }
        assert_eq!(highest.unwrap().cursor(), "usn:10000");
        assert_eq!(advance(None, None), None);
        assert_eq!(advance(None, Some(Stamp::Usn(3))), Some(Stamp::Usn(3)));
    }

    #[test]
    fn modify_timestamp_filters_and_cursors() {
        let kind = StampKind::ModifyTimestamp;
        let stamp = kind.parse_value("20261122041900Z").unwrap();
        assert_eq!(stamp.cursor(), "ts:20261122041900Z");
        assert_eq!(
            stamp.filter("(objectClass=inetOrgPerson)"),
            "(&(objectClass=inetOrgPerson)(modifyTimestamp>=20261122041900Z))"
        );
        assert!(ldap3::parse_filter(stamp.filter("(objectClass=inetOrgPerson)")).is_ok());
        // A fraction is dropped: the filter compares at second resolution.
        assert_eq!(kind.parse_value("20261122041900.123456Z"), Some(stamp.clone()));
        assert_eq!(kind.parse_cursor("ts:20261122041900Z"), Some(stamp.clone()));
        for bad in ["ts:", "ts:2026112204190Z", "ts:20261122041900", "ts:20261122041900+0100", "usn:5", "x"] {
            assert_eq!(kind.parse_cursor(bad), None, "{bad}");
        }
        let mut highest = Some(stamp);
        for seen in ["20261122041901Z", "20251231235959Z", "20270101000000Z", "20261122041902Z"] {
            highest = advance(highest, kind.parse_value(seen));
        }
        assert_eq!(highest.unwrap().cursor(), "ts:20270101000000Z");
        // Cursors of one mode are refused by the other.
        assert_eq!(StampKind::UsnChanged.parse_cursor("ts:20261122041900Z"), None);
        assert_eq!(decode_cursor("ts:20261122041900Z"), None);
    }

    #[test]
    fn sync_controls_parse() {
        // syncState: SEQUENCE { ENUMERATED add, OCTET STRING uuid } as slapd sent it.
        let state = BASE64.decode("MBUKAQEEEA6T2Qx6dhBBlavB9d4T5cI=").unwrap();
        let state = parse_sync_state(&state).unwrap();
        assert_eq!(state.state, EntryState::Add);
        assert_eq!(uuid_string(&state.entry_uuid).unwrap(), "0e93d90c-7a76-1041-95ab-c1f5de13e5c2");
        assert_eq!(state.cookie, None);

        let done = BASE64.decode("MDkENHJpZD0wMDAsY3NuPTIwMjYxMTIyMDQwODA2LjYzNzg4MFojMDAwMDAwIzAwMCMwMDAwMDABAf8=");
        let done = parse_sync_done(&done.unwrap()).unwrap();
        assert!(done.refresh_deletes);
        assert_eq!(done.cookie.unwrap(), b"rid=000,csn=20261122040806.637880Z#000000#000#000000");
        let done = parse_sync_done(&[0x30, 0x00]).unwrap();
        assert_eq!(done, SyncDone { cookie: None, refresh_deletes: false });

        // syncIdSet [3] { cookie "c", refreshDeletes TRUE, SET { uuid } }
        let mut value = vec![0xa3, 0x1a, 0x04, 0x01, b'c', 0x01, 0x01, 0xff, 0x31, 0x12, 0x04, 0x10];
        value.extend_from_slice(&[7; 16]);
        assert_eq!(
            parse_sync_info(&value).unwrap(),
            SyncInfo::SyncIdSet { cookie: Some(b"c".to_vec()), refresh_deletes: true, uuids: vec![vec![7; 16]] }
        );
        assert_eq!(parse_sync_info(&[0x80, 0x01, b'k']).unwrap(), SyncInfo::NewCookie(b"k".to_vec()));
        assert_eq!(parse_sync_info(&[0xa2, 0x00]).unwrap(), SyncInfo::RefreshPresent { cookie: None });

        assert!(parse_sync_state(&[0x30, 0x03, 0x0a, 0x01, 0x09]).is_err());
        assert!(parse_sync_state(&[0xff]).is_err());
        assert!(parse_sync_done(&[0x04, 0x00]).is_err());
    }

    fn spec(ldap: serde_json::Value) -> (ConnectionSpec, LdapSettings) {
        let spec: ConnectionSpec = serde_json::from_value(serde_json::json!({
            "provider": {"type": "ldap", "ldap": ldap},
            "category": "IdP",
            "credentialsSecretRef": {"name": "ldap"},
        }))
        .unwrap();
        let idsync_api::Provider::Ldap(settings) = spec.provider.clone() else { panic!("not ldap") };
        (spec, settings)
    }

    #[test]
    fn settings_are_checked_and_the_password_never_shown() {
        let (s, l) = spec(serde_json::json!({"url": "ldap://127.0.0.1:389", "bindDn": "cn=a", "baseDn": "dc=x"}));
        let e = LdapConnector::new(&s, &l, &ProviderInputs::default()).unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"password\" missing");
        let mut inputs = ProviderInputs::default();
        inputs.secret.insert("password".into(), b"hunter2-secret".to_vec());
        let c = LdapConnector::new(&s, &l, &inputs).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.capabilities(), Capabilities { delta: true, delta_deletions: false, groups: true });

        let (s, l) = spec(serde_json::json!({"url": "ldap://ldap.example.com", "baseDn": "dc=x"}));
        let e = LdapConnector::new(&s, &l, &inputs).unwrap_err();
        assert!(e.to_string().starts_with("spec.provider.ldap.url:"), "{e}");
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "startTls": true, "baseDn": "dc=x"}));
        assert!(LdapConnector::new(&s, &l, &inputs).is_err());
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "baseDn": "dc=x", "userFilter": "(broken"}));
        let e = LdapConnector::new(&s, &l, &inputs).unwrap_err();
        assert!(e.to_string().starts_with("spec.provider.ldap.userFilter:"), "{e}");
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "baseDn": "dc=x", "flavour": "activedirectory"}));
        let c = LdapConnector::new(&s, &l, &inputs).unwrap();
        assert_eq!(c.capabilities(), Capabilities { delta: true, delta_deletions: false, groups: true });
        let mut bad_ca = inputs.clone();
        bad_ca.secret.insert("ca.crt".into(), b"not a certificate".to_vec());
        assert!(LdapConnector::new(&s, &l, &bad_ca).unwrap_err().is_stalled());
    }

    #[test]
    fn active_directory_entries_map() {
        let (s, l) = spec(serde_json::json!({
            "url": "ldaps://h", "baseDn": "dc=x", "flavour": "activedirectory",
            "attributes": {"extra": ["department", "proxyAddresses"]},
        }));
        let c = LdapConnector::new(&s, &l, &ProviderInputs::default()).unwrap();
        let entry = SearchEntry {
            dn: "CN=Ann,OU=Users,DC=x".into(),
            attrs: HashMap::from([
                ("sAMAccountName".to_string(), vec!["ann".to_string()]),
                ("displayName".to_string(), vec!["Ann A".to_string()]),
                ("userAccountControl".to_string(), vec!["514".to_string()]),
                ("memberOf".to_string(), vec!["CN=Eng,OU=G,DC=x".to_string(), "CN=All,DC=x".to_string()]),
                ("department".to_string(), vec!["R&D".to_string()]),
                ("proxyAddresses".to_string(), vec!["smtp:a@x".to_string(), "SMTP:ann@x".to_string()]),
            ]),
            bin_attrs: HashMap::from([(
                "objectGUID".to_string(),
                vec![vec![
                    0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                ]],
            )]),
        };
        let a = to_account(&c.settings, &entry.into(), None).unwrap();
        assert_eq!(a.id, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(a.username.as_deref(), Some("ann"));
        assert_eq!(a.display_name.as_deref(), Some("Ann A"));
        assert!(!a.enabled);
        assert_eq!(a.groups, vec!["All", "Eng"]);
        assert_eq!(a.attributes["dn"], "CN=Ann,OU=Users,DC=x");
        assert_eq!(a.attributes["department"], "R&D");
        assert_eq!(a.attributes["proxyAddresses"], serde_json::json!(["smtp:a@x", "SMTP:ann@x"]));
    }

    #[test]
    fn an_entry_without_a_usable_id_or_flag_is_refused_by_dn() {
        let (s, l) = spec(serde_json::json!({"url": "ldaps://h", "baseDn": "dc=x", "flavour": "activedirectory"}));
        let c = LdapConnector::new(&s, &l, &ProviderInputs::default()).unwrap();
        let entry = |bin_attrs: HashMap<String, Vec<Vec<u8>>>, uac: &str| -> Entry {
            SearchEntry {
                dn: "CN=Bob,DC=x".into(),
                attrs: HashMap::from([("userAccountControl".to_string(), vec![uac.to_string()])]),
                bin_attrs,
            }
            .into()
        };
        let guid = |bytes: Vec<u8>| HashMap::from([("objectGUID".to_string(), vec![bytes])]);

        let missing = to_account(&c.settings, &entry(HashMap::new(), "512"), None).unwrap_err();
        assert!(matches!(&missing, EntryError::NoId { attribute, .. } if attribute == "objectGUID"), "{missing:?}");
        assert_eq!(missing.to_string(), r#"entry "CN=Bob,DC=x" has no usable objectGUID"#);

        let short = to_account(&c.settings, &entry(guid(vec![1; 15]), "512"), None).unwrap_err();
        assert!(matches!(short, EntryError::BadGuid { bytes: 15, .. }), "{short:?}");
        assert_eq!(short.to_string(), missing.to_string(), "worded as a missing id");

        let flag = to_account(&c.settings, &entry(guid(vec![1; 16]), "on"), None).unwrap_err();
        assert_eq!(flag, EntryError::BadUserAccountControl { dn: "CN=Bob,DC=x".into(), value: "on".into() });
        assert_eq!(flag.dn(), "CN=Bob,DC=x");
        assert_eq!(flag.to_string(), r#"entry "CN=Bob,DC=x": userAccountControl "on" is not a number"#);
    }
}
