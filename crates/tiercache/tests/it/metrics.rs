//! The `metrics` feature: the cache's series in a real Prometheus
//! exporter, with Redis on.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use tiercache::{Source, TieredCache};

use crate::support::{Item, StoreDown, builder, raw_redis, unique_prefix};

/// The value of `series` (name with labels) in an exposition `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn the_cache_records_its_series_into_the_given_recorder() {
    raw_redis().await;
    let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
    let handle = recorder.handle();
    let cache: TieredCache<i64, Item> = builder(&unique_prefix())
        .metrics_recorder(Arc::clone(&recorder) as Arc<dyn metrics::Recorder + Send + Sync>)
        .metrics_labels([("cache", "items")])
        .build()
        .await
        .unwrap();
    for expected in [Source::Loader, Source::L1, Source::L1] {
        let lookup = cache
            .get_or_load(&1, || async { Ok::<_, StoreDown>(Some(Item::new(1))) })
            .await
            .unwrap();
        assert_eq!(lookup.source, expected);
    }
    cache.record_metrics();
    let text = handle.render();

    assert_eq!(
        sample(&text, r#"cache_hits_total{cache="items",cache_type="l1"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"cache_misses_total{cache="items",cache_type="l2"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"cache_loader_loads_total{cache="items"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"cache_l2_state{cache="items",state="up"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"cache_entries{cache="items",cache_type="l1"}"#),
        1.0
    );
    // Recorded live: one loader call, and the Redis calls of the miss
    // (a GET, then the fill's SET) at least.
    assert_eq!(
        sample(
            &text,
            r#"cache_loader_duration_seconds_count{cache="items"}"#
        ),
        1.0
    );
    assert!(
        sample(&text, r#"cache_l2_duration_seconds_count{cache="items"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        text.contains("# HELP cache_hits_total "),
        "families are described:\n{text}"
    );
}
