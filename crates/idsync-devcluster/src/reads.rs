//! A tally of the reads the devcluster answered: which resource, get, list
//! or watch, and in which representation. It lets a test check what a
//! client was sent, e.g. that an operator lists and watches Secrets by
//! their metadata only. Counts rather than a log, since `idsync dev` may run
//! for days.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::representation::Representation;

/// A read verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadVerb {
    Get,
    List,
    Watch,
}

/// How many reads of one kind were answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadCount {
    /// `plural` or `plural.group`, e.g. `secrets` or `connections.idsync.dev`.
    pub resource: String,
    pub verb: ReadVerb,
    pub representation: Representation,
    pub count: u64,
}

/// The tally.
#[derive(Debug, Default)]
pub struct Reads {
    counts: Mutex<BTreeMap<(String, ReadVerb, Representation), u64>>,
}

impl Reads {
    pub fn record(&self, resource: &str, verb: ReadVerb, representation: Representation) {
        // A poisoned tally is still a tally: a panic elsewhere must not
        // stop reads being counted.
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry((resource.to_string(), verb, representation)).or_default() += 1;
    }

    /// Every count, by resource, verb and representation.
    pub fn counts(&self) -> Vec<ReadCount> {
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .iter()
            .map(|((resource, verb, representation), count)| ReadCount {
                resource: resource.clone(),
                verb: *verb,
                representation: *representation,
                count: *count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_by_resource_verb_and_representation() {
        let reads = Reads::default();
        reads.record("secrets", ReadVerb::List, Representation::Metadata);
        reads.record("secrets", ReadVerb::List, Representation::Metadata);
        reads.record("secrets", ReadVerb::Get, Representation::Object);
        reads.record("configmaps", ReadVerb::Watch, Representation::Metadata);
        let count = |resource: &str, verb, representation| {
            reads
                .counts()
                .into_iter()
                .find(|c| c.resource == resource && c.verb == verb && c.representation == representation)
                .map(|c| c.count)
        };
        assert_eq!(count("secrets", ReadVerb::List, Representation::Metadata), Some(2));
        assert_eq!(count("secrets", ReadVerb::Get, Representation::Object), Some(1));
        assert_eq!(count("secrets", ReadVerb::List, Representation::Object), None);
        assert_eq!(count("configmaps", ReadVerb::Watch, Representation::Metadata), Some(1));
        assert_eq!(reads.counts().len(), 3);
    }
}
