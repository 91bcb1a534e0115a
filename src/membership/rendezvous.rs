//! Rendezvous (highest-random-weight) hashing: each key goes to the member
//! with the highest hash of (member, key). Every replica that sees the same
//! members computes the same owner without talking to the others, and a
//! member joining or leaving moves only the keys it wins or held: about
//! 1/n of them, never keys between two members that stayed.

use sha2::{Digest, Sha256};

/// The weight of `member` for `key`.
fn weight(member: &str, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(member.as_bytes());
    // A separator, so ("ab", "c") and ("a", "bc") weigh differently.
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The member that owns `key`: the highest weight, ties (of 64-bit hashes:
/// in practice never) broken by the greater identity so that the answer
/// does not depend on the order the members come in. None without members.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    members.into_iter().max_by(|a, b| weight(a, key).cmp(&weight(b, key)).then_with(|| a.cmp(b)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn keys() -> Vec<String> {
        (0..1000).map(|i| format!("connection/default/c-{i:04}")).collect()
    }

    fn owners(members: &[&str]) -> BTreeMap<String, String> {
        keys()
            .into_iter()
            .map(|k| {
                let o = owner(members.iter().copied(), &k).expect("an owner").to_string();
                (k, o)
            })
            .collect()
    }

    #[test]
    fn every_key_has_one_owner_among_the_members_whatever_their_order() {
        let members = ["pod-a-1", "pod-b-2", "pod-c-3"];
        let reversed = ["pod-c-3", "pod-b-2", "pod-a-1"];
        let (by_one, by_other) = (owners(&members), owners(&reversed));
        assert_eq!(by_one, by_other);
        assert!(by_one.values().all(|o| members.contains(&o.as_str())));
        // Spread: each of three gets a fair share of 1,000 keys.
        for m in members {
            let n = by_one.values().filter(|o| *o == m).count();
            assert!((250..=420).contains(&n), "{m} owns {n} of 1000");
        }
        assert_eq!(owner(std::iter::empty(), "connection/default/hr"), None);
    }

    #[test]
    fn a_fourth_member_takes_about_a_quarter_and_only_for_itself() {
        let before = owners(&["pod-a-1", "pod-b-2", "pod-c-3"]);
        let after = owners(&["pod-a-1", "pod-b-2", "pod-c-3", "pod-d-4"]);
        let moved: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
        assert!(moved.iter().all(|k| after[*k] == "pod-d-4"), "a key moved between members that stayed");
        assert!((180..=320).contains(&moved.len()), "{} of 1000 keys moved", moved.len());
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_keys() {
        let before = owners(&["pod-a-1", "pod-b-2", "pod-c-3"]);
        let after = owners(&["pod-a-1", "pod-c-3"]);
        for (key, was) in &before {
            if was == "pod-b-2" {
                assert_ne!(after[key], "pod-b-2");
            } else {
                assert_eq!(&after[key], was, "{key} moved though its owner stayed");
            }
        }
    }
}
