//! The linear-scan reference classifier: the definition of correct matching
//! that every faster structure is tested against.

use super::{GroupClassifier, MatchType, RuleMatch};
use crate::condition::{FieldValues, all_match};

#[derive(Debug, Clone)]
pub struct LinearClassifier {
    rules: Vec<RuleMatch>,
    match_type: MatchType,
}

impl LinearClassifier {
    pub fn new(rules: Vec<RuleMatch>, match_type: MatchType) -> LinearClassifier {
        LinearClassifier { rules, match_type }
    }
}

/// The reference semantics over a rule slice.
pub fn best_match(rules: &[RuleMatch], match_type: MatchType, fv: &FieldValues) -> Option<usize> {
    let mut best: Option<(u8, u32, usize)> = None;
    for (i, r) in rules.iter().enumerate() {
        if !all_match(&r.conditions, fv) {
            continue;
        }
        let plen = match match_type {
            MatchType::Priority => 0,
            MatchType::Lpm(field) => {
                let Some(v) = fv.get(field) else { continue };
                let w = field.width();
                r.conditions
                    .iter()
                    .filter(|c| c.field == field)
                    .flat_map(|c| c.values.iter())
                    .filter(|m| m.matches(v, w))
                    .map(|m| m.prefix_len(w))
                    .max()
                    .unwrap_or(0)
            }
        };
        let better = match best {
            None => true,
            Some((bl, bp, _)) => plen > bl || (plen == bl && r.priority < bp),
        };
        if better {
            best = Some((plen, r.priority, i));
        }
    }
    best.map(|(_, _, i)| i)
}

impl GroupClassifier for LinearClassifier {
    fn best_match(&self, fv: &FieldValues) -> Option<usize> {
        best_match(&self.rules, self.match_type, fv)
    }

    fn kind(&self) -> &'static str {
        "linear"
    }

    fn memory_bytes(&self) -> usize {
        self.rules
            .iter()
            .map(|r| {
                size_of::<RuleMatch>()
                    + r.conditions
                        .iter()
                        .map(|c| {
                            size_of::<crate::condition::Condition>()
                                + if c.values.spilled() {
                                    c.values.capacity() * size_of::<crate::condition::MatchValue>()
                                } else {
                                    0
                                }
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}
