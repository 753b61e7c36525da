//! soak's cluster mode (`--nodes`): where each part of the mix runs. With N nodes every
//! part is spread over them and its publications or writes go through another node than
//! its readers', so every delivery the checks count has crossed nodes (through Redis):
//!
//! * fan-out: node k holds the subscribers of the paths `p` with `p mod N == k`, and
//!   those paths are published through node `k + 1` ([`NodeFan`], one client group and
//!   one publisher per node);
//! * slow readers and the fast readers beside them, filtered subscriptions, live queries:
//!   round robin over the nodes other than their part's publishing (writing) node
//!   ([`Placement`]);
//! * churn: one client group per node, the rate split evenly;
//! * service instances: round robin over all nodes (their tasks come from Redis
//!   whichever node took the publish).
//!
//! One server (no `--nodes`) is a cluster of one: every part on it, as before.

use crate::cli::SoakNode;
use crate::group::{ClientGroup, Progress};
use crate::publish::{PublishResult, Publisher};
use crate::report::ClientStats;
use crate::scenario::Scenario;

/// The node that publishes or writes for each part, and where its readers go.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub nodes: usize,
}

impl Placement {
    /// The slow stream's and the task publisher's node.
    pub fn slow_publisher(&self) -> usize {
        0
    }
    pub fn task_publisher(&self) -> usize {
        0
    }
    /// The filtered publisher's node (spread so that no node takes every writer).
    pub fn filtered_publisher(&self) -> usize {
        1 % self.nodes
    }
    /// The entity writer's node.
    pub fn entity_writer(&self) -> usize {
        2 % self.nodes
    }

    /// The nodes readers of a part published through `publisher` go to: every other
    /// node (all of them when there is one).
    pub fn readers_of(&self, publisher: usize) -> Vec<usize> {
        let others: Vec<usize> = (0..self.nodes).filter(|&k| k != publisher).collect();
        if others.is_empty() {
            vec![publisher]
        } else {
            others
        }
    }

    /// Reader `i` of a part published through `publisher`: its node.
    pub fn reader_node(&self, publisher: usize, i: u64) -> usize {
        let r = self.readers_of(publisher);
        r[(i % r.len() as u64) as usize]
    }

    /// Fan-out: the node publishing the paths whose subscribers are on node `k`.
    pub fn fan_publisher(&self, k: usize) -> usize {
        (k + 1) % self.nodes
    }

    /// `total` split over `parts` shares, the first ones one larger (`total` = the sum).
    pub fn split(total: u64, parts: usize, i: usize) -> u64 {
        let parts = parts.max(1) as u64;
        total / parts + u64::from((i as u64) < total % parts)
    }
}

/// The fan-out part on node `node` of `nodes`: its connections subscribe to the paths
/// `soak/fan/p{p}` with `p mod nodes == node` (round robin over them), and its publisher
/// posts to those paths only. Path indices are the global ones (`0..paths`), so the
/// per-path counts of every node's group and publisher add up.
#[derive(Debug, Clone, Copy)]
pub struct NodeFan {
    pub paths: u64,
    pub nodes: u64,
    pub node: u64,
}

impl NodeFan {
    /// How many of the paths are this node's.
    pub fn own_paths(&self) -> u64 {
        if self.node >= self.paths {
            0
        } else {
            (self.paths - self.node).div_ceil(self.nodes)
        }
    }

    /// The `j`-th of this node's paths (round robin).
    fn own(&self, j: u64) -> u64 {
        self.node + (j % self.own_paths().max(1)) * self.nodes
    }
}

impl Scenario for NodeFan {
    fn name(&self) -> &'static str {
        "soak"
    }
    fn path_count(&self) -> usize {
        self.paths as usize
    }
    fn subscription(&self, conn: u64) -> (usize, String) {
        let p = self.own(conn);
        (p as usize, format!("soak/fan/p{p}"))
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, i: usize) -> String {
        format!("soak/fan/p{i}/tick")
    }
    fn path_of_publication(&self, n: u64) -> usize {
        self.own(n) as usize
    }
}

/// One client group per node, seen as one: progress and results summed.
pub struct Multi(pub Vec<Box<dyn ClientGroup>>);

impl ClientGroup for Multi {
    fn progress(&self) -> Progress {
        let mut p = Progress {
            connect_done: true,
            ..Progress::default()
        };
        for g in &self.0 {
            p.add(&g.progress());
        }
        p
    }
    fn subs_per_path(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for g in &self.0 {
            let s = g.subs_per_path();
            if out.len() < s.len() {
                out.resize(s.len(), 0);
            }
            for (a, b) in out.iter_mut().zip(s) {
                *a += b;
            }
        }
        out
    }
    fn end_connect(&mut self) {
        self.0.iter_mut().for_each(|g| g.end_connect());
    }
    fn window_start(&mut self, unix_ns: u64) {
        self.0.iter_mut().for_each(|g| g.window_start(unix_ns));
    }
    fn window_end(&mut self) {
        self.0.iter_mut().for_each(|g| g.window_end());
    }
    fn stop(&mut self) {
        self.0.iter_mut().for_each(|g| g.stop());
    }
    /// The soak's groups all run in this process.
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn finish(self: Box<Self>) -> Result<ClientStats, String> {
        let mut total = ClientStats::new(0);
        let mut errors = Vec::new();
        for g in self.0 {
            match g.finish() {
                Ok(s) => total.merge(&s),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(total)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Several publishers of one part (one per node), seen as one.
#[derive(Default)]
pub struct Publishers(pub Vec<Publisher>);

impl Publishers {
    pub fn published(&self) -> u64 {
        self.0.iter().map(Publisher::published).sum()
    }

    pub fn finish(self) -> PublishResult {
        let mut total = PublishResult::default();
        for p in self.0 {
            let r = p.finish(false);
            if total.published_per_path.len() < r.published_per_path.len() {
                total
                    .published_per_path
                    .resize(r.published_per_path.len(), 0);
            }
            for (a, b) in total
                .published_per_path
                .iter_mut()
                .zip(&r.published_per_path)
            {
                *a += b;
            }
            for (k, v) in r.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
        total
    }
}

/// The nodes of a run: `--nodes`, or the one server of `--url`/`--http`.
pub fn nodes_of(cfg: &crate::cli::Config) -> Vec<SoakNode> {
    if cfg.soak.nodes.is_empty() {
        vec![SoakNode {
            ws: cfg.url.clone(),
            http: cfg.http.clone(),
        }]
    } else {
        cfg.soak.nodes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_paths_are_split_over_the_nodes() {
        let (paths, nodes) = (16, 3);
        let fans: Vec<NodeFan> = (0..nodes)
            .map(|node| NodeFan { paths, nodes, node })
            .collect();
        assert_eq!(
            fans.iter().map(NodeFan::own_paths).collect::<Vec<_>>(),
            [6, 5, 5]
        );
        // each path is exactly one node's, and each node subscribes and publishes only
        // its own
        let mut owner = vec![None; paths as usize];
        for f in &fans {
            for c in 0..100 {
                let (p, sub) = f.subscription(c);
                assert_eq!(p as u64 % nodes, f.node);
                assert_eq!(sub, format!("soak/fan/p{p}"));
                assert_eq!(f.path_of_publication(c) as u64 % nodes, f.node);
                assert!(owner[p].is_none() || owner[p] == Some(f.node));
                owner[p] = Some(f.node);
            }
        }
        assert!(owner.iter().all(Option::is_some), "{owner:?}");
        // fewer paths than nodes: a node without paths has none
        let f = NodeFan {
            paths: 2,
            nodes: 3,
            node: 2,
        };
        assert_eq!(f.own_paths(), 0);
        // one node: the soak's own fan-out
        let one = NodeFan {
            paths: 5,
            nodes: 1,
            node: 0,
        };
        assert_eq!(one.subscription(7), (2, "soak/fan/p2".to_string()));
        assert_eq!(one.path_of_publication(9), 4);
    }

    #[test]
    fn readers_are_never_on_their_publishers_node() {
        let p = Placement { nodes: 3 };
        for publisher in 0..3 {
            for i in 0..10 {
                assert_ne!(p.reader_node(publisher, i), publisher);
            }
        }
        assert_eq!(p.readers_of(1), [0, 2]);
        for k in 0..3 {
            assert_ne!(p.fan_publisher(k), k);
        }
        // the writers are spread
        assert_eq!(
            (
                p.slow_publisher(),
                p.filtered_publisher(),
                p.entity_writer()
            ),
            (0, 1, 2)
        );
        let two = Placement { nodes: 2 };
        assert_eq!(two.entity_writer(), 0);
        assert_eq!(two.readers_of(0), [1]);
        // a cluster of one: everything on it
        let one = Placement { nodes: 1 };
        assert_eq!(one.readers_of(0), [0]);
        assert_eq!(one.fan_publisher(0), 0);
        assert_eq!(
            (0..3)
                .map(|i| Placement::split(10, 3, i))
                .collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(Placement::split(2, 3, 2), 0);
    }
}
