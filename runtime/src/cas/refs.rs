//! Named records beside the blobs: `refs/<namespace>/<name>` holds small
//! mutable values (the step cache's action records, run records), where a
//! blob's name is its content. A ref's value usually names blobs by digest;
//! readers verify those blobs as usual.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::error::CasError;
use super::store::Store;

/// A ref listed by [`Store::list_refs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefInfo {
    /// Its name inside the namespace.
    pub name: String,
    /// Last write, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// Size in bytes.
    pub size: u64,
}

pub(crate) fn check_part(what: &str, s: &str) -> Result<(), CasError> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CasError::unsafe_path(
            s,
            format!("a ref {what} holds only letters, digits, `.`, `_` and `-`"),
        ))
    }
}

impl Store {
    fn ref_location(&self, namespace: &str, name: &str) -> Result<ObjectPath, CasError> {
        check_part("namespace", namespace)?;
        check_part("name", name)?;
        Ok(self
            .prefix()
            .clone()
            .join("refs")
            .join(namespace)
            .join(name))
    }

    fn ref_err(&self, namespace: &str, name: &str, source: object_store::Error) -> CasError {
        let url = format!(
            "{}/refs/{namespace}/{name}",
            self.url().trim_end_matches('/')
        );
        match source {
            source @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => {
                CasError::AccessDenied { url, source }
            }
            source => CasError::Store { url, source },
        }
    }

    /// Writes (or replaces) a ref.
    pub async fn put_ref(&self, namespace: &str, name: &str, value: Bytes) -> Result<(), CasError> {
        let loc = self.ref_location(namespace, name)?;
        self.backend()
            .put(&loc, PutPayload::from_bytes(value))
            .await
            .map(|_| ())
            .map_err(|e| self.ref_err(namespace, name, e))
    }

    /// Reads a ref; `None` when it does not exist.
    pub async fn get_ref(&self, namespace: &str, name: &str) -> Result<Option<Bytes>, CasError> {
        let loc = self.ref_location(namespace, name)?;
        // Filesystem stores: read the file directly (refs are small).
        if let Some(root) = self.local_root() {
            let p = root.join("refs").join(namespace).join(name);
            return match std::fs::read(&p) {
                Ok(v) => Ok(Some(Bytes::from(v))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(CasError::io(p, e)),
            };
        }
        match self.backend().get(&loc).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.ref_err(namespace, name, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.ref_err(namespace, name, e)),
        }
    }

    /// Every ref of a namespace, newest first.
    pub async fn list_refs(&self, namespace: &str) -> Result<Vec<RefInfo>, CasError> {
        check_part("namespace", namespace)?;
        let prefix = self.prefix().clone().join("refs").join(namespace);
        let metas: Vec<object_store::ObjectMeta> = self
            .backend()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.ref_err(namespace, "*", e))?;
        let mut out: Vec<RefInfo> = metas
            .into_iter()
            .filter_map(|m| {
                Some(RefInfo {
                    name: m.location.filename()?.to_string(),
                    modified_ms: m.last_modified.timestamp_millis(),
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.modified_ms
                .cmp(&a.modified_ms)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::StoreOptions;

    #[tokio::test]
    async fn refs_are_written_read_replaced_and_listed() {
        let dir = std::env::temp_dir().join(format!("krt-refs-{}", std::process::id()));
        let store = Store::open(
            dir.to_str().unwrap(),
            StoreOptions {
                cache_dir: None,
                cache_max_bytes: 0,
            },
        )
        .unwrap();
        assert_eq!(store.get_ref("ac", "k1").await.unwrap(), None);
        store
            .put_ref("ac", "k1", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put_ref("ac", "k1", Bytes::from_static(b"two"))
            .await
            .unwrap();
        store
            .put_ref("ac", "k2", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            store.get_ref("ac", "k1").await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        let names: Vec<String> = store
            .list_refs("ac")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"k1".to_string()) && names.contains(&"k2".to_string()));
        assert!(
            store
                .put_ref("ac", "../escape", Bytes::new())
                .await
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
