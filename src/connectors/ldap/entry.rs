//! A search result entry as the connector reads it: decoded straight from
//! the BER tree ldap3 hands over, moving each value's bytes rather than
//! copying them, and refusing a malformed entry with an error where
//! `ldap3::SearchEntry::construct` would panic.
//!
//! A full read decodes every attribute value of every user, so this is on
//! the hot path: one `Vec` per attribute, no map, no second copy of a value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ldap3::asn1::{PL, StructureTag, TagClass};
use ldap3::{ResultEntry, SearchEntry};

/// SearchResultEntry's application tag (RFC 4511 §4.5.2).
const SEARCH_RESULT_ENTRY: u64 = 4;

/// An entry the server sent that is not a well-formed SearchResultEntry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed search result entry: {0}")]
pub struct DecodeError(&'static str);

/// An attribute's values: all text, or (when any value is not UTF-8, as a
/// binary attribute's) all bytes, as `ldap3::SearchEntry` splits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    Text(Vec<String>),
    Binary(Vec<Vec<u8>>),
}

/// One user entry: its DN and attributes in the order the server sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dn: String,
    pub attrs: Vec<(String, Values)>,
}

fn constructed(tag: StructureTag, what: &'static str) -> Result<Vec<StructureTag>, DecodeError> {
    match tag.payload {
        PL::C(children) => Ok(children),
        PL::P(_) => Err(DecodeError(what)),
    }
}

fn primitive(tag: StructureTag, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    match tag.payload {
        PL::P(bytes) => Ok(bytes),
        PL::C(_) => Err(DecodeError(what)),
    }
}

impl Entry {
    /// Decodes a search result entry (not a referral or an intermediate
    /// message: the caller leaves those out).
    pub fn decode(entry: ResultEntry) -> Result<Entry, DecodeError> {
        let tag = entry.0;
        if tag.class != TagClass::Application || tag.id != SEARCH_RESULT_ENTRY {
            return Err(DecodeError("not a SearchResultEntry"));
        }
        let mut parts = constructed(tag, "the entry is not a sequence")?.into_iter();
        let dn = parts.next().ok_or(DecodeError("no DN"))?;
        let dn = String::from_utf8(primitive(dn, "the DN is not a string")?)
            .map_err(|_| DecodeError("the DN is not UTF-8"))?;
        let list = parts.next().ok_or(DecodeError("no attribute list"))?;
        let list = constructed(list, "the attribute list is not a sequence")?;
        let mut attrs = Vec::with_capacity(list.len());
        for attribute in list {
            let mut attribute = constructed(attribute, "an attribute is not a sequence")?.into_iter();
            let name = attribute.next().ok_or(DecodeError("an attribute without a type"))?;
            let name = String::from_utf8(primitive(name, "an attribute type is not a string")?)
                .map_err(|_| DecodeError("an attribute type is not UTF-8"))?;
            let vals = attribute.next().ok_or(DecodeError("an attribute without values"))?;
            let vals = constructed(vals, "an attribute's values are not a set")?;
            let mut bytes = Vec::with_capacity(vals.len());
            for value in vals {
                bytes.push(primitive(value, "an attribute value is not a string")?);
            }
            attrs.push((name, Values::from_bytes(bytes)));
        }
        Ok(Entry { dn, attrs })
    }

    /// The values of the attribute `name` (any case), if the entry has it.
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a Values> {
        self.all(name).next()
    }

    /// Every attribute named `name` in any case: a server sends each once,
    /// but nothing here relies on that.
    fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Values> + use<'a, 'n> {
        self.attrs.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The attribute's values as strings (binary values base64).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.all(name).flat_map(Values::strings).collect()
    }

    /// The attribute's first value with surrounding spaces trimmed that is
    /// not empty.
    pub fn first_value(&self, name: &str) -> Option<String> {
        self.all(name).find_map(|values| match values {
            Values::Text(values) => values.iter().map(|v| v.trim()).find(|v| !v.is_empty()).map(str::to_string),
            Values::Binary(values) => values.iter().map(|v| BASE64.encode(v)).find(|v| !v.is_empty()),
        })
    }

    /// The raw bytes of the attribute's first value (text or binary).
    pub fn first_bytes<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        self.all(name).find_map(|values| match values {
            Values::Text(values) => values.first().map(|v| v.as_bytes()),
            Values::Binary(values) => values.first().map(Vec::as_slice),
        })
    }
}

impl Values {
    /// Text when every value is UTF-8 (no copy), else bytes.
    fn from_bytes(values: Vec<Vec<u8>>) -> Values {
        if values.iter().all(|v| std::str::from_utf8(v).is_ok()) {
            // Checked above: each conversion succeeds without copying.
            Values::Text(values.into_iter().filter_map(|v| String::from_utf8(v).ok()).collect())
        } else {
            Values::Binary(values)
        }
    }

    /// The values as strings (binary values base64).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Values::Text(values) => values.clone(),
            Values::Binary(values) => values.iter().map(|v| BASE64.encode(v)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::Text(values) => values.len(),
            Values::Binary(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<SearchEntry> for Entry {
    fn from(entry: SearchEntry) -> Entry {
        let mut attrs: Vec<(String, Values)> =
            entry.attrs.into_iter().map(|(name, values)| (name, Values::Text(values))).collect();
        attrs.extend(entry.bin_attrs.into_iter().map(|(name, values)| (name, Values::Binary(values))));
        Entry { dn: entry.dn, attrs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{ASNTag, OctetString, Sequence, Set, Tag, write};

    fn octets(bytes: &[u8]) -> Tag {
        Tag::OctetString(OctetString { inner: bytes.to_vec(), ..Default::default() })
    }

    /// A SearchResultEntry as a server encodes it, parsed back as ldap3's
    /// codec does.
    fn wire(dn: &str, attrs: &[(&str, &[&[u8]])]) -> ResultEntry {
        let attrs = attrs
            .iter()
            .map(|(name, values)| {
                Tag::Sequence(Sequence {
                    inner: vec![
                        octets(name.as_bytes()),
                        Tag::Set(Set { inner: values.iter().map(|v| octets(v)).collect(), ..Default::default() }),
                    ],
                    ..Default::default()
                })
            })
            .collect();
        let tag = Tag::Sequence(Sequence {
            id: SEARCH_RESULT_ENTRY,
            class: TagClass::Application,
            inner: vec![octets(dn.as_bytes()), Tag::Sequence(Sequence { inner: attrs, ..Default::default() })],
        });
        let mut buf = bytes::BytesMut::new();
        write::encode_into(&mut buf, tag.into_structure()).unwrap();
        let (_, parsed) = ldap3::asn1::parse_tag(&buf).unwrap();
        ResultEntry::new(parsed)
    }

    #[test]
    fn decodes_as_search_entry_does() {
        let raw = wire(
            "uid=a,ou=people,dc=x",
            &[
                ("uid", &[b"a"]),
                ("telephoneNumber", &[b"1", b"2"]),
                ("objectGUID", &[&[0xff, 0x00, 0x01]]),
                ("mixed", &[b"text", &[0xc3]]),
            ],
        );
        let entry = Entry::decode(raw.clone()).unwrap();
        assert_eq!(entry.dn, "uid=a,ou=people,dc=x");
        assert_eq!(entry.values("UID"), ["a"]);
        assert_eq!(entry.values("telephonenumber"), ["1", "2"]);
        assert_eq!(entry.get("objectGUID"), Some(&Values::Binary(vec![vec![0xff, 0x00, 0x01]])));
        assert_eq!(entry.values("objectGUID"), [BASE64.encode([0xff, 0x00, 0x01])]);
        assert_eq!(entry.first_bytes("objectguid"), Some(&[0xff, 0x00, 0x01][..]));
        // One binary value makes them all binary; in the order sent (ldap3
        // puts the binary ones first).
        assert_eq!(entry.values("mixed"), [BASE64.encode("text"), BASE64.encode([0xc3])]);
        assert_eq!(entry.values("absent"), Vec::<String>::new());

        // What ldap3's own decoding makes of the same bytes.
        let reference = Entry::from(SearchEntry::construct(raw));
        for name in ["uid", "telephoneNumber", "objectGUID", "mixed"] {
            let (mut ours, mut theirs) = (entry.values(name), reference.values(name));
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "{name}");
        }
        assert_eq!(entry.dn, reference.dn);
    }

    #[test]
    fn first_value_skips_blank_values() {
        let entry = Entry::decode(wire("cn=x", &[("mail", &[b"  ", b" a@x "])])).unwrap();
        assert_eq!(entry.first_value("mail").as_deref(), Some("a@x"));
        assert_eq!(entry.first_value("cn"), None);
    }

    #[test]
    fn a_malformed_entry_is_an_error_not_a_panic() {
        let bad = |tag: StructureTag| Entry::decode(ResultEntry::new(tag)).unwrap_err();
        let p = |bytes: &[u8]| StructureTag { class: TagClass::Universal, id: 4, payload: PL::P(bytes.to_vec()) };
        let app = |children: Vec<StructureTag>| StructureTag {
            class: TagClass::Application,
            id: SEARCH_RESULT_ENTRY,
            payload: PL::C(children),
        };
        let seq =
            |children: Vec<StructureTag>| StructureTag { class: TagClass::Universal, id: 16, payload: PL::C(children) };
        assert_eq!(bad(p(b"x")), DecodeError("not a SearchResultEntry"));
        assert_eq!(bad(app(vec![])), DecodeError("no DN"));
        assert_eq!(bad(app(vec![p(&[0xff])])), DecodeError("the DN is not UTF-8"));
        assert_eq!(bad(app(vec![p(b"cn=x")])), DecodeError("no attribute list"));
        assert_eq!(bad(app(vec![p(b"cn=x"), p(b"")])), DecodeError("the attribute list is not a sequence"));
        assert_eq!(
            bad(app(vec![p(b"cn=x"), seq(vec![seq(vec![p(b"cn")])])])),
            DecodeError("an attribute without values")
        );
        assert_eq!(
            bad(app(vec![p(b"cn=x"), seq(vec![seq(vec![p(b"cn"), seq(vec![seq(vec![])])])])])),
            DecodeError("an attribute value is not a string")
        );
        // No attributes at all (a "1.1" search) is well formed.
        assert_eq!(Entry::decode(ResultEntry::new(app(vec![p(b"cn=x"), seq(vec![])]))).unwrap().attrs, vec![]);
    }
}
