//! Authentication: each bearer token is one user (a name, a uid, groups),
//! and the calls each user was allowed are tallied for tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{Access, UserInfo};

/// Every authenticated user is in this group.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The user `username` in `groups`, plus the groups the API server adds:
/// `system:authenticated` for everyone, and `system:serviceaccounts` and
/// `system:serviceaccounts:NS` for a service account's name.
pub fn user_info(username: &str, uid: &str, groups: &[&str]) -> UserInfo {
    let mut all: Vec<String> = Vec::new();
    let mut add = |g: &str| {
        if !all.iter().any(|x| x == g) {
            all.push(g.to_string());
        }
    };
    groups.iter().for_each(|g| add(g));
    if let Some(namespace) = username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) {
        add("system:serviceaccounts");
        add(&format!("system:serviceaccounts:{}", namespace.0));
    }
    add(AUTHENTICATED);
    UserInfo { username: username.to_string(), uid: uid.to_string(), groups: all }
}

/// The tokens and what their users did.
#[derive(Default)]
pub struct Users {
    by_token: Mutex<HashMap<String, UserInfo>>,
    /// By username: the distinct calls allowed.
    made: Mutex<HashMap<String, BTreeSet<Access>>>,
}

/// A poisoned lock still holds consistent data here (maps are updated by
/// single inserts), so it is used rather than failing every request.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Users {
    pub fn add(&self, token: String, user: UserInfo) {
        locked(&self.by_token).insert(token, user);
    }

    /// The user a bearer token authenticates, if any.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        locked(&self.by_token).get(token).cloned()
    }

    pub fn record(&self, username: &str, access: Access) {
        let mut made = locked(&self.made);
        // Cloning the name only on a user's first call keeps this cheap.
        match made.get_mut(username) {
            Some(set) => {
                set.insert(access);
            }
            None => {
                made.insert(username.to_string(), BTreeSet::from([access]));
            }
        }
    }

    /// The distinct calls `username` made and was allowed, sorted.
    pub fn accesses(&self, username: &str) -> Vec<Access> {
        locked(&self.made).get(username).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_is_authenticated_and_service_accounts_get_their_groups() {
        let sa = user_info("system:serviceaccount:idsync:idsync", "u1", &[]);
        assert_eq!(sa.groups, ["system:serviceaccounts", "system:serviceaccounts:idsync", "system:authenticated"]);
        let dev = user_info("dev", "", &["team", "system:authenticated"]);
        assert_eq!(dev.groups, ["team", "system:authenticated"]);
    }
}
