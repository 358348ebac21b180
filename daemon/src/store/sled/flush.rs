//! Group commit for the sled store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::store::{StoreError, StoreResult};

/// Group commit: callers queue for a flush; one flush covers everyone queued when it starts,
/// and writers arriving during a flush share the next one.
///
/// The flushes run on a dedicated thread calling sled's blocking `flush`: `flush_async`
/// would hand each one to sled's I/O pool first, one more thread wake-up per flush.
#[derive(Debug, Clone)]
pub(super) struct GroupFlush {
    thread: Arc<FlushThread>,
    pub(super) count: Arc<AtomicU64>,
    /// Where a durable write's wait for its flush goes, once the daemon's metrics exist.
    pub(super) metrics: crate::metrics::MetricsSlot,
}

/// The flush thread's handle. When the last store clone goes, its drop closes the queue and
/// waits for the thread, so the database is closed (and its lock released) when the store
/// is: a daemon restarted in the same process can open it again at once.
#[derive(Debug)]
pub(super) struct FlushThread {
    requests: Option<std::sync::mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushThread {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupFlush {
    pub(super) fn start(db: sled::Db) -> StoreResult<Self> {
        let (requests, rx) = std::sync::mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let thread = std::thread::Builder::new()
            .name("lanyard-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    counter.fetch_add(1, Ordering::Relaxed);
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the flush thread: {e}")))?;
        Ok(Self {
            thread: Arc::new(FlushThread {
                requests: Some(requests),
                thread: Some(thread),
            }),
            count,
            metrics: crate::metrics::MetricsSlot::default(),
        })
    }

    pub(super) async fn flush(&self) -> StoreResult<()> {
        let began = std::time::Instant::now();
        let flushed = self.flush_untimed().await;
        if let Some(metrics) = self.metrics.get() {
            metrics.store_operation("sled", "flush", began.elapsed().as_secs_f64());
        }
        flushed
    }

    async fn flush_untimed(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.thread
            .requests
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the flusher has stopped".into()))?
            .send(tx)
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?
            .map_err(StoreError::Backend)
    }
}
