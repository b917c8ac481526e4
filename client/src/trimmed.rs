//! Objects decoded without `metadata.managedFields`, for components' watches.
//!
//! A component (the scheduler, a hollow node) never reads managedFields, yet every watch
//! event carries each manager's field set, and decoding those sets into k8s-openapi's
//! `FieldsV1` (a `serde_json::Value` apiece) took a tenth of the scheduler's CPU. As
//! kube-scheduler drops them from its informers (`TransformStripManagedFields`),
//! [`Trimmed`] leaves them out while decoding: their text is passed over, nothing is
//! built. It wraps any type's own `Deserialize`, only filtering the keys it is given.

use std::borrow::Cow;
use std::fmt;

use futures::{Stream, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;

/// `K` as a watch decodes it, with `metadata.managedFields` left empty.
#[derive(Debug, Clone)]
pub struct Trimmed<K>(pub K);

impl<K> Trimmed<K> {
    /// The object.
    pub fn into_inner(self) -> K {
        self.0
    }
}

impl<'de, K: Deserialize<'de>> Deserialize<'de> for Trimmed<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(Level::Object.filter(deserializer)).map(Trimmed)
    }
}

impl<K: kube::Resource> kube::Resource for Trimmed<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// A watch of `api`'s objects (as [`kube::runtime::watcher`]) that yields them as `K`,
/// decoded without managedFields.
pub fn watch<K>(
    api: kube::Api<Trimmed<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).map_ok(|event| crate::watch_event::map(event, Trimmed::into_inner))
}

/// Where in the object a map is.
#[derive(Debug, Clone, Copy)]
enum Level {
    /// The object: its `metadata` is filtered.
    Object,
    /// The object's metadata: `managedFields` is skipped.
    Metadata,
}

impl Level {
    /// `visitor`, its maps filtered at this level.
    fn wrap<V>(self, visitor: V) -> Wrap<V> {
        Wrap {
            inner: visitor,
            level: self,
        }
    }

    /// `deserializer`, its maps filtered at this level.
    fn filter<D>(self, deserializer: D) -> Filter<D> {
        Filter {
            inner: deserializer,
            level: self,
        }
    }
}

/// A deserializer whose maps at `level` are filtered; everything else passes through.
struct Filter<D> {
    inner: D,
    level: Level,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Filter<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(self.level.wrap(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(self.level.wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(name, fields, self.level.wrap(visitor))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_option(self.level.wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(name, self.level.wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    // An object and its metadata are maps: nothing else is asked of them.
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

/// A visitor whose map (or the value inside an option) is filtered at `level`.
struct Wrap<V> {
    inner: V,
    level: Level,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Filtered {
            inner: map,
            level: self.level,
            metadata_next: false,
        })
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(self.level.filter(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(self.level.filter(deserializer))
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.inner.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.inner.visit_i64(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.inner.visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.inner.visit_f64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.inner.visit_bytes(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(seq)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A map at `level`: `managedFields` skipped in the metadata, the metadata's value
/// filtered in the object.
struct Filtered<A> {
    inner: A,
    level: Level,
    /// The key just read is the object's `metadata`.
    metadata_next: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Filtered<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.inner.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            match self.level {
                Level::Metadata if key == "managedFields" => {
                    self.inner.next_value::<IgnoredAny>()?;
                    continue;
                }
                Level::Object => self.metadata_next = key == "metadata",
                Level::Metadata => {}
            }
            return seed.deserialize(key.as_ref().into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if std::mem::take(&mut self.metadata_next) {
            self.inner.next_value_seed(Metadata(seed))
        } else {
            self.inner.next_value_seed(seed)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// The seed of the object's `metadata` value, decoded with its maps filtered.
struct Metadata<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Metadata<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Level::Metadata.filter(deserializer))
    }
}

/// A map key, borrowed from the input when it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::core::watch::WatchEvent;
    use kube::core::ObjectList;
    use serde_json::json;

    use super::*;

    fn pod_json() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {}}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "u0", "controller": true}],
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    #[test]
    fn only_managed_fields_are_left_out() {
        let value = pod_json();
        let text = serde_json::to_vec(&value).unwrap();
        let trimmed: Trimmed<Pod> = serde_json::from_slice(&text).unwrap();
        let mut want: Pod = serde_json::from_value(value).unwrap();
        assert!(want.metadata.managed_fields.is_some());
        want.metadata.managed_fields = None;
        assert_eq!(trimmed.into_inner(), want);

        // As a watch event and in a list, as the watcher reads them.
        let event = serde_json::to_vec(&json!({"type": "MODIFIED", "object": pod_json()})).unwrap();
        let event: WatchEvent<Trimmed<Pod>> = serde_json::from_slice(&event).unwrap();
        match event {
            WatchEvent::Modified(pod) => assert_eq!(pod.into_inner(), want),
            other => panic!("expected MODIFIED, got {other:?}"),
        }
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
            "items": [pod_json()]});
        let list: ObjectList<Trimmed<Pod>> = serde_json::from_slice(&serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(list.items[0].0, want);
    }

    #[test]
    fn requests_go_where_the_wrapped_type_goes() {
        use kube::Resource;
        assert_eq!(
            Trimmed::<Pod>::url_path(&(), Some("ns")),
            Pod::url_path(&(), Some("ns"))
        );
        assert_eq!(Trimmed::<Node>::url_path(&(), None), "/api/v1/nodes");
        assert_eq!(Trimmed::<Pod>::api_version(&()), "v1");
    }

    #[test]
    fn objects_without_metadata_or_managed_fields_decode_as_before() {
        for value in [
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"a": "b"}}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": null}),
            json!({"apiVersion": "v1", "kind": "Node"}),
        ] {
            let trimmed: Trimmed<Node> = serde_json::from_value(value.clone()).unwrap();
            let want: Node = serde_json::from_value(value).unwrap();
            assert_eq!(trimmed.0, want);
        }
        // Errors still name what is wrong.
        let bad = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": 3}});
        assert!(serde_json::from_value::<Trimmed<Node>>(bad).is_err());
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}});
        assert!(serde_json::from_value::<Trimmed<Node>>(wrong_kind).is_err());
    }
}
