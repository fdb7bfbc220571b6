//! The `Store` contract, written once over `&dyn Store` and run on both backends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use catalog::domain::{Category, Description, NewProduct, Price, ProductName, ProductPatch};
use catalog::metrics::Metrics;
use catalog::store::{BatchedReads, Expected, PageRequest, Store, StoreError};
use futures_util::future::join_all;

use crate::helpers::{Backend, TestDb, both_stores};

both_stores!(
    concurrent_updates_each_get_their_own_version,
    decimal_prices_round_trip_exactly,
    keyset_paging_covers_every_row_exactly_once,
    batch_lookup_skips_missing_ids,
    batched_reads_answer_every_reader_of_a_repeated_id,
    conditional_writes_check_the_version,
    migrations_are_idempotent,
);

fn new_product(name: &str, category: &str, cents: i64) -> NewProduct {
    NewProduct {
        name: ProductName::parse(name).unwrap(),
        description: Description::parse("").unwrap(),
        price: Price::from_cents(cents).unwrap(),
        category: Category::parse(category).unwrap(),
        in_stock: true,
    }
}

async fn concurrent_updates_each_get_their_own_version(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let product = store
        .create(&new_product("Racy", "tools", 100))
        .await
        .unwrap();
    const WRITERS: i64 = 20;

    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let patch = ProductPatch {
                    price: Price::from_cents(200 + i),
                    ..ProductPatch::default()
                };
                store
                    .patch(product.id, &patch, Expected::Any)
                    .await
                    .unwrap()
                    .product
                    .version
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }

    versions.sort_unstable();
    assert_eq!(versions, (2..=WRITERS + 1).collect::<Vec<_>>());
    let stored = store.get(product.id).await.unwrap().unwrap();
    assert_eq!(stored.version, WRITERS + 1);
}

async fn decimal_prices_round_trip_exactly(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;

    for cents in [1999, 1, 0, 10, 99_999_999_999, 100_000_000_000] {
        let created = store
            .create(&new_product("Priced", "tools", cents))
            .await
            .unwrap();
        let read = store.get(created.id).await.unwrap().unwrap();
        assert_eq!(read.price.cents(), cents);
        assert_eq!(read, created);
    }
    let created = store
        .create(&new_product("Nineteen", "tools", 1999))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&created).unwrap()["price"],
        serde_json::json!(19.99)
    );
    assert_eq!(created.price.to_string(), "19.99");
}

async fn keyset_paging_covers_every_row_exactly_once(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let batch: Vec<NewProduct> = (0..250)
        .map(|i| new_product(&format!("P{i}"), if i % 3 == 0 { "a" } else { "b" }, i))
        .collect();
    assert_eq!(store.create_many(&batch).await.unwrap(), 250);

    for category in [None, Some("a".to_owned())] {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .list(&PageRequest {
                    category: category.clone(),
                    after,
                    limit: 7,
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            seen.extend(page.iter().map(|p| p.id));
        }
        let expected = if category.is_some() { 84 } else { 250 };
        assert_eq!(seen.len(), expected);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "ordered by id");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), expected);
    }
    assert_eq!(store.count().await.unwrap(), 250);
}

async fn batch_lookup_skips_missing_ids(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let a = store.create(&new_product("A", "tools", 1)).await.unwrap();
    let b = store.create(&new_product("B", "tools", 2)).await.unwrap();

    let mut found = store.get_many(&[b.id, 424_242, a.id]).await.unwrap();
    let none = store.get_many(&[]).await.unwrap();

    found.sort_by_key(|p| p.id);
    assert_eq!(found, vec![a, b]);
    assert!(none.is_empty());
}

async fn batched_reads_answer_every_reader_of_a_repeated_id(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let a = store.create(&new_product("A", "tools", 1)).await.unwrap();
    let b = store.create(&new_product("B", "tools", 2)).await.unwrap();
    let metrics = Metrics::start();
    let batched = BatchedReads::new(Arc::clone(&store), 1, Duration::from_secs(30), &metrics);
    let ids = [a.id, a.id, 424_242, b.id, a.id, 424_242, b.id];

    // Polled together on this one-thread runtime: all seven are queued
    // before the lane's task runs, and go out as one batch with repeats.
    let answers = join_all(ids.iter().map(|id| batched.get(*id))).await;

    for (id, answer) in ids.iter().zip(answers) {
        assert_eq!(answer.unwrap(), store.get(*id).await.unwrap(), "{id}");
    }
    let text = metrics.render();
    assert!(text.contains("db_read_batches_total 1\n"), "{text}");
}

async fn conditional_writes_check_the_version(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let product = store.create(&new_product("C", "tools", 1)).await.unwrap();
    let replacement = new_product("D", "garden", 2);

    let stale = store
        .replace(product.id, &replacement, Expected::Version(7))
        .await;
    let current = store
        .replace(product.id, &replacement, Expected::Version(1))
        .await
        .unwrap();
    let absent = store.replace(999_999, &replacement, Expected::Any).await;
    let stale_delete = store.delete(product.id, Expected::Version(1)).await;

    assert!(matches!(stale, Err(StoreError::VersionConflict)));
    assert_eq!(current.product.version, 2);
    assert_eq!(current.product.name, "D");
    assert_eq!(current.previous_category, "tools");
    assert!(matches!(absent, Err(StoreError::NotFound)));
    assert!(matches!(stale_delete, Err(StoreError::VersionConflict)));
    let deleted = store
        .delete(product.id, Expected::Version(2))
        .await
        .unwrap();
    assert_eq!((deleted.version, deleted.category.as_str()), (2, "garden"));
    assert!(matches!(
        store.delete(product.id, Expected::Any).await,
        Err(StoreError::NotFound)
    ));
}

async fn migrations_are_idempotent(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;

    store.migrate().await.unwrap();
    store.ping().await.unwrap();

    assert_eq!(store.count().await.unwrap(), 0);
}
