//! The archive's place in an object store, and its layout.
//!
//! ```text
//! <prefix>/<cluster_id>/generations/<generation>/snapshots/<index>.db.zst
//! <prefix>/<cluster_id>/generations/<generation>/segments/<first>-<last>.seg.zst
//! <prefix>/<cluster_id>/generations/<generation>/started
//! ```
//! Indexes and generations are zero-padded (20 and 8 digits) so that the store's
//! lexicographic listing is numeric order. A *generation* is one unbroken Raft log: a cluster
//! restored from the archive after losing every node starts a new log at index 0, so it
//! archives into the next generation instead of colliding with its past (Litestream calls its
//! lineages generations too). The archive is discovered by listing; no manifest can go stale.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::format::{ArchiveKey, BodyLimits, ObjectKind};

/// Where the archive lives and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLocation {
    pub url: ArchiveUrl,
    /// S3 endpoint (`http://127.0.0.1:9000` for MinIO or moto); `None`: AWS, or
    /// `AWS_ENDPOINT_URL` from the environment.
    pub endpoint: Option<String>,
    /// S3 region; `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: Option<String>,
}

/// A parsed archive URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveUrl {
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `file:///absolute/dir`
    File { dir: std::path::PathBuf },
}

impl ArchiveUrl {
    /// Parses `s3://bucket[/prefix]` or `file:///dir`.
    pub fn parse(text: &str) -> Result<ArchiveUrl, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{text:?} has no bucket: write s3://BUCKET/PREFIX"));
            }
            Ok(ArchiveUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            })
        } else if let Some(dir) = text.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(format!(
                    "{text:?} is not an absolute path: write file:///DIR (three slashes)"
                ));
            }
            Ok(ArchiveUrl::File { dir: dir.into() })
        } else {
            Err(format!(
                "{text:?} is not an archive URL: write s3://BUCKET/PREFIX or file:///DIR"
            ))
        }
    }
}

impl std::fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ArchiveUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            ArchiveUrl::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

/// One listed archive object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Full object name (what errors print).
    pub name: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// A listed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotObject {
    pub index: u64,
    pub object: ListedObject,
}

/// A listed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentObject {
    pub first: u64,
    pub last: u64,
    pub object: ListedObject,
}

/// Everything one generation holds, sorted by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationListing {
    pub snapshots: Vec<SnapshotObject>,
    pub segments: Vec<SegmentObject>,
}

impl GenerationListing {
    /// The highest index restorable without a gap: the newest snapshot extended by the
    /// segments that continue it. `None` when the generation has no snapshot yet.
    pub fn tip(&self) -> Option<u64> {
        let newest = self.snapshots.last()?;
        Some(chain_end(newest.index, &self.segments))
    }
}

impl GenerationListing {
    /// Take out the objects that claim entries past `log_end`, the end of the cluster's log
    /// (its leader's last index, which every committed entry, so every archived one, is
    /// within): not objects raftlite wrote for this cluster. Their names. A `log_end` of 0
    /// (not known) takes none.
    pub fn take_past(&mut self, log_end: u64) -> Vec<String> {
        let mut names = Vec::new();
        if log_end == 0 {
            return names;
        }
        let mut keep = |end: u64, object: &ListedObject| {
            if end > log_end {
                names.push(object.name.clone());
            }
            end <= log_end
        };
        self.snapshots.retain(|s| keep(s.index, &s.object));
        self.segments.retain(|s| keep(s.last, &s.object));
        names
    }
}

/// The end of the chain of segments continuing from `from` (overlaps allowed).
pub fn chain_end(from: u64, segments: &[SegmentObject]) -> u64 {
    let mut end = from;
    for s in segments {
        if s.first <= end + 1 && s.last > end {
            end = s.last;
        }
    }
    end
}

/// An archive: an object store, the root prefix, the encryption key, and how large a body
/// read from it may be.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: ArchiveLocation,
    key: Option<ArchiveKey>,
    limits: BodyLimits,
}

/// Environment variable of the node's `max_snapshot_bytes`, read by [`Archive::open`] for the
/// limit on a snapshot's image (`raftlite restore` has no configuration of its own).
const MAX_SNAPSHOT_BYTES_ENV: &str = "RAFTLITE_MAX_SNAPSHOT_BYTES";

impl BodyLimits {
    /// A snapshot: `max_snapshot_bytes`; a segment: the most the archiver writes.
    pub fn for_node(max_snapshot_bytes: u64) -> BodyLimits {
        BodyLimits {
            snapshot: max_snapshot_bytes,
            segment: super::archiver::SEGMENT_BODY_LIMIT,
        }
    }

    /// With `max_snapshot_bytes` from [`MAX_SNAPSHOT_BYTES_ENV`], else its default.
    fn from_env() -> anyhow::Result<BodyLimits> {
        let max_snapshot_bytes = match std::env::var(MAX_SNAPSHOT_BYTES_ENV) {
            Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
                format!("{MAX_SNAPSHOT_BYTES_ENV}={v:?} is not a number of bytes")
            })?,
            _ => crate::config::defaults::default_max_snapshot_bytes(),
        };
        Ok(BodyLimits::for_node(max_snapshot_bytes))
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("url", &self.location.url.to_string())
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

/// Pads an index for object names.
pub fn index_name(index: u64) -> String {
    format!("{index:020}")
}

pub fn generation_name(generation: u64) -> String {
    format!("{generation:08}")
}

impl Archive {
    /// Opens the archive at `location`. S3 credentials come from `RAFTLITE_ACCESS_KEY_ID` /
    /// `RAFTLITE_SECRET_ACCESS_KEY`, else the usual `AWS_*` variables; the encryption key from
    /// `RAFTLITE_ARCHIVE_KEY`; the limit on a snapshot's image from
    /// `RAFTLITE_MAX_SNAPSHOT_BYTES`, else 1 GiB (a node passes its own with
    /// [`Archive::with_limits`]).
    pub fn open(location: &ArchiveLocation) -> anyhow::Result<Archive> {
        let key = ArchiveKey::from_env().map_err(anyhow::Error::msg)?;
        let limits = BodyLimits::from_env()?;
        let (store, root): (Arc<dyn ObjectStore>, Path) = match &location.url {
            ArchiveUrl::File { dir } => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create archive directory {}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("open archive directory {}", dir.display()))?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), Path::default())
            }
            ArchiveUrl::S3 { bucket, prefix } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &location.endpoint {
                    b = b.with_endpoint(endpoint);
                }
                if let Some(region) = &location.region {
                    b = b.with_region(region);
                }
                if let (Ok(id), Ok(secret)) = (
                    std::env::var("RAFTLITE_ACCESS_KEY_ID"),
                    std::env::var("RAFTLITE_SECRET_ACCESS_KEY"),
                ) {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                }
                // The archiver retries with its own backoff and reports the lag, which grows
                // while a request hangs. A request gets 2 s to connect and 120 s in all (a
                // 64 MiB object on a slow link), not object_store's 3-minute default.
                b = b
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(10),
                    })
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(2))
                            .with_timeout(Duration::from_secs(120)),
                    );
                let custom_endpoint = location.endpoint.is_some()
                    || std::env::var_os("AWS_ENDPOINT_URL").is_some()
                    || std::env::var_os("AWS_ENDPOINT").is_some();
                if custom_endpoint {
                    // MinIO, moto and most S3-compatible servers want path-style requests;
                    // plain http is their usual setup on a private network. (After the client
                    // options, which would reset allow_http.)
                    b = b
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(true);
                }
                let s3 = b
                    .build()
                    .with_context(|| format!("configure S3 archive {}", location.url))?;
                (Arc::new(s3), Path::from(prefix.as_str()))
            }
        };
        Ok(Archive {
            store,
            root,
            location: location.clone(),
            key,
            limits,
        })
    }

    /// The same archive, reading bodies up to `limits`.
    pub fn with_limits(self, limits: BodyLimits) -> Archive {
        Archive { limits, ..self }
    }

    /// Same store and key, for tests that wrap the store (fault injection).
    #[cfg(test)]
    pub fn with_store(store: Arc<dyn ObjectStore>, key: Option<ArchiveKey>) -> Archive {
        Archive {
            store,
            root: Path::default(),
            location: ArchiveLocation {
                url: ArchiveUrl::File { dir: "/".into() },
                endpoint: None,
                region: None,
            },
            key,
            limits: BodyLimits::for_node(crate::config::defaults::default_max_snapshot_bytes()),
        }
    }

    pub fn url(&self) -> &ArchiveUrl {
        &self.location.url
    }

    pub fn key(&self) -> Option<&ArchiveKey> {
        self.key.as_ref()
    }

    /// How large a body read from this archive may be.
    pub fn limits(&self) -> &BodyLimits {
        &self.limits
    }

    fn child(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }

    fn generation_dir(&self, cluster: &str, generation: u64) -> Path {
        self.child(&[cluster, "generations", &generation_name(generation)])
    }

    pub fn snapshot_path(&self, cluster: &str, generation: u64, index: u64) -> Path {
        self.generation_dir(cluster, generation)
            .join("snapshots")
            .join(format!("{}.db.zst", index_name(index)))
    }

    pub fn segment_path(&self, cluster: &str, generation: u64, first: u64, last: u64) -> Path {
        self.generation_dir(cluster, generation)
            .join("segments")
            .join(format!(
                "{}-{}.seg.zst",
                index_name(first),
                index_name(last)
            ))
    }

    /// The object marking that a generation exists (written before its first snapshot).
    pub fn started_path(&self, cluster: &str, generation: u64) -> Path {
        self.generation_dir(cluster, generation).join("started")
    }

    /// The name an object's encryption binds its bytes to (and its decoding errors name): its
    /// path in the store, without the bucket or directory, so that an archive copied to
    /// another bucket or directory still restores, and an object moved within it does not.
    pub fn object_name(path: &Path) -> String {
        path.to_string()
    }

    /// Names of objects as printed in messages: the URL's view.
    pub fn display_name(&self, path: &Path) -> String {
        match &self.location.url {
            ArchiveUrl::S3 { bucket, .. } => format!("s3://{bucket}/{path}"),
            ArchiveUrl::File { dir } => format!("{}/{path}", dir.display()),
        }
    }

    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
        const MULTIPART_OVER: usize = 64 << 20;
        let name = self.display_name(path);
        if bytes.len() <= MULTIPART_OVER {
            self.store
                .put(path, PutPayload::from(bytes))
                .await
                .with_context(|| format!("upload {name}"))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(path)
            .await
            .with_context(|| format!("start multipart upload of {name}"))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 16 << 20);
        writer.put(bytes::Bytes::from(bytes));
        writer
            .finish()
            .await
            .with_context(|| format!("upload {name}"))?;
        Ok(())
    }

    /// Downloads a whole object of `kind`. A missing object is an error naming it; so is one
    /// larger than an object of its kind within this archive's limits can be
    /// ([`BodyLimits::max_object_bytes`]): refused by its listed size before a byte is read,
    /// and stopped at that size if the store sends more.
    pub async fn get(&self, path: &Path, kind: ObjectKind) -> anyhow::Result<bytes::Bytes> {
        let name = self.display_name(path);
        let most = self.limits.max_object_bytes(kind);
        let too_large = |size: String| {
            anyhow::anyhow!(
                "archive object {name} is {size} bytes, more than the {most} that a {} within \
                 this node's limits can take: refused without downloading it (not an object \
                 raftlite wrote, or written with a larger max_snapshot_bytes)",
                match kind {
                    ObjectKind::Snapshot => "snapshot",
                    ObjectKind::Segment => "segment",
                }
            )
        };
        let found = match self.store.get(path).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                bail!("archive object {name} is missing")
            }
            Err(e) => return Err(e).with_context(|| format!("download {name}")),
        };
        let size = found.meta.size;
        if size > most {
            return Err(too_large(size.to_string()));
        }
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut chunks = found.into_stream();
        while let Some(chunk) = chunks
            .try_next()
            .await
            .with_context(|| format!("download {name}"))?
        {
            if (body.len() + chunk.len()) as u64 > most {
                return Err(too_large(format!("over {}", body.len() + chunk.len())));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(bytes::Bytes::from(body))
    }

    pub async fn delete(&self, path: &Path) -> anyhow::Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete {}", self.display_name(path))),
        }
    }

    /// Deletes every object of a generation, its `started` marker last: a deletion cut short
    /// leaves the generation listed, and the next retention pass finishes it. Returns how many
    /// objects it deleted.
    pub async fn delete_generation(&self, cluster: &str, generation: u64) -> anyhow::Result<usize> {
        let started = self.started_path(cluster, generation);
        let objects = self.list(&self.generation_dir(cluster, generation)).await?;
        for meta in objects.iter().filter(|m| m.location != started) {
            self.delete(&meta.location).await?;
        }
        self.delete(&started).await?;
        Ok(objects.len())
    }

    async fn list(&self, prefix: &Path) -> anyhow::Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .with_context(|| format!("list {}", self.display_name(prefix)))
    }

    /// Cluster ids in the archive, with the time of their newest object.
    pub async fn clusters(&self) -> anyhow::Result<BTreeMap<String, DateTime<Utc>>> {
        let mut clusters = BTreeMap::new();
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(if self.root.as_ref().is_empty() {
                None
            } else {
                Some(&self.root)
            })
            .try_collect()
            .await
            .with_context(|| format!("list {}", self.location.url))?;
        let skip = self.root.parts().count();
        for meta in listed {
            let parts: Vec<String> = meta
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_owned())
                .collect();
            if parts.len() >= 3 && parts[1] == "generations" {
                let newest = clusters
                    .entry(parts[0].clone())
                    .or_insert(meta.last_modified);
                *newest = (*newest).max(meta.last_modified);
            }
        }
        Ok(clusters)
    }

    /// Generations of `cluster`, ascending.
    pub async fn generations(&self, cluster: &str) -> anyhow::Result<Vec<u64>> {
        let dir = self.child(&[cluster, "generations"]);
        let listed = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .with_context(|| format!("list {}", self.display_name(&dir)))?;
        let mut generations: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|f| f.parse().ok()))
            .collect();
        generations.sort_unstable();
        Ok(generations)
    }

    /// Snapshots and segments of one generation.
    pub async fn list_generation(
        &self,
        cluster: &str,
        generation: u64,
    ) -> anyhow::Result<GenerationListing> {
        let dir = self.generation_dir(cluster, generation);
        let mut listing = GenerationListing::default();
        for meta in self.list(&dir.clone().join("snapshots")).await? {
            let Some(index) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".db.zst"))
                .and_then(|i| i.parse().ok())
            else {
                continue;
            };
            listing.snapshots.push(SnapshotObject {
                index,
                object: self.listed(&meta),
            });
        }
        for meta in self.list(&dir.clone().join("segments")).await? {
            let Some((first, last)) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".seg.zst"))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            else {
                continue;
            };
            listing.segments.push(SegmentObject {
                first,
                last,
                object: self.listed(&meta),
            });
        }
        listing.snapshots.sort_by_key(|s| s.index);
        listing.segments.sort_by_key(|s| (s.first, s.last));
        Ok(listing)
    }

    /// When a generation began (its `started` marker was written); `None` without one.
    pub async fn generation_started(
        &self,
        cluster: &str,
        generation: u64,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let started = self.started_path(cluster, generation);
        match self.store.head(&started).await {
            Ok(meta) => Ok(Some(meta.last_modified)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.display_name(&started))),
        }
    }

    fn listed(&self, meta: &object_store::ObjectMeta) -> ListedObject {
        ListedObject {
            name: meta.location.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        }
    }

    /// The store path of a listed object.
    pub fn path_of(&self, object: &ListedObject) -> Path {
        Path::from(object.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        assert_eq!(
            ArchiveUrl::parse("s3://bucket/a/b/"),
            Ok(ArchiveUrl::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            ArchiveUrl::parse("s3://bucket").map(|u| u.to_string()),
            Ok("s3://bucket".to_string())
        );
        assert_eq!(
            ArchiveUrl::parse("file:///var/archive"),
            Ok(ArchiveUrl::File {
                dir: "/var/archive".into()
            })
        );
        assert!(ArchiveUrl::parse("file://relative").is_err());
        assert!(ArchiveUrl::parse("s3:///x").is_err());
        assert!(ArchiveUrl::parse("/plain/path").is_err());
    }

    fn seg(first: u64, last: u64) -> SegmentObject {
        SegmentObject {
            first,
            last,
            object: ListedObject {
                name: String::new(),
                size: 0,
                last_modified: DateTime::<Utc>::default(),
            },
        }
    }

    #[test]
    fn chain_follows_overlaps_and_stops_at_gaps() {
        let segs = [seg(1, 5), seg(3, 8), seg(6, 9), seg(12, 20)];
        assert_eq!(chain_end(0, &segs), 9);
        assert_eq!(chain_end(10, &segs), 10);
        assert_eq!(chain_end(11, &segs), 20);
    }
}
