//! The single-node backend: the sequencer of [`crate::ingest`] in front of the embedded
//! [`crate::store`]. Entity writes and `seq` reservations are store jobs, applied and
//! committed in groups on the store's writer thread; once a group is durable each write
//! is sequenced (so `seq` order is commit order) and answered through its shard's
//! mailbox.
//!
//! Owned by the node (`Node::backend`); its jobs run on the store's writer thread only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{entity_answer, publish_answered, refusal_answer, Backend, PublishReply};
use crate::auth::jwt::Claims;
use crate::auth::tickets::Tickets;
use crate::config::Config;
use crate::entities::{entity_key, EntityWrite, Replica, WriteOp};
use crate::ingest::{Ingest, IngestSetup, PublishItem, PublishOutcome, SeqMarks};
use crate::protocol::{ErrorCode, Refusal};
use crate::publication::{EntityChange, Publication};
use crate::router::{Answer, ReplyTo, Router};
use crate::services::{ServiceCmd, ServicesEngine};
use crate::store::{Job, JobOutcome, Store, StoreError, StoreOptions, Table, WriteTx};

/// The single-node backend: see the module docs.
pub struct LocalBackend {
    ingest: Arc<Ingest>,
    store: Store,
    services: Box<dyn ServicesEngine>,
    /// In memory: a ticket lives seconds and a restart may forget it (the client asks
    /// for another).
    tickets: Tickets,
    /// What was published through this node, for the operator console.
    busiest: crate::topk::BusiestPaths,
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
                    end_group();
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
        let start_seq = store
            .get(Table::Meta, SEQ_RESERVED)
            .map_err(|e| format!("cannot read the seq mark from the store: {e}"))?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let replica = Arc::new(Replica::default());
        let mut bad = 0usize;
        // The store keeps states, not versions: every entity is loaded at the durable seq
        // mark, which no write before the restart reached.
        store
            .scan(Table::Entities, &mut |k, v| {
                let key = String::from_utf8_lossy(k);
                match (key.split_once('/'), serde_json::from_slice(v)) {
                    (Some((c, id)), Ok(state)) => replica.load(c, id, state, start_seq),
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
        tracing::info!(entities = replica.len(), start_seq, "store recovered");
        let (intake, pending) = crate::services::prepare(store.clone());
        let ingest = Arc::new(Ingest::with(
            router.clone(),
            IngestSetup {
                start_seq,
                history_size: config.history.size,
                history_ttl_ms: config.history.ttl_ms,
                replica,
                marks: Some(Box::new(StoreMarks {
                    store: store.clone(),
                })),
                tasks: Some(intake),
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
        let services = pending.start(config, store.clone(), ingest.clone(), router)?;
        Ok(LocalBackend {
            ingest,
            store,
            services: Box::new(services),
            tickets: Tickets::default(),
            busiest: crate::topk::BusiestPaths::new(),
        })
    }

    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }
}

impl Backend for LocalBackend {
    fn publish(&self, items: &[PublishItem], reply: PublishReply) -> Option<PublishOutcome> {
        // Once per request, before the sequencer's lock: never under it.
        self.busiest.note(items.iter().map(|i| i.path.as_str()));
        let router = self.ingest.router().clone();
        let source = reply.source();
        self.ingest.publish_with(items, source, &mut |outcome| {
            let router = router.clone();
            let reply = reply.clone();
            Box::new(move |result: Result<(), String>| {
                let result = result.map_err(|e| (500, Refusal::new(ErrorCode::Internal, e)));
                publish_answered(&router, reply, outcome, result)
            })
        })
    }

    fn busiest_paths(&self) -> &crate::topk::BusiestPaths {
        &self.busiest
    }

    fn services(&self, cmd: ServiceCmd) {
        self.services.send(cmd);
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

    fn read_entities(&self, read: crate::entities::EntityRead, reply: ReplyTo) {
        // Never needed here (the replica is the truth, `reads_wait` is false), but right.
        let (status, body) = read.run(self.ingest.replica());
        self.ingest
            .router()
            .answer(reply, Answer::Json { status, body });
    }

    fn issue_ticket(&self, claims: Claims, ttl_ms: u64, reply: ReplyTo) {
        let (uuid, expires) = self.tickets.issue(claims, crate::time::unix_ms(), ttl_ms);
        self.ingest
            .router()
            .answer(reply, super::ticket_issued(&uuid, expires));
    }

    fn redeem_ticket(&self, ticket: &str, reply: ReplyTo) {
        let redeemed = self.tickets.redeem(ticket, crate::time::unix_ms());
        self.ingest.router().answer(reply, Answer::Ticket(redeemed));
    }

    fn applied_seq(&self) -> u64 {
        self.ingest.last_seq()
    }

    fn head_seq(&self) -> u64 {
        // One sequencer, and it applies what it sequences before it moves `last_seq`.
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
        // The services thread's last writes (completions) go into the store first.
        self.services.close();
        self.store.close();
    }
}

thread_local! {
    /// The states written by earlier jobs of the group being committed (writer thread
    /// only): the replica gets them only once the group is durable, but later writes of
    /// the same group must see them. Cleared by [`end_group`].
    static GROUP: RefCell<HashMap<String, Option<Arc<Value>>>> = RefCell::new(HashMap::new());
}

/// The store calls this once per group, after every job's `committed`.
fn end_group() {
    GROUP.with(|g| g.borrow_mut().clear());
}

/// What an [`EntityJob`] decided in `apply`.
struct Applied {
    event_type: &'static str,
    before: Option<Arc<Value>>,
    after: Option<Arc<Value>>,
    /// `after` as stored (JSON text).
    json: Option<Vec<u8>>,
}

/// One entity write on its way through a group commit.
pub struct EntityJob {
    pub write: EntityWrite,
    pub reply: ReplyTo,
    pub ingest: Arc<Ingest>,
    decided: Option<Result<Applied, (u16, Refusal)>>,
}

impl EntityJob {
    pub fn new(write: EntityWrite, reply: ReplyTo, ingest: Arc<Ingest>) -> EntityJob {
        EntityJob {
            write,
            reply,
            ingest,
            decided: None,
        }
    }

    fn decide(&mut self, tx: &mut WriteTx<'_>) -> Result<Applied, (u16, Refusal)> {
        // The body moves into the new state (a job is applied once): no copy of it.
        let op = std::mem::replace(&mut self.write.op, WriteOp::Delete);
        let w = &self.write;
        let key = entity_key(&w.collection, &w.id);
        // The state earlier writes of this group left, else the replica's.
        let current = GROUP
            .with(|g| g.borrow().get(&key).cloned())
            .unwrap_or_else(|| self.ingest.replica().get(&w.collection, &w.id));
        let crate::entities::Decision { event_type, after } =
            crate::entities::decide(current.as_deref(), &w.collection, &w.id, op)
                .map_err(|r| (404, r))?;
        // Encoded once: the stored bytes are also the event's `data`.
        let json = match &after {
            Some(state) => {
                let bytes = serde_json::to_vec(&**state).map_err(|e| internal(e.to_string()))?;
                tx.put(Table::Entities, key.as_bytes(), &bytes)
                    .map_err(|e: StoreError| internal(e.to_string()))?;
                Some(bytes)
            }
            None => {
                tx.delete(Table::Entities, key.as_bytes())
                    .map_err(|e: StoreError| internal(e.to_string()))?;
                None
            }
        };
        GROUP.with(|g| g.borrow_mut().insert(key, after.clone()));
        Ok(Applied {
            event_type,
            before: current,
            after,
            json,
        })
    }
}

fn internal(m: String) -> (u16, Refusal) {
    (
        500,
        Refusal::new(ErrorCode::Internal, format!("store write failed: {m}")),
    )
}

impl Job for EntityJob {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        let d = self.decide(tx);
        let r = match &d {
            Ok(_) => Ok(()),
            Err((_, r)) => Err(r.message.clone()),
        };
        self.decided = Some(d);
        r
    }

    fn committed(self: Box<Self>, outcome: JobOutcome) {
        let this = *self;
        let answer = match (outcome, this.decided) {
            (JobOutcome::Durable, Some(Ok(a))) => {
                let router = this.ingest.router().clone();
                let (reply, op) = (this.reply, a.event_type);
                let (seq, deferred) = this.ingest.publish_entity(
                    a.event_type,
                    a.json.as_deref(),
                    EntityChange {
                        collection: this.write.collection.as_str().into(),
                        id: this.write.id.as_str().into(),
                        before: a.before,
                        after: a.after,
                    },
                    // Service tasks of the write: answered once they are durable too.
                    move |seq| {
                        Box::new(move |result: Result<(), String>| {
                            router.answer(
                                reply,
                                match result {
                                    Ok(()) => entity_answer(seq, op),
                                    Err(e) => {
                                        refusal_answer(500, &Refusal::new(ErrorCode::Internal, e))
                                    }
                                },
                            )
                        })
                    },
                );
                crate::metrics::entity_write(a.event_type);
                if deferred {
                    return;
                }
                entity_answer(seq, op)
            }
            (JobOutcome::Refused(_), Some(Err((status, r)))) => refusal_answer(status, &r),
            (JobOutcome::Failed(e), _) => {
                tracing::error!("entity write not committed: {e}");
                refusal_answer(
                    500,
                    &Refusal::new(ErrorCode::Internal, format!("store commit failed: {e}")),
                )
            }
            (JobOutcome::Refused(m), _) => {
                refusal_answer(500, &Refusal::new(ErrorCode::Internal, m))
            }
            (JobOutcome::Durable, _) => refusal_answer(
                500,
                &Refusal::new(ErrorCode::Internal, "entity write was not applied"),
            ),
        };
        this.ingest.router().answer(this.reply, answer);
    }
}
