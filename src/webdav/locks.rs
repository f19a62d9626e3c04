//! WebDAV locks that expire. dav-server's `MemLs` is a real lock table but never drops a lock
//! whose timeout passed, and takes "no Timeout header" as forever; this wrapper caps every
//! timeout, remembers when each lock ends and removes expired locks before every operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::memls::MemLs;
use futures_util::FutureExt;
use xmltree::Element;

#[derive(Debug, Clone)]
pub struct ExpiringLs {
    inner: Box<MemLs>,
    max_timeout: Duration,
    /// Live locks beyond this are refused (the request pipeline answers 503 before this is
    /// reached; this holds the bound when LOCKs race).
    max_locks: usize,
    expiries: Arc<Mutex<Expiries>>,
}

#[derive(Debug, Default)]
struct Expiries {
    /// token → (locked path, when the lock ends)
    by_token: HashMap<String, (DavPath, SystemTime)>,
    /// No lock ends before this, so the common case (nothing expired) skips the scan that
    /// every PUT, DELETE and MOVE would otherwise pay. May be early after an unlock; a scan
    /// then sets it right.
    soonest: Option<SystemTime>,
}

impl ExpiringLs {
    pub fn new(max_timeout: Duration, max_locks: usize) -> Self {
        ExpiringLs { inner: MemLs::new(), max_timeout, max_locks, expiries: Arc::default() }
    }

    pub fn active(&self) -> usize {
        self.expiries().by_token.len()
    }

    /// Whether a new lock would be refused: expired locks are dropped first.
    pub async fn full(&self) -> bool {
        self.purge().await;
        self.active() >= self.max_locks
    }

    fn expiries(&self) -> std::sync::MutexGuard<'_, Expiries> {
        self.expiries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap(&self, timeout: Option<Duration>) -> Duration {
        timeout.map_or(self.max_timeout, |t| t.min(self.max_timeout)).max(Duration::from_secs(1))
    }

    async fn purge(&self) {
        let now = SystemTime::now();
        let expired: Vec<(String, DavPath)> = {
            let mut expiries = self.expiries();
            if expiries.soonest.is_none_or(|soonest| soonest > now) {
                return;
            }
            let map = &mut expiries.by_token;
            let gone: Vec<String> = map.iter().filter(|(_, (_, at))| *at <= now).map(|(t, _)| t.clone()).collect();
            let gone = gone.into_iter().filter_map(|t| map.remove(&t).map(|(p, _)| (t, p))).collect();
            expiries.soonest = expiries.by_token.values().map(|(_, at)| *at).min();
            gone
        };
        for (token, path) in expired {
            // Already gone when the resource was deleted; that is fine.
            let _ = self.inner.unlock(&path, &token).await;
            tracing::debug!(%token, %path, "lock expired");
        }
    }

    fn remember(&self, lock: &DavLock) {
        if let Some(at) = lock.timeout_at {
            let mut expiries = self.expiries();
            expiries.by_token.insert(lock.token.clone(), ((*lock.path).clone(), at));
            expiries.soonest = Some(expiries.soonest.map_or(at, |soonest| soonest.min(at)));
        }
    }
}

impl DavLockSystem for ExpiringLs {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let path = path.clone();
        let principal = principal.map(str::to_owned);
        let owner = owner.cloned();
        async move {
            self.purge().await;
            if self.active() >= self.max_locks {
                tracing::warn!(limit = self.max_locks, "lock table full; refusing a new lock");
                let refused = DavLock {
                    token: String::new(),
                    path: Box::new(path),
                    principal,
                    owner: None,
                    timeout_at: None,
                    timeout: None,
                    shared,
                    deep,
                };
                return Err(refused);
            }
            let timeout = Some(self.cap(timeout));
            let result = self.inner.lock(&path, principal.as_deref(), owner.as_ref(), timeout, shared, deep).await;
            if let Ok(lock) = &result {
                self.remember(lock);
            }
            result
        }
        .boxed()
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let path = path.clone();
        let token = token.to_owned();
        async move {
            self.purge().await;
            let result = self.inner.unlock(&path, &token).await;
            if result.is_ok() {
                self.expiries().by_token.remove(&token);
            }
            result
        }
        .boxed()
    }

    fn refresh(&'_ self, path: &DavPath, token: &str, timeout: Option<Duration>) -> LsFuture<'_, Result<DavLock, ()>> {
        let path = path.clone();
        let token = token.to_owned();
        async move {
            self.purge().await;
            let result = self.inner.refresh(&path, &token, Some(self.cap(timeout))).await;
            if let Ok(lock) = &result {
                self.remember(lock);
            }
            result
        }
        .boxed()
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let path = path.clone();
        let principal = principal.map(str::to_owned);
        let tokens = submitted_tokens.to_vec();
        async move {
            self.purge().await;
            self.inner.check(&path, principal.as_deref(), ignore_principal, deep, &tokens).await
        }
        .boxed()
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let path = path.clone();
        async move {
            self.purge().await;
            self.inner.discover(&path).await
        }
        .boxed()
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let path = path.clone();
        async move {
            self.purge().await;
            let result = self.inner.delete(&path).await;
            // Locks at or below the deleted path are gone from the table; forget their timers.
            let prefix = path.as_bytes().to_vec();
            self.expiries().by_token.retain(|_, (p, _)| !p.as_bytes().starts_with(&prefix));
            result
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn locks_expire_and_timeouts_are_capped() {
        let ls = ExpiringLs::new(Duration::from_secs(2), 10);
        let path = DavPath::new("/f").unwrap();
        let lock = ls.lock(&path, Some("u"), None, None, false, false).await.expect("first lock");
        assert_eq!(lock.timeout, Some(Duration::from_secs(2)), "no Timeout header means the cap");
        assert!(ls.lock(&path, Some("v"), None, Some(Duration::from_secs(1)), false, false).await.is_err());
        // Rewind the clock of the stored expiry instead of sleeping.
        {
            let mut expiries = ls.expiries();
            let now = SystemTime::now();
            expiries.by_token.get_mut(&lock.token).unwrap().1 = now;
            expiries.soonest = Some(now);
        }
        assert!(ls.check(&path, Some("v"), false, false, &[]).await.is_ok(), "expired lock still held");
        assert!(ls.lock(&path, Some("v"), None, Some(Duration::from_secs(999)), false, false).await.is_ok());
        assert_eq!(ls.active(), 1);
    }
}
