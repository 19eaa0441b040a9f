//! How many group lookups the 10 × 10 × 5k first packet makes, and what
//! each costs in tree steps: replays `LayerPolicy::classify`'s order for
//! the engine bench's groups (`rulegen::acl(5000, 1..=100)`, ten layers
//! of ten groups, no terminating rules: each layer's groups from the last,
//! stopping at the first match) over its IPv4 probes, with traced tree
//! lookups. Prints lookups per packet, nodes, leaves and box checks per
//! hit and per miss, and how many groups each layer classified.
//!
//! ```text
//! cargo run --release -p strata-engine --example layer_order
//! ```
//!
//! (Callgrind's call counts cover a whole run, warm-up included: this
//! counts one round directly.)

use strata_engine::classifier::MatchType;
use strata_engine::classifier::tree::{LookupTrace, TreeClassifier, TreeConfig};
use strata_engine::condition::Field;
use strata_engine::rulegen;

const LAYERS: usize = 10;
const GROUPS: usize = 10;

/// Lookups, nodes, leaves and box checks, summed.
#[derive(Default)]
struct Tally {
    lookups: usize,
    nodes: usize,
    leaves: usize,
    checks: usize,
}

impl Tally {
    fn add(&mut self, t: &LookupTrace) {
        self.lookups += 1;
        self.nodes += t.nodes;
        self.leaves += t.leaves;
        self.checks += t.checks;
    }

    fn print(&self, name: &str, packets: usize) {
        let n = self.lookups.max(1) as f64;
        println!(
            "{name}: {:.2} per packet; per lookup {:.2} nodes, {:.2} leaves, {:.2} box checks",
            self.lookups as f64 / packets as f64,
            self.nodes as f64 / n,
            self.leaves as f64 / n,
            self.checks as f64 / n,
        );
    }
}

fn main() {
    let groups: Vec<TreeClassifier> = (1..=(LAYERS * GROUPS) as u64)
        .map(|seed| {
            TreeClassifier::new(
                &rulegen::acl(5000, seed),
                MatchType::Priority,
                TreeConfig::default(),
            )
        })
        .collect();
    // The engine bench's probes: aimed at the first group, IPv4 only.
    let probes: Vec<_> = rulegen::packets(&rulegen::acl(5000, 1), 8192, 3)
        .into_iter()
        .filter(|fv| fv.get(Field::SrcIp).is_some_and(|v| v >> 32 == 0xffff))
        .collect();
    let (mut hits, mut misses) = (Tally::default(), Tally::default());
    let mut per_layer = [0usize; GROUPS + 1];
    for fv in &probes {
        for layer in groups.chunks(GROUPS) {
            let mut classified = 0;
            for g in layer.iter().rev() {
                let mut t = LookupTrace::default();
                let found = g.best_match_traced(fv, &mut t);
                classified += 1;
                if found.is_some() {
                    hits.add(&t);
                    break;
                }
                misses.add(&t);
            }
            per_layer[classified] += 1;
        }
    }
    println!(
        "{} probes: {:.2} group lookups per packet",
        probes.len(),
        (hits.lookups + misses.lookups) as f64 / probes.len() as f64
    );
    hits.print("hits", probes.len());
    misses.print("misses", probes.len());
    println!(
        "layers by groups classified (1, 2, …): {:?}",
        &per_layer[1..]
    );
}
