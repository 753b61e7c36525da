//! shardcast load generator: many WebSocket clients on `mio` event loops (and worker
//! processes beyond one process's open-file limit), a fixed-rate HTTP publisher, HDR
//! latency histograms, the server's CPU and RSS from /proc, and a JSON report.
//!
//! One module per concern: `cli` (command line), `ws` (client frame codec and upgrade),
//! `scan` (cheap event and latency scanner), `conn` (connections and event loop),
//! `group` (threads and worker processes), `publish` (HTTP and NATS publishers),
//! `nats` (NATS protocol parser), `floor` (the floor writer's server), `scenario/*`,
//! `entities` (scenario entities: pipelined HTTP writers of the entity API, its report),
//! `services` (scenario services: service instances and lockers, its run and report),
//! `soak` (scenario soak: the whole mix at once, sampled, with its checks),
//! `procstat` (server stats), `kernel` (the machine's socket memory), `report` (results), `run` (the coordinator).

pub mod cli;
pub mod conn;
pub mod entities;
pub mod floor;
pub mod group;
pub mod jwt;
pub mod kernel;
pub mod nats;
pub mod net;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod run;
pub mod scan;
pub mod scenario;
pub mod services;
pub mod soak;
pub mod util;
pub mod ws;
