//! Verified tokens, remembered so a client that reconnects with the same token skips the
//! signature check and the claim parsing (issue 14: connection setup cost). ES256 and RS256
//! verification costs tens of microseconds per connect; a lookup costs a hash of the token.
//!
//! Safety rules, enforced by the callers in `auth.rs` and `server.rs`:
//! - The key is the **whole token** (header, claims and signature), never the signature alone:
//!   a signature pasted onto other claims must not hit.
//! - Only tokens that passed every check are stored; expiry (`exp` + leeway) is checked again on
//!   every hit, and an expired entry is dropped.
//! - Revocation is checked after the cache, on every use (`Shared::authenticate`), so a revoked
//!   token is refused even when cached.
//! - A key set reload empties the cache: a token signed by a key that was removed must be
//!   verified again (and refused). A token verified with the old key set and stored after the
//!   reload emptied the cache would have lived on until the next reload (outside audit 66, F1:
//!   in 2 of 4 reloads): each clear starts a new [`TokenCache::generation`], and a token is
//!   stored only under the generation read before its key set was.
//!
//! Bounded: at most `capacity` entries (a token is at most `auth::MAX_TOKEN_BYTES`). When full,
//! expired entries go first, then arbitrary ones (about an eighth), so a flood of distinct valid
//! tokens cannot grow memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::auth::Grant;

/// Default `auth.token_cache`: enough for every client of a busy instance reconnecting at once,
/// at most 16 MiB of tokens even at the 4 KiB token limit.
pub const DEFAULT_ENTRIES: usize = 4096;

pub struct TokenCache {
    capacity: usize,
    entries: Mutex<HashMap<Box<str>, Grant>>,
    /// How many times the cache was cleared; only changed with `entries` locked.
    generation: AtomicU64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 caches nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The grant of a token verified before, if still unexpired as of `now` (Unix seconds) with
    /// `leeway_secs`. `Err` (its grant) when it was cached but has expired (the entry is
    /// dropped).
    pub fn get(&self, token: &str, now: u64, leeway_secs: u64) -> Option<Result<Grant, Grant>> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let grant = entries.get(token)?;
        if grant.expires_at.saturating_add(leeway_secs) <= now {
            return entries.remove(token).map(Err);
        }
        Some(Ok(grant.clone()))
    }

    /// The generation to pass to [`TokenCache::insert`]: read it before the key set a token
    /// is verified with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Remembers a token that passed every check, unless the cache was cleared since
    /// `generation` was read (its key set may be gone).
    pub fn insert(&self, token: &str, grant: &Grant, now: u64, leeway_secs: u64, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(token) {
            entries.retain(|_, g| g.expires_at.saturating_add(leeway_secs) > now);
            if entries.len() >= self.capacity {
                // Arbitrary victims (the map's order): cheap, and no pattern of tokens can make
                // the cache grow.
                let excess = entries.len() + 1 - self.capacity;
                let drop = excess.max(self.capacity / 8);
                let victims: Vec<Box<str>> = entries.keys().take(drop).cloned().collect();
                for k in victims {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(token.into(), grant.clone());
    }

    /// Forgets everything (the key set changed).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
