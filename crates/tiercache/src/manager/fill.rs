//! The manager's work behind a miss: asking L2, calling the loader, and
//! writing values back to the levels (encoding, compression, TTL jitter).
//!
//! Everything here absorbs cache-level failures: a value that cannot be
//! encoded is kept in L1 only, one that cannot be decoded is a miss.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BLOCKING_FROM, CacheKey, DECODE_ERRORS, ENTRY_OVERHEAD, FlightResult, Inner, L2_HITS,
    L2_MISSES, LOADER_ERRORS, LOADS, Lookup, NEGATIVE_HITS, Shared, Source,
};
use crate::remote::codec::{self, Codec, Opened};

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(super) fn redis_key(&self, key: &K) -> String {
        use std::fmt::Write as _;
        let mut redis_key = self.settings.key_prefix.clone();
        write!(redis_key, "{key}").expect("writing to a String cannot fail");
        redis_key
    }

    /// The leader's half of a miss: L2, then the loader, filling on the way back.
    pub(super) async fn fill<F, Fut, E>(&self, key: &K, loader: F) -> FlightResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: StdError + Send + Sync + 'static,
    {
        // A flight that finished between our L1 miss and our joining may
        // have filled L1 already.
        if let Some(value) = self.l1.peek(key) {
            return Ok((value, Source::L1));
        }
        if let Some(l2) = &self.l2 {
            let found = match l2.get(&self.redis_key(key)).await {
                Some(Some(stored)) => self.decode(stored).await,
                Some(None) | None => None,
            };
            if let Some((value, weight)) = found {
                self.record_l2_hit(&value);
                self.l1
                    .insert(key, value.clone(), weight, self.l1_ttl_for(&value));
                return Ok((value, Source::L2));
            }
            self.counters.incr(L2_MISSES);
        }
        self.counters.incr(LOADS);
        match loader().await {
            Ok(value) => {
                let value = value.map(Arc::new);
                self.store(key, value.clone()).await;
                Ok((value, Source::Loader))
            }
            Err(error) => {
                self.counters.incr(LOADER_ERRORS);
                Err(Arc::new(error))
            }
        }
    }

    /// One `MGET` for `missing`; answers what it can and returns the rest.
    pub(super) async fn fill_many_from_l2<'k>(
        &self,
        missing: Vec<&'k K>,
        answers: &mut HashMap<&'k K, Lookup<V>>,
    ) -> Vec<&'k K> {
        let Some(l2) = &self.l2 else {
            return missing;
        };
        let redis_keys: Vec<String> = missing.iter().map(|k| self.redis_key(k)).collect();
        let Some(stored) = l2.get_many(&redis_keys).await else {
            self.counters.add(L2_MISSES, missing.len() as u64);
            return missing;
        };
        let mut still_missing = Vec::new();
        for (key, stored) in missing.into_iter().zip(stored) {
            let found = match stored {
                Some(stored) => self.decode(stored).await,
                None => None,
            };
            match found {
                Some((value, weight)) => {
                    self.record_l2_hit(&value);
                    self.l1
                        .insert(key, value.clone(), weight, self.l1_ttl_for(&value));
                    answers.insert(
                        key,
                        Lookup {
                            value,
                            source: Source::L2,
                        },
                    );
                }
                None => {
                    self.counters.incr(L2_MISSES);
                    still_missing.push(key);
                }
            }
        }
        still_missing
    }

    fn record_l2_hit(&self, value: &Shared<V>) {
        self.counters.incr(L2_HITS);
        if value.is_none() {
            self.counters.incr(NEGATIVE_HITS);
        }
    }

    /// Stores one value (or negative entry) in Redis, then L1.
    pub(super) async fn store(&self, key: &K, value: Shared<V>) {
        let (stored, weight) = self.encode(value.as_ref()).await;
        if let (Some(l2), Some(stored)) = (&self.l2, stored) {
            let ttl = self.l2_ttl_for(&value);
            if !ttl.is_zero() {
                l2.set(&self.redis_key(key), &stored, ttl).await;
            }
        }
        let ttl = self.l1_ttl_for(&value);
        self.l1.insert(key, value, weight, ttl);
    }

    /// Stores many values in Redis (one pipeline), then L1. Negative entries
    /// are stored only when `negatives` is set.
    pub(super) async fn store_many(&self, fills: Vec<(K, Shared<V>)>, negatives: bool) {
        let mut l2_items = Vec::with_capacity(fills.len());
        let mut l1_items = Vec::with_capacity(fills.len());
        for (key, value) in fills {
            if value.is_none() && !negatives {
                continue;
            }
            let (stored, weight) = self.encode(value.as_ref()).await;
            let ttl = self.l2_ttl_for(&value);
            if let Some(stored) = stored.filter(|_| self.l2.is_some() && !ttl.is_zero()) {
                l2_items.push((self.redis_key(&key), stored, ttl));
            }
            l1_items.push((key, value, weight));
        }
        if let Some(l2) = &self.l2 {
            l2.set_many(&l2_items).await;
        }
        for (key, value, weight) in l1_items {
            let ttl = self.l1_ttl_for(&value);
            self.l1.insert(&key, value, weight, ttl);
        }
    }

    /// The stored form of a value (`None` if it cannot be encoded) and its L1 weight.
    async fn encode(&self, value: Option<&Arc<V>>) -> (Option<Vec<u8>>, usize) {
        let Some(value) = value else {
            return (Some(Vec::new()), ENTRY_OVERHEAD);
        };
        let encoded = match self.codec.encode(value) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(%error, "value could not be encoded; cached in L1 only");
                return (None, ENTRY_OVERHEAD + std::mem::size_of::<V>());
            }
        };
        let weight = ENTRY_OVERHEAD + encoded.len();
        if self.l2.is_none() {
            return (None, weight);
        }
        let threshold = self.settings.compression_threshold;
        let sealed = if encoded.len() >= BLOCKING_FROM && threshold.is_some() {
            tokio::task::spawn_blocking(move || codec::seal(encoded, threshold))
                .await
                .unwrap_or_else(|_| Err(codec::CodecError::new("compression task failed")))
        } else {
            codec::seal(encoded, threshold)
        };
        match sealed {
            Ok(sealed) => (Some(sealed), weight),
            Err(error) => {
                tracing::warn!(%error, "value could not be sealed; cached in L1 only");
                (None, weight)
            }
        }
    }

    /// Decodes a stored value and weighs it; `None` (a miss) if it is foreign
    /// or corrupt.
    async fn decode(&self, stored: Vec<u8>) -> Option<(Shared<V>, usize)> {
        let decoded = if stored.len() >= BLOCKING_FROM {
            let codec = Arc::clone(&self.codec);
            tokio::task::spawn_blocking(move || decode_with(codec.as_ref(), &stored))
                .await
                .unwrap_or_else(|_| Err(codec::CodecError::new("decoding task failed")))
        } else {
            decode_with(self.codec.as_ref(), &stored)
        };
        match decoded {
            Ok(found) => Some(found),
            Err(error) => {
                self.counters.incr(DECODE_ERRORS);
                tracing::debug!(%error, "undecodable L2 value treated as a miss");
                None
            }
        }
    }

    fn l1_ttl_for(&self, value: &Shared<V>) -> Duration {
        let ttl = if value.is_some() {
            self.settings.l1_ttl
        } else {
            self.settings.negative_ttl.min(self.settings.l1_ttl)
        };
        self.jitter(ttl)
    }

    fn l2_ttl_for(&self, value: &Shared<V>) -> Duration {
        let ttl = if value.is_some() {
            self.settings.l2_ttl
        } else {
            self.settings.negative_ttl.min(self.settings.l2_ttl)
        };
        self.jitter(ttl)
    }

    /// Shortens `ttl` by a random fraction up to the configured jitter; never
    /// lengthens it, so the configured TTL stays a bound on staleness.
    fn jitter(&self, ttl: Duration) -> Duration {
        jitter(ttl, self.settings.ttl_jitter, rand::random::<f64>())
    }
}

fn jitter(ttl: Duration, fraction: f64, unit_random: f64) -> Duration {
    if fraction <= 0.0 || ttl.is_zero() {
        return ttl;
    }
    ttl.mul_f64(1.0 - fraction * unit_random)
}

fn decode_with<V: 'static>(
    codec: &dyn Codec<V>,
    stored: &[u8],
) -> Result<(Shared<V>, usize), codec::CodecError> {
    match codec::open(stored)? {
        Opened::Absent => Ok((None, ENTRY_OVERHEAD)),
        Opened::Value(bytes) => {
            let value = codec.decode(&bytes)?;
            Ok((Some(Arc::new(value)), ENTRY_OVERHEAD + bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::codec::{JsonCodec, PostcardCodec};

    #[test]
    fn jitter_only_shortens_within_the_fraction() {
        let ttl = Duration::from_secs(100);
        assert_eq!(jitter(ttl, 0.1, 0.0), ttl);
        assert_eq!(jitter(ttl, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(jitter(ttl, 0.0, 0.7), ttl);
        assert_eq!(jitter(Duration::ZERO, 0.5, 0.7), Duration::ZERO);
        let mid = jitter(ttl, 0.2, 0.5);
        assert_eq!(mid, Duration::from_secs(90));
    }

    #[test]
    fn negative_marker_decodes_as_absent_with_any_codec() {
        let json: &dyn Codec<String> = &JsonCodec;
        let postcard: &dyn Codec<String> = &PostcardCodec;
        assert_eq!(decode_with(json, b"").unwrap().0, None);
        assert_eq!(decode_with(postcard, b"").unwrap().0, None);
    }

    #[test]
    fn decoded_values_are_weighed_by_their_encoded_size() {
        let codec: &dyn Codec<String> = &JsonCodec;
        let (value, weight) = decode_with(codec, br#""hello""#).unwrap();
        assert_eq!(value.as_deref().map(String::as_str), Some("hello"));
        assert_eq!(weight, ENTRY_OVERHEAD + 7);
    }
}
