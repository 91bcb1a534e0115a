//! Microsoft Graph's wire format as the msgraph provider reads it: delta
//! pages (`value`, `@odata.nextLink`, `@odata.deltaLink`), removed entries
//! (`@removed` with its `reason`), `members@delta` / `manager@delta`, the
//! OData error body, and how a user becomes an account.

use serde_json::{Map, Value};

use crate::model::Account;

/// The user properties always read (`$select`), besides the extra ones a
/// Connection names.
pub const USER_PROPERTIES: [&str; 15] = [
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "givenName",
    "surname",
    "accountEnabled",
    "userType",
    "employeeId",
    "employeeType",
    "department",
    "jobTitle",
    "companyName",
    "employeeHireDate",
    "employeeLeaveDateTime",
];

/// Properties copied into `Account::attributes` under the same name.
const ATTRIBUTE_PROPERTIES: [&str; 10] = [
    "givenName",
    "surname",
    "userType",
    "employeeId",
    "employeeType",
    "department",
    "jobTitle",
    "companyName",
    "employeeHireDate",
    "employeeLeaveDateTime",
];

/// The most bytes one user object may take (as for SCIM users).
pub const MAX_USER_BYTES: usize = 4 * 1024 * 1024;

/// One page of a delta round.
#[derive(Debug, Default)]
pub struct DeltaPage {
    pub value: Vec<Value>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

impl DeltaPage {
    pub fn parse(body: Value) -> Result<DeltaPage, String> {
        let Value::Object(mut body) = body else {
            return Err("the response is not a JSON object".to_string());
        };
        let value = match body.remove("value") {
            Some(Value::Array(items)) => items,
            Some(_) => return Err("value is not a list".to_string()),
            None => return Err("the response has no value".to_string()),
        };
        let link = |body: &mut Map<String, Value>, name: &str| -> Result<Option<String>, String> {
            match body.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
                Some(_) => Err(format!("{name} is not a URL")),
            }
        };
        let next_link = link(&mut body, "@odata.nextLink")?;
        let delta_link = link(&mut body, "@odata.deltaLink")?;
        if next_link.is_none() && delta_link.is_none() {
            return Err("the page has neither @odata.nextLink nor @odata.deltaLink".to_string());
        }
        Ok(DeltaPage { value, next_link, delta_link })
    }
}

/// Why an entry was removed: `deleted` (gone for good) or `changed` (soft
/// deleted, or out of the query's scope; it may come back).
pub fn removed_reason(entry: &Value) -> Option<&str> {
    let removed = entry.get("@removed")?;
    Some(removed.get("reason").and_then(Value::as_str).unwrap_or("deleted"))
}

pub fn str_at<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The manager's id from `manager@delta` (a delta round with
/// `$expand=manager`) or `manager` (a plain GET). `None`: the object says
/// nothing about the manager; `Some(None)`: it has none.
pub fn manager(user: &Value) -> Option<Option<String>> {
    if let Some(entries) = user.get("manager@delta").and_then(Value::as_array) {
        let current = entries.iter().filter(|e| e.get("@removed").is_none()).find_map(|e| str_at(e, "id"));
        return Some(current.map(String::from));
    }
    match user.get("manager") {
        Some(Value::Null) => Some(None),
        Some(manager) => Some(str_at(manager, "id").map(String::from)),
        None => None,
    }
}

/// Whether a delta entry carries every property read, so that it can stand
/// for the whole user (Graph sends an updated user with *at least* the
/// properties that changed) and says who its manager is.
pub fn is_complete(user: &Value, select: &[String]) -> bool {
    select.iter().all(|p| user.get(p).is_some()) && manager(user).is_some()
}

/// Why a Graph user cannot become an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("a user has no id")]
    NoId,
    #[error("user {id:?}: accountEnabled is {value}, not true or false; it cannot tell whether the account is enabled")]
    Enabled { id: String, value: String },
    #[error("user {id:?} is {bytes} bytes, more than the {max} a user may take", max = MAX_USER_BYTES)]
    TooLarge { id: String, bytes: usize },
}

/// Maps a Graph user to an account (without groups). `extra` are the extra
/// properties the Connection reads.
pub fn map_user(user: &Value, extra: &[String]) -> Result<Account, UserError> {
    let id = str_at(user, "id").ok_or(UserError::NoId)?.to_string();
    let bytes = serde_json::to_vec(user).map_or(0, |b| b.len());
    if bytes > MAX_USER_BYTES {
        return Err(UserError::TooLarge { id, bytes });
    }
    let enabled = match user.get("accountEnabled") {
        // Unset: Graph leaves it null for accounts it does not manage the
        // sign-in of; as for SCIM, unassigned means enabled.
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(UserError::Enabled { id, value: other.to_string() }),
    };
    let mut account = Account::new(id);
    account.username = str_at(user, "userPrincipalName").map(String::from);
    account.email = str_at(user, "mail").map(String::from);
    let given = str_at(user, "givenName");
    let surname = str_at(user, "surname");
    account.display_name = str_at(user, "displayName").map(String::from).or_else(|| match (given, surname) {
        (None, None) => None,
        (given, surname) => Some([given, surname].into_iter().flatten().collect::<Vec<_>>().join(" ")),
    });
    account.enabled = enabled;
    for name in ATTRIBUTE_PROPERTIES.iter().copied().chain(extra.iter().map(String::as_str)) {
        match user.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.trim().is_empty() => {}
            Some(Value::String(s)) => {
                account.attributes.insert(name.to_string(), Value::String(s.trim().to_string()));
            }
            Some(other) => {
                account.attributes.insert(name.to_string(), other.clone());
            }
        }
    }
    if let Some(Some(manager)) = manager(user) {
        account.attributes.insert("manager".to_string(), Value::String(manager));
    }
    account.normalize();
    Ok(account)
}

/// Whether a user has a licence (`assignedLicenses` not empty).
pub fn is_licensed(user: &Value) -> bool {
    user.get("assignedLicenses").and_then(Value::as_array).is_some_and(|l| !l.is_empty())
}

/// Whether a user is a guest (`userType` Guest).
pub fn is_guest(user: &Value) -> bool {
    str_at(user, "userType").is_some_and(|t| t.eq_ignore_ascii_case("guest"))
}

/// The members of a `members@delta` list: (user id, removed?). Members
/// that are not users (groups, devices, service principals) are left out.
pub fn member_changes(group: &Value) -> Vec<(String, bool)> {
    group
        .get("members@delta")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("@odata.type").and_then(Value::as_str).is_none_or(|t| t == "#microsoft.graph.user"))
        .filter_map(|m| str_at(m, "id").map(|id| (id.to_string(), m.get("@removed").is_some())))
        .collect()
}

/// The JSON body an HttpClient error message quotes (`…: {…}`), when it
/// parses.
pub fn quoted_json(message: &str) -> Option<Value> {
    let start = message.find(": {")? + 2;
    let end = message.rfind('}')? + 1;
    if end <= start {
        return None;
    }
    serde_json::from_str(&message[start..end]).ok()
}

/// The string `"key": "…"` of a JSON text that may be cut short (an
/// HttpClient error message quotes only the start of a body): unescaped,
/// up to its end or the cut.
pub fn json_string_field(text: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let at = text.find(&pattern)? + pattern.len();
    let rest = text[at..].trim_start().strip_prefix('"')?;
    let mut raw = String::new();
    let mut escaped = false;
    for c in rest.chars() {
        match c {
            '"' if !escaped => break,
            '…' => break,
            '\\' if !escaped => {
                escaped = true;
                raw.push(c);
                continue;
            }
            _ => {}
        }
        escaped = false;
        raw.push(c);
    }
    // An escape cut in half cannot be read: drop it.
    if escaped {
        raw.pop();
    }
    Some(serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or(raw))
}

/// `code: message` of a Graph error body (`{"error": {"code", "message"}}`).
pub fn graph_error(body: &Value) -> Option<(String, Option<String>)> {
    let error = body.get("error")?;
    let code = error.get("code").and_then(Value::as_str)?.to_string();
    let message = error.get("message").and_then(Value::as_str).map(String::from);
    Some((code, message))
}

/// The Graph error code of an HttpClient error message, when it quotes one.
/// A body cut short still names its code: look for it.
pub fn error_code(message: &str) -> Option<String> {
    if let Some((code, _)) = quoted_json(message).as_ref().and_then(graph_error) {
        return Some(code);
    }
    let at = message.find("\"code\":\"")? + 8;
    let rest = &message[at..];
    Some(rest[..rest.find('"')?].to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn maps_a_graph_user() {
        let user = json!({
            "@odata.type": "#microsoft.graph.user",
            "id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
            "userPrincipalName": "AdeleV@contoso.com",
            "mail": "AdeleV@contoso.com",
            "displayName": "Adele Vance",
            "givenName": "Adele",
            "surname": "Vance",
            "accountEnabled": false,
            "userType": "Member",
            "employeeId": "1001",
            "department": "Retail",
            "jobTitle": "Retail Manager",
            "employeeHireDate": "2020-01-31T00:00:00Z",
            "employeeLeaveDateTime": null,
            "officeLocation": "18/2111",
            "manager@delta": [{"@odata.type": "#microsoft.graph.user", "id": "boss-1"}],
        });
        let account = map_user(&user, &["officeLocation".to_string()]).unwrap();
        assert_eq!(account.id, "87d349ed-44d7-43e1-9a83-5f2406dee5bd");
        assert_eq!(account.username.as_deref(), Some("AdeleV@contoso.com"));
        assert_eq!(account.email.as_deref(), Some("AdeleV@contoso.com"));
        assert_eq!(account.display_name.as_deref(), Some("Adele Vance"));
        assert!(!account.enabled);
        let attributes: Vec<(&str, &str)> =
            account.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        assert_eq!(
            attributes,
            vec![
                ("department", "Retail"),
                ("employeeHireDate", "2020-01-31T00:00:00Z"),
                ("employeeId", "1001"),
                ("givenName", "Adele"),
                ("jobTitle", "Retail Manager"),
                ("manager", "boss-1"),
                ("officeLocation", "18/2111"),
                ("surname", "Vance"),
                ("userType", "Member"),
            ]
        );
        let minimal = map_user(&json!({"id": "u2", "givenName": "Ann", "surname": "Lee"}), &[]).unwrap();
        assert_eq!(minimal.display_name.as_deref(), Some("Ann Lee"));
        assert!(minimal.enabled);
        assert_eq!(map_user(&json!({"mail": "x"}), &[]), Err(UserError::NoId));
        assert!(matches!(map_user(&json!({"id": "u3", "accountEnabled": "yes"}), &[]), Err(UserError::Enabled { .. })));
    }

    #[test]
    fn reads_delta_pages_removals_and_members() {
        let page = DeltaPage::parse(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id)",
            "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=abc",
            "value": [{"id": "a"}, {"id": "b", "@removed": {"reason": "changed"}}, {"id": "c", "@removed": {}}],
        }))
        .unwrap();
        assert_eq!(page.value.len(), 3);
        assert!(page.next_link.is_some() && page.delta_link.is_none());
        assert_eq!(
            page.value.iter().map(removed_reason).collect::<Vec<_>>(),
            vec![None, Some("changed"), Some("deleted")]
        );
        assert!(DeltaPage::parse(json!({"value": []})).is_err(), "a page without a link cannot be followed");
        assert!(DeltaPage::parse(json!({"@odata.deltaLink": "x"})).is_err());

        let group = json!({"id": "g", "displayName": "Sales", "members@delta": [
            {"@odata.type": "#microsoft.graph.user", "id": "u1"},
            {"@odata.type": "#microsoft.graph.group", "id": "nested"},
            {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}},
        ]});
        assert_eq!(member_changes(&group), vec![("u1".to_string(), false), ("u2".to_string(), true)]);

        let select: Vec<String> = vec!["id".into(), "mail".into()];
        assert!(is_complete(&json!({"id": "a", "mail": null, "manager@delta": []}), &select));
        assert!(!is_complete(&json!({"id": "a", "manager@delta": []}), &select), "mail missing");
        assert!(!is_complete(&json!({"id": "a", "mail": null}), &select), "manager unknown");
        assert_eq!(manager(&json!({"manager": {"id": "m"}})), Some(Some("m".to_string())));
        assert_eq!(manager(&json!({"manager@delta": [{"id": "m", "@removed": {"reason": "deleted"}}]})), Some(None));
    }

    #[test]
    fn finds_graph_error_codes_in_messages() {
        let m = r#"GET https://g/v1.0/users/delta?$deltatoken=REDACTED answered HTTP 410 Gone: {"error":{"code":"syncStateNotFound","message":"The sync state is gone."}}"#;
        assert_eq!(error_code(m).as_deref(), Some("syncStateNotFound"));
        assert_eq!(
            error_code(
                r#"answered HTTP 410 Gone: {"error":{"code":"resyncRequired","message":"Resync required because the …"#
            )
            .as_deref(),
            Some("resyncRequired")
        );
        assert_eq!(error_code("answered HTTP 410 Gone"), None);
        assert_eq!(
            json_string_field(
                r#"x: {"error":"invalid_client","error_description":"AADSTS1: a \"b\"\r\nTrace"#,
                "error_description"
            )
            .as_deref(),
            Some("AADSTS1: a \"b\"\r\nTrace")
        );
        assert_eq!(
            json_string_field(r#"{"error_description":"cut here…"#, "error_description").as_deref(),
            Some("cut here")
        );
        assert_eq!(json_string_field(r#"{"error":"x"}"#, "error").as_deref(), Some("x"));
        assert!(is_guest(&json!({"userType": "Guest"})) && !is_guest(&json!({"userType": "Member"})));
        assert!(
            is_licensed(&json!({"assignedLicenses": [{"skuId": "x"}]}))
                && !is_licensed(&json!({"assignedLicenses": []}))
        );
    }
}
