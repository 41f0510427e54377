//! The neighbour graph of a round: which devices exchange masks and key shares.
//!
//! This module owns the sparse graph of SecAgg+ (Bell et al. 2020). In the original SecAgg
//! (Bonawitz et al. 2017) every device masks with, and shares its secrets among, all other
//! devices, so each device does O(n) work and the server O(n²). SecAgg+ replaces the complete
//! graph by a random sparse one of degree k = O(log n): a device only masks with and
//! shares its secrets among its k neighbours, so it does O(k) work and the server O(n·k).
//!
//! # Construction
//! The graph is a *random Harary graph*: the nodes `0..n` are put in a seed-derived random
//! order (a Fisher–Yates shuffle driven by a ChaCha20 keystream keyed by SHA-256 of the
//! round seed, with rejection sampling so every order is equally likely), and each node is
//! joined to the k/2 nodes on either side of it on that cycle. Hence the graph is
//! * symmetric by construction (the circle distance is symmetric),
//! * exactly k-regular (k even, k < n − 1; otherwise complete),
//! * k-vertex-connected (a Harary graph H(k, n)), so removing fewer than k nodes can
//!   never disconnect it,
//! * a pure function of `(seed, n, k)`: every device computes the same graph.
//!
//! An odd requested degree is rounded up to the next even number; a degree of n − 1 or more
//! gives the complete graph (plain SecAgg). The degree is at most [`MAX_DEGREE`] because Shamir
//! shares are indexed by a byte (see [`crate::shamir`]).
//!
//! # Choice of the default degree
//! [`default_degree`] is `2·⌈log2 n⌉` clamped to `n − 1`. SecAgg+ shows that with
//! k = O(log n + σ) neighbours chosen at random (σ the statistical security parameter), the
//! graph restricted to honest, surviving devices stays connected and every device keeps at
//! least t honest surviving neighbours except with probability about 2^−σ, for fixed
//! fractions of corrupted (γ) and dropped (δ) devices; the constant in front of log n grows as
//! γ and δ grow. Connectivity matters because a connected component of surviving devices whose
//! pairwise masks with the rest are removed would reveal its own partial sum.
//! The default here is sized for this deployment's threat model (honest-but-curious server,
//! no colluding devices assumed, a few percent of drop-outs): the Harary construction makes
//! connectivity under fewer than k removals certain rather than probable, and with the
//! default threshold t = k/2 + 1 a device tolerates k/2 − 1 dropped neighbours.
//! Deployments that assume colluding devices should raise k following the bounds of
//! Bell et al. for their γ, δ and σ (e.g. σ = 40), and set it with
//! [`crate::RoundConfig::with_degree`].
//!
//! The seed is chosen by the server; an actively malicious server could grind seeds for a
//! graph that suits it (see the threat model in the crate docs).

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Largest degree a round may use (Shamir x-coordinates are the bytes 1..=255, and an even
/// degree keeps the Harary construction exact).
pub const MAX_DEGREE: usize = 254;

/// Largest number of nodes a graph may have (the shuffle works on `u32` node numbers).
pub const MAX_NODES: usize = 1 << 24;

const GRAPH_LABEL: &[u8] = b"radiant-edge/secagg/graph/v1";

/// Why a graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// A round needs at least two devices.
    #[error("a neighbour graph needs at least 2 nodes, got {nodes}")]
    TooFewNodes {
        /// Nodes asked for.
        nodes: usize,
    },
    /// More nodes than [`MAX_NODES`].
    #[error("a neighbour graph has at most {max} nodes, got {nodes}")]
    TooManyNodes {
        /// Nodes asked for.
        nodes: usize,
        /// The limit.
        max: usize,
    },
    /// Degree zero or above [`MAX_DEGREE`].
    #[error("degree {degree} is outside 1..={max}")]
    DegreeOutOfRange {
        /// Degree asked for.
        degree: usize,
        /// The limit.
        max: usize,
    },
}

/// `2·⌈log2 n⌉`, clamped to `n − 1` and to [`MAX_DEGREE`]; 0 for n < 2.
pub fn default_degree(nodes: usize) -> usize {
    if nodes < 2 {
        return 0;
    }
    let ceil_log2 = (usize::BITS - (nodes - 1).leading_zeros()) as usize;
    (2 * ceil_log2).min(nodes - 1).min(MAX_DEGREE)
}

/// The degree the graph really has when `requested` is asked for with `nodes` nodes:
/// odd degrees are rounded up to even, and `n − 1` or more means the complete graph.
pub fn effective_degree(nodes: usize, requested: usize) -> Result<usize, GraphError> {
    check_nodes(nodes)?;
    if requested == 0 || requested > MAX_DEGREE {
        return Err(GraphError::DegreeOutOfRange {
            degree: requested,
            max: MAX_DEGREE,
        });
    }
    let even = requested + requested % 2;
    Ok(if even >= nodes - 1 { nodes - 1 } else { even })
}

fn check_nodes(nodes: usize) -> Result<(), GraphError> {
    if nodes < 2 {
        return Err(GraphError::TooFewNodes { nodes });
    }
    if nodes > MAX_NODES {
        return Err(GraphError::TooManyNodes {
            nodes,
            max: MAX_NODES,
        });
    }
    Ok(())
}

/// The neighbour graph over nodes `0..n` (a node is the index of a device in the round's
/// sorted participant list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourGraph {
    degree: usize,
    complete: bool,
    /// `order[p]` is the node at position `p` of the cycle.
    order: Vec<u32>,
    /// `position[node]` is the inverse of `order`.
    position: Vec<u32>,
}

impl NeighbourGraph {
    /// Builds the graph of a round from its seed, its number of devices and the requested
    /// degree (see [`effective_degree`]).
    pub fn new(seed: &[u8; 32], nodes: usize, requested_degree: usize) -> Result<Self, GraphError> {
        let degree = effective_degree(nodes, requested_degree)?;
        let complete = degree == nodes - 1;
        let order = shuffled_nodes(seed, nodes);
        let mut position = vec![0u32; nodes];
        for (p, &node) in order.iter().enumerate() {
            // `nodes <= MAX_NODES < u32::MAX`, so the casts are lossless.
            position[node as usize] = p as u32;
        }
        Ok(Self {
            degree,
            complete,
            order,
            position,
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Always false: a graph has at least two nodes.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The degree of every node.
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// The neighbours of `node`, in increasing order; `None` when `node` is not in the graph.
    pub fn neighbours(&self, node: usize) -> Option<Vec<usize>> {
        let n = self.len();
        let p = *self.position.get(node)? as usize;
        let mut out: Vec<usize> = if self.complete {
            (0..n).filter(|&v| v != node).collect()
        } else {
            let half = self.degree / 2;
            (1..=half)
                .flat_map(|d| [(p + d) % n, (p + n - d) % n])
                .map(|q| self.order[q] as usize)
                .collect()
        };
        out.sort_unstable();
        Some(out)
    }

    /// Whether `a` and `b` are neighbours (false when either is not in the graph).
    pub fn are_neighbours(&self, a: usize, b: usize) -> bool {
        let n = self.len();
        let (Some(&pa), Some(&pb)) = (self.position.get(a), self.position.get(b)) else {
            return false;
        };
        if a == b {
            return false;
        }
        if self.complete {
            return true;
        }
        let diff = (pa as usize + n - pb as usize) % n;
        diff.min(n - diff) <= self.degree / 2
    }
}

/// A uniformly random order of `0..nodes`, determined by the seed.
fn shuffled_nodes(seed: &[u8; 32], nodes: usize) -> Vec<u32> {
    let mut hasher = Sha256::new();
    hasher.update(GRAPH_LABEL);
    hasher.update(seed);
    hasher.update((nodes as u64).to_le_bytes());
    let key: [u8; 32] = hasher.finalize().into();
    let mut stream = ChaCha20::new(&key.into(), &[0u8; 12].into());
    let mut order: Vec<u32> = (0..nodes as u32).collect();
    for i in (1..nodes).rev() {
        let j = uniform_below(&mut stream, i as u64 + 1);
        order.swap(i, j as usize);
    }
    order
}

/// A uniform draw from `0..bound` (1 <= bound <= 2^32) by rejection sampling.
fn uniform_below(stream: &mut ChaCha20, bound: u64) -> u64 {
    let span = 1u64 << 32;
    let limit = span - span % bound;
    loop {
        let mut word = [0u8; 4];
        stream.apply_keystream(&mut word);
        let r = u64::from(u32::from_le_bytes(word));
        if r < limit {
            return r % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn seed(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn the_default_degree_is_twice_the_ceiling_of_log2_clamped_to_n_minus_one() {
        assert_eq!(default_degree(1), 0);
        assert_eq!(default_degree(2), 1);
        assert_eq!(default_degree(3), 2);
        assert_eq!(default_degree(10), 8);
        assert_eq!(default_degree(200), 16);
        assert_eq!(default_degree(1024), 20);
        assert_eq!(default_degree(1025), 22);
    }

    #[test]
    fn the_graph_is_symmetric_and_has_no_self_loops() {
        for n in [2usize, 3, 5, 10, 17, 64, 200] {
            let g = NeighbourGraph::new(&seed(7), n, default_degree(n)).unwrap();
            for u in 0..n {
                let nu = g.neighbours(u).unwrap();
                assert!(!nu.contains(&u));
                for v in 0..n {
                    let uv = nu.contains(&v);
                    assert_eq!(uv, g.neighbours(v).unwrap().contains(&u), "n={n} {u} {v}");
                    assert_eq!(uv, g.are_neighbours(u, v), "n={n} {u} {v}");
                }
            }
        }
    }

    #[test]
    fn the_graph_is_a_function_of_seed_size_and_degree_only() {
        let a = NeighbourGraph::new(&seed(1), 200, 16).unwrap();
        let b = NeighbourGraph::new(&seed(1), 200, 16).unwrap();
        assert_eq!(a, b);
        let c = NeighbourGraph::new(&seed(2), 200, 16).unwrap();
        assert_ne!(a, c, "another seed gives another graph");
    }

    #[test]
    fn every_degree_is_exactly_the_effective_degree_within_bounds() {
        for (n, k, expect) in [
            (200usize, 16usize, 16usize),
            (200, 15, 16),
            (10, 8, 8),
            (10, 9, 9),
            (10, 50, 9),
            (9, 7, 8),
            (3, 1, 2),
            (2, 1, 1),
        ] {
            let g = NeighbourGraph::new(&seed(3), n, k).unwrap();
            assert_eq!(g.degree(), expect, "n={n} k={k}");
            for u in 0..n {
                let nu = g.neighbours(u).unwrap();
                assert_eq!(nu.len(), expect, "n={n} k={k} u={u}");
                assert!(nu.len() < n && nu.len() <= MAX_DEGREE);
                assert!(nu.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
            }
        }
    }

    #[test]
    fn the_graph_of_200_devices_with_the_default_degree_is_connected() {
        for s in 0..5u8 {
            let n = 200;
            let g = NeighbourGraph::new(&seed(s), n, default_degree(n)).unwrap();
            let mut seen = vec![false; n];
            let mut queue = VecDeque::from([0usize]);
            seen[0] = true;
            while let Some(u) = queue.pop_front() {
                for v in g.neighbours(u).unwrap() {
                    if !seen[v] {
                        seen[v] = true;
                        queue.push_back(v);
                    }
                }
            }
            assert!(seen.iter().all(|&x| x), "seed {s}");
        }
    }

    #[test]
    fn bad_sizes_and_degrees_are_typed_errors_and_unknown_nodes_have_no_neighbours() {
        assert_eq!(
            NeighbourGraph::new(&seed(0), 1, 1),
            Err(GraphError::TooFewNodes { nodes: 1 })
        );
        assert!(matches!(
            NeighbourGraph::new(&seed(0), 10, 0),
            Err(GraphError::DegreeOutOfRange { .. })
        ));
        assert!(matches!(
            NeighbourGraph::new(&seed(0), 1000, 255),
            Err(GraphError::DegreeOutOfRange { .. })
        ));
        let g = NeighbourGraph::new(&seed(0), 10, 4).unwrap();
        assert_eq!(g.neighbours(10), None);
        assert!(!g.are_neighbours(10, 0));
    }
}
