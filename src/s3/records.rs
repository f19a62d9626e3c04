//! Small records kept as objects in a bucket, one prefix per owner (`<root>/<owner>/records/…`),
//! with a heartbeat object per owner (`<root>/<owner>/alive`): what an instance keeps so that
//! another one can read it and take its work over when it dies. Time is the bucket's own
//! (Last-Modified), so the instances' clocks never matter.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;

use super::client::{S3Client, S3Error};

pub struct BucketRecords {
    client: S3Client,
    /// "excp/" (the key prefix and a slash) or "".
    root: String,
    owner: String,
}

const ALIVE: &str = "alive";
const RECORDS: &str = "records/";
/// Notes other owners leave for this one (an end event for a call it holds): separate
/// objects, so only their writer writes each, and nothing needs a conditional write.
const NOTES: &str = "notes/";

impl BucketRecords {
    pub fn new(client: S3Client, key_prefix: &str, owner: &str) -> BucketRecords {
        let prefix = key_prefix.trim_matches('/');
        let root = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        BucketRecords { client, root, owner: owner.to_string() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn key(&self, owner: &str, record: &str) -> String {
        format!("{}{owner}/{RECORDS}{record}", self.root)
    }

    /// Replaces this owner's record `key`: visible whole once the PUT is answered.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), S3Error> {
        self.client.put(&self.key(&self.owner, key), Bytes::from(bytes), &BTreeMap::new()).await.map(drop)
    }

    /// Removes a record of `owner`; one already gone is no error.
    pub async fn remove_of(&self, owner: &str, key: &str) -> Result<(), S3Error> {
        match self.client.delete(&self.key(owner, key)).await {
            Ok(()) | Err(S3Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn remove(&self, key: &str) -> Result<(), S3Error> {
        self.remove_of(&self.owner, key).await
    }

    /// The names of `owner`'s records, every page of them.
    pub async fn keys_of(&self, owner: &str) -> Result<Vec<String>, S3Error> {
        let prefix = format!("{}{owner}/{RECORDS}", self.root);
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.client.list(&prefix, Some("/"), after.as_deref()).await?;
            keys.extend(page.objects.into_iter().filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string)));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// A record of `owner` (None: not there).
    pub async fn get_of(&self, owner: &str, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        match self.client.get(&self.key(owner, key), None, None).await {
            Ok((_, response)) => {
                let bytes = response.bytes().await.map_err(|e| S3Error::Transient(crate::telemetry::chain(&e)))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(S3Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `owner` holds record `key`.
    pub async fn holds(&self, owner: &str, key: &str) -> Result<bool, S3Error> {
        match self.client.head(&self.key(owner, key)).await {
            Ok(_) => Ok(true),
            Err(S3Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Leaves `owner` a note `key` (replacing one of the same name).
    pub async fn leave_note(&self, owner: &str, key: &str, bytes: Vec<u8>) -> Result<(), S3Error> {
        let note = format!("{}{owner}/{NOTES}{key}", self.root);
        self.client.put(&note, Bytes::from(bytes), &BTreeMap::new()).await.map(drop)
    }

    /// The notes left for `owner`, as (key, bytes).
    pub async fn notes_of(&self, owner: &str) -> Result<Vec<(String, Vec<u8>)>, S3Error> {
        let prefix = format!("{}{owner}/{NOTES}", self.root);
        let page = self.client.list(&prefix, Some("/"), None).await?;
        let mut notes = Vec::new();
        for object in page.objects {
            let Some(key) = object.key.strip_prefix(&prefix) else { continue };
            match self.client.get(&object.key, None, None).await {
                Ok((_, response)) => {
                    let bytes = response.bytes().await.map_err(|e| S3Error::Transient(crate::telemetry::chain(&e)))?;
                    notes.push((key.to_string(), bytes.to_vec()));
                }
                Err(S3Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(notes)
    }

    pub async fn remove_note_of(&self, owner: &str, key: &str) -> Result<(), S3Error> {
        match self.client.delete(&format!("{}{owner}/{NOTES}{key}", self.root)).await {
            Ok(()) | Err(S3Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Says this owner is alive; returns the bucket's time of it.
    pub async fn beat(&self) -> Result<SystemTime, S3Error> {
        let key = format!("{}{}/{ALIVE}", self.root, self.owner);
        self.client.put(&key, Bytes::new(), &BTreeMap::new()).await?;
        let head = self.client.head(&key).await?;
        head.last_modified.ok_or_else(|| S3Error::Transient("the heartbeat has no Last-Modified".into()))
    }

    /// Every owner with a prefix in the bucket, and its last heartbeat (None: it has none,
    /// as after another instance took its work over).
    pub async fn owners(&self) -> Result<Vec<(String, Option<SystemTime>)>, S3Error> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.client.list(&self.root, Some("/"), after.as_deref()).await?;
            names.extend(
                page.prefixes
                    .iter()
                    .filter_map(|p| p.strip_prefix(self.root.as_str())?.strip_suffix('/'))
                    .map(str::to_string),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut owners = Vec::with_capacity(names.len());
        for name in names {
            let alive = match self.client.head(&format!("{}{name}/{ALIVE}", self.root)).await {
                Ok(head) => head.last_modified,
                Err(S3Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            owners.push((name, alive));
        }
        Ok(owners)
    }

    /// Removes `owner`'s heartbeat once its work was taken over.
    pub async fn bury(&self, owner: &str) -> Result<(), S3Error> {
        match self.client.delete(&format!("{}{owner}/{ALIVE}", self.root)).await {
            Ok(()) | Err(S3Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
