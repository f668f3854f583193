//! Pieces shared by the Zipkin v1 and v2 JSON decoders: a top-level array
//! reader that remembers which span it was in, borrowed strings for ids,
//! lenient tag values, capped tag maps, endpoints.

use crate::error::{DecodeError, Problem};
use crate::validate::{FieldProblem, MAX_ATTRIBUTES};
use meshlens_storage::model::Endpoint;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

/// Parses `s` as a JSON array of `T`; on error, says which element it was in.
pub(crate) fn parse_array<'de, T: Deserialize<'de>>(s: &'de str) -> Result<Vec<T>, DecodeError> {
    let index = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(s);
    let seed = ArraySeed::<T> {
        index: &index,
        // serde_json gives no length; a span takes at least ~100 bytes of
        // JSON, so this guess is at most a few times too big, and it spares
        // the repeated doubling of a large vector.
        capacity: (s.len() / 512).clamp(16, 4096),
        _t: PhantomData,
    };
    seed.deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| DecodeError::from_json(&e, index.get()))
}

struct ArraySeed<'i, T> {
    index: &'i Cell<Option<usize>>,
    capacity: usize,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ArraySeed<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ArraySeed<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of spans")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(self.capacity).min(4096));
        loop {
            self.index.set(Some(out.len()));
            match seq.next_element()? {
                Some(x) => out.push(x),
                None => break,
            }
        }
        self.index.set(None);
        Ok(out)
    }
}

/// A string borrowed from the body when it has no escapes (ids, kinds: we
/// parse them and throw the text away, so copying would be waste).
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A tag value, borrowed from the body when it has no escapes. Zipkin
/// requires strings and rejects other JSON types; we accept numbers and
/// booleans too and keep their JSON text as the string ("42", "1.5",
/// "true"), because some clients (and hand-written tests) send them and
/// refusing the whole batch for it helps nobody.
pub(crate) struct TagString<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for TagString<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TagString<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (numbers and booleans are accepted too)")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TagString<'de>, E> {
                Ok(TagString(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TagString<'de>, E> {
                Err(E::custom("a tag value must be a string, got null"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Tags in the order sent, borrowed where possible, collected up to
/// [`MAX_ATTRIBUTES`] and counted beyond, so a span with a million tags
/// costs a count, not a million allocations.
#[derive(Default)]
pub(crate) struct Tags<'a> {
    pub list: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub count: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for Tags<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tags<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Tags<'de>, A::Error> {
                let mut tags = Tags {
                    list: Vec::with_capacity(m.size_hint().unwrap_or(16).min(64)),
                    count: 0,
                };
                loop {
                    if tags.count < MAX_ATTRIBUTES {
                        let Some(k) = m.next_key::<Str<'de>>()? else {
                            break;
                        };
                        let v: TagString<'de> = m.next_value()?;
                        tags.list.push((k.0, v.0));
                    } else {
                        if m.next_key::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        m.next_value::<IgnoredAny>()?;
                    }
                    tags.count += 1;
                }
                Ok(tags)
            }
        }
        d.deserialize_map(V)
    }
}

/// A Zipkin endpoint as sent.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawEndpoint {
    pub service_name: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub port: Option<i64>,
}

impl RawEndpoint {
    /// Empty strings and port 0 mean "absent", as in Zipkin. Names keep the
    /// case they were sent in (Zipkin lower-cases them; the query side
    /// compares case-insensitively instead).
    pub fn to_endpoint(&self, field: &str) -> Result<Endpoint, FieldProblem> {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let port = match self.port {
            None | Some(0) => None,
            Some(p @ 1..=65535) => Some(p as i32),
            Some(p) => return Err((Some(format!("{field}.port")), Problem::BadPort(p))),
        };
        Ok(Endpoint {
            service_name: non_empty(&self.service_name),
            ipv4: non_empty(&self.ipv4),
            ipv6: non_empty(&self.ipv6),
            port,
        })
    }
}

/// `Some(endpoint)` unless it carries nothing.
pub(crate) fn endpoint_opt(
    e: Option<&RawEndpoint>,
    field: &str,
) -> Result<Option<Endpoint>, FieldProblem> {
    match e {
        None => Ok(None),
        Some(e) => e.to_endpoint(field).map(|e| (!e.is_empty()).then_some(e)),
    }
}
