//! Interned strings, and the small sorted map of them that cached objects and the provider's
//! views share ([`Strings`]).
//!
//! The operator holds thousands of copies of the same few hundred texts: every kubelet reports the
//! same label keys, resource names and, on one kind of machine, the same quantities, and the
//! provider's views repeat what the cache holds. Interned, each distinct text is allocated once;
//! a map of them is one shared slice of pointers.
//!
//! Pure data: no I/O. The interner is a process-wide set behind a mutex, taken only when an
//! object is read from the API server or built.
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string shared by every holder of the same text (see [`intern`]).
pub type Shared = Arc<str>;

/// The entries of a [`Strings`]: equal maps (the capacity of every machine of one model) share
/// one slice too.
type Entries = Arc<[(Shared, Shared)]>;

/// One kind of interned value. Entries nobody else holds are dropped whenever the set has
/// doubled since the last sweep, so Nodes and labels that went away do not accumulate.
struct Pool<T: ?Sized> {
    set: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Eq + std::hash::Hash> Pool<T> {
    const FIRST_SWEEP: usize = 1024;

    fn new() -> Self {
        Pool {
            set: HashSet::new(),
            sweep_at: Self::FIRST_SWEEP,
        }
    }

    fn get_or_insert(&mut self, value: &T, make: impl FnOnce(&T) -> Arc<T>) -> Arc<T> {
        if let Some(found) = self.set.get(value) {
            return found.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.set.len() * 2).max(Self::FIRST_SWEEP);
        }
        let shared = make(value);
        self.set.insert(shared.clone());
        shared
    }
}

struct Interner {
    strings: Pool<str>,
    maps: Pool<[(Shared, Shared)]>,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        strings: Pool::new(),
        maps: Pool::new(),
    })
});

/// The shared copy of `s`: one allocation per distinct text, however many Nodes carry it.
pub fn intern(s: &str) -> Shared {
    crate::lock(&INTERNER)
        .strings
        .get_or_insert(s, |s: &str| Arc::from(s))
}

/// The shared copy of a map's entries.
fn intern_entries(entries: &[(Shared, Shared)]) -> Entries {
    crate::lock(&INTERNER)
        .maps
        .get_or_insert(entries, |e: &[(Shared, Shared)]| Arc::from(e))
}

/// A small map of shared strings, sorted by key: labels, annotations, capacity. Cloning it
/// clones one pointer, so the provider's views of a Node share the cache's copy.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Strings(Option<Entries>);

impl Strings {
    pub fn get(&self, key: &str) -> Option<&str> {
        let entries = self.entries();
        entries
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| entries[i].1.as_ref())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries().iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries().iter().map(|(k, _)| k.as_ref())
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// A copy with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Strings {
        self.iter().chain([(key, value)]).collect()
    }

    /// An owned copy, for code that edits the map (the node side's patches).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn entries(&self) -> &[(Shared, Shared)] {
        self.0.as_deref().unwrap_or_default()
    }
}

/// Interns every key and value; a key given twice keeps its last value, as in a map.
impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Strings {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: BTreeMap<Shared, Shared> = BTreeMap::new();
        for (k, v) in iter {
            entries.insert(intern(k.as_ref()), intern(v.as_ref()));
        }
        if entries.is_empty() {
            return Strings(None);
        }
        let entries: Vec<(Shared, Shared)> = entries.into_iter().collect();
        Strings(Some(intern_entries(&entries)))
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Strings {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl fmt::Debug for Strings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a JSON object of strings.
impl Serialize for Strings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// From a JSON object whose values are strings (or numbers, which a quantity may be written as).
impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Strings;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strings, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<String, Text>()? {
                    entries.push((k, v.0));
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// A map value: a string, or a number kept as its decimal text.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_look_up_by_key_and_share_equal_texts() {
        let a: Strings = [
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
        .into_iter()
        .collect();
        let b: Strings = [("kubernetes.io/arch", "amd64")].into_iter().collect();
        assert_eq!(a.get("kubernetes.io/os"), Some("linux"));
        assert_eq!(a.get("kubernetes.io/arch"), Some("amd64"));
        assert_eq!(a.get("missing"), None);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            ["kubernetes.io/arch", "kubernetes.io/os"],
            "sorted by key"
        );
        let (ka, va) = &a.entries()[0];
        let (kb, vb) = &b.entries()[0];
        assert!(
            Arc::ptr_eq(ka, kb) && Arc::ptr_eq(va, vb),
            "one copy of each text"
        );
        let again: Strings = [("kubernetes.io/arch", "amd64")].into_iter().collect();
        assert!(
            matches!((&again.0, &b.0), (Some(x), Some(y)) if Arc::ptr_eq(x, y)),
            "one copy of equal maps"
        );
        let relabelled = a.with("kubernetes.io/os", "windows");
        assert_eq!(
            relabelled.get("kubernetes.io/os"),
            Some("windows"),
            "the new value wins"
        );
        assert_eq!(relabelled.len(), 2);
    }

    #[test]
    fn an_empty_map_allocates_nothing() {
        let empty: Strings = std::iter::empty::<(&str, &str)>().collect();
        assert_eq!(empty, Strings::default());
        assert!(empty.is_empty());
    }

    #[test]
    fn strings_read_and_write_json_objects_of_strings_and_numbers() {
        let parsed: Strings = serde_json::from_str(r#"{"pods": 110, "cpu": "4"}"#)
            .unwrap_or_else(|e| panic!("parse: {e}"));
        assert_eq!(parsed.get("pods"), Some("110"));
        assert_eq!(
            serde_json::to_string(&parsed).unwrap_or_default(),
            r#"{"cpu":"4","pods":"110"}"#
        );
        assert!(serde_json::from_str::<Strings>(r#"{"cpu": ["4"]}"#).is_err());
    }

    #[test]
    fn the_interner_drops_texts_nobody_holds_once_it_has_doubled() {
        let kept = intern("interned-test-kept");
        for i in 0..5_000 {
            drop(intern(&format!("interned-test-dropped-{i}")));
        }
        let interner = crate::lock(&INTERNER);
        assert!(
            interner.strings.set.contains("interned-test-kept"),
            "a held text stays"
        );
        assert!(
            interner.strings.set.len() < 5_000,
            "texts nobody holds were swept: {} left",
            interner.strings.set.len()
        );
        drop(kept);
    }
}
