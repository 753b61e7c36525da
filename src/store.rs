//! The embedded durable store: one fjall database, the directory `data_dir/shardcast.fjall`,
//! and the one thread that writes it.
//!
//! # What it owns
//! The database holds a fixed set of tables ([`Table`]), each mapping byte keys to byte values,
//! ordered bytewise: entity state, the sequence high-water mark and other metadata, and later
//! durable service queues, dead letters, lock fencing counters, channels and their backlogs.
//! Key layouts belong to the features that use them; the table list lives here so that every
//! feature's keys are in one place. Each table is one fjall keyspace (one LSM-tree); all of
//! them share the database's one journal, so a group's writes to several tables are atomic.
//!
//! # Why fjall
//! The store was first built on redb, a copy-on-write B-tree. Entity writes are random-key
//! updates over ~100k keys, and each one dirtied several 4 KiB pages of the tree; on the
//! target disks `fdatasync` costs ~0.36 ms plus ~35 µs per dirty page (1 page 0.36 ms, 50
//! pages 3.3 ms, 300 pages 10.6 ms), so a group of ~2000 writes took 10-140 ms to commit,
//! acknowledged writes topped out at ~36-40k/s and p99 latency at 20k writes/s was ~35 ms.
//! fjall is a log-structured merge tree: a commit appends the group's writes to one journal
//! file, sequentially, fsyncs that file, and inserts them into in-memory memtables; fjall's
//! background threads later flush full memtables to sorted table files and compact them, off
//! the commit path. The fsync of a commit thus writes about as many bytes as the group staged,
//! whatever keys it touched.
//!
//! # Who may touch it
//! Any thread may [`Store::submit`] a [`Job`] and any thread may read committed state
//! ([`Store::scan`], [`Store::scan_prefix`], [`Store::get`]) through its own snapshot.
//! Only the writer thread (`shardcast-store`) writes: it owns the receiving end of an
//! unbounded channel of jobs, so submitting never waits for the disk.
//!
//! # Group commit, and why
//! One fsync costs 0.2-1.5 ms on the target disks, so a commit per write would cap the server
//! near 1-5k writes/s; the targets are 50k acknowledged writes/s and more. So the
//! writer takes the first job (blocking) and applies it and then every job already queued,
//! in submission order, until the queue is empty or the group reaches
//! [`StoreOptions::max_jobs_per_commit`] jobs or [`StoreOptions::max_bytes_per_commit`]
//! staged bytes. It then commits the whole group as one fjall write batch: one journal append
//! and one fsync ([`fjall::PersistMode::SyncAll`]), and reports to each job, again in
//! submission order. Jobs that arrive during a commit form the next group, so the group size
//! grows with the load and the fsync cost is shared by all of them.
//!
//! The writer also starts a group no sooner than 500 µs after it started the previous one.
//! At 20k writes/s on the 2-core target machines, back-to-back commits of a few jobs each
//! (~2k fsyncs/s) left a commit in a few hundred waiting 10-25 ms for its fsync, and p99
//! latency at 11-13 ms: the kernel work that completes an fsync competes for the CPUs with
//! the server (a bare fsync loop's p99 went from 0.4 to 4.2 ms with both cores busy). With
//! the pause, every commit took under 5 ms and p99 was 1.5-7 ms; it costs a write that
//! arrives just after a commit started up to 0.5 ms, and caps one-job commits at 2k/s.
//!
//! # Per-job rollback and the group overlay
//! A job may refuse itself ([`Job::apply`] returns `Err`) after staging writes, and those
//! writes must not reach the commit while the rest of the group's must; and a later job of
//! the group must read what the earlier ones wrote, which a fjall batch cannot show (it is
//! write-only until committed). So [`WriteTx`] stages a job's puts and deletes in a per-job
//! overlay (one ordered map per table, key -> value or tombstone). Its reads look there
//! first, then in the group overlay, which holds the writes of the group's earlier accepted
//! jobs, then in the committed data on disk. Only when `apply` returns `Ok` is the job's
//! overlay merged into the group overlay (a later write of a key replaces an earlier one); a
//! refused (or panicking) job's overlay is simply dropped. Sizes are checked when staging. At
//! the end of the group the group overlay becomes the batch, one entry per key touched.
//!
//! # What `committed` guarantees
//! Every job that was accepted by `submit` gets exactly one [`Job::committed`] call, on the
//! writer thread, after its group's commit returned, in submission order, including the jobs
//! still queued when [`Store::close`] is called. [`JobOutcome::Durable`] means the job's
//! writes are on disk and survive a crash or power loss (the journal's fsync returned), and
//! that reads on any thread already see them; [`JobOutcome::Refused`] means the job refused
//! itself (or panicked) and none of its writes were kept; [`JobOutcome::Failed`] means the
//! group's commit failed and nothing of the group is acknowledged. Such a failure is an I/O
//! error on the journal (its write or its fsync): what reached the disk is then unknown, so
//! the group may or may not be found after a restart, and fjall refuses every later write
//! (every later group fails too) until the store is reopened. After every `committed` call of
//! a group, [`StoreOptions::after_group`] runs once.
//!
//! Panics in job code (`apply`, `committed`, `after_group`) are caught and logged; they never
//! stop the writer. I/O errors are values, never panics.
//!
//! # On disk
//! `data_dir/shardcast.fjall/` holds fjall's journals (`*.jnl`, each preallocated to 64 MiB;
//! a soft cap of 128 MiB on the older ones, so some 100-250 MiB in all), one folder of table
//! files per keyspace under `keyspaces/`, and a lock file (one process at a time). Opening
//! replays the journals written since the tables were last flushed (measured: ~1.2 s for
//! 180 MB). SIGKILL or power loss loses no acknowledged write, and a batch cut short at the
//! journal's tail is dropped whole. Every key is stored behind one tag byte (fjall refuses
//! empty keys, which this store's tables accept), so a key may be at most [`MAX_KEY_BYTES`]
//! long.
//!
//! fjall's background threads (`fjall:worker`, one per core, at most 4) flush and compact.
//! Memory: up to [`MAX_MEMTABLE_BYTES`] (32 MiB) of memtable per table being written (twice
//! that while one is being flushed; [`BACKLOG_MEMTABLE_BYTES`], 8 MiB, for channels'
//! backlogs) plus a 32 MiB block cache. A flush writes a table file of
//! about the table's live data in one go, and commits made meanwhile wait longer for their
//! fsync (once per 32 MiB written to a table).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

/// Counter: group commits that returned Ok.
pub const METRIC_COMMITS: &str = "shardcast_store_commits_total";
/// Histogram: jobs per group commit (refused jobs included).
pub const METRIC_COMMIT_JOBS: &str = "shardcast_store_commit_jobs";
/// Histogram: key + value bytes staged per group commit (a delete counts its key).
pub const METRIC_COMMIT_BYTES: &str = "shardcast_store_commit_bytes";
/// Histogram: seconds spent committing a group's batch: the journal write and its fsync,
/// mostly, then the memtable inserts.
pub const METRIC_COMMIT_SECONDS: &str = "shardcast_store_commit_seconds";
/// Counter: groups whose commit failed (nothing of them is acknowledged).
pub const METRIC_COMMIT_FAILURES: &str = "shardcast_store_commit_failures_total";

/// Every metric name this module records, for the project's metrics module.
pub const METRIC_NAMES: [&str; 5] = [
    METRIC_COMMITS,
    METRIC_COMMIT_JOBS,
    METRIC_COMMIT_BYTES,
    METRIC_COMMIT_SECONDS,
    METRIC_COMMIT_FAILURES,
];

/// The store's directory inside `data_dir` (fjall keeps a directory, not one file).
pub const DIR_NAME: &str = "shardcast.fjall";

/// The store's name inside `data_dir`: now a directory, see [`DIR_NAME`].
#[deprecated(note = "the store is a directory now: use DIR_NAME")]
pub const FILE_NAME: &str = DIR_NAME;

/// The file the redb store used to keep in `data_dir`. It is not read (there is no
/// migration); `open` warns when it finds one.
const OLD_REDB_FILE: &str = "shardcast.redb";

/// Largest key + value one put may stage. fjall's own limit is 4 GiB per value; a lower one
/// keeps a runaway value from stalling the whole group behind it.
pub const MAX_ENTRY_BYTES: usize = 1 << 30;

/// Longest key one put may stage: fjall stores a key's length in 16 bits, and this store puts
/// one tag byte before every key.
pub const MAX_KEY_BYTES: usize = u16::MAX as usize - 1;

/// The byte stored before every key (see the module docs, "On disk"). Part of the format.
const KEY_TAG: u8 = 0;

/// The writer starts a group no sooner than this after it started the previous one (see the
/// module docs, "Group commit, and why").
const MIN_GROUP_INTERVAL: Duration = Duration::from_micros(500);

/// Soft bound on the journals' total size (fjall's default is 512 MiB, its minimum 64 MiB).
/// Opening replays them at ~100 MB/s, so it also bounds the start-up time to about a second.
const MAX_JOURNAL_BYTES: u64 = 128 << 20;

/// A table's memtable is flushed to a table file once it holds this much (fjall's default
/// is 64 MiB, recommended 8 to 64). Memory is the reason: a memtable costs more than the
/// bytes it was given (a skip list of separately allocated entries); 64 MiB ones held RSS
/// up by ~80 MiB in the entity-write benchmark, and the soak's first flush came only after
/// about 20 minutes (RSS climbing all along). 16 MiB saved ~110 MiB there but flushed often
/// enough to worsen the p99 of paced durable writes (docs/PERFORMANCE.md, "Durable entity
/// writes"). fjall keeps the value a table was created with: a store created with another
/// keeps it.
const MAX_MEMTABLE_BYTES: u64 = 32 << 20;

/// The `Backlog` table's memtable cap (channels' backlogs). A published event is written
/// there once per matching channel, so this table takes the most bytes when many channels
/// match (1,000 channels × 200 events of 1 KiB: 200 MiB), and its memtables (the active one
/// and those sealed, waiting for their flush) held ~95 MiB of heap at 32 MiB. Its entries
/// are read back at most once (when a socket takes them), so a smaller memtable costs
/// little: more, smaller flushes (docs/PERFORMANCE.md, "Channel backlogs on disk").
const BACKLOG_MEMTABLE_BYTES: u64 = 8 << 20;

/// How long [`Store::release_memory`] waits for a flush before giving up on trimming.
const RELEASE_FLUSH_WAIT: Duration = Duration::from_secs(30);

const TABLE_COUNT: usize = 6;

/// Tables are fixed and named here so every feature's keys live in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Entity state: collection/id -> JSON.
    Entities,
    /// Small store-wide values: the sequence high-water mark, counters such as locks'
    /// fencing counters.
    Meta,
    /// Durable service queues' tasks.
    Tasks,
    /// Tasks that could not be delivered.
    DeadLetters,
    /// Channels with backlogs.
    Channels,
    /// Channels' retained publications.
    Backlog,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; TABLE_COUNT] = [
        Table::Entities,
        Table::Meta,
        Table::Tasks,
        Table::DeadLetters,
        Table::Channels,
        Table::Backlog,
    ];

    /// The table's keyspace name in the fjall database. Part of the format: never rename one.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Entities => "entities",
            Table::Meta => "meta",
            Table::Tasks => "tasks",
            Table::DeadLetters => "dead_letters",
            Table::Channels => "channels",
            Table::Backlog => "backlog",
        }
    }

    const fn index(self) -> usize {
        match self {
            Table::Entities => 0,
            Table::Meta => 1,
            Table::Tasks => 2,
            Table::DeadLetters => 3,
            Table::Channels => 4,
            Table::Backlog => 5,
        }
    }
}

/// What went wrong. Every variant holds strings, not fjall's error values, so that one commit
/// failure can be cloned to every job of its group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store was closed: no more jobs or reads.
    #[error("store is closed")]
    Closed,
    /// The data directory could not be created.
    #[error("data directory {path}: {reason}")]
    Dir { path: String, reason: String },
    /// The database could not be opened, created or recovered.
    #[error("opening {path}: {reason}")]
    Open { path: String, reason: String },
    /// The writer thread could not be started.
    #[error("starting the store writer thread: {0}")]
    Thread(String),
    /// A transaction could not be begun. fjall has no such step: not produced by this store,
    /// kept so that matches on this enum stay valid.
    #[error("beginning a transaction: {0}")]
    Transaction(String),
    /// A table (a fjall keyspace) could not be opened or created.
    #[error("opening table {table}: {reason}")]
    Table { table: &'static str, reason: String },
    /// Reading a table failed.
    #[error("table {table}: {reason}")]
    Storage { table: &'static str, reason: String },
    /// The group's commit failed: nothing of the group is acknowledged.
    #[error("commit failed: {0}")]
    Commit(String),
    /// One put's key + value exceeds [`MAX_ENTRY_BYTES`], or its key [`MAX_KEY_BYTES`].
    #[error("entry of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The writer itself panicked while handling the group (a bug, in this module or fjall).
    #[error("store writer panicked: {0}")]
    Panicked(String),
}

/// How a job ended, as [`Job::committed`] is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The group committed: this job's writes are durable.
    Durable,
    /// [`Job::apply`] returned this reason (or panicked): none of the job's writes were kept.
    /// A refused job is reported as refused even when its group then failed, since retrying
    /// it would be refused again.
    Refused(String),
    /// The group's commit failed: nothing of the group is acknowledged.
    Failed(StoreError),
}

/// One unit of work of a group commit.
pub trait Job: Send {
    /// Called on the writer thread while the group is being staged, in submission order.
    /// Reads see the writes of earlier jobs of the same group. Stage writes through `tx`.
    /// Return Err(reason) to refuse this job alone: its staged writes are rolled back
    /// (they never reach the commit) and the other jobs of the group are unaffected.
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String>;

    /// Called on the writer thread after the group's commit returned (or the group failed,
    /// or had nothing to commit), in submission order, exactly once per submitted job.
    /// Keep it short: the next group waits for it.
    fn committed(self: Box<Self>, outcome: JobOutcome);
}

/// Tuning of the writer thread.
pub struct StoreOptions {
    /// Most jobs in one group commit (at least 1 is used).
    pub max_jobs_per_commit: usize,
    /// A group stops taking jobs once its staged key + value bytes reach this (a single larger
    /// job still commits, alone).
    pub max_bytes_per_commit: usize,
    /// Called once per group on the writer thread, after all its `committed` calls, with the
    /// group's job count: lets the caller wake shards once per group, not once per job.
    pub after_group: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_jobs_per_commit: 4096,
            max_bytes_per_commit: 8 << 20,
            after_group: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_jobs_per_commit", &self.max_jobs_per_commit)
            .field("max_bytes_per_commit", &self.max_bytes_per_commit)
            .field(
                "after_group",
                &self.after_group.as_ref().map(|_| "Fn(usize)"),
            )
            .finish()
    }
}

/// Totals since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group commits that returned Ok.
    pub commits: u64,
    /// Jobs reported [`JobOutcome::Durable`].
    pub jobs: u64,
    /// Key + value bytes made durable.
    pub bytes: u64,
    /// Jobs reported [`JobOutcome::Refused`].
    pub refused: u64,
    /// Jobs reported [`JobOutcome::Failed`].
    pub failed: u64,
    /// Groups whose commit failed.
    pub failed_commits: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    bytes: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    failed_commits: AtomicU64,
}

/// The durable store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    // Dropped by close(): the channel disconnects, the writer drains what is queued and exits.
    sender: RwLock<Option<Sender<Box<dyn Job>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    // Dropped by close(); the database closes (its background threads stop, its lock file is
    // released) when the writer and the reads still running have dropped theirs too.
    db: RwLock<Option<Arc<Handles>>>,
    counters: Arc<Counters>,
    /// A [`Store::release_memory`] is under way.
    releasing: Arc<std::sync::atomic::AtomicBool>,
}

/// The open database and its keyspaces, one per [`Table`], indexed by [`Table::index`].
struct Handles {
    db: Database,
    keyspaces: [Keyspace; TABLE_COUNT],
}

impl Handles {
    fn keyspace(&self, table: Table) -> &Keyspace {
        &self.keyspaces[table.index()]
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Store {
    /// Opens or creates the database `dir/shardcast.fjall` (creating `dir` if needed), makes
    /// sure every table exists, and starts the writer thread. A database left by a crash is
    /// recovered by fjall while opening: it replays the journals not yet flushed to tables.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let old = dir.join(OLD_REDB_FILE);
        if old.exists() {
            tracing::warn!(
                path = %old.display(),
                "found the redb store's file: it is not read (the store is now {DIR_NAME})"
            );
        }
        let path = dir.join(DIR_NAME);
        let open_error = |e: fjall::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        // fjall reports some corruptions found while recovering by panicking: an error here.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Database::builder(&path)
                // The journals hold every write not yet in a table, and opening replays them
                // all: this bounds both the disk they use and the replay. When the journals
                // pass it, fjall flushes the tables holding the oldest one back (a table
                // written rarely, such as Meta, would otherwise pin journals forever).
                .max_journaling_size(MAX_JOURNAL_BYTES)
                .open()
        }));
        let db = match opened {
            Ok(db) => db.map_err(open_error)?,
            Err(p) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("fjall panicked: {}", panic_message(&*p)),
                })
            }
        };
        let handles = Arc::new(Handles {
            keyspaces: open_keyspaces(&db)?,
            db,
        });
        let counters = Arc::new(Counters::default());
        let (sender, receiver) = crossbeam_channel::unbounded::<Box<dyn Job>>();
        let writer = Writer {
            handles: handles.clone(),
            receiver,
            counters: counters.clone(),
            max_jobs: opts.max_jobs_per_commit.max(1),
            max_bytes: opts.max_bytes_per_commit.max(1),
            after_group: opts.after_group,
        };
        let handle = std::thread::Builder::new()
            .name("shardcast-store".into())
            .spawn({
                let span = tracing::Span::current();
                move || span.in_scope(|| writer.run())
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        tracing::info!(path = %path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                sender: RwLock::new(Some(sender)),
                writer: Mutex::new(Some(handle)),
                db: RwLock::new(Some(handles)),
                counters,
                releasing: Arc::default(),
            }),
        })
    }

    /// The database directory's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues a job for the next group commit. Never blocks on the disk. Returns Err(job)
    /// (giving it back, without any `committed` call) if the store is closed.
    pub fn submit(&self, job: Box<dyn Job>) -> Result<(), Box<dyn Job>> {
        let sender = self.inner.sender.read().unwrap_or_else(|e| e.into_inner());
        match sender.as_ref() {
            Some(sender) => sender.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Reads every (key, value) of a table in key order, calling f for each (start-up
    /// recovery). Any thread; sees the last commit made before the call, nothing later.
    pub fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        self.scan_prefix(table, &[], f)
    }

    /// Reads every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let handles = self.handles()?;
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(()); // no key is that long
        }
        // One snapshot for the whole scan: a commit landing meanwhile is not seen, not even
        // in part.
        let snapshot = handles.db.snapshot();
        for entry in snapshot.prefix(handles.keyspace(table), stored_key(prefix)) {
            let (k, v) = entry.into_inner().map_err(|e| storage(table, e))?;
            f(user_key(&k), &v);
        }
        Ok(())
    }

    /// Reads up to `limit` (key, value) pairs whose key starts with `prefix` and is at or
    /// after `start`, in key order; returns how many it read. For paging through a large
    /// table (a service queue's tasks, dead letters) without reading all of it.
    pub fn scan_from(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<usize, StoreError> {
        let handles = self.handles()?;
        if prefix.len() > MAX_KEY_BYTES || start.len() > MAX_KEY_BYTES || limit == 0 {
            return Ok(0);
        }
        let from = if start > prefix { start } else { prefix };
        let stored_prefix = stored_key(prefix);
        let snapshot = handles.db.snapshot();
        let mut n = 0;
        for entry in snapshot.range(handles.keyspace(table), stored_key(from)..) {
            let (k, v) = entry.into_inner().map_err(|e| storage(table, e))?;
            if !k.starts_with(&stored_prefix) {
                break;
            }
            f(user_key(&k), &v);
            n += 1;
            if n >= limit {
                break;
            }
        }
        Ok(n)
    }

    /// The committed value of `key`, if any.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handles = self.handles()?;
        if key.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        let value = handles
            .db
            .snapshot()
            .get(handles.keyspace(table), stored_key(key))
            .map_err(|e| storage(table, e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Stops accepting jobs, lets the writer finish what is queued (every queued job still
    /// gets its commit and its `committed` call), joins the thread, and closes the database.
    /// Idempotent; a concurrent second call waits for the first. Reads fail with
    /// [`StoreError::Closed`] afterwards. Called from the writer thread itself (from a
    /// `committed` or `after_group`), it cannot join: the writer then exits, and the database
    /// closes, once the queue is drained.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Gives the memory a table's recent writes hold back, in the background: its
    /// memtable is flushed to a table file, then the C allocator is asked to return the
    /// freed heap to the operating system (glibc keeps freed memory in its arenas until
    /// trimmed, so RSS would not go down). For after a bulk delete (channels deleted with
    /// their backlogs). Returns false, doing nothing, if one is still under way.
    pub fn release_memory(&self, table: Table) -> bool {
        let Ok(handles) = self.handles() else {
            return false;
        };
        let releasing = self.inner.releasing.clone();
        if releasing.swap(true, Ordering::AcqRel) {
            return false;
        }
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("shardcast-release".into())
            .spawn(move || {
                let _node = span.enter();
                let keyspace = handles.keyspace(table);
                match keyspace.rotate_memtable() {
                    Ok(_) => {
                        let deadline = Instant::now() + RELEASE_FLUSH_WAIT;
                        while keyspace.sealed_memtable_count() > 0 && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    Err(e) => tracing::warn!(table = table.name(), "cannot flush: {e}"),
                }
                drop(handles);
                trim_heap();
                releasing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.inner.releasing.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Totals so far (for tests and metrics).
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
        }
    }

    fn handles(&self) -> Result<Arc<Handles>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }
}

impl Inner {
    fn close(&self) {
        // Dropping the only sender disconnects the channel once it is drained, which is how
        // the writer knows to exit; a submit racing with this either got in before (and will
        // be committed) or finds None (and gets its job back).
        drop(
            self.sender
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        {
            // Held while joining, so a second close() waits for the first.
            let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(handle) = writer.take() {
                if handle.thread().id() == std::thread::current().id() {
                    // Joining ourselves would deadlock; the writer exits after this group.
                    tracing::debug!("store closed from its writer thread");
                } else if handle.join().is_err() {
                    tracing::error!("store writer thread panicked");
                }
            }
        }
        let handles = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handles) = handles {
            // Reads still running keep the database open until they finish; otherwise this
            // drop closes it: fjall stops its background threads (waiting for a flush or
            // compaction under way) and releases its lock. Every acknowledged write is in the
            // synced journal already; what is not yet in a table is replayed on the next open.
            drop(handles);
            tracing::info!(path = %self.path.display(), "store closed");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_keyspaces(db: &Database) -> Result<[Keyspace; TABLE_COUNT], StoreError> {
    let mut keyspaces = Vec::with_capacity(TABLE_COUNT);
    for table in Table::ALL {
        let keyspace = db
            .keyspace(table.name(), || {
                let cap = match table {
                    Table::Backlog => BACKLOG_MEMTABLE_BYTES,
                    _ => MAX_MEMTABLE_BYTES,
                };
                KeyspaceCreateOptions::default().max_memtable_size(cap)
            })
            .map_err(|e| StoreError::Table {
                table: table.name(),
                reason: e.to_string(),
            })?;
        keyspaces.push(keyspace);
    }
    keyspaces.try_into().map_err(|_| StoreError::Table {
        table: "all",
        reason: "wrong number of tables".into(),
    })
}

/// Returns freed heap to the operating system (see [`Store::release_memory`]).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes their locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `key` as stored: behind [`KEY_TAG`].
fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(KEY_TAG);
    stored.extend_from_slice(key);
    stored
}

/// A stored key without its tag.
fn user_key(stored: &[u8]) -> &[u8] {
    stored.get(1..).unwrap_or_default()
}

fn storage(table: Table, e: impl fmt::Display) -> StoreError {
    StoreError::Storage {
        table: table.name(),
        reason: e.to_string(),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A job's view of the group being staged.
pub struct WriteTx<'a> {
    /// This job's staged writes.
    overlay: &'a mut Overlay,
    /// The accepted writes of the group's earlier jobs.
    group: &'a Overlay,
    /// Committed state.
    base: &'a Handles,
}

impl WriteTx<'_> {
    /// Stages `key -> value`; it reaches the commit only if this job's `apply` returns Ok.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let len = key.len() + value.len();
        if len > MAX_ENTRY_BYTES {
            return Err(StoreError::TooLarge {
                len,
                max: MAX_ENTRY_BYTES,
            });
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(StoreError::TooLarge {
                len: key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        self.overlay.maps[table.index()].insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Stages the removal of `key`; returns whether it existed (as this job sees it).
    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.get(table, key)?.is_some();
        // Deleting what is absent stages nothing, so it costs no commit.
        if existed {
            self.overlay.maps[table.index()].insert(key.to_vec(), None);
        }
        Ok(existed)
    }

    /// Stages the removal of `key` without asking whether it exists: for callers that
    /// know it does (or do not mind a tombstone for nothing), so a delete costs no read.
    pub fn delete_unread(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_BYTES {
            return Ok(()); // it could not have been stored
        }
        self.overlay.maps[table.index()].insert(key.to_vec(), None);
        Ok(())
    }

    /// Reads `key` as this job sees it: its own staged writes, then the group's earlier jobs'
    /// writes, then committed state.
    pub fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(staged) = self.overlay.maps[table.index()].get(key) {
            return Ok(staged.clone());
        }
        if let Some(staged) = self.group.maps[table.index()].get(key) {
            return Ok(staged.clone());
        }
        if key.len() > MAX_KEY_BYTES {
            return Ok(None); // it could not have been stored
        }
        // Only this thread writes, and not while a job runs: the latest data is committed.
        let value = self
            .base
            .keyspace(table)
            .get(stored_key(key))
            .map_err(|e| storage(table, e))?;
        Ok(value.map(|v| v.to_vec()))
    }
}

/// Staged writes: per table, key -> Some(value) to put or None to delete.
#[derive(Default)]
struct Overlay {
    maps: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; TABLE_COUNT],
}

impl Overlay {
    fn clear(&mut self) {
        for map in &mut self.maps {
            map.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
    }

    /// Moves an accepted job's writes in, replacing earlier writes of the same keys; returns
    /// the job's (operations, bytes). Leaves `job` empty.
    fn absorb(&mut self, job: &mut Overlay) -> (usize, usize) {
        let mut ops = 0;
        let mut bytes = 0;
        for (group, job) in self.maps.iter_mut().zip(job.maps.iter_mut()) {
            // One insert per key: BTreeMap::append would rebuild the group's map each time.
            for (key, value) in std::mem::take(job) {
                ops += 1;
                bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                group.insert(key, value);
            }
        }
        (ops, bytes)
    }
}

/// A group's jobs, each with its `apply` result, in submission order.
type Group = Vec<(Box<dyn Job>, Result<(), String>)>;

/// The writer thread's state.
struct Writer {
    handles: Arc<Handles>,
    receiver: Receiver<Box<dyn Job>>,
    counters: Arc<Counters>,
    max_jobs: usize,
    max_bytes: usize,
    after_group: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

/// What the staging half of a group produced.
struct Staged {
    ops: usize,
    bytes: usize,
    commit_seconds: Option<f64>,
}

/// The writer's reusable buffers.
#[derive(Default)]
struct Scratch {
    group: Group,
    job: Overlay,
    staged: Overlay,
}

impl Writer {
    fn run(self) {
        let mut scratch = Scratch::default();
        let mut last_start: Option<Instant> = None;
        // Ends when every sender is gone (close() or the last Store dropped) and the queue is
        // drained: the queued jobs are all committed first.
        while let Ok(first) = self.receiver.recv() {
            // See MIN_GROUP_INTERVAL: jobs arriving meanwhile join this group.
            if let Some(wait) = last_start.and_then(|t| MIN_GROUP_INTERVAL.checked_sub(t.elapsed()))
            {
                std::thread::sleep(wait);
            }
            last_start = Some(Instant::now());
            self.run_group(first, &mut scratch);
        }
        tracing::debug!("store writer exiting");
    }

    fn run_group(&self, first: Box<dyn Job>, scratch: &mut Scratch) {
        let mut first = Some(first);
        // A panic here is a bug in this module or in fjall, not in a job (job code is caught
        // in `stage`); catch it anyway so the queued jobs still get their `committed` calls.
        let staged = catch_unwind(AssertUnwindSafe(|| self.stage(&mut first, scratch)))
            .unwrap_or_else(|p| Err(StoreError::Panicked(panic_message(&*p))));
        let group = &mut scratch.group;
        if let Some(job) = first {
            // Not reached: stage takes the first job before anything can fail.
            group.push((job, Ok(())));
        }
        scratch.job.clear();
        scratch.staged.clear();

        let jobs = group.len();
        let outcome = match staged {
            Ok(staged) => {
                if let Some(secs) = staged.commit_seconds {
                    ::metrics::counter!(METRIC_COMMITS).increment(1);
                    ::metrics::histogram!(METRIC_COMMIT_SECONDS).record(secs);
                    ::metrics::histogram!(METRIC_COMMIT_JOBS).record(jobs as f64);
                    ::metrics::histogram!(METRIC_COMMIT_BYTES).record(staged.bytes as f64);
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                }
                self.counters
                    .bytes
                    .fetch_add(staged.bytes as u64, Ordering::Relaxed);
                tracing::trace!(jobs, ops = staged.ops, bytes = staged.bytes, "group done");
                Ok(())
            }
            Err(e) => {
                ::metrics::counter!(METRIC_COMMIT_FAILURES).increment(1);
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, jobs, "store group failed; none of it is acknowledged");
                Err(e)
            }
        };

        for (job, applied) in group.drain(..) {
            let outcome = match (applied, &outcome) {
                (Err(reason), _) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    JobOutcome::Refused(reason)
                }
                (Ok(()), Ok(())) => {
                    self.counters.jobs.fetch_add(1, Ordering::Relaxed);
                    JobOutcome::Durable
                }
                (Ok(()), Err(e)) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    JobOutcome::Failed(e.clone())
                }
            };
            if let Err(p) = catch_unwind(AssertUnwindSafe(move || job.committed(outcome))) {
                tracing::error!(panic = %panic_message(&*p), "store job panicked in committed()");
            }
        }
        if let Some(after_group) = &self.after_group {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| after_group(jobs))) {
                tracing::error!(panic = %panic_message(&*p), "store after_group panicked");
            }
        }
    }

    /// Applies `first` and then queued jobs into the group overlay, and commits it as one
    /// batch. Every job taken is pushed onto the group with its apply result.
    fn stage(
        &self,
        first: &mut Option<Box<dyn Job>>,
        scratch: &mut Scratch,
    ) -> Result<Staged, StoreError> {
        let Scratch {
            group,
            job: job_overlay,
            staged,
        } = scratch;
        let mut ops = 0;
        let mut bytes = 0;
        let mut next = first.take();
        while let Some(job) = next.take() {
            // In the group before it is applied, so that even a panic of this module or
            // of fjall cannot lose the job: it would be reported Failed.
            group.push((job, Ok(())));
            let Some((job, applied)) = group.last_mut() else {
                break;
            };
            *applied = {
                let mut tx = WriteTx {
                    overlay: &mut *job_overlay,
                    group: &*staged,
                    base: &self.handles,
                };
                catch_unwind(AssertUnwindSafe(|| job.apply(&mut tx))).unwrap_or_else(|p| {
                    let msg = panic_message(&*p);
                    tracing::error!(panic = %msg, "store job panicked in apply(); refused");
                    Err(format!("job panicked: {msg}"))
                })
            };
            if applied.is_ok() {
                let (o, b) = staged.absorb(job_overlay);
                ops += o;
                bytes += b;
            } else {
                job_overlay.clear();
            }
            if group.len() >= self.max_jobs || bytes >= self.max_bytes {
                break;
            }
            next = self.receiver.try_recv().ok();
        }
        if staged.is_empty() {
            // Nothing to make durable (every job refused, or only read): spare the fsync.
            // Whatever the jobs read was committed durably by an earlier group.
            return Ok(Staged {
                ops,
                bytes,
                commit_seconds: None,
            });
        }
        let mut batch = self
            .handles
            .db
            .batch()
            // The whole point: durable (journal fsynced) when commit() returns.
            .durability(Some(PersistMode::SyncAll));
        for (keyspace, map) in self.handles.keyspaces.iter().zip(staged.maps.iter_mut()) {
            for (key, value) in std::mem::take(map) {
                let key = stored_key(&key);
                match value {
                    Some(value) => batch.insert(keyspace, key.as_slice(), value.as_slice()),
                    None => batch.remove(keyspace, key.as_slice()),
                }
            }
        }
        let start = Instant::now();
        batch
            .commit()
            .map_err(|e| StoreError::Commit(e.to_string()))?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Staged {
            ops,
            bytes,
            commit_seconds: Some(secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            TempDir::new_in(&std::env::temp_dir(), tag)
        }

        fn new_in(base: &Path, tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = base.join(format!(
                "shardcast-store-{tag}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type ApplyFn = Box<dyn FnMut(&mut WriteTx<'_>) -> Result<(), String> + Send>;
    type DoneFn = Box<dyn FnOnce(JobOutcome) + Send>;

    struct FnJob {
        apply: ApplyFn,
        done: DoneFn,
    }

    impl Job for FnJob {
        fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
            (self.apply)(tx)
        }
        fn committed(self: Box<Self>, outcome: JobOutcome) {
            (self.done)(outcome)
        }
    }

    fn job(
        apply: impl FnMut(&mut WriteTx<'_>) -> Result<(), String> + Send + 'static,
        done: impl FnOnce(JobOutcome) + Send + 'static,
    ) -> Box<dyn Job> {
        Box::new(FnJob {
            apply: Box::new(apply),
            done: Box::new(done),
        })
    }

    /// A job putting `key -> value` into Entities, sending its outcome to `done`.
    fn put_job(
        key: Vec<u8>,
        value: Vec<u8>,
        done: crossbeam_channel::Sender<(Vec<u8>, JobOutcome)>,
    ) -> Box<dyn Job> {
        let k = key.clone();
        job(
            move |tx| {
                tx.put(Table::Entities, &key, &value)
                    .map_err(|e| e.to_string())
            },
            move |o| {
                let _ = done.send((k, o));
            },
        )
    }

    fn submit(store: &Store, job: Box<dyn Job>) {
        if store.submit(job).is_err() {
            panic!("store refused a job while open");
        }
    }

    fn collect(store: &Store, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        store
            .scan(table, &mut |k, v| out.push((k.to_vec(), v.to_vec())))
            .unwrap();
        out
    }

    /// A job whose apply sleeps, so the jobs submitted meanwhile queue up behind it.
    fn blocker(ms: u64) -> Box<dyn Job> {
        job(
            move |tx| {
                std::thread::sleep(Duration::from_millis(ms));
                tx.put(Table::Meta, b"blocker", b"1")
                    .map_err(|e| e.to_string())
            },
            |_| {},
        )
    }

    #[test]
    fn jobs_see_earlier_writes_and_refused_writes_vanish() {
        let dir = TempDir::new("group");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded::<(&'static str, JobOutcome)>();
        let before = store.stats().commits;
        submit(&store, blocker(200));
        let t = tx.clone();
        submit(
            &store,
            job(
                |w| {
                    w.put(Table::Entities, b"a", b"1")
                        .map_err(|e| e.to_string())?;
                    w.put(Table::Entities, b"gone", b"x")
                        .map_err(|e| e.to_string())
                },
                move |o| t.send(("a", o)).unwrap(),
            ),
        );
        let t = tx.clone();
        submit(
            &store,
            job(
                |w| {
                    // Sees the earlier job of the group, and its own staged writes.
                    let a = w.get(Table::Entities, b"a").map_err(|e| e.to_string())?;
                    assert_eq!(a.as_deref(), Some(&b"1"[..]));
                    w.put(Table::Entities, b"b", b"saw a")
                        .map_err(|e| e.to_string())?;
                    assert_eq!(
                        w.get(Table::Entities, b"b").unwrap().as_deref(),
                        Some(&b"saw a"[..])
                    );
                    assert!(w.delete(Table::Entities, b"gone").unwrap());
                    assert_eq!(w.get(Table::Entities, b"gone").unwrap(), None);
                    assert!(!w.delete(Table::Entities, b"never").unwrap());
                    // An unread delete removes what is there and is harmless where
                    // nothing is.
                    w.put(Table::Entities, b"c", b"3")
                        .map_err(|e| e.to_string())?;
                    w.delete_unread(Table::Entities, b"c").unwrap();
                    assert_eq!(w.get(Table::Entities, b"c").unwrap(), None);
                    w.delete_unread(Table::Entities, b"never").unwrap();
                    assert_eq!(w.get(Table::Entities, b"never").unwrap(), None);
                    Ok(())
                },
                move |o| t.send(("b", o)).unwrap(),
            ),
        );
        let t = tx.clone();
        submit(
            &store,
            job(
                |w| {
                    w.put(Table::Entities, b"refused", b"x").unwrap();
                    w.put(Table::Entities, b"a", b"overwritten").unwrap();
                    w.delete(Table::Entities, b"b").unwrap();
                    Err("no thanks".into())
                },
                move |o| t.send(("refused", o)).unwrap(),
            ),
        );
        let t = tx.clone();
        submit(
            &store,
            job(
                |_| panic!("job bug"),
                move |o| t.send(("panicked", o)).unwrap(),
            ),
        );
        let t = tx.clone();
        submit(
            &store,
            job(
                |w| {
                    // The refused and panicked jobs left nothing behind.
                    assert_eq!(w.get(Table::Entities, b"refused").unwrap(), None);
                    assert_eq!(
                        w.get(Table::Entities, b"a").unwrap().as_deref(),
                        Some(&b"1"[..])
                    );
                    assert!(w.get(Table::Entities, b"b").unwrap().is_some());
                    w.put(Table::Entities, b"c", b"3")
                        .map_err(|e| e.to_string())
                },
                move |o| t.send(("c", o)).unwrap(),
            ),
        );
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        // Reported in submission order.
        let names: Vec<_> = outcomes.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["a", "b", "refused", "panicked", "c"]);
        assert_eq!(outcomes[0].1, JobOutcome::Durable);
        assert_eq!(outcomes[1].1, JobOutcome::Durable);
        assert_eq!(outcomes[2].1, JobOutcome::Refused("no thanks".into()));
        assert!(matches!(&outcomes[3].1, JobOutcome::Refused(r) if r.contains("job bug")));
        assert_eq!(outcomes[4].1, JobOutcome::Durable);
        // All of it was one group.
        assert_eq!(store.stats().commits - before, 1);
        assert_eq!(
            collect(&store, Table::Entities),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"saw a".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ]
        );
        assert_eq!(store.get(Table::Entities, b"refused").unwrap(), None);
        assert_eq!(store.stats().refused, 2);
        store.close();
    }

    #[test]
    fn group_commit_groups() {
        let dir = TempDir::new("grouping");
        let groups = Arc::new(AtomicUsize::new(0));
        let grouped_jobs = Arc::new(AtomicUsize::new(0));
        let (g, j) = (groups.clone(), grouped_jobs.clone());
        let opts = StoreOptions {
            after_group: Some(Box::new(move |n| {
                g.fetch_add(1, Ordering::Relaxed);
                j.fetch_add(n, Ordering::Relaxed);
            })),
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let store = store.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..2500u32 {
                        let key = format!("t{t}/{i:05}").into_bytes();
                        submit(&store, put_job(key, vec![b'v'; 16], tx.clone()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..10_000 {
            let (_, o) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(o, JobOutcome::Durable);
        }
        let stats = store.stats();
        assert_eq!(stats.jobs, 10_000);
        assert!(stats.commits < 10_000 / 4, "{stats:?}");
        store.close();
        // after_group ran once per group, with every job counted once.
        assert_eq!(grouped_jobs.load(Ordering::Relaxed), 10_000);
        assert_eq!(groups.load(Ordering::Relaxed) as u64, stats.commits);
        assert_eq!(
            collect(&store_reopened(dir.path()), Table::Entities).len(),
            10_000
        );
    }

    fn store_reopened(dir: &Path) -> Store {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    #[test]
    fn max_jobs_bounds_a_group() {
        let dir = TempDir::new("bound");
        let opts = StoreOptions {
            max_jobs_per_commit: 1,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        submit(&store, blocker(50));
        for i in 0..20u8 {
            submit(&store, put_job(vec![i], vec![i], tx.clone()));
        }
        for _ in 0..20 {
            assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
        }
        assert_eq!(store.stats().commits, 21);
        store.close();
    }

    #[test]
    fn writes_survive_close_and_reopen() {
        let dir = TempDir::new("reopen");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..500u32 {
            submit(
                &store,
                put_job(
                    i.to_be_bytes().to_vec(),
                    format!("v{i}").into_bytes(),
                    tx.clone(),
                ),
            );
        }
        submit(
            &store,
            job(
                |w| {
                    w.put(Table::Meta, b"seq", &42u64.to_be_bytes())
                        .map_err(|e| e.to_string())?;
                    w.delete(Table::Entities, &7u32.to_be_bytes())
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
                |_| {},
            ),
        );
        store.close();
        assert_eq!(rx.try_iter().count(), 500);
        store.close(); // idempotent
        assert!(store.submit(blocker(0)).is_err());
        assert_eq!(
            store.get(Table::Meta, b"seq").unwrap_err(),
            StoreError::Closed
        );

        let store = store_reopened(dir.path());
        let all = collect(&store, Table::Entities);
        assert_eq!(all.len(), 499);
        for (k, v) in &all {
            let i = u32::from_be_bytes(k.as_slice().try_into().unwrap());
            assert_ne!(i, 7);
            assert_eq!(v, format!("v{i}").as_bytes());
        }
        // Key order is bytewise: big-endian numbers come out sorted.
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            store.get(Table::Meta, b"seq").unwrap(),
            Some(42u64.to_be_bytes().to_vec())
        );
        assert_eq!(collect(&store, Table::Tasks), vec![]);
        store.close();
    }

    #[test]
    fn close_commits_every_queued_job_exactly_once() {
        let dir = TempDir::new("close");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        const N: usize = 3000;
        let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
        let durable = Arc::new(AtomicUsize::new(0));
        submit(&store, blocker(100));
        for i in 0..N {
            let calls = calls.clone();
            let durable = durable.clone();
            submit(
                &store,
                job(
                    move |w| {
                        w.put(Table::Tasks, &(i as u64).to_be_bytes(), b"task")
                            .map_err(|e| e.to_string())
                    },
                    move |o| {
                        calls[i].fetch_add(1, Ordering::SeqCst);
                        if o == JobOutcome::Durable {
                            durable.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                ),
            );
        }
        // The writer is still asleep in the blocker: everything else is queued.
        store.close();
        assert!(calls.iter().all(|c| c.load(Ordering::SeqCst) == 1));
        assert_eq!(durable.load(Ordering::SeqCst), N);
        // Groups were bounded by max_jobs_per_commit (4096 by default) and the queue.
        assert!(store.stats().commits >= 1);
        let store = store_reopened(dir.path());
        assert_eq!(collect(&store, Table::Tasks).len(), N);
        store.close();
    }

    #[test]
    fn close_from_the_writer_thread_does_not_deadlock() {
        let dir = TempDir::new("selfclose");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let s = store.clone();
        submit(
            &store,
            job(
                |w| w.put(Table::Meta, b"k", b"v").map_err(|e| e.to_string()),
                move |o| {
                    s.close();
                    tx.send(o).unwrap();
                },
            ),
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            JobOutcome::Durable
        );
        assert!(store.submit(blocker(0)).is_err());
        store.close();
    }

    #[test]
    fn scan_prefix_returns_exactly_the_prefixed_keys_in_order() {
        let dir = TempDir::new("prefix");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let keys: &[&[u8]] = &[
            b"user/2",
            b"user/10",
            b"use",
            b"user",
            b"user/",
            b"users/1",
            b"user/1",
            b"usf",
            b"\xffuser/",
            b"user/\xff\xff",
            b"",
        ];
        for k in keys {
            submit(&store, put_job(k.to_vec(), k.to_vec(), tx.clone()));
        }
        for _ in keys {
            assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
        }
        let scan = |prefix: &[u8]| {
            let mut out = Vec::new();
            store
                .scan_prefix(Table::Entities, prefix, &mut |k, v| {
                    assert_eq!(k, v);
                    out.push(k.to_vec());
                })
                .unwrap();
            out
        };
        let expect = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            scan(b"user/"),
            expect(&[b"user/", b"user/1", b"user/10", b"user/2", b"user/\xff\xff"])
        );
        assert_eq!(scan(b"users"), expect(&[b"users/1"]));
        assert_eq!(scan(b"\xff"), expect(&[b"\xffuser/"]));
        assert_eq!(scan(b"nope"), Vec::<Vec<u8>>::new());
        assert_eq!(scan(b"").len(), keys.len());
        assert_eq!(scan(b"").first(), Some(&Vec::new()));
        store.close();
    }

    #[test]
    fn oversized_put_is_an_error_not_a_panic() {
        let dir = TempDir::new("large");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        submit(
            &store,
            job(
                |w| {
                    // No allocation of the value needed to test the check: the key alone.
                    let key = vec![0u8; MAX_ENTRY_BYTES + 1];
                    match w.put(Table::Entities, &key, b"") {
                        Err(StoreError::TooLarge { .. }) => Err("too large".into()),
                        other => panic!("unexpected {other:?}"),
                    }
                },
                move |o| tx.send(o).unwrap(),
            ),
        );
        assert_eq!(rx.recv().unwrap(), JobOutcome::Refused("too large".into()));
        // A group of refused jobs only commits nothing.
        assert_eq!(store.stats().commits, 0);
        store.close();
    }

    #[test]
    fn reads_see_a_group_only_once_it_is_durable() {
        let dir = TempDir::new("visibility");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        submit(&store, blocker(100));
        let t = tx.clone();
        submit(
            &store,
            job(
                |w| {
                    w.put(Table::Entities, b"x", b"1")
                        .map_err(|e| e.to_string())
                },
                move |o| t.send(("x", o)).unwrap(),
            ),
        );
        let s = store.clone();
        let t = tx.clone();
        submit(
            &store,
            job(
                move |w| {
                    // The job sees the group's earlier write; readers see only commits.
                    assert!(w.get(Table::Entities, b"x").unwrap().is_some());
                    assert_eq!(s.get(Table::Entities, b"x").unwrap(), None);
                    let mut seen = 0;
                    s.scan(Table::Entities, &mut |_, _| seen += 1).unwrap();
                    assert_eq!(seen, 0);
                    w.put(Table::Entities, b"y", b"2")
                        .map_err(|e| e.to_string())
                },
                move |o| t.send(("y", o)).unwrap(),
            ),
        );
        let s = store.clone();
        submit(
            &store,
            job(
                |_| Ok(()),
                move |o| {
                    // By the time `committed` runs, the group is visible to every reader.
                    assert_eq!(o, JobOutcome::Durable);
                    let y = s.get(Table::Entities, b"y").unwrap();
                    tx.send((if y.is_some() { "visible" } else { "missing" }, o))
                        .unwrap();
                },
            ),
        );
        let names: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .map(|(n, o)| {
                assert_eq!(o, JobOutcome::Durable);
                n
            })
            .collect();
        assert_eq!(names, ["x", "y", "visible"]);
        assert_eq!(store.stats().commits, 1); // the blocker and the three: one group
        store.close();
    }

    #[test]
    fn key_limits_and_empty_keys() {
        let dir = TempDir::new("keys");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let longest = vec![b'k'; MAX_KEY_BYTES];
        let l = longest.clone();
        submit(
            &store,
            job(
                move |w| {
                    match w.put(Table::Meta, &vec![b'k'; MAX_KEY_BYTES + 1], b"v") {
                        Err(StoreError::TooLarge { len, max }) => {
                            assert_eq!((len, max), (MAX_KEY_BYTES + 1, MAX_KEY_BYTES));
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    assert_eq!(w.get(Table::Meta, &vec![b'k'; 70_000]).unwrap(), None);
                    assert!(!w.delete(Table::Meta, &vec![b'k'; 70_000]).unwrap());
                    w.put(Table::Meta, &l, b"longest")
                        .map_err(|e| e.to_string())?;
                    w.put(Table::Meta, b"", b"empty").map_err(|e| e.to_string())
                },
                move |o| tx.send(o).unwrap(),
            ),
        );
        assert_eq!(rx.recv().unwrap(), JobOutcome::Durable);
        store.close();
        let store = store_reopened(dir.path());
        assert_eq!(
            store.get(Table::Meta, &longest).unwrap().as_deref(),
            Some(&b"longest"[..])
        );
        assert_eq!(
            store.get(Table::Meta, b"").unwrap().as_deref(),
            Some(&b"empty"[..])
        );
        assert_eq!(store.get(Table::Meta, &vec![b'k'; 70_000]).unwrap(), None);
        let mut n = 0;
        store
            .scan_prefix(Table::Meta, &vec![b'k'; 70_000], &mut |_, _| n += 1)
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            collect(&store, Table::Meta),
            vec![
                (Vec::new(), b"empty".to_vec()),
                (longest, b"longest".to_vec())
            ]
        );
        store.close();
    }

    #[test]
    fn a_memtable_is_flushed_at_the_cap_not_at_fjalls_default() {
        let dir = TempDir::new("memtable-cap");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        // 1.25 × the cap, below fjall's default (64 MiB) and the journals' bound (128 MiB):
        // only the cap can make fjall flush this table.
        let value = vec![7u8; 1 << 20];
        let count = (MAX_MEMTABLE_BYTES >> 20) * 5 / 4;
        for i in 0..count as u32 {
            submit(
                &store,
                put_job(i.to_be_bytes().to_vec(), value.clone(), tx.clone()),
            );
        }
        for _ in 0..count {
            assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
        }
        let handles = store.handles().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while handles.keyspace(Table::Entities).table_count() == 0 {
            assert!(
                Instant::now() < deadline,
                "{count} MiB written and the memtable was not flushed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(handles);
        store.close();
    }

    #[test]
    fn flushed_tables_and_the_journal_both_recover() {
        let dir = TempDir::new("flush");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let put_all = |round: u32| {
            for i in 0..1000u32 {
                let value = format!("r{round}/{i}").into_bytes();
                submit(&store, put_job(i.to_be_bytes().to_vec(), value, tx.clone()));
            }
            for _ in 0..1000 {
                assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
            }
        };
        put_all(0);
        // Write the memtable out to a table file, as fjall's background flush would when
        // it fills up; what follows stays in the journal (and memtable) only.
        let handles = store.handles().unwrap();
        handles
            .keyspace(Table::Entities)
            .rotate_memtable_and_wait()
            .unwrap();
        assert!(handles.keyspace(Table::Entities).table_count() >= 1);
        drop(handles);
        put_all(1);
        let (dtx, drx) = crossbeam_channel::unbounded();
        submit(
            &store,
            job(
                |w| {
                    for i in (0..1000u32).step_by(10) {
                        assert!(w.delete(Table::Entities, &i.to_be_bytes()).unwrap());
                    }
                    Ok(())
                },
                move |o| dtx.send(o).unwrap(),
            ),
        );
        assert_eq!(drx.recv().unwrap(), JobOutcome::Durable);
        store.close();

        let store = store_reopened(dir.path());
        let all = collect(&store, Table::Entities);
        assert_eq!(all.len(), 900);
        for (k, v) in &all {
            let i = u32::from_be_bytes(k.as_slice().try_into().unwrap());
            assert_ne!(i % 10, 0);
            assert_eq!(v, format!("r1/{i}").as_bytes());
        }
        store.close();
    }

    const CRASH_CHILD_ENV: &str = "SHARDCAST_STORE_CRASH_CHILD_DIR";

    /// This module's path as the test harness names tests (without the crate name).
    fn test_path(name: &str) -> String {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        format!("{module}::{name}")
    }

    #[test]
    fn acknowledged_writes_survive_sigkill() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
            crash_child(Path::new(&dir));
        }
        let dir = TempDir::new("crash");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                &test_path("acknowledged_writes_survive_sigkill"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        let mut killed = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // " ." ends a complete line: a line cut by the kill is not an acknowledgement.
            if let Some(key) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix(" .")) {
                acked.push(key.to_string());
                if !killed && acked.len() >= 3000 {
                    child.kill().unwrap(); // SIGKILL on unix
                    killed = true;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed,
            "child exited by itself ({status}) after {} acks",
            acked.len()
        );
        // Every line read was printed after its commit returned, so every one must be on disk.
        let store = store_reopened(dir.path());
        for key in &acked {
            let value = store.get(Table::Entities, key.as_bytes()).unwrap();
            assert_eq!(
                value.as_deref(),
                Some(crash_value(key).as_slice()),
                "acknowledged {key} lost"
            );
        }
        eprintln!(
            "crash test: {} acknowledged writes all present",
            acked.len()
        );
        store.close();
    }

    fn crash_value(key: &str) -> Vec<u8> {
        key.as_bytes().repeat(4)
    }

    /// The child of the crash test: writes until killed, printing each acknowledged key.
    fn crash_child(dir: &Path) -> ! {
        let store = Store::open(dir, StoreOptions::default()).unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0usize;
        loop {
            if Instant::now() > deadline {
                // The parent should have killed us long ago.
                std::process::exit(3);
            }
            // Keep a bounded number in flight so the queue does not grow without limit.
            if next - acked.load(Ordering::Relaxed) > 2048 {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            let key = format!("k{next:010}");
            let value = crash_value(&key);
            let acked = acked.clone();
            let k = key.clone();
            submit(
                &store,
                job(
                    move |w| {
                        w.put(Table::Entities, k.as_bytes(), &value)
                            .map_err(|e| e.to_string())
                    },
                    move |o| {
                        if o == JobOutcome::Durable {
                            let mut out = std::io::stdout().lock();
                            if writeln!(out, "ACK {key} .")
                                .and_then(|()| out.flush())
                                .is_err()
                            {
                                std::process::exit(0); // the parent is gone
                            }
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    },
                ),
            );
            next += 1;
        }
    }

    /// Throughput of the group commit, and of one fsync. Run with
    /// `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput_report() {
        // SHARDCAST_STORE_BENCH_DIR puts the file on the disk to measure (default: temp dir).
        let dir = match std::env::var_os("SHARDCAST_STORE_BENCH_DIR") {
            Some(base) => TempDir::new_in(Path::new(&base), "bench"),
            None => TempDir::new("bench"),
        };
        println!("bench file in {}", dir.path().display());
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();

        // 0. One job at a time on a fresh file: every commit carries one job.
        single_job_rate(&store, "fresh file");

        // 1. 200k 100-byte puts submitted as fast as 4 threads can.
        const THREADS: u32 = 4;
        const PER_THREAD: u32 = 50_000;
        let total = (THREADS * PER_THREAD) as u64;
        let done = Arc::new(AtomicUsize::new(0));
        let before = store.stats();
        let start = Instant::now();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let key = format!("bench/{t}/{i:08}").into_bytes();
                        let value = vec![b'x'; 100];
                        let done = done.clone();
                        submit(
                            &store,
                            job(
                                move |w| {
                                    w.put(Table::Tasks, &key, &value).map_err(|e| e.to_string())
                                },
                                move |o| {
                                    assert_eq!(o, JobOutcome::Durable);
                                    done.fetch_add(1, Ordering::Release);
                                },
                            ),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        while (done.load(Ordering::Acquire) as u64) < total {
            std::thread::sleep(Duration::from_micros(200));
        }
        let secs = start.elapsed().as_secs_f64();
        let after = store.stats();
        let (commits, jobs) = (after.commits - before.commits, after.jobs - before.jobs);
        println!(
            "burst: {total} puts of 100 B from {THREADS} threads: {:.0} acknowledged writes/s, \
             {} commits, {:.1} jobs/commit",
            total as f64 / secs,
            commits,
            jobs as f64 / commits as f64
        );

        // 2. Closed loop: 4 threads, each keeping 256 jobs in flight.
        let before = store.stats();
        let per_thread = 50_000usize;
        let start = Instant::now();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    let mut in_flight = 0;
                    for i in 0..per_thread {
                        if in_flight == 256 {
                            rx.recv().unwrap();
                            in_flight -= 1;
                        }
                        let key = format!("loop/{t}/{i:08}").into_bytes();
                        submit(&store, put_job(key, vec![b'y'; 100], tx.clone()));
                        in_flight += 1;
                    }
                    for _ in 0..in_flight {
                        rx.recv().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let after = store.stats();
        let jobs = after.jobs - before.jobs;
        println!(
            "closed loop: {THREADS}x256 in flight: {:.0} acknowledged writes/s, {:.1} jobs/commit",
            jobs as f64 / secs,
            jobs as f64 / (after.commits - before.commits) as f64
        );

        // 3. The entity write pattern: random-key updates over 100k keys.
        entity_updates(&store);

        // 4. One job at a time on the now larger file.
        single_job_rate(&store, "large file");
        store.close();

        // 5. The same with fjall alone, no store, for comparison: one-item batches, each
        // synced with fsync (what the store does) and with fdatasync.
        let db = Database::builder(dir.path().join("raw.fjall"))
            .open()
            .unwrap();
        let keyspace = db.keyspace("raw", KeyspaceCreateOptions::default).unwrap();
        for mode in [PersistMode::SyncAll, PersistMode::SyncData] {
            let n = 300;
            let start = Instant::now();
            for i in 0..n {
                let mut batch = db.batch().durability(Some(mode));
                batch.insert(&keyspace, format!("raw/{mode:?}/{i}").as_str(), [b'z'; 100]);
                batch.commit().unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "raw fjall batch commit loop, {mode:?}: {:.0} commits/s ({:.2} ms each)",
                n as f64 / secs,
                secs * 1e3 / n as f64
            );
        }
    }

    /// Entity-like keys: 100k of them, in a scattered order.
    const ENTITIES: u64 = 100_000;

    fn entity_key(i: u64) -> Vec<u8> {
        // A bijection of 0..ENTITIES (7919 is prime, so coprime with 100k): scattered order.
        format!("users/{:06}", (i * 7919) % ENTITIES).into_bytes()
    }

    /// xorshift64*: a tiny deterministic generator for the random-update sections.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// `threads` threads keeping `in_flight` jobs each; job `i` of thread `t` puts
    /// `key(t, i)` -> 200 B into Entities. Returns acknowledged writes/s and jobs/commit.
    fn closed_loop(
        store: &Store,
        threads: u64,
        per_thread: u64,
        in_flight_max: usize,
        key: fn(u64, u64, &mut Rng) -> Vec<u8>,
    ) -> (f64, f64) {
        let before = store.stats();
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                    let (tx, rx) = crossbeam_channel::unbounded::<(Vec<u8>, JobOutcome)>();
                    let mut in_flight = 0;
                    for i in 0..per_thread {
                        if in_flight == in_flight_max {
                            assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
                            in_flight -= 1;
                        }
                        let k = key(t, i, &mut rng);
                        submit(&store, put_job(k, vec![b'e'; 200], tx.clone()));
                        in_flight += 1;
                    }
                    for _ in 0..in_flight {
                        assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let after = store.stats();
        let jobs = after.jobs - before.jobs;
        (
            jobs as f64 / secs,
            jobs as f64 / (after.commits - before.commits).max(1) as f64,
        )
    }

    /// The entity pattern: 100k keys filled, then random-key updates, closed loop and paced.
    fn entity_updates(store: &Store) {
        let (rate, per_commit) = closed_loop(store, 4, ENTITIES / 4, 256, |t, i, _| {
            entity_key(t * (ENTITIES / 4) + i)
        });
        println!(
            "entities: fill 100k keys x 200 B, 4x256 in flight: {rate:.0} acknowledged writes/s, \
             {per_commit:.1} jobs/commit"
        );
        let (rate, per_commit) = closed_loop(store, 4, 50_000, 256, |_, _, rng| {
            entity_key(rng.next() % ENTITIES)
        });
        println!(
            "entities: random updates over 100k keys, 4x256 in flight: {rate:.0} acknowledged \
             writes/s, {per_commit:.1} jobs/commit"
        );

        // Paced: 20k updates/s from one thread for 4 s, latency from submit to committed.
        const RATE: u64 = 20_000;
        const SECS: u64 = 4;
        let (tx, rx) = crossbeam_channel::unbounded::<Duration>();
        let mut rng = Rng(42);
        let before = store.stats();
        let start = Instant::now();
        for i in 0..RATE * SECS {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let key = entity_key(rng.next() % ENTITIES);
            let tx = tx.clone();
            let submitted = Instant::now();
            submit(
                store,
                job(
                    move |w| {
                        w.put(Table::Entities, &key, &[b'p'; 200])
                            .map_err(|e| e.to_string())
                    },
                    move |o| {
                        assert_eq!(o, JobOutcome::Durable);
                        let _ = tx.send(submitted.elapsed());
                    },
                ),
            );
        }
        drop(tx);
        let mut latencies: Vec<Duration> = rx.iter().collect();
        let after = store.stats();
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
            latencies[i].as_secs_f64() * 1e3
        };
        println!(
            "entities: paced {RATE} random updates/s for {SECS} s: latency p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms, {:.1} jobs/commit",
            pct(0.5),
            pct(0.99),
            pct(1.0),
            (after.jobs - before.jobs) as f64 / (after.commits - before.commits).max(1) as f64
        );
    }

    /// Sequential jobs, each waiting for its acknowledgement: the rate of one-job commits (at most
    /// 1 / MIN_GROUP_INTERVAL).
    fn single_job_rate(store: &Store, what: &str) {
        let n = 300;
        let (tx, rx) = crossbeam_channel::unbounded();
        let before = store.stats().commits;
        let start = Instant::now();
        for i in 0..n {
            let key = format!("one/{what}/{i}").into_bytes();
            submit(store, put_job(key, vec![b'z'; 100], tx.clone()));
            assert_eq!(rx.recv().unwrap().1, JobOutcome::Durable);
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(store.stats().commits - before, n as u64);
        println!(
            "single job per commit, {what}: {:.0} commits/s ({:.2} ms each)",
            n as f64 / secs,
            secs * 1e3 / n as f64
        );
    }
}
