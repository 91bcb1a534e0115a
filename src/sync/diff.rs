//! The diff of a sync: pages of accounts from a source against the ids and
//! content hashes in the store. Accounts are matched by immutable id, so a
//! rename or a new e-mail domain is an update, never a delete and a create.
//! Memory: a full read holds the store's id index (it must, to find whom
//! the source no longer lists) plus the ids seen; a Delta holds only the
//! hashes of the ids its pages named, looked up page by page, so its time
//! and memory follow the change, not the connection's size. Never the
//! accounts themselves beyond the page in hand.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::connectors::{Page, ReadKind};
use crate::model::{Account, ChangeKind, ContentHash, Counts};
use crate::store::StagedChange;

/// One page's changes to stage, and what each is: `kinds[i]` says whether
/// `staged[i]` creates, updates or deletes an account (None: a later copy
/// of an account the source already sent, counted once, or an unchanged
/// account whose stored hash is an older version's, rewritten with the
/// current one).
#[derive(Debug, Default)]
pub struct PageChanges {
    pub staged: Vec<StagedChange>,
    pub kinds: Vec<Option<ChangeKind>>,
    /// The content hash of each upsert, as the diff computed it, so that
    /// storing it does not hash the account again (None for a deletion).
    pub hashes: Vec<Option<ContentHash>>,
}

impl PageChanges {
    /// Deletions only.
    pub fn deletions(ids: Vec<StagedChange>) -> Self {
        let n = ids.len();
        PageChanges { staged: ids, kinds: vec![Some(ChangeKind::Deleted); n], hashes: vec![None; n] }
    }

    fn push(&mut self, kind: Option<ChangeKind>, change: StagedChange, hash: Option<ContentHash>) {
        self.kinds.push(kind);
        self.staged.push(change);
        self.hashes.push(hash);
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
}

pub struct Diff {
    /// Id → stored hash: every stored account in a full read, the ids the
    /// pages named so far in a Delta ([`Diff::know`]).
    index: HashMap<String, ContentHash>,
    /// How many accounts the connection had before the sync.
    total_before: u64,
    seen: HashSet<String>,
    deleted: HashSet<String>,
    counts: Counts,
    kind: ReadKind,
    /// A Delta named deleted ids that were no stored account.
    deleted_unknown: bool,
}

impl Diff {
    /// A diff against `index` (id → hash of every stored account).
    pub fn new(index: HashMap<String, ContentHash>, kind: ReadKind) -> Self {
        Diff {
            total_before: index.len() as u64,
            index,
            seen: HashSet::new(),
            deleted: HashSet::new(),
            counts: Counts::default(),
            kind,
            deleted_unknown: false,
        }
    }

    /// A Delta's diff for a connection of `total_before` accounts, which
    /// learns the stored hashes of the ids each page names through
    /// [`Diff::know`] before the page.
    pub fn delta(total_before: u64) -> Self {
        let mut diff = Diff::new(HashMap::new(), ReadKind::Delta);
        diff.total_before = total_before;
        diff
    }

    /// The ids a page names (read or deleted) whose stored hashes a Delta
    /// has not looked up yet.
    pub fn unknown_ids(&self, page: &Page) -> Vec<String> {
        if self.kind != ReadKind::Delta {
            return Vec::new();
        }
        let named = page.accounts.iter().map(|a| &a.id).chain(&page.deleted);
        let mut ids: Vec<String> = named.filter(|id| !self.index.contains_key(*id)).cloned().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Stored hashes of ids a Delta's page names (an id absent from the
    /// store is simply not among them).
    pub fn know(&mut self, hashes: HashMap<String, ContentHash>) {
        self.index.extend(hashes);
    }

    /// Whether this diffs a full read or a Delta.
    pub fn kind(&self) -> ReadKind {
        self.kind
    }

    /// How many accounts the connection had before the sync.
    pub fn total_before(&self) -> u64 {
        self.total_before
    }

    /// Classifies one page and returns what to stage.
    pub fn page(&mut self, page: Page) -> PageChanges {
        let mut changes = PageChanges::default();
        for mut account in page.accounts {
            account.normalize();
            let hash = account.content_hash();
            let first_time = self.seen.insert(account.id.clone());
            if !first_time {
                // A source that repeats an account across pages: the later
                // copy wins and it is counted once.
                changes.push(None, StagedChange::Upsert(account), Some(hash));
                continue;
            }
            self.deleted.remove(&account.id);
            match self.index.get(&account.id) {
                None => {
                    self.counts.created += 1;
                    changes.push(Some(ChangeKind::Created), StagedChange::Upsert(account), Some(hash));
                }
                // Written by the previous hash version with the same content:
                // unchanged, and staged so the commit stores today's hash
                // and later syncs need not compute the old one again.
                Some(stored) if *stored != hash && *stored == account.content_hash_v1() => {
                    self.counts.unchanged += 1;
                    changes.push(None, StagedChange::Upsert(account), Some(hash));
                }
                Some(stored) if *stored != hash => {
                    self.counts.updated += 1;
                    changes.push(Some(ChangeKind::Updated), StagedChange::Upsert(account), Some(hash));
                }
                Some(_) => self.counts.unchanged += 1,
            }
        }
        if self.kind == ReadKind::Delta {
            for id in page.deleted {
                self.deleted_unknown |= !self.index.contains_key(&id);
                if self.index.contains_key(&id) && !self.seen.contains(&id) && self.deleted.insert(id.clone()) {
                    changes.push(Some(ChangeKind::Deleted), StagedChange::Delete(id), None);
                }
            }
        }
        changes
    }

    /// Whether this Delta named deletions of ids no stored account has:
    /// what a source that reports every deleted entry says of a deleted
    /// group.
    pub fn deleted_unknown(&self) -> bool {
        self.deleted_unknown
    }

    /// In a full read, the stored ids no page has named so far, sorted: what
    /// [`Diff::finish`] would delete.
    pub fn unseen(&self) -> Vec<String> {
        if self.kind != ReadKind::Full {
            return Vec::new();
        }
        let mut unseen: Vec<String> = self.index.keys().filter(|id| !self.seen.contains(*id)).cloned().collect();
        unseen.sort();
        unseen
    }

    /// In a Delta read whose source carried the whole membership of the
    /// `complete` groups: the accounts of `stored` that the read neither
    /// named nor deleted and that list one of those groups, without them.
    /// They have left those groups: a source that changes a group without
    /// moving its members' change stamps only names who is in it now. An
    /// account the read named already carries its current groups, so it is
    /// never changed (nor counted) twice.
    pub fn departures(&self, stored: Vec<Account>, complete: &BTreeSet<String>) -> Vec<Account> {
        if self.kind != ReadKind::Delta || complete.is_empty() {
            return Vec::new();
        }
        stored
            .into_iter()
            .filter(|a| !self.seen.contains(&a.id) && !self.deleted.contains(&a.id))
            .filter_map(|mut account| {
                let before = account.groups.len();
                account.groups.retain(|g| !complete.contains(g));
                (account.groups.len() != before).then_some(account)
            })
            .collect()
    }

    /// After the last page: the deletions a full read implies (stored ids
    /// the source no longer has) and the counts.
    pub fn finish(mut self) -> (Vec<StagedChange>, Counts) {
        let mut deletions = Vec::new();
        if self.kind == ReadKind::Full {
            deletions = self.unseen().into_iter().map(StagedChange::Delete).collect();
            self.counts.deleted = deletions.len() as u64;
        } else {
            self.counts.deleted = self.deleted.len() as u64;
        }
        (deletions, self.counts)
    }
}

/// The account an upsert carries, for tests and previews.
pub fn upserted(change: &StagedChange) -> Option<&Account> {
    match change {
        StagedChange::Upsert(a) => Some(a),
        StagedChange::Delete(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, email: &str) -> Account {
        let mut a = Account::new(id);
        a.email = Some(email.to_string());
        a
    }

    fn index(accounts: &[Account]) -> HashMap<String, ContentHash> {
        accounts.iter().map(|a| (a.id.clone(), a.content_hash())).collect()
    }

    #[test]
    fn a_full_read_creates_updates_keeps_and_deletes_by_id() {
        let stored =
            [account("1", "ada@old.example"), account("2", "grace@example.com"), account("3", "alan@example.com")];
        let mut diff = Diff::new(index(&stored), ReadKind::Full);
        assert_eq!(diff.total_before(), 3);
        // 1 changed e-mail domain (an update), 2 unchanged, 3 gone, 4 new.
        let page = Page {
            number: 1,
            accounts: vec![
                account("1", "ada@new.example"),
                account("2", "grace@example.com"),
                account("4", "kj@example.com"),
            ],
            deleted: vec![],
        };
        let changes = diff.page(page);
        let ids: Vec<&str> = changes.staged.iter().filter_map(upserted).map(|a| a.id.as_str()).collect();
        assert_eq!(ids, vec!["1", "4"]);
        assert_eq!(changes.kinds, vec![Some(ChangeKind::Updated), Some(ChangeKind::Created)]);
        let (deletions, counts) = diff.finish();
        assert_eq!(deletions, vec![StagedChange::Delete("3".into())]);
        assert_eq!(counts, Counts { created: 1, updated: 1, deleted: 1, unchanged: 1 });
    }

    #[test]
    fn a_delta_deletes_only_what_it_names_and_only_what_exists() {
        let stored = [account("1", "a@x"), account("2", "b@x")];
        let mut diff = Diff::new(index(&stored), ReadKind::Delta);
        let changes =
            diff.page(Page { number: 1, accounts: vec![account("3", "c@x")], deleted: vec!["2".into(), "9".into()] });
        assert_eq!(changes.kinds, vec![Some(ChangeKind::Created), Some(ChangeKind::Deleted)]);
        assert_eq!(changes.staged[1], StagedChange::Delete("2".into()));
        assert!(diff.deleted_unknown(), "9 was no stored account");
        let (deletions, counts) = diff.finish();
        assert!(deletions.is_empty(), "a delta implies no deletions beyond those it names");
        assert_eq!(counts, Counts { created: 1, updated: 0, deleted: 1, unchanged: 0 });
    }

    fn member(id: &str, groups: &[&str]) -> Account {
        let mut a = account(id, &format!("{id}@x"));
        a.groups = groups.iter().map(|g| g.to_string()).collect();
        a.normalize();
        a
    }

    fn complete(groups: &[&str]) -> BTreeSet<String> {
        groups.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn a_delta_with_complete_groups_takes_them_off_the_accounts_it_did_not_name() {
        // Stored: bob and dan in eng, carol in eng and ops, erin in ops only.
        let stored = [
            member("alice", &[]),
            member("bob", &["eng", "all"]),
            member("carol", &["eng", "ops"]),
            member("dan", &["eng"]),
            member("erin", &["ops"]),
        ];
        let mut diff = Diff::new(index(&stored), ReadKind::Delta);
        // The delta: eng changed and now holds alice and carol (who also
        // changed e-mail); dan was deleted at the source.
        let mut carol = member("carol", &["eng", "ops"]);
        carol.email = Some("carol@new".into());
        let changes = diff.page(Page {
            number: 1,
            accounts: vec![member("alice", &["eng"]), carol],
            deleted: vec!["dan".into()],
        });
        assert_eq!(
            changes.kinds,
            vec![Some(ChangeKind::Updated), Some(ChangeKind::Updated), Some(ChangeKind::Deleted)]
        );
        let left = diff.departures(stored.to_vec(), &complete(&["eng"]));
        assert_eq!(
            left,
            vec![member("bob", &["all"])],
            "only bob left eng; carol was named, dan deleted, erin never in it"
        );

        let changes = diff.page(Page { number: 2, accounts: left, deleted: vec![] });
        assert_eq!(changes.kinds, vec![Some(ChangeKind::Updated)]);
        let (deletions, counts) = diff.finish();
        assert!(deletions.is_empty());
        assert_eq!(counts, Counts { created: 0, updated: 3, deleted: 1, unchanged: 0 }, "carol counted once");
    }

    #[test]
    fn departures_need_a_delta_and_a_complete_group() {
        let stored = [member("bob", &["eng"])];
        let full = Diff::new(index(&stored), ReadKind::Full);
        assert!(full.departures(stored.to_vec(), &complete(&["eng"])).is_empty(), "a full read names everyone");
        let delta = Diff::new(index(&stored), ReadKind::Delta);
        assert!(delta.departures(stored.to_vec(), &complete(&[])).is_empty());
        assert!(delta.departures(stored.to_vec(), &complete(&["Eng", "ops"])).is_empty(), "names match exactly");
        // A group emptied of everyone: every stored member leaves it.
        assert_eq!(delta.departures(stored.to_vec(), &complete(&["eng"])), vec![member("bob", &[])]);
    }

    #[test]
    fn an_account_repeated_across_pages_is_counted_once() {
        let mut diff = Diff::new(HashMap::new(), ReadKind::Full);
        diff.page(Page { number: 1, accounts: vec![account("1", "a@x")], deleted: vec![] });
        let changes = diff.page(Page { number: 2, accounts: vec![account("1", "a2@x")], deleted: vec![] });
        assert_eq!(changes.staged.len(), 1);
        assert_eq!(changes.kinds, vec![None], "recorded once, at its first sight");
        let (_, counts) = diff.finish();
        assert_eq!(counts.created, 1);
    }

    #[test]
    fn a_delta_learns_only_the_ids_its_pages_name() {
        let stored = [account("1", "a@x"), account("2", "b@x"), account("3", "c@x")];
        let mut diff = Diff::delta(3);
        let page = Page {
            number: 1,
            accounts: vec![account("1", "a@new"), account("4", "d@x"), account("1", "a@new")],
            deleted: vec!["2".into(), "9".into()],
        };
        let wanted = diff.unknown_ids(&page);
        assert_eq!(wanted, ["1", "2", "4", "9"], "each named id once, sorted; 3 is never asked for");
        // What the store answers: only the ids it has.
        diff.know(index(&stored).into_iter().filter(|(id, _)| wanted.contains(id)).collect());
        let changes = diff.page(page);
        assert_eq!(
            changes.kinds,
            vec![Some(ChangeKind::Updated), Some(ChangeKind::Created), None, Some(ChangeKind::Deleted)]
        );
        assert!(diff.deleted_unknown(), "9 was no stored account");
        assert_eq!(diff.total_before(), 3, "the connection's size, not the ids looked up");
        let next = Page { number: 2, accounts: vec![account("1", "a@newer"), account("3", "c@x")], deleted: vec![] };
        assert_eq!(diff.unknown_ids(&next), ["3"], "ids already looked up are not asked for again");
        let (deletions, counts) = diff.finish();
        assert!(deletions.is_empty());
        assert_eq!(counts, Counts { created: 1, updated: 1, deleted: 1, unchanged: 0 });
    }

    #[test]
    fn a_hash_of_the_previous_version_is_unchanged_content_restaged_with_the_new_hash() {
        let old = account("1", "a@x");
        let changed_since = account("2", "b@x");
        let stored: HashMap<String, ContentHash> =
            [("1".to_string(), old.content_hash_v1()), ("2".to_string(), changed_since.content_hash_v1())].into();
        let mut diff = Diff::new(stored, ReadKind::Full);
        let changes =
            diff.page(Page { number: 1, accounts: vec![old.clone(), account("2", "b@new")], deleted: vec![] });
        assert_eq!(changes.kinds, vec![None, Some(ChangeKind::Updated)], "not recorded as a change");
        assert_eq!(changes.staged[0], StagedChange::Upsert(old), "restaged, so the new hash is stored");
        let (deletions, counts) = diff.finish();
        assert!(deletions.is_empty());
        assert_eq!(counts, Counts { created: 0, updated: 1, deleted: 0, unchanged: 1 });
    }
}
