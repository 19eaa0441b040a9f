//! Counters (VFP-22): per port, per layer and per rule — packets, bytes, and
//! drops by reason. Rule and meter counters live in an arena so a unified
//! flow can carry the slots it must bump as action contexts (VFP-11), and the
//! fast path updates them with plain indexed adds.

use crate::slab::ChunkedSlab;
use crate::types::{Direction, DropReason};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Packets, bytes and drops of one object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

/// What a counter slot counts. Layer and rule ids are shared (`Arc`): a
/// meter bucket names its rule with the rule counter's own strings, and
/// its bucket inline ([`BucketName`]), so making one allocates nothing.
/// (Encoded as plain strings: snapshots are as before.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CounterName {
    /// Packets that traversed a layer (fast and slow path).
    Layer { layer: Arc<str> },
    /// Packets of flows a rule decided (fast and slow path).
    Rule { layer: Arc<str>, rule: Arc<str> },
    /// A meter bucket (e.g. per destination) of a meter rule.
    Meter {
        layer: Arc<str>,
        rule: Arc<str>,
        bucket: BucketName,
    },
}

/// A meter bucket's name, held inline: an address, a prefix, a number,
/// `none` or `other`, at most [`BucketName::MAX`] bytes (an IPv6 prefix
/// takes 43). Compares, hashes and encodes as the string it holds.
#[derive(Clone, Copy)]
pub struct BucketName {
    len: u8,
    bytes: [u8; BucketName::MAX],
}

impl BucketName {
    /// Longest name held.
    pub const MAX: usize = 47;

    /// `s` as a bucket name, if it fits.
    pub fn new(s: &str) -> Option<BucketName> {
        let mut b = BucketName {
            len: 0,
            bytes: [0; BucketName::MAX],
        };
        b.push(s).ok()?;
        Some(b)
    }

    /// `x` as written by `Display`, without a heap allocation; cut at the
    /// last whole character that fits if longer (no name the meters write
    /// is).
    pub fn display(x: impl std::fmt::Display) -> BucketName {
        use std::fmt::Write;
        let mut b = BucketName {
            len: 0,
            bytes: [0; BucketName::MAX],
        };
        let _ = write!(b, "{x}");
        b
    }

    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only whole `str`s (or their first whole characters) are pushed.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// Append what fits of `s`, whole characters only; an error if not all.
    fn push(&mut self, s: &str) -> std::fmt::Result {
        let at = usize::from(self.len);
        let room = BucketName::MAX - at;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n as u8;
        if n < s.len() {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Write for BucketName {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s)
    }
}

impl std::ops::Deref for BucketName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for BucketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for BucketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for BucketName {
    fn eq(&self, other: &BucketName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for BucketName {}

impl PartialEq<str> for BucketName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialOrd for BucketName {
    fn partial_cmp(&self, other: &BucketName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BucketName {
    fn cmp(&self, other: &BucketName) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for BucketName {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}

impl From<&str> for BucketName {
    /// Cut to [`BucketName::MAX`] bytes if longer (see
    /// [`BucketName::display`]).
    fn from(s: &str) -> BucketName {
        BucketName::display(s)
    }
}

impl Serialize for BucketName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BucketName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BucketName, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BucketName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "a meter bucket name of at most {} bytes",
                    BucketName::MAX
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BucketName, E> {
                BucketName::new(s).ok_or_else(|| E::invalid_length(s.len(), &self))
            }
        }
        d.deserialize_str(V)
    }
}

// By hand, so that a rule's counter can be found by borrowed names
// (`RuleCounter`) hashing the same way.
impl Hash for CounterName {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            CounterName::Layer { layer } => (0u8, &**layer).hash(h),
            CounterName::Rule { layer, rule } => RuleCounter { layer, rule }.hash(h),
            CounterName::Meter {
                layer,
                rule,
                bucket,
            } => (2u8, &**layer, &**rule, bucket.as_str()).hash(h),
        }
    }
}

/// [`CounterName::Rule`] by borrowed names: looking a rule's slot up
/// allocates nothing (a 50k-rule group looks up 50k of them per update).
#[derive(Clone, Copy, Debug)]
struct RuleCounter<'a> {
    layer: &'a str,
    rule: &'a str,
}

impl Hash for RuleCounter<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (1u8, self.layer, self.rule).hash(h);
    }
}

impl hashbrown::Equivalent<CounterName> for RuleCounter<'_> {
    fn equivalent(&self, key: &CounterName) -> bool {
        matches!(key, CounterName::Rule { layer, rule } if **layer == *self.layer && **rule == *self.rule)
    }
}

/// A set of counter slots as a bitmap: retiring or re-adding the slots of a
/// 50k-rule group is a bit flip each.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SlotSet {
    words: Vec<u64>,
    len: usize,
}

impl SlotSet {
    fn insert(&mut self, s: u32) {
        let (w, b) = (s as usize / 64, 1u64 << (s % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & b == 0 {
            self.words[w] |= b;
            self.len += 1;
        }
    }

    fn remove(&mut self, s: u32) {
        let (w, b) = (s as usize / 64, 1u64 << (s % 64));
        if let Some(x) = self.words.get_mut(w)
            && *x & b != 0
        {
            *x &= !b;
            self.len -= 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &x)| {
            (0..64)
                .filter(move |b| x & (1u64 << b) != 0)
                .map(move |b| (w * 64 + b) as u32)
        })
    }
}

/// Slots by name, hashing the names the arena already holds (each name is
/// stored once, not again as a map key).
#[derive(Clone, Debug, Default)]
struct NameIndex {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl NameIndex {
    fn hash<K: Hash + ?Sized>(&self, k: &K) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(k)
    }

    fn find<K>(&self, names: &ChunkedSlab<CounterName>, k: &K) -> Option<u32>
    where
        K: Hash + hashbrown::Equivalent<CounterName> + ?Sized,
    {
        let named = |s: &u32| {
            names
                .get(*s as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| k.equivalent(n))
        };
        self.table.find(self.hash(k), named).copied()
    }

    /// Index slot `s` under the name it holds.
    fn insert(&mut self, names: &ChunkedSlab<CounterName>, s: u32) {
        let Some(name) = names.get(s as usize).and_then(Option::as_ref) else {
            return;
        };
        let (h, hasher) = (self.hash(name), &self.hasher);
        self.table.insert_unique(h, s, |&x| {
            use std::hash::BuildHasher;
            names
                .get(x as usize)
                .and_then(Option::as_ref)
                .map_or(0, |n| hasher.hash_one(n))
        });
    }

    /// Unindex slot `s` (before its name goes).
    fn remove(&mut self, names: &ChunkedSlab<CounterName>, s: u32) {
        let Some(name) = names.get(s as usize).and_then(Option::as_ref) else {
            return;
        };
        if let Ok(e) = self.table.find_entry(self.hash(name), |&x| x == s) {
            e.remove();
        }
    }
}

/// Counter slots, named. A slot outlives its rule or layer while flows still
/// count into it: removing a rule only *retires* its slot (a rule re-added
/// with the same id gets it back, so its counts continue); the port frees
/// retired slots that no flow refers to any more ([`CounterArena::reclaim`])
/// and hands freed slots to new names, so replacing groups with fresh rule
/// ids does not grow the arena for ever.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterArena {
    slots: Vec<Counter>,
    /// `None` for a freed slot (on the free list).
    names: ChunkedSlab<CounterName>,
    /// Slots whose rule or layer left the policy.
    retired: SlotSet,
    free: Vec<u32>,
    #[serde(skip)]
    by_name: NameIndex,
    /// Meter buckets by (rule counter slot, bucket value): found without
    /// building the bucket's name (rebuilt lazily after a restore).
    #[serde(skip)]
    meter_index: HashMap<(u32, u128), u32>,
    /// Meter rules' buckets by rule counter slot (for the per-rule cap;
    /// rebuilt by `reindex`).
    #[serde(skip)]
    meter_buckets: HashMap<u32, MeterRuleBuckets>,
    #[serde(skip)]
    retirements: u64,
}

/// What an arena knows of one meter rule's buckets.
#[derive(Clone, Copy, Debug, Default)]
struct MeterRuleBuckets {
    /// Buckets with a name of their own (at most the rule's cap).
    named: usize,
    /// How many of those `meter_index` finds by value (all of them, but
    /// for a while after a restore, which indexes them as they are met).
    indexed: usize,
    /// The shared "other" bucket, once made.
    other: Option<u32>,
}

impl MeterRuleBuckets {
    /// The shared bucket, when it is the answer for every value the index
    /// does not know: the rule is at its cap, and every bucket of its own
    /// is indexed.
    fn full(&self, cap: usize) -> Option<u32> {
        (self.named >= cap && self.indexed >= self.named)
            .then_some(self.other)
            .flatten()
    }
}

/// The name of a meter rule's shared bucket, for values past its cap.
const OTHER_BUCKET: &str = "other";

/// Heap bytes of a hashbrown table with `capacity` and `entry`-byte
/// entries (buckets a power of two at most 7/8 full, one control byte
/// each).
pub(crate) fn hash_table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8).div_ceil(7).next_power_of_two()
    };
    buckets * (entry + 1) + 16
}

impl CounterName {
    fn heap_bytes(&self) -> usize {
        match self {
            // An `Arc<str>` is its bytes and two counts.
            CounterName::Layer { layer } => layer.len() + 16,
            CounterName::Rule { layer, rule } => layer.len() + rule.len() + 32,
            // Its strings are its rule counter's; its bucket is inline.
            CounterName::Meter { .. } => 0,
        }
    }
}

impl CounterArena {
    /// Approximate heap bytes: the slots, their names, the indexes. Meter
    /// buckets (one per distinct value, up to the meter's cap) are most
    /// of it on a port that meters by address.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Counter>()
            + self.names.memory_bytes()
            + self
                .names
                .iter()
                .flatten()
                .map(CounterName::heap_bytes)
                .sum::<usize>()
            + self.retired.words.capacity() * 8
            + self.free.capacity() * 4
            + hash_table_bytes(self.by_name.table.capacity(), size_of::<u32>())
            + hash_table_bytes(self.meter_index.capacity(), size_of::<((u32, u128), u32)>())
            + hash_table_bytes(
                self.meter_buckets.capacity(),
                size_of::<(u32, MeterRuleBuckets)>(),
            )
    }

    /// Meter buckets with a slot of their own.
    pub fn meter_bucket_count(&self) -> usize {
        self.names
            .iter()
            .flatten()
            .filter(|n| matches!(n, CounterName::Meter { .. }))
            .count()
    }

    /// The slot for `name`, created at zero if new (in a freed slot when
    /// there is one).
    pub fn slot(&mut self, name: CounterName) -> u32 {
        if let Some(s) = self.by_name.find(&self.names, &name) {
            self.unretire(s);
            return s;
        }
        let s = match self.free.pop() {
            Some(s) => {
                self.names[s as usize] = Some(name);
                s
            }
            None => {
                self.slots.push(Counter::default());
                self.names.push(Some(name));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_name.insert(&self.names, s);
        s
    }

    /// The slot of rule `rule` of layer `layer` (as [`CounterArena::slot`]
    /// with [`CounterName::Rule`], without building the name when the slot
    /// exists).
    pub fn rule_slot(&mut self, layer: &str, rule: &str) -> u32 {
        match self.by_name.find(&self.names, &RuleCounter { layer, rule }) {
            Some(s) => {
                self.unretire(s);
                s
            }
            None => self.slot(CounterName::Rule {
                layer: layer.into(),
                rule: rule.into(),
            }),
        }
    }

    /// The slot of rule `rule` of layer `layer`, if it has one (read-only:
    /// can run beside other readers while a group is prepared).
    pub fn find_rule(&self, layer: &str, rule: &str) -> Option<u32> {
        self.by_name.find(&self.names, &RuleCounter { layer, rule })
    }

    /// `s` is in use again (its rule came back).
    pub fn unretire(&mut self, s: u32) {
        if self.retired.len() > 0 {
            self.retired.remove(s);
        }
    }

    /// The object counted in `slot` left the policy: free the slot once no
    /// flow refers to it.
    pub fn retire(&mut self, slot: u32) {
        if matches!(self.names.get(slot as usize), Some(Some(_))) {
            self.retired.insert(slot);
            self.retirements += 1;
        }
    }

    /// How many retirements this arena has seen (since it was made or
    /// restored): lets a sweep tell that nothing was retired meanwhile.
    pub fn retirements(&self) -> u64 {
        self.retirements
    }

    /// Slots waiting for [`CounterArena::reclaim`].
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Free every retired slot for which `referenced` says no flow counts
    /// into it, with the meter buckets of freed rules (themselves retired
    /// while flows still count into them). Returns how many slots were
    /// freed. O(slots / 64 + retired), plus O(slots) when a rule was freed.
    pub fn reclaim(&mut self, referenced: impl Fn(u32) -> bool) -> usize {
        let candidates = std::mem::take(&mut self.retired);
        let mut freed = 0;
        let mut rule_freed = false;
        for s in candidates.iter() {
            if referenced(s) {
                self.retired.insert(s);
                continue;
            }
            rule_freed |= matches!(self.names[s as usize], Some(CounterName::Rule { .. }));
            self.free_slot(s);
            freed += 1;
        }
        if rule_freed {
            // Meter buckets whose rule is gone.
            let orphans: Vec<u32> = (0..self.names.len() as u32)
                .filter(|&s| match &self.names[s as usize] {
                    Some(CounterName::Meter { layer, rule, .. }) => self
                        .by_name
                        .find(&self.names, &RuleCounter { layer, rule })
                        .is_none(),
                    _ => false,
                })
                .collect();
            for s in orphans {
                if referenced(s) {
                    self.retired.insert(s);
                } else {
                    self.free_slot(s);
                    freed += 1;
                }
            }
            let names = &self.names;
            self.meter_index.retain(|&(rule, _), bucket| {
                names[rule as usize].is_some() && names[*bucket as usize].is_some()
            });
            for r in self.meter_buckets.values_mut() {
                r.indexed = 0;
            }
            for &(rule, _) in self.meter_index.keys() {
                if let Some(r) = self.meter_buckets.get_mut(&rule) {
                    r.indexed += 1;
                }
            }
        }
        freed
    }

    fn free_slot(&mut self, s: u32) {
        match &self.names[s as usize] {
            Some(CounterName::Rule { .. }) => {
                self.meter_buckets.remove(&s);
            }
            Some(CounterName::Meter {
                layer,
                rule,
                bucket,
            }) => {
                if let Some(r) = self.by_name.find(&self.names, &RuleCounter { layer, rule })
                    && let Some(n) = self.meter_buckets.get_mut(&r)
                {
                    if *bucket == *OTHER_BUCKET {
                        n.other = None;
                    } else {
                        n.named = n.named.saturating_sub(1);
                    }
                }
            }
            _ => {}
        }
        self.by_name.remove(&self.names, s);
        if self.names[s as usize].take().is_some() {
            self.slots[s as usize] = Counter::default();
            self.free.push(s);
        }
    }

    /// The slot counting `value` for meter rule `rule` of layer `layer`
    /// (counter slot `rule_slot`): its bucket (named by `bucket`, called
    /// only when the value is new), created while the rule has fewer than
    /// `cap` buckets, else the rule's shared "other" bucket. Values with a
    /// bucket of their own are then found by number; values beyond the cap
    /// are not remembered (so a sender spraying addresses cannot grow the
    /// port's memory): once every bucket of the rule's own is indexed, they
    /// get the shared bucket without a name being built. A new bucket's
    /// name shares its rule counter's strings: with room reserved
    /// ([`CounterArena::reserve_meter_buckets`]), nothing is allocated.
    pub fn meter_bucket(
        &mut self,
        layer: &str,
        rule: &str,
        rule_slot: u32,
        value: u128,
        bucket: impl FnOnce() -> BucketName,
        cap: usize,
    ) -> u32 {
        if let Some(&s) = self.meter_index.get(&(rule_slot, value)) {
            return s;
        }
        let known = self
            .meter_buckets
            .get(&rule_slot)
            .copied()
            .unwrap_or_default();
        if let Some(other) = known.full(cap) {
            return other;
        }
        let (layer, rule) = self.rule_names(layer, rule, rule_slot);
        let name = CounterName::Meter {
            layer: Arc::clone(&layer),
            rule: Arc::clone(&rule),
            bucket: bucket(),
        };
        let own = match self.by_name.find(&self.names, &name) {
            Some(s) => {
                self.unretire(s);
                Some(s)
            }
            None if known.named < cap => {
                self.meter_buckets.entry(rule_slot).or_default().named += 1;
                Some(self.slot(name))
            }
            None => None,
        };
        match own {
            Some(s) => {
                self.meter_index.insert((rule_slot, value), s);
                self.meter_buckets.entry(rule_slot).or_default().indexed += 1;
                s
            }
            None => {
                let other = self.slot(CounterName::Meter {
                    layer,
                    rule,
                    bucket: OTHER_BUCKET.into(),
                });
                self.meter_buckets.entry(rule_slot).or_default().other = Some(other);
                other
            }
        }
    }

    /// The shared strings naming rule `rule` of layer `layer` in its
    /// counter slot `rule_slot` (made anew only if the slot names
    /// something else, which a meter's caller never lets happen).
    fn rule_names(&self, layer: &str, rule: &str, rule_slot: u32) -> (Arc<str>, Arc<str>) {
        match self.names.get(rule_slot as usize) {
            Some(Some(CounterName::Rule { layer: l, rule: r }))
                if **l == *layer && **r == *rule =>
            {
                (Arc::clone(l), Arc::clone(r))
            }
            _ => (layer.into(), rule.into()),
        }
    }

    /// Room for `buckets` more meter buckets, over at most `rules` meter
    /// rules without buckets yet: that many new buckets then take no
    /// allocation (slots, names and the indexes grow into it).
    pub fn reserve_meter_buckets(&mut self, buckets: usize, rules: usize) {
        let fresh = buckets.saturating_sub(self.free.len());
        self.slots.reserve(fresh);
        // (A slab reserves room in all.)
        self.names.reserve(self.names.len().saturating_add(fresh));
        let (names, hasher) = (&self.names, &self.by_name.hasher);
        self.by_name.table.reserve(buckets, |&x| {
            use std::hash::BuildHasher;
            names
                .get(x as usize)
                .and_then(Option::as_ref)
                .map_or(0, |n| hasher.hash_one(n))
        });
        self.meter_index.reserve(buckets);
        self.meter_buckets.reserve(rules);
    }

    /// Heap bytes [`CounterArena::reserve_meter_buckets`] takes for
    /// `buckets` (a bound: a slot, its name, two index entries at 7/8).
    pub fn meter_reserve_bytes(buckets: usize) -> usize {
        let per = size_of::<Counter>()
            + size_of::<Option<CounterName>>()
            + (size_of::<u32>() + 1 + size_of::<((u32, u128), u32)>() + 1) * 8 / 7;
        buckets.saturating_mul(per)
    }

    /// Buckets meter rule `rule_slot` may still make under `cap`: its own
    /// up to the cap and its shared one (all of them for a rule without
    /// buckets yet).
    pub fn meter_room(&self, rule_slot: u32, cap: usize) -> usize {
        let known = self
            .meter_buckets
            .get(&rule_slot)
            .copied()
            .unwrap_or_default();
        cap.saturating_sub(known.named) + usize::from(known.other.is_none())
    }

    /// Values remembered with a bucket of their own (all meter rules).
    pub fn meter_values(&self) -> usize {
        self.meter_index.len()
    }

    pub fn find(&self, name: &CounterName) -> Option<u32> {
        self.by_name.find(&self.names, name)
    }

    #[inline]
    pub fn add(&mut self, slot: u32, packets: u64, bytes: u64) {
        if let Some(c) = self.slots.get_mut(slot as usize) {
            c.packets += packets;
            c.bytes += bytes;
        }
    }

    #[inline]
    pub fn add_drops(&mut self, slot: u32, n: u64) {
        if let Some(c) = self.slots.get_mut(slot as usize) {
            c.drops += n;
        }
    }

    pub fn get(&self, name: &CounterName) -> Option<Counter> {
        self.find(name)
            .and_then(|s| self.slots.get(s as usize).copied())
    }

    /// Named (live or retired) slots.
    pub fn len(&self) -> usize {
        self.names.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated, named or free: what the arena's memory grows with.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Every counter with its name, sorted by name.
    pub fn all(&self) -> Vec<(CounterName, Counter)> {
        let mut v: Vec<_> = self
            .names
            .iter()
            .zip(self.slots.iter())
            .filter_map(|(n, c)| Some((n.clone()?, *c)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Check a deserialized arena before use: parallel vectors, the free
    /// list naming exactly the unnamed slots, retired slots named.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.slots.len();
        if self.names.len() != n {
            return Err(format!("{} counter names for {n} slots", self.names.len()));
        }
        self.names
            .check_free_list(&self.free)
            .map_err(|e| format!("bad counter slots: {e}"))?;
        if self.names.iter().filter(|n| n.is_none()).count() != self.free.len() {
            return Err("unnamed counter slots missing from the free list".into());
        }
        if let Some(s) = self
            .retired
            .iter()
            .find(|&s| !matches!(self.names.get(s as usize), Some(Some(_))))
        {
            return Err(format!("bad retired counter slot {s}"));
        }
        if self.retired.iter().count() != self.retired.len() {
            return Err("retired counter slots miscounted".into());
        }
        Ok(())
    }

    /// Rebuild the name index (and per-rule bucket counts) after
    /// deserialization.
    pub fn reindex(&mut self) {
        self.by_name = NameIndex::default();
        for s in 0..self.names.len() as u32 {
            self.by_name.insert(&self.names, s);
        }
        self.meter_buckets.clear();
        self.meter_index.clear();
        for n in self.names.iter().flatten() {
            if let CounterName::Meter {
                layer,
                rule,
                bucket,
            } = n
                && let Some(r) = self.by_name.find(&self.names, &RuleCounter { layer, rule })
                && **bucket != *OTHER_BUCKET
            {
                self.meter_buckets.entry(r).or_default().named += 1;
            }
        }
    }
}

/// Per-direction port totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirCounters {
    pub packets: u64,
    pub bytes: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Packets served by a unified flow hit.
    pub fast_path: u64,
    /// Packets that walked the layers (first packet of a flow).
    pub slow_path: u64,
    /// Hits on a stale unified flow that were re-simulated (VFP-13).
    pub reconciled: u64,
}

/// TCP statistics of a port (VFP-14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpStats {
    pub handshakes_completed: u64,
    /// Handshake packets with wrong sequence/ack numbers (flow stays half-open).
    pub invalid_handshakes: u64,
    pub resets: u64,
    pub retransmits: u64,
    pub ecn_ce_marks: u64,
    pub rtt_samples: u64,
    pub rtt_sum_ns: u64,
}

impl TcpStats {
    /// Average RTT in nanoseconds over all samples, if any.
    pub fn avg_rtt_ns(&self) -> Option<u64> {
        self.rtt_sum_ns.checked_div(self.rtt_samples)
    }
}

/// Flow-table statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    pub connections_created: u64,
    pub connections_expired: u64,
    pub connections_closed: u64,
    /// Evicted to make room under the port's flow limit, by class.
    pub evicted_half_open: u64,
    pub evicted_established: u64,
    pub evicted_other: u64,
    pub layer_flows_created: u64,
}

/// All counters of a port.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortCounters {
    pub dir: [DirCounters; 2],
    /// Drops by reason. Snapshots write the reasons format version 9 knew
    /// here and the fragment reasons with [`FragmentCounters`] (see
    /// `crate::snapshot`), so older snapshots read as they were written.
    #[serde(with = "drops_v9")]
    pub drops: [u64; DropReason::COUNT],
    /// Parse failures by the parser's own reason.
    pub malformed: BTreeMap<String, u64>,
    pub tcp: TcpStats,
    pub flows: FlowStats,
    pub arena: CounterArena,
    /// ICMP errors by what became of them (snapshots carry them apart:
    /// see `crate::snapshot`).
    #[serde(skip)]
    pub icmp_errors: IcmpErrorCounters,
    /// IP fragments by what became of them (carried apart likewise).
    #[serde(skip)]
    pub fragments: FragmentCounters,
}

/// [`PortCounters::drops`] as format version 9 wrote it: the first
/// [`DropReason::COUNT_V9`] reasons (the rest read as 0, and are set from
/// the state written after).
mod drops_v9 {
    use super::DropReason;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &[u64; DropReason::COUNT], s: S) -> Result<S::Ok, S::Error> {
        let mut v9 = [0u64; DropReason::COUNT_V9];
        v9.copy_from_slice(&d[..DropReason::COUNT_V9]);
        v9.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<[u64; DropReason::COUNT], D::Error> {
        let v9 = <[u64; DropReason::COUNT_V9]>::deserialize(de)?;
        let mut d = [0u64; DropReason::COUNT];
        d[..DropReason::COUNT_V9].copy_from_slice(&v9);
        Ok(d)
    }
}

/// What became of the IP fragments that reached the port (see
/// `crate::port`'s `fragments` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentCounters {
    /// First fragments: each starts tracking its datagram.
    pub first: u64,
    /// Later fragments given their datagram's flow on arrival.
    pub followed: u64,
    /// Later fragments that came before their datagram's first: held.
    pub held: u64,
    /// Held fragments processed once their first fragment passed.
    pub released: u64,
    /// Held fragments dropped: their first fragment did not come in time
    /// (also counted as `fragment-timeout` drops).
    pub timed_out: u64,
    /// Later fragments dropped because they could not be held (also
    /// counted as `fragment-overflow` drops).
    pub overflow: u64,
    /// Datagrams whose tracking ended complete (every byte seen).
    pub completed: u64,
    /// Datagrams forgotten incomplete: timed out, or the oldest, evicted
    /// for a new one when the port tracked its limit.
    pub forgotten: u64,
    /// Fragments whose header could not be read (processed with the key
    /// the parser gave).
    pub unreadable: u64,
}

/// What became of ICMP errors that reached the port (see
/// `crate::port`'s `related` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpErrorCounters {
    /// Errors about a connection of the port, relayed with its
    /// translation.
    pub relayed: u64,
    /// Errors about no connection of the port: decided by the policy.
    pub unrelated: u64,
    /// Errors whose quote could not be read (truncated, a later fragment,
    /// an error about an error): decided by the policy.
    pub unreadable: u64,
}

impl PortCounters {
    pub fn direction(&self, d: Direction) -> &DirCounters {
        &self.dir[d.index()]
    }

    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    pub fn layer(&self, layer: &str) -> Counter {
        self.arena
            .get(&CounterName::Layer {
                layer: layer.into(),
            })
            .unwrap_or_default()
    }

    pub fn rule(&self, layer: &str, rule: &str) -> Counter {
        self.arena
            .get(&CounterName::Rule {
                layer: layer.into(),
                rule: rule.into(),
            })
            .unwrap_or_default()
    }

    /// Meter buckets of one meter rule, by bucket name.
    pub fn meter(&self, layer: &str, rule: &str) -> BTreeMap<String, Counter> {
        self.arena
            .all()
            .into_iter()
            .filter_map(|(n, c)| match n {
                CounterName::Meter {
                    layer: l,
                    rule: r,
                    bucket,
                } if *l == *layer && *r == *rule => Some((bucket.to_string(), c)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule's slot is the same whether looked up by borrowed names or by
    /// its full name, whichever created it; other names stay apart.
    #[test]
    fn rule_slots_by_borrowed_names() {
        let mut a = CounterArena::default();
        let by_name = a.slot(CounterName::Rule {
            layer: "acl".into(),
            rule: "r1".into(),
        });
        assert_eq!(a.rule_slot("acl", "r1"), by_name);
        let borrowed = a.rule_slot("acl", "r2");
        assert_ne!(borrowed, by_name);
        assert_eq!(
            a.slot(CounterName::Rule {
                layer: "acl".into(),
                rule: "r2".into(),
            }),
            borrowed
        );
        // Same strings, other kinds or order: other slots.
        let layer = a.slot(CounterName::Layer {
            layer: "acl".into(),
        });
        assert!(layer != by_name && layer != borrowed);
        assert_ne!(a.rule_slot("r1", "acl"), by_name);
        assert_eq!(a.len(), 4);
        // After a restore (names deserialized, index rebuilt).
        a.reindex();
        assert_eq!(a.rule_slot("acl", "r2"), borrowed);
        assert_eq!(a.len(), 4);
    }

    /// A bucket name is its string inline: encoded, ordered and hashed
    /// as the `String` it replaced (old snapshots decode), the longest
    /// name a meter writes fits, and a longer one is refused on decode.
    #[test]
    fn bucket_names_are_strings_inline() {
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127";
        let ip: std::net::Ipv6Addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        let written = BucketName::display(format_args!("{ip}/127"));
        assert_eq!(written.as_str(), longest);
        assert_eq!(
            BucketName::display(u128::MAX).as_str(),
            u128::MAX.to_string()
        );
        for s in ["", "none", "other", "10.1.2.3", longest] {
            let b = BucketName::new(s).expect("fits");
            assert_eq!(
                postcard::to_stdvec(&b).unwrap(),
                postcard::to_stdvec(&s.to_string()).unwrap()
            );
            let back: BucketName = postcard::from_bytes(&postcard::to_stdvec(&s).unwrap()).unwrap();
            assert_eq!(back, b);
            let hash = |x: &dyn Fn(&mut std::hash::DefaultHasher)| {
                let mut h = std::hash::DefaultHasher::new();
                x(&mut h);
                h.finish()
            };
            assert_eq!(hash(&|h| b.hash(h)), hash(&|h| s.hash(h)));
        }
        let mut names = ["10.1.2.3", "9.0.0.1", "other", "10.1.2.30", "none"];
        let mut buckets: Vec<BucketName> = names.iter().map(BucketName::display).collect();
        names.sort();
        buckets.sort();
        assert!(buckets.iter().map(|b| b.as_str()).eq(names));
        let long = "x".repeat(BucketName::MAX + 1);
        assert!(BucketName::new(&long).is_none());
        assert!(postcard::from_bytes::<BucketName>(&postcard::to_stdvec(&long).unwrap()).is_err());
        assert_eq!(
            BucketName::display(&long).len(),
            BucketName::MAX,
            "cut to fit"
        );
        // Cut at a whole character.
        let wide = "é".repeat(BucketName::MAX);
        assert_eq!(
            BucketName::display(&wide).as_str(),
            "é".repeat(BucketName::MAX / 2)
        );
    }

    fn rule(layer: &str, rule: &str) -> CounterName {
        CounterName::Rule {
            layer: layer.into(),
            rule: rule.into(),
        }
    }

    /// A freed slot goes to the next new name, zeroed; a retired one stays
    /// named (and counting) until reclaimed; re-adding a retired name
    /// keeps it.
    #[test]
    fn retire_reclaim_reuse() {
        let mut a = CounterArena::default();
        let r1 = a.slot(rule("acl", "r1"));
        let r2 = a.slot(rule("acl", "r2"));
        a.add(r1, 5, 500);
        a.retire(r1);
        a.retire(r2);
        assert_eq!(a.rule_slot("acl", "r2"), r2, "re-added: same slot");
        assert_eq!(a.retired(), 1);
        assert_eq!(a.reclaim(|s| s == r1), 0, "still referenced");
        assert_eq!(a.get(&rule("acl", "r1")).map(|c| c.packets), Some(5));
        assert_eq!(a.reclaim(|_| false), 1);
        assert_eq!(a.get(&rule("acl", "r1")), None);
        assert_eq!((a.len(), a.capacity()), (1, 2));
        let r3 = a.slot(rule("acl", "r3"));
        assert_eq!(r3, r1, "freed slot reused");
        assert_eq!(a.get(&rule("acl", "r3")), Some(Counter::default()));
        assert!(a.validate().is_ok());
    }

    /// Deserialized arenas that would index out of bounds or hand one slot
    /// to two names are refused.
    #[test]
    fn validate_refuses_inconsistent_arenas() {
        let mut a = CounterArena::default();
        a.slot(rule("acl", "r1"));
        a.slot(rule("acl", "r2"));
        let good = a.clone();
        assert!(good.validate().is_ok());
        let mut bad = good.clone();
        bad.free.push(7);
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.free.push(0);
        assert!(bad.validate().is_err(), "a named slot on the free list");
        let mut bad = good.clone();
        bad.names[1] = None;
        assert!(bad.validate().is_err(), "an unnamed slot off the free list");
        let mut bad = good.clone();
        bad.names[1] = None;
        bad.free.extend([1, 1]);
        assert!(bad.validate().is_err(), "a slot freed twice");
        let mut bad = good.clone();
        bad.retired.insert(9);
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.retired.insert(1);
        assert!(bad.validate().is_ok());
        bad.retired.len = 2;
        assert!(bad.validate().is_err(), "a miscounted retired set");
        let mut bad = good;
        let n = bad.names.len();
        bad.names.truncate(n - 1);
        assert!(bad.validate().is_err());
    }

    /// The bucket cap is per meter rule (other rules' slots do not count),
    /// values beyond it share "other" and are not remembered, and a
    /// restored arena knows each rule's buckets again.
    #[test]
    fn meter_cap_is_per_rule_and_survives_restore() {
        let mut a = CounterArena::default();
        for i in 0..300 {
            a.rule_slot("acl", &format!("r{i}"));
        }
        let m = a.rule_slot("meter", "m");
        let cap = 4;
        let slots: Vec<u32> = (0..6u128)
            .map(|v| a.meter_bucket("meter", "m", m, v, || BucketName::display(v), cap))
            .collect();
        let other = a
            .find(&CounterName::Meter {
                layer: "meter".into(),
                rule: "m".into(),
                bucket: "other".into(),
            })
            .expect("other bucket");
        assert_eq!(&slots[4..], &[other, other]);
        let own: std::collections::BTreeSet<u32> = slots[..4].iter().copied().collect();
        assert_eq!(own.len(), 4);
        assert!(!own.contains(&other));
        assert_eq!(a.meter_values(), 4);

        let bytes = postcard::to_stdvec(&a).expect("encode");
        let mut b: CounterArena = postcard::from_bytes(&bytes).expect("decode");
        b.reindex();
        assert_eq!(
            b.meter_bucket("meter", "m", m, 2, || "2".into(), cap),
            slots[2]
        );
        assert_eq!(
            b.meter_bucket("meter", "m", m, 9, || "9".into(), cap),
            other
        );
        assert_eq!(b.meter_values(), 1);

        // Past the cap, once every bucket of the rule's own is indexed, a
        // new value gets the shared bucket without a name being built.
        let unnamed = || -> BucketName { panic!("a name built for a value past the cap") };
        assert_eq!(a.meter_bucket("meter", "m", m, 7, unnamed, cap), other);
        for v in [0u128, 1, 3] {
            assert_eq!(
                b.meter_bucket("meter", "m", m, v, || BucketName::display(v), cap),
                slots[v as usize]
            );
        }
        assert_eq!(b.meter_bucket("meter", "m", m, 10, unnamed, cap), other);
        assert_eq!(
            b.meter_values(),
            4,
            "values past the cap are not remembered"
        );
    }
}
