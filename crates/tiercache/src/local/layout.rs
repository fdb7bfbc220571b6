//! How an L1's two bounds, `max_entries` and `max_bytes`, become the one
//! weight bound quick_cache keeps, and how many shards it is split into.
//!
//! # How both bounds hold
//!
//! quick_cache bounds one number, the total *weight*. With `E = max_entries`
//! and `B` the entries' byte bound (`max_bytes` less the ghosts' share,
//! see "Memory"), an entry of `b` bytes weighs `max(b · E, B)` (both
//! divided by `gcd(B, E)` to keep the numbers small) and the capacity is
//! `B · E`. Then
//!
//! - bytes: `Σ b · E ≤ Σ weight ≤ B · E`, so `Σ b ≤ B`, and
//! - entries: `n · B ≤ Σ weight ≤ B · E`, so `n ≤ E`,
//!
//! both exactly. Each entry is charged for whichever bound it uses up
//! faster. The price is some slack: a mix of tiny and huge entries fills
//! neither bound exactly, but never less than half of both
//! (`max(a, b) ≥ (a + b) / 2`).
//!
//! # Shards
//!
//! quick_cache splits the capacity evenly over its shards, and a key's shard
//! is chosen by its hash, so a shard can fill up while others have room.
//! Shards are therefore only used for caches large enough that each holds
//! at least [`MIN_SHARD_ENTRIES`] entries (a 10,000-entry L1 has 16; any
//! cache under 256 entries has one): a one-shard cache holds exactly
//! `max_entries` small entries, a sharded one 96–99 % of them (measured from
//! 256 to 100,000 entries) before the fullest shard starts evicting. Each
//! shard gets the weight of a whole number of entries, so a sharded cache
//! has up to `shards − 1` entry slots (under 1 %) fewer than `max_entries`,
//! and as much less of the bytes. A value heavier than what one shard
//! admits (97 % of `B / shards`, all of it for a cache of a few
//! entries) is not stored at all and counted as an eviction.
//!
//! # Memory
//!
//! An entry weighs what the manager says it takes (its codec's
//! [`weigh`](crate::Codec::weigh)) plus [`SLOT_BYTES`], what quick_cache's
//! structures take per entry, so that `max_bytes` bounds memory, not just
//! values. quick_cache also keeps *ghosts*, the keys of recent evictions
//! (S3-FIFO readmits a key straight to its main queue when its ghost is
//! hit): each takes a slot but has no weight. Their number is capped so
//! that they take at most [`GHOST_SHARE_OF_BYTES`] of `max_bytes` (and at
//! most quick_cache's default of half as many as the entries), and what
//! that cap lets them take is kept out of the entries' bound: entries are
//! bound by `max_bytes` less the ghosts' share, so that entries and ghosts
//! together stay within `max_bytes`.

use crate::error::Error;

/// Most shards an L1 uses (a power of two).
const MAX_SHARDS: u64 = 16;
/// Fewest entry slots per shard; smaller caches use fewer shards (see
/// "Shards" above).
const MIN_SHARD_ENTRIES: u64 = 128;
/// Share of a shard's weight that quick_cache's "hot" (main) queue may
/// hold; an entry heavier than this share is never admitted. quick_cache's
/// default, raised to the whole shard for caches of a few entries, whose
/// smallest entry would otherwise not fit.
const HOT_ALLOCATION: f64 = 0.97;

/// What L1's own structures take per entry, the value aside: quick_cache's
/// slab slot (key, [`Slot`](super::entry::Slot), state, list links) and its
/// share of the hash table. Measured with 8-byte keys: RSS growth of
/// 1,000,000 cached products less their values' allocations
/// (`bench/memory.sh`: 75 B serving and 91 B idle on 2026-12-06, where
/// the allocator still holds what warming freed). A key's own heap bytes
/// (a `String`'s) are not counted.
pub(crate) const SLOT_BYTES: u64 = 84;
/// quick_cache's default share of ghosts: up to half as many as entries.
const GHOST_ALLOCATION: f64 = 0.5;
/// The most of `max_bytes` that ghosts (see "Memory" above) may take, and
/// so how much less of it entries may take.
const GHOST_SHARE_OF_BYTES: f64 = 0.03;

/// An entry's weight: `max(bytes · per_byte, unit)` (see "How both bounds
/// hold").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Weigh {
    /// `max_entries / gcd`.
    pub(super) per_byte: u64,
    /// `entry_bytes / gcd`: the weight of the lightest entry.
    pub(super) unit: u64,
}

impl Weigh {
    #[inline]
    pub(super) fn weight(self, bytes: u64) -> u64 {
        bytes.saturating_mul(self.per_byte).max(self.unit)
    }
}

/// How the bounds map onto quick_cache's weights and shards (see "How
/// both bounds hold" and "Shards" above).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Layout {
    pub(super) weigh: Weigh,
    /// A power of two, at most [`MAX_SHARDS`].
    pub(super) shards: u64,
    /// Entries each shard holds.
    shard_slots: u64,
    pub(super) hot_allocation: f64,
    /// Ghosts per entry slot, so that ghosts take at most
    /// [`GHOST_SHARE_OF_BYTES`] of `max_bytes`.
    pub(super) ghost_allocation: f64,
    /// The entries' byte bound: `max_bytes` less what ghosts may take.
    pub(super) entry_bytes: u64,
}

impl Layout {
    pub(super) fn new(max_entries: u64, max_bytes: u64) -> Result<Self, Error> {
        let mut shards = MAX_SHARDS;
        while shards > 1 && max_entries / shards < MIN_SHARD_ENTRIES {
            shards /= 2;
        }
        let shard_slots = max_entries / shards;
        let slots = shards * shard_slots;
        let ghost_allocation = (max_bytes as f64 * GHOST_SHARE_OF_BYTES
            / (SLOT_BYTES as f64 * slots as f64))
            .min(GHOST_ALLOCATION);
        let ghost_bytes =
            max_ghosts(shards, shard_slots, ghost_allocation).saturating_mul(SLOT_BYTES);
        let entry_bytes = max_bytes.saturating_sub(ghost_bytes).max(1);
        let common = gcd(max_entries, entry_bytes);
        let weigh = Weigh {
            per_byte: max_entries / common,
            unit: entry_bytes / common,
        };
        // Weights (up to `u32::MAX` bytes each) and the capacity in u64.
        if weigh.per_byte > u64::from(u32::MAX) || max_entries.checked_mul(weigh.unit).is_none() {
            return Err(Error::config(
                "L1 bounds too large to combine (max_entries × max_bytes)",
            ));
        }
        // quick_cache admits an entry only if it fits its hot share: a
        // shard of fewer than 1 / (1 − 0.97) ≈ 34 entries needs all of it.
        let shard_weight = shard_slots * weigh.unit;
        let hot_allocation = if hot_share(shard_weight, HOT_ALLOCATION) >= weigh.unit {
            HOT_ALLOCATION
        } else {
            1.0
        };
        Ok(Self {
            weigh,
            shards,
            shard_slots,
            hot_allocation,
            ghost_allocation,
            entry_bytes,
        })
    }

    pub(super) fn slots(&self) -> u64 {
        self.shards * self.shard_slots
    }

    /// quick_cache's weight capacity: a whole number of entries per shard.
    pub(super) fn capacity(&self) -> u64 {
        self.slots() * self.weigh.unit
    }

    /// The heaviest entry a shard admits.
    pub(super) fn max_weight(&self) -> u64 {
        hot_share(self.shard_slots * self.weigh.unit, self.hot_allocation)
    }
}

/// Bytes one slot of quick_cache's slab takes for keys `K` and values `V`:
/// its largest variant, a resident entry (the key, the value, a state byte
/// and a `u16` counter), padded to its alignment, then the slot's two
/// `u32` list links. quick_cache reports the slab's bytes
/// (`memory_used`), not how many slots it has; this turns one into the
/// other. A test holds it to quick_cache's own figure, so that a
/// quick_cache whose slots change shape fails it rather than miscounting.
pub(super) fn slab_slot_bytes<K, V>() -> usize {
    let align = align_of::<K>().max(align_of::<V>()).max(align_of::<u32>());
    let resident = (size_of::<K>() + size_of::<V>() + 3).next_multiple_of(align);
    (resident + 2 * size_of::<u32>()).next_multiple_of(align)
}

/// The most ghosts quick_cache keeps: each shard's share, rounded down.
pub(super) fn max_ghosts(shards: u64, shard_slots: u64, ghost_allocation: f64) -> u64 {
    shards.saturating_mul((shard_slots as f64 * ghost_allocation) as u64)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The hot share of a shard's weight, computed as quick_cache does.
fn hot_share(shard_weight: u64, allocation: f64) -> u64 {
    let share = (shard_weight as f64 * allocation) as u64;
    share.clamp(shard_weight.min(1), shard_weight)
}
