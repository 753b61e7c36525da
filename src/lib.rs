//! shardcast: a real-time push engine. Backends publish events and entity changes;
//! shardcast pushes them to very many WebSocket clients.
//!
//! # Layout (the data path, in order)
//!
//! - [`api`] + [`http`]: REST on the shared port. `POST /api/v1/publish` is validated whole
//!   on the shard that read it; entity requests (`/api/v1/entities/…`) are checked whole
//!   there too. Reads are answered from the entity replica on that shard.
//! - [`backend`]: the seam for everything a node keeps beyond its connections
//!   (sequencing, history, entity state, tickets, service queues, locks, channels). One
//!   trait, chosen at start-up: [`backend::LocalBackend`] for a single node (cluster mode
//!   adds Redis beside it). Shards call it and never wait on it: work that needs the
//!   disk answers later through the shard's mailbox ([`router::ShardMsg::Answer`]).
//! - [`store`]: the embedded store under `data_dir` (fjall), one writer thread, group
//!   commit. Entity writes and `seq` reservations are its jobs.
//! - [`ingest`]: the local sequencer. Plain publications are sequenced by the shard that
//!   read them; entity writes by the store's writer once their group is durable (so `seq`
//!   order is commit order). Under one short lock: `seq`, `timestamp`, then the
//!   [`apply`]er: the [`entities::Replica`] update, the [`history`] window, one pointer to
//!   each shard, the applied mark (the same code a cluster node runs on what it reads).
//! - [`publication`]: what every shard receives: the tail encoded once, `data` parsed at
//!   most once (filters), an entity write's states before and after.
//! - [`router`]: one bounded lock-free queue per shard, with a coalesced wake-up; a full
//!   queue never stalls ingest (see its docs for what happens instead).
//! - [`shard`]: thread per core. Each shard owns its listener (`SO_REUSEPORT`), its
//!   connections, its subscription indexes (plain, and filtered with an equality index),
//!   live queries, per-connection rings, feeds and flush timers. It matches a publication
//!   with one hash lookup per path prefix, builds each distinct message once, appends it
//!   once per feed or queues a pointer in a connection's ring, and flushes a connection
//!   with one vectored write.
//! - [`offload`]: two low-priority threads for the work no shard may hold its loop for
//!   (scans of a whole collection, `since` replays); each job answers through the
//!   submitting shard's mailbox.
//! - [`protocol`]: the wire contract (messages, codes, paths) and [`protocol::ws`], the
//!   RFC 6455 codec. [`filter`]: the filter and `orderBy` languages.
//! - [`node`]: what all threads share, and who may change what. [`auth`]: JWT, tickets,
//!   api keys. [`options`]: per-connection delivery options.
//! - [`config`], [`cli`], [`metrics`], [`server`] (start and drain), [`time`].
//! - [`console`]: the operator console's page at `/console` (its reads are
//!   `/api/v1/admin/…` in [`api`]); [`topk`]: the busiest paths it shows.
//!
//! # Locks (which may be taken inside which)
//!
//! Shards take no lock to deliver. The few locks nest only this way:
//! - the sequencer lock ([`ingest`]) → the history window's lock ([`history`], held for
//!   an applied batch) → the replica's write lock ([`entities::Replica`], per change);
//! - the sequencer lock → a router overflow list (a full shard queue, cold path).
//! - the busiest-paths sketch ([`topk`]) is taken alone, before the sequencer lock.
//!
//! Readers take the replica's read lock or the history lock alone, never the sequencer
//! lock, and hold it only to copy out what they scan (a pointer per entity or
//! publication): a reader holding it longer would hold the sequencer through a writer
//! waiting for it. The store's writer thread takes the sequencer lock only after its commit, and
//! nothing holding the sequencer lock waits for the store (a `seq` reservation is asked
//! for and waited on outside it).

pub mod api;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod channels;
pub mod cli;
pub mod config;
pub mod console;
pub mod entities;
pub mod filter;
pub mod history;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod node_id;
pub mod offload;
pub mod options;
pub mod origin;
pub mod protocol;
pub mod publication;
pub mod router;
pub mod server;
pub mod services;
pub mod shard;
pub mod store;
pub mod time;
pub mod topk;
