//! Tracing spans: each load and each Redis call is a span that names its
//! cache and level.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tiercache::{Source, TieredCache};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::support::{Item, StoreDown, builder, raw_redis, unique_prefix};

/// Every span opened: its name and its fields, `name=value` each.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut fields = String::new();
        attrs.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                let _ = write!(fields, "{}={value:?} ", field.name());
            },
        );
        let name = attrs.metadata().name().to_owned();
        self.0.lock().unwrap().push((name, fields));
    }
}

impl Spans {
    fn find(&self, name: &str, fields: &[&str]) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(n, f)| n == name && fields.iter().all(|wanted| f.contains(wanted)))
    }
}

#[tokio::test]
async fn loads_and_redis_calls_are_spans_naming_cache_and_level() {
    raw_redis().await;
    let spans = Spans::default();
    // Spans are recorded on this test's thread only (its runtime has one).
    // A second dispatcher, alive as long as ours: with only one, tracing
    // judges a callsite first reached on another test's thread by that
    // thread's (absent) subscriber and caches "never" for every thread.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let cache: TieredCache<i64, Item> = builder(&unique_prefix())
        .namespace("spans")
        .build()
        .await
        .unwrap();
    let lookup = cache
        .get_or_load(&1, || async { Ok::<_, StoreDown>(Some(Item::new(1))) })
        .await
        .unwrap();
    assert_eq!(lookup.source, Source::Loader);

    assert!(
        spans.find("load", &["cache=spans", r#"level="loader""#]),
        "no load span: {:?}",
        spans.0.lock().unwrap()
    );
    assert!(
        spans.find("redis", &["cache=spans", r#"level="l2""#, "command="]),
        "no Redis call span: {:?}",
        spans.0.lock().unwrap()
    );
}
