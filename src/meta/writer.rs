//! The writer thread. redb admits one write transaction at a time and `begin_write`
//! blocks, so every write goes through this one thread over a crossbeam channel. It
//! drains whatever is queued into one transaction (group commit: N requests, one
//! fsync) and answers each caller only after that transaction has committed.
//!
//! Invariant for jobs: a job checks before it mutates, so a job that fails its checks
//! leaves no trace and the rest of the batch still commits. A storage error inside any
//! job aborts the whole batch and every job in it is answered with that error.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

use super::memo::Generation;
use super::MetaError;

/// At most this many jobs share one transaction.
const MAX_BATCH: usize = 512;

/// What a job leaves behind: whether it hit a storage error, and how to answer its
/// caller once the transaction's fate is known.
pub(super) struct Outcome {
    fatal: bool,
    finish: Box<dyn FnOnce(Result<(), MetaError>) + Send>,
}

pub(super) type Job = Box<dyn FnOnce(&WriteTransaction) -> Outcome + Send>;

/// Wrap a typed closure as a job whose result reaches `reply` after the commit.
pub(super) fn job<T, F>(f: F) -> (Job, oneshot::Receiver<Result<T, MetaError>>)
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> Result<T, MetaError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |txn| {
        let r = f(txn);
        let fatal = matches!(r, Err(MetaError::Storage(_) | MetaError::Corrupt(_)));
        Outcome {
            fatal,
            finish: Box::new(move |commit| {
                let _ = tx.send(commit.and(r));
            }),
        }
    });
    (job, rx)
}

/// The writer thread's handle. Dropped with the last `Meta` clone: closes the channel
/// and joins the thread, so the database file is closed (its lock released) by the time
/// the last `Meta` is gone — a library user can reopen the data directory at once.
pub(super) struct Handle {
    tx: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub(super) fn sender(&self) -> Option<&Sender<Job>> {
        self.tx.as_ref()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // Never join ourselves (were the last clone dropped inside a job).
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

pub(super) fn spawn(db: Arc<Database>, generation: Arc<Generation>) -> std::io::Result<Handle> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let thread = std::thread::Builder::new()
        .name("wharfie-meta-writer".into())
        .spawn(move || run(&db, &rx, &generation))?;
    Ok(Handle { tx: Some(tx), thread: Some(thread) })
}

fn run(db: &Database, rx: &Receiver<Job>, generation: &Generation) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs unanswered makes each caller see `MetaError::Closed`.
                tracing::error!(error = %e, "meta: cannot begin a write transaction");
                continue;
            }
        };
        // Manifests are untrusted input: two-phase commit makes a torn commit detectable.
        txn.set_two_phase_commit(true);
        let mut finishes = Vec::with_capacity(batch.len());
        let mut fatal = false;
        for j in batch {
            let o = j(&txn);
            fatal |= o.fatal;
            finishes.push(o.finish);
        }
        let result = if fatal {
            let _ = txn.abort();
            Err(MetaError::Storage("batch aborted after a storage error".into()))
        } else {
            txn.commit().map_err(MetaError::storage)
        };
        // Before anyone learns of this commit, no memoised read from before it is served.
        generation.bump();
        if let Err(e) = &result {
            tracing::error!(error = %e, batch = finishes.len(), "meta: commit failed");
        }
        for f in finishes {
            f(result.clone());
        }
    }
}
