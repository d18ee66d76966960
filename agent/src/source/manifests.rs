//! The manifest source: a directory of ordinary Kubernetes YAML (or JSON)
//! files, several documents per file, `kind: List` included. Kinds the
//! agent does not use (Deployments, ConfigMaps...) are skipped, so a
//! directory can hold a whole application's manifests.
//!
//! Each file is parsed on its own and kept, so that a change re-reads only
//! the files that changed. A file that does not parse keeps its previous
//! objects (an editor's half-written save must not empty a Service) and is
//! reported.

use crate::objects::{Object, Objects};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, document {doc}: {msg}")]
    Parse { path: PathBuf, doc: usize, msg: String },
}

/// The files a manifest directory is made of: `*.yaml`, `*.yml`, `*.json`,
/// not hidden (editors' swap files), sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(read)? {
        let p = e.map_err(read)?.path();
        if is_manifest(&p) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_manifest(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// The objects of one file's text.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let perr = |msg: String| ManifestError::Parse {
            path: path.to_path_buf(),
            doc: i + 1,
            msg,
        };
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| perr(e.to_string()))?;
        if v.is_null() {
            continue; // an empty document ("---" at the end)
        }
        collect(v, &mut out).map_err(perr)?;
    }
    Ok(out)
}

fn collect(v: Value, out: &mut Vec<Object>) -> Result<(), String> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
    fn typed<T: serde::de::DeserializeOwned>(v: Value, kind: &str) -> Result<Box<T>, String> {
        serde_json::from_value(v)
            .map(Box::new)
            .map_err(|e| format!("{kind}: {e}"))
    }
    let o = match (api.as_str(), kind.as_str()) {
        (_, "List") => {
            let items = match v.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => return Err("List without items".into()),
            };
            for item in items {
                collect(item, out)?;
            }
            return Ok(());
        }
        ("v1", "Service") => Object::Service(typed(v, &kind)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(v, &kind)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(v, &kind)?),
        ("v1", "Pod") => Object::Pod(typed(v, &kind)?),
        ("v1", "Namespace") => Object::Namespace(typed(v, &kind)?),
        ("v1", "Node") => Object::Node(typed(v, &kind)?),
        ("", _) | (_, "") => return Err("a document without apiVersion or kind".into()),
        _ => return Ok(()), // a kind the agent does not use
    };
    let (kind, key) = o.id();
    if key.is_empty() || key.ends_with('/') {
        return Err(format!("{kind} without metadata.name"));
    }
    out.push(o);
    Ok(())
}

/// The largest manifest file read (a cluster's worth of Services is far
/// less; a larger one is refused, not read into memory).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A manifest's text: a regular file (opened without blocking, so that a
/// FIFO named `*.yaml` cannot stop the agent's loop) of at most
/// `MAX_MANIFEST_BYTES`.
fn read_manifest(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not read",
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    Ok(text)
}

/// A manifest directory, file by file, and the objects of all its files
/// merged (kept up to date file by file: a change costs what the changed
/// file holds, not what the directory holds).
#[derive(Debug, Default)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Vec<Object>>,
    merged: Objects,
}

impl ManifestDir {
    pub fn new(dir: &Path) -> ManifestDir {
        ManifestDir {
            dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Read every file again; files that do not parse keep what they had
    /// and come back as errors.
    pub fn reload_all(&mut self) -> Result<Vec<ManifestError>, ManifestError> {
        let files = manifest_files(&self.dir)?;
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !files.contains(p)).cloned().collect();
        for p in gone {
            self.replace(&p, None);
        }
        Ok(files.iter().filter_map(|p| self.reload(p).err()).collect())
    }

    /// Read one file again (gone: its objects go too).
    pub fn reload(&mut self, path: &Path) -> Result<(), ManifestError> {
        if !path.exists() || !is_manifest(path) {
            self.replace(path, None);
            return Ok(());
        }
        let text = read_manifest(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let objects = parse(&text, path)?;
        self.replace(path, Some(objects));
        Ok(())
    }

    /// Swap one file's objects in the merged view. While two files define
    /// one object, the one read last wins; when one drops it, the other's
    /// comes back (the last file by name, if several).
    fn replace(&mut self, path: &Path, objects: Option<Vec<Object>>) {
        let old = match objects {
            Some(new) => {
                // Kept per file too (to restore an object another file
                // drops): only what the agent reads of each.
                let new: Vec<Object> = new.into_iter().map(Object::slimmed).collect();
                for o in &new {
                    self.merged.insert(o.clone());
                }
                self.files.insert(path.to_path_buf(), new)
            }
            None => self.files.remove(path),
        };
        let now: std::collections::BTreeSet<(&str, String)> =
            self.files.get(path).into_iter().flatten().map(Object::id).collect();
        for o in old.into_iter().flatten() {
            let (kind, key) = o.id();
            if now.contains(&(kind, key.clone())) {
                continue;
            }
            self.merged.remove(kind, &key);
            let elsewhere = self
                .files
                .values()
                .rev()
                .flat_map(|objects| objects.iter().rev())
                .find(|x| x.id() == (kind, key.clone()));
            if let Some(x) = elsewhere {
                self.merged.insert(x.clone());
            }
        }
    }

    /// Every object of every file.
    pub fn objects(&self) -> &Objects {
        &self.merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_a_huge_file_is_refused_not_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("x.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = d.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        std::fs::write(
            d.path().join("ok.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
        )
        .unwrap();
        let mut dir = ManifestDir::new(d.path());
        let t = std::time::Instant::now();
        let errors = dir.reload_all().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "no wait on the FIFO");
        assert_eq!(errors.len(), 1, "the big file: {errors:?}");
        assert!(dir.reload(&fifo).is_err(), "a FIFO named *.yaml is refused");
        assert_eq!(dir.objects().namespaces().len(), 1, "the good file is read");
    }

    #[test]
    fn documents_lists_and_unknown_kinds() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
"#;
        let objects = parse(text, Path::new("t.yaml")).unwrap();
        let ids: Vec<_> = objects.iter().map(Object::id).collect();
        assert_eq!(
            ids,
            vec![("Namespace", "shop".to_string()), ("Service", "shop/web".to_string())]
        );
    }

    #[test]
    fn files_come_and_go_object_by_object() {
        let d = tempfile::tempdir().unwrap();
        let svc = |name: &str, ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{clusterIP: {ip}}}\n"
            )
        };
        std::fs::write(d.path().join("a.yaml"), svc("one", "10.96.0.1")).unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            format!("{}---\n{}", svc("two", "10.96.0.2"), svc("one", "10.96.0.3")),
        )
        .unwrap();
        let mut m = ManifestDir::new(d.path());
        assert!(m.reload_all().unwrap().is_empty());
        let ip = |m: &ManifestDir, k: &str| {
            m.objects()
                .services()
                .get(k)
                .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
        };
        assert_eq!(ip(&m, "x/one").as_deref(), Some("10.96.0.3"), "read last wins");
        // b drops "one": a's comes back; a file that does not parse changes nothing.
        std::fs::write(d.path().join("b.yaml"), svc("two", "10.96.0.2")).unwrap();
        m.reload(&d.path().join("b.yaml")).unwrap();
        assert_eq!(ip(&m, "x/one").as_deref(), Some("10.96.0.1"));
        std::fs::write(d.path().join("b.yaml"), "kind: [").unwrap();
        assert!(m.reload(&d.path().join("b.yaml")).is_err());
        assert_eq!(
            ip(&m, "x/two").as_deref(),
            Some("10.96.0.2"),
            "a broken save keeps the objects"
        );
        std::fs::remove_file(d.path().join("b.yaml")).unwrap();
        m.reload(&d.path().join("b.yaml")).unwrap();
        assert_eq!((m.objects().services().len(), ip(&m, "x/two")), (1, None));
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let e = parse("kind: Service\n---\n{", Path::new("bad.yaml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("bad.yaml, document 1:"), "{msg}");
        let e = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
            Path::new("b.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without metadata.name"), "{e}");
        let e = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 3}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("Service:"), "{e}");
    }
}
