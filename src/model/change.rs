//! What a sync changed, account by account: the diff kept with each run in
//! the run history, the preview of a dry run, and what `idsync runs get`
//! prints. Field by field, so an update reads as `email a@x → b@x`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Account;

/// Whether a sync created, updated or deleted an account.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

named!(ChangeKind { Created, Updated, Deleted });

/// One field's value before and after; absent on the side where the field
/// had no value (everything before a creation, after a deletion).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// `username`, `email`, `displayName`, `enabled`, `groups`, or
    /// `attributes.<name>`.
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// What a sync did (or, in a dry run, would do) to one account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccountChange {
    pub account_id: String,
    pub kind: ChangeKind,
    /// The fields that differ, in a fixed order: the standard fields, then
    /// attributes by name.
    pub fields: Vec<FieldChange>,
}

impl AccountChange {
    /// The change from `before` (the stored account; None: it is new) to
    /// `after` (what the source says; None: it is gone). None when both are
    /// absent.
    pub fn between(before: Option<&Account>, after: Option<&Account>) -> Option<AccountChange> {
        let (account_id, kind) = match (before, after) {
            (None, None) => return None,
            (None, Some(a)) => (a.id.clone(), ChangeKind::Created),
            (Some(b), None) => (b.id.clone(), ChangeKind::Deleted),
            (Some(_), Some(a)) => (a.id.clone(), ChangeKind::Updated),
        };
        let fields = fields(before).into_iter();
        let mut before_fields: std::collections::BTreeMap<String, Value> = fields.collect();
        let mut changes = Vec::new();
        for (field, value) in self::fields(after) {
            let old = before_fields.remove(&field);
            if old.as_ref() != Some(&value) {
                changes.push(FieldChange { field, before: old, after: Some(value) });
            }
        }
        changes.extend(before_fields.into_iter().map(|(field, old)| FieldChange {
            field,
            before: Some(old),
            after: None,
        }));
        changes.sort_by_key(|c| field_order(&c.field));
        Some(AccountChange { account_id, kind, fields: changes })
    }

    /// A creation as the run history keeps it: who was created (username,
    /// e-mail, display name), not every field. The account itself holds its
    /// data, and a first sync of 100,000 people would otherwise write it
    /// all twice.
    pub fn creation(account: &Account) -> AccountChange {
        // Only the identifying fields, in the order `fields` lists them,
        // built directly: a first sync records 100,000 creations, and
        // listing every attribute of each just to drop them is most of that.
        let identifying =
            [("username", &account.username), ("email", &account.email), ("displayName", &account.display_name)];
        let fields = identifying
            .into_iter()
            .filter_map(|(field, value)| {
                let value = value.as_ref()?;
                Some(FieldChange { field: field.to_string(), before: None, after: Some(Value::String(value.clone())) })
            })
            .collect();
        AccountChange { account_id: account.id.clone(), kind: ChangeKind::Created, fields }
    }

    /// The account after this change, given the account before it: what a
    /// dry run's diff lays over the store when identities are previewed
    /// with the accounts it would sync. A creation recorded by
    /// [`AccountChange::creation`] carries only who was created, so only a
    /// full record ([`AccountChange::between`]) rebuilds the whole account.
    pub fn apply(&self, before: Option<&Account>) -> Option<Account> {
        let mut account = match self.kind {
            ChangeKind::Deleted => return None,
            ChangeKind::Created => Account::new(self.account_id.clone()),
            ChangeKind::Updated => before.cloned().unwrap_or_else(|| Account::new(self.account_id.clone())),
        };
        for change in &self.fields {
            set_field(&mut account, &change.field, change.after.as_ref());
        }
        account.normalize();
        Some(account)
    }

    /// One line for a person: `updated E1002: email a@x → b@x, groups [a] → [a, b]`.
    pub fn summary(&self) -> String {
        let verb = match self.kind {
            ChangeKind::Created => "create",
            ChangeKind::Updated => "update",
            ChangeKind::Deleted => "delete",
        };
        match self.kind {
            ChangeKind::Updated => {
                let fields: Vec<String> = self
                    .fields
                    .iter()
                    .map(|f| format!("{} {} → {}", f.field, show(f.before.as_ref()), show(f.after.as_ref())))
                    .collect();
                format!("{verb} {}: {}", self.account_id, fields.join(", "))
            }
            // Who it is, by the first of these it has.
            _ => {
                let side = |f: &FieldChange| f.after.clone().or_else(|| f.before.clone());
                let label =
                    IDENTIFYING.iter().find_map(|name| self.fields.iter().find(|f| f.field == *name).and_then(side));
                match label {
                    Some(label) => format!("{verb} {} ({})", self.account_id, plain(&label)),
                    None => format!("{verb} {}", self.account_id),
                }
            }
        }
    }
}

/// The fields that say who an account is, in the order a summary prefers.
const IDENTIFYING: [&str; 3] = ["email", "username", "displayName"];

/// An account's fields by name, absent ones left out.
fn fields(account: Option<&Account>) -> Vec<(String, Value)> {
    let Some(a) = account else { return Vec::new() };
    let mut out = Vec::new();
    let mut text = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            out.push((name.to_string(), Value::String(v.clone())));
        }
    };
    text("username", &a.username);
    text("email", &a.email);
    text("displayName", &a.display_name);
    out.push(("enabled".to_string(), Value::Bool(a.enabled)));
    if !a.groups.is_empty() {
        out.push(("groups".to_string(), Value::from(a.groups.clone())));
    }
    out.extend(a.attributes.iter().map(|(k, v)| (format!("attributes.{k}"), v.clone())));
    out
}

/// Sets one field as [`fields`] names it (`None`: the field has no value).
/// A value of the wrong shape leaves the field empty rather than guessing.
fn set_field(account: &mut Account, field: &str, value: Option<&Value>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match field {
        "username" => account.username = text(value),
        "email" => account.email = text(value),
        "displayName" => account.display_name = text(value),
        // `enabled` is always present; a record without it keeps the default.
        "enabled" => account.enabled = value.and_then(Value::as_bool).unwrap_or(true),
        "groups" => {
            account.groups = value
                .and_then(Value::as_array)
                .map(|groups| groups.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        }
        other => {
            if let Some(name) = other.strip_prefix("attributes.") {
                match value {
                    Some(v) => account.attributes.insert(name.to_string(), v.clone()),
                    None => account.attributes.remove(name),
                };
            }
        }
    }
}

/// Standard fields first, in their order, then attributes by name.
fn field_order(field: &str) -> (usize, String) {
    let standard = ["username", "email", "displayName", "enabled", "groups"];
    match standard.iter().position(|s| *s == field) {
        Some(i) => (i, String::new()),
        None => (standard.len(), field.to_string()),
    }
}

/// A value as a person reads it: strings bare, `<none>` for absent, other
/// JSON as JSON; long values cut.
fn show(value: Option<&Value>) -> String {
    match value {
        None => "<none>".to_string(),
        Some(v) => plain(v),
    }
}

fn plain(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 { text.chars().take(77).chain("...".chars()).collect() } else { text }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn account(id: &str, email: &str) -> Account {
        let mut a = Account::new(id);
        a.email = Some(email.into());
        a.attributes.insert("department".into(), json!("R&D"));
        a
    }

    #[test]
    fn an_update_lists_the_fields_that_differ_in_order() {
        let before = account("E2", "grace@old.example");
        let mut after = account("E2", "grace@new.example");
        after.enabled = false;
        after.groups = vec!["admins".into()];
        after.attributes.insert("title".into(), json!("Rear Admiral"));
        after.attributes.remove("department");
        let change = AccountChange::between(Some(&before), Some(&after)).expect("a change");
        assert_eq!(change.kind, ChangeKind::Updated);
        let fields: Vec<(&str, Option<&Value>, Option<&Value>)> =
            change.fields.iter().map(|f| (f.field.as_str(), f.before.as_ref(), f.after.as_ref())).collect();
        assert_eq!(
            fields,
            vec![
                ("email", Some(&json!("grace@old.example")), Some(&json!("grace@new.example"))),
                ("enabled", Some(&json!(true)), Some(&json!(false))),
                ("groups", None, Some(&json!(["admins"]))),
                ("attributes.department", Some(&json!("R&D")), None),
                ("attributes.title", None, Some(&json!("Rear Admiral"))),
            ]
        );
        assert_eq!(
            change.summary(),
            "update E2: email grace@old.example → grace@new.example, enabled true → false, groups <none> → [\"admins\"], \
             attributes.department R&D → <none>, attributes.title <none> → Rear Admiral"
        );
    }

    #[test]
    fn creations_and_deletions_carry_every_field_and_read_by_who() {
        let ada = account("E1", "ada@acme.example");
        let created = AccountChange::between(None, Some(&ada)).expect("created");
        assert_eq!(created.kind, ChangeKind::Created);
        assert!(created.fields.iter().all(|f| f.before.is_none() && f.after.is_some()));
        assert_eq!(created.summary(), "create E1 (ada@acme.example)");
        // What the run history keeps of a creation: who, not every field.
        let kept = AccountChange::creation(&ada);
        assert_eq!(kept.fields.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(), ["email"]);
        assert_eq!(kept.summary(), created.summary());
        let deleted = AccountChange::between(Some(&ada), None).expect("deleted");
        assert_eq!(deleted.kind, ChangeKind::Deleted);
        assert!(deleted.fields.iter().all(|f| f.before.is_some() && f.after.is_none()));
        assert_eq!(deleted.summary(), "delete E1 (ada@acme.example)");
        assert_eq!(AccountChange::between(None, None), None);
        assert_eq!(AccountChange::between(Some(&ada), Some(&ada)).map(|c| c.fields.len()), Some(0));
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ChangeKind::parse("created"), None);
    }

    #[test]
    fn a_full_change_applied_to_the_account_before_gives_the_account_after() {
        let mut before = account("E2", "grace@old.example");
        before.username = Some("grace".into());
        let mut after = account("E2", "grace@new.example");
        after.enabled = false;
        after.username = None;
        after.groups = vec!["admins".into(), "eng".into()];
        after.attributes.insert("title".into(), json!({"rank": "Rear Admiral"}));
        after.attributes.remove("department");
        let update = AccountChange::between(Some(&before), Some(&after)).expect("updated");
        assert_eq!(update.apply(Some(&before)), Some(after.clone()));
        let creation = AccountChange::between(None, Some(&after)).expect("created");
        assert_eq!(creation.apply(None), Some(after.clone()));
        let deletion = AccountChange::between(Some(&after), None).expect("deleted");
        assert_eq!(deletion.apply(Some(&after)), None);
    }
}
