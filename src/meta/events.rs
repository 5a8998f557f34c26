//! The notification queue's storage half. An event row is written by the job that
//! commits the change it announces (`enqueue`), so one transaction records both or
//! neither. Each endpoint has a cursor (the last sequence number it has taken); a row
//! leaves the front of the queue once every cursor has passed it, or when the queue is
//! full (drop oldest: the endpoints that had not taken it count it as dropped).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::watch;

use super::model::{decode, encode, EventRecord, ManifestRecord};
use super::schema::{EVENTS, EVENT_STATE, MANIFESTS};
use super::{Meta, MetaError};

const SEQ: &str = "seq";

fn cursor_key(endpoint: &str) -> String {
    format!("cursor/{endpoint}")
}

fn dropped_key(endpoint: &str) -> String {
    format!("dropped/{endpoint}")
}

/// What the writer jobs need to know of the queue.
pub(super) struct Queue {
    /// Most rows kept; 0 (no endpoint configured) records nothing.
    cap: AtomicU64,
    /// The last sequence number committed: delivery tasks wait on it.
    committed: watch::Sender<u64>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue { cap: AtomicU64::new(0), committed: watch::channel(0).0 }
    }
}

/// One endpoint's view of the queue, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events recorded and not yet taken by the endpoint (delivered or filtered out).
    pub depth: u64,
    /// Events the endpoint lost because the queue was full.
    pub dropped: u64,
}

/// Append `ev` (when the queue is on) inside the caller's job; returns its sequence
/// number. Call it last in a job, after every check has passed.
pub(super) fn enqueue(
    txn: &WriteTransaction,
    q: &Queue,
    ev: Option<EventRecord>,
) -> Result<Option<u64>, MetaError> {
    let cap = q.cap.load(Relaxed);
    let Some(ev) = ev.filter(|_| cap > 0) else {
        return Ok(None);
    };
    let mut state = txn.open_table(EVENT_STATE)?;
    let seq = state.get(SEQ)?.map_or(0, |v| v.value()) + 1;
    state.insert(SEQ, seq)?;
    let mut rows = txn.open_table(EVENTS)?;
    rows.insert(seq, encode(&ev).as_slice())?;
    loop {
        let first = rows.first()?.map(|(k, _)| k.value());
        let Some(first) = first.filter(|f| seq - f + 1 > cap) else {
            break;
        };
        rows.remove(first)?;
        let mut behind = Vec::new();
        for item in state.range("cursor/".."cursor0")? {
            let (k, v) = item?;
            if v.value() < first {
                behind.push(k.value()["cursor/".len()..].to_owned());
            }
        }
        for name in behind {
            state.insert(cursor_key(&name).as_str(), first)?;
            let key = dropped_key(&name);
            let n = state.get(key.as_str())?.map_or(0, |v| v.value()) + 1;
            state.insert(key.as_str(), n)?;
            if n == 1 || n % 1000 == 0 {
                tracing::warn!(
                    endpoint = name,
                    dropped = n,
                    cap,
                    "notification queue full: dropped the oldest event"
                );
            }
        }
    }
    Ok(Some(seq))
}

/// A manifest delete's event, its target completed from the manifest row.
pub(super) fn complete_delete(
    txn: &WriteTransaction,
    event: Option<EventRecord>,
    digest: &crate::digest::Digest,
) -> Result<Option<EventRecord>, MetaError> {
    let Some(mut e) = event else {
        return Ok(None);
    };
    e.digest = Some(digest.clone());
    let row = txn.open_table(MANIFESTS)?.get(digest.as_str())?.map(|v| v.value().to_vec());
    if let Some(r) = row.map(|b| decode::<ManifestRecord>(&b)).transpose()? {
        e.media_type = Some(r.media_type);
        e.size = Some(r.size);
    }
    Ok(Some(e))
}

/// Remove the rows every endpoint has taken.
fn trim(txn: &WriteTransaction) -> Result<(), MetaError> {
    let state = txn.open_table(EVENT_STATE)?;
    let mut min: Option<u64> = None;
    for item in state.range("cursor/".."cursor0")? {
        let (_, v) = item?;
        min = Some(min.map_or(v.value(), |m| m.min(v.value())));
    }
    // No endpoint: nothing will take the rows.
    let min = min.unwrap_or(u64::MAX);
    txn.open_table(EVENTS)?.retain_in(..=min, |_, _| false)?;
    Ok(())
}

impl Meta {
    /// Record events from now on, keeping at most `cap` (0: record none).
    pub fn enable_events(&self, cap: u64) {
        self.events.cap.store(cap, Relaxed);
    }

    /// Changes to the last committed sequence number.
    pub fn events_committed(&self) -> watch::Receiver<u64> {
        self.events.committed.subscribe()
    }

    pub(super) fn events_published(&self, seq: Option<u64>) {
        if let Some(s) = seq {
            self.events.committed.send_if_modified(|cur| {
                let newer = s > *cur;
                if newer {
                    *cur = s;
                }
                newer
            });
        }
    }

    /// The configured endpoints: a new one starts at the tail (it is sent what happens
    /// from now on), a known one keeps its cursor, one no longer configured is
    /// forgotten (its rows no longer pinned).
    #[allow(clippy::similar_names)] // `state` (the table) and `stale` (its rows to drop)
    pub async fn event_endpoints(&self, names: Vec<String>) -> Result<(), MetaError> {
        self.write(move |txn| {
            {
                let mut state = txn.open_table(EVENT_STATE)?;
                let seq = state.get(SEQ)?.map_or(0, |v| v.value());
                let mut stale = Vec::new();
                for item in state.iter()? {
                    let (k, _) = item?;
                    let key = k.value();
                    let name = key.strip_prefix("cursor/").or_else(|| key.strip_prefix("dropped/"));
                    if name.is_some_and(|n| !names.iter().any(|m| m == n)) {
                        stale.push(key.to_owned());
                    }
                }
                for k in stale {
                    state.remove(k.as_str())?;
                }
                for n in &names {
                    let key = cursor_key(n);
                    if state.get(key.as_str())?.is_none() {
                        state.insert(key.as_str(), seq)?;
                    }
                }
            }
            trim(txn)
        })
        .await
    }

    /// Whether any queue state exists (rows or cursors): when no endpoint is
    /// configured and none does, startup has nothing to forget and writes nothing.
    pub fn has_event_state(&self) -> Result<bool, MetaError> {
        let rtx = self.db.begin_read()?;
        Ok(rtx.open_table(EVENT_STATE)?.first()?.is_some() || rtx.open_table(EVENTS)?.first()?.is_some())
    }

    /// Up to `limit` events after `endpoint`'s cursor, oldest first.
    pub fn events_after(&self, endpoint: &str, limit: usize) -> Result<Vec<(u64, EventRecord)>, MetaError> {
        let rtx = self.db.begin_read()?;
        let cursor =
            rtx.open_table(EVENT_STATE)?.get(cursor_key(endpoint).as_str())?.map_or(0, |v| v.value());
        let rows = rtx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in rows.range(cursor + 1..)? {
            if out.len() == limit {
                break;
            }
            let (k, v) = item?;
            out.push((k.value(), decode(v.value())?));
        }
        Ok(out)
    }

    /// `endpoint` has taken every event up to `upto` (delivered or filtered out).
    pub async fn ack_events(&self, endpoint: String, upto: u64) -> Result<(), MetaError> {
        self.write(move |txn| {
            {
                let mut state = txn.open_table(EVENT_STATE)?;
                let key = cursor_key(&endpoint);
                let cur = state.get(key.as_str())?.map(|v| v.value());
                // An endpoint forgotten meanwhile stays forgotten.
                if cur.is_some_and(|c| c < upto) {
                    state.insert(key.as_str(), upto)?;
                }
            }
            trim(txn)
        })
        .await
    }

    /// Depth and drops of `endpoint`'s queue.
    pub fn event_stats(&self, endpoint: &str) -> Result<EventStats, MetaError> {
        let rtx = self.db.begin_read()?;
        let state = rtx.open_table(EVENT_STATE)?;
        let seq = state.get(SEQ)?.map_or(0, |v| v.value());
        let cursor = state.get(cursor_key(endpoint).as_str())?.map_or(seq, |v| v.value());
        let dropped = state.get(dropped_key(endpoint).as_str())?.map_or(0, |v| v.value());
        Ok(EventStats { depth: seq.saturating_sub(cursor), dropped })
    }
}
