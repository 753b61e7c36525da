//! The backend seam: everything a node keeps beyond its connections — sequencing, the
//! history window, entity state, and (next) durable service queues, locks, channels and
//! tickets — behind one interface, chosen at start-up ([`open`]).
//!
//! [`LocalBackend`] is the single-node implementation: the sequencer of [`crate::ingest`]
//! and the embedded [`crate::store`]. The cluster issue adds a Redis one beside it; no
//! feature reaches past this trait, so what it keeps works the same on either.
//!
//! Shards stay synchronous: every method returns at once. Work that must wait (a group
//! commit) answers later through the shard's mailbox ([`ReplyTo`]); nothing on the
//! fan-out path calls in here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::entities::{EntityJob, EntityWrite, Replica};
use crate::ingest::{Ingest, IngestSetup, Publication, PublishItem, PublishOutcome, SeqMarks};
use crate::metrics::Source;
use crate::protocol::{ErrorCode, Refusal};
use crate::router::{Answer, ReplyTo, Router};
use crate::store::{Job, JobOutcome, Store, StoreOptions, Table, WriteTx};

/// What a node asks of the state it shares (see the module docs).
pub trait Backend: Send + Sync {
    /// Sequences plain publications. `Some` when they were handed to every shard at once
    /// (the publisher is answered now); `None` when the answer comes later to `reply`.
    fn publish(
        &self,
        items: &[PublishItem],
        source: Source,
        reply: ReplyTo,
    ) -> Option<PublishOutcome>;

    /// A durable entity write; the answer always comes later, to `reply`, once durable.
    fn write_entity(&self, write: EntityWrite, reply: ReplyTo);

    /// The newest `seq` handed to the shards.
    fn last_seq(&self) -> u64;

    /// Calls `f` for each retained publication with `since < seq <= upto`, in order;
    /// returns whether the retained history reached back that far (`recovered`).
    fn replay(&self, since: u64, upto: u64, f: &mut dyn FnMut(&Arc<Publication>)) -> bool;

    /// Every entity's current state, as of the newest publication handed to the shards.
    fn replica(&self) -> &Replica;

    /// Whether the backend can take writes (`/readyz`).
    fn ready(&self) -> bool;

    /// Stops taking writes, finishes what is queued (every accepted write is answered),
    /// releases files.
    fn close(&self);
}

/// Opens the backend the configuration names.
pub fn open(config: &Config, router: Arc<Router>) -> Result<Arc<dyn Backend>, String> {
    if !config.cluster.redis_url.is_empty() {
        return Err(
            "cluster.redis_url: cluster mode is not implemented in this server version; \
             leave it empty to run a single node"
                .into(),
        );
    }
    Ok(Arc::new(LocalBackend::open(config, router)?))
}

/// The single-node backend: see the module docs.
pub struct LocalBackend {
    ingest: Arc<Ingest>,
    store: Store,
}

/// Meta key of the durable `seq` reservation (8 bytes, big-endian).
const SEQ_RESERVED: &[u8] = b"seq_reserved";

/// Reserves `seq` blocks through the store's group commit.
struct StoreMarks {
    store: Store,
}

struct ReserveJob {
    mark: u64,
    reserved: Arc<AtomicU64>,
}

impl Job for ReserveJob {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        // Never lower a mark already durable (reservations may commit out of order
        // only in theory: there is one writer, so they do not).
        let current = tx
            .get(Table::Meta, SEQ_RESERVED)
            .map_err(|e| e.to_string())?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        tx.put(
            Table::Meta,
            SEQ_RESERVED,
            &self.mark.max(current).to_be_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    fn committed(self: Box<Self>, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Durable => {
                self.reserved.fetch_max(self.mark, Ordering::AcqRel);
            }
            other => tracing::error!(mark = self.mark, "seq reservation not durable: {other:?}"),
        }
    }
}

impl SeqMarks for StoreMarks {
    fn reserve(&self, mark: u64, reserved: Arc<AtomicU64>) {
        if self
            .store
            .submit(Box::new(ReserveJob { mark, reserved }))
            .is_err()
        {
            tracing::error!(mark, "seq reservation refused: the store is closed");
        }
    }
}

impl LocalBackend {
    /// Opens the store under `data_dir`, recovers entity state and the `seq` mark, and
    /// reserves the first block of `seq`s before returning.
    pub fn open(config: &Config, router: Arc<Router>) -> Result<LocalBackend, String> {
        let wake = router.clone();
        let store = Store::open(
            &config.data_dir,
            StoreOptions {
                after_group: Some(Box::new(move |_| {
                    crate::entities::end_group();
                    // One wake-up per shard per group, not per write.
                    wake.wake_all();
                })),
                ..StoreOptions::default()
            },
        )
        .map_err(|e| {
            format!(
                "cannot open the store in {}: {e}",
                config.data_dir.display()
            )
        })?;
        let replica = Arc::new(Replica::default());
        let mut bad = 0usize;
        store
            .scan(Table::Entities, &mut |k, v| {
                let key = String::from_utf8_lossy(k);
                match (key.split_once('/'), serde_json::from_slice(v)) {
                    (Some((c, id)), Ok(state)) => replica.load(c, id, state),
                    _ => bad += 1,
                }
            })
            .map_err(|e| format!("cannot read entities from the store: {e}"))?;
        if bad > 0 {
            tracing::error!(
                bad,
                "entities in the store that could not be read were skipped"
            );
        }
        let start_seq = store
            .get(Table::Meta, SEQ_RESERVED)
            .map_err(|e| format!("cannot read the seq mark from the store: {e}"))?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        tracing::info!(entities = replica.len(), start_seq, "store recovered");
        let ingest = Arc::new(Ingest::with(
            router,
            IngestSetup {
                start_seq,
                history_size: config.history.size,
                history_ttl_ms: config.history.ttl_ms,
                replica,
                marks: Some(Box::new(StoreMarks {
                    store: store.clone(),
                })),
            },
        ));
        ingest.reserve_initial();
        let started = Instant::now();
        while ingest.reserved() <= start_seq {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(
                    "the store did not commit the first seq reservation within 30 s".into(),
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(LocalBackend { ingest, store })
    }

    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }
}

impl Backend for LocalBackend {
    fn publish(
        &self,
        items: &[PublishItem],
        source: Source,
        _reply: ReplyTo,
    ) -> Option<PublishOutcome> {
        Some(self.ingest.publish(items, source))
    }

    fn write_entity(&self, write: EntityWrite, reply: ReplyTo) {
        let job = Box::new(EntityJob::new(write, reply, self.ingest.clone()));
        if self.store.submit(job).is_err() {
            let r = Refusal::new(
                ErrorCode::Internal,
                "the store is closed (the node is stopping)",
            );
            self.ingest.router().answer(
                reply,
                Answer::Http {
                    status: 503,
                    body: serde_json::json!({"error": {"code": r.code.as_str(), "message": r.message}}),
                },
            );
        }
    }

    fn last_seq(&self) -> u64 {
        self.ingest.last_seq()
    }

    fn replay(&self, since: u64, upto: u64, f: &mut dyn FnMut(&Arc<Publication>)) -> bool {
        self.ingest
            .history()
            .replay(since, upto, crate::time::unix_ms(), f)
    }

    fn replica(&self) -> &Replica {
        self.ingest.replica()
    }

    fn ready(&self) -> bool {
        true
    }

    fn close(&self) {
        self.store.close();
    }
}
