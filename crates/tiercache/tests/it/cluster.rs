//! The Redis level against a real Redis Cluster (three primaries, each with
//! a replica): every multi-key operation crosses hash slots, since keys
//! carry no hash tag.

use std::time::Duration;

use testkit::{PrivateCluster, wait_for};
use tiercache::{BusState, BusTracking, L2State, Source};

use crate::support::{self, Item, found, found_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_single_and_cross_slot_operations() {
    let cluster = PrivateCluster::start().await;
    let seeds = cluster.seeds();
    let url = cluster.cluster_url();
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(url.clone())
            .build()
    };
    let (writer, reader) = (build().await.unwrap(), build().await.unwrap());
    assert_eq!(writer.l2_state(), L2State::Up);

    // Batch SETs across slots (warm) reach every node.
    let warmed = writer
        .warm((1..=100).collect(), 50, |keys| async move {
            found_all(&keys, &[])
        })
        .await
        .unwrap();
    assert_eq!(warmed, 100);
    let primaries = cluster.primaries().await;
    let mut per_node = Vec::new();
    for &index in &primaries {
        let mut node = cluster.node(index).await;
        per_node.push(
            support::scan_keys(&mut node, &format!("{prefix}*"))
                .await
                .len(),
        );
    }
    assert_eq!(per_node.iter().sum::<usize>(), 100);
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys spread over all nodes: {per_node:?}"
    );

    // Single GET and a cross-slot MGET from another instance.
    let one = reader.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_eq!(one.source, Source::L2);
    let keys: Vec<i64> = (2..=60).chain([1_000, 1_001]).collect();
    let asked = std::sync::Mutex::new(Vec::new());
    let many = reader
        .get_many_or_load(&keys, |missing| {
            asked.lock().unwrap().extend(missing.iter().copied());
            async move { found_all(&missing, &[]) }
        })
        .await
        .unwrap();
    let mut asked = asked.into_inner().unwrap();
    asked.sort_unstable();
    assert_eq!(asked, vec![1_000, 1_001]);
    for (key, lookup) in &many {
        let expected = if *key >= 1_000 {
            Source::Loader
        } else {
            Source::L2
        };
        assert_eq!(lookup.source, expected, "key {key}");
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(*key)));
    }

    // Cross-slot UNLINK.
    writer.invalidate_many(&(1..=10).collect::<Vec<_>>()).await;
    reader.clear_local();
    let reloaded = reader.get_or_load(&5, || async { found(5) }).await.unwrap();
    let kept = reader
        .get_or_load(&50, || async { found(50) })
        .await
        .unwrap();
    assert_eq!((reloaded.source, kept.source), (Source::Loader, Source::L2));

    // The bus: a reader subscribed on another node than the first seed
    // still hears the writer (classic PUBLISH reaches every node).
    let reversed: Vec<String> = seeds.iter().rev().cloned().collect();
    let far_reader = support::builder::<Item>(&prefix)
        .redis_url(format!("redis+cluster://{}", reversed.join(",")))
        .build()
        .await
        .unwrap();
    for cache in [&reader, &far_reader] {
        assert_eq!(cache.bus_state(), BusState::Subscribed);
        let _ = cache
            .get_or_load(&70, || async { found(70) })
            .await
            .unwrap();
        let cached = cache
            .get_or_load(&70, || async { found(70) })
            .await
            .unwrap();
        assert_eq!(cached.source, Source::L1);
    }
    writer.invalidate(&70).await;
    for cache in [&reader, &far_reader] {
        wait_for(
            Duration::from_secs(1),
            "a reader to drop key 70",
            || async {
                let lookup = cache
                    .get_or_load(&70, || async { found(70) })
                    .await
                    .unwrap();
                lookup.source != Source::L1
            },
        )
        .await;
    }

    // Tags: a generation moved by the writer reaches a reader that knew
    // the old one (the bus) and one that never asked (Redis).
    let before = reader.tag_generation("tools").await;
    writer.invalidate_tags(&["tools"]).await;
    let moved = writer.tag_generation("tools").await;
    assert!(moved > before, "{moved} > {before}");
    wait_for(
        Duration::from_secs(1),
        "the reader to learn the new tag generation",
        || async { reader.tag_generation("tools").await == moved },
    )
    .await;
    assert_eq!(far_reader.tag_generation("tools").await, moved);

    // Clear scans every primary.
    writer.clear().await;
    for &index in &primaries {
        let mut node = cluster.node(index).await;
        let left = support::scan_keys(&mut node, &format!("{prefix}*")).await;
        assert!(left.is_empty(), "node {index} kept {left:?}");
    }
    let stats = writer.stats();
    assert_eq!(stats.l2.errors, 0, "{stats:?}");
    assert_eq!(reader.stats().l2.errors, 0);

    redis_rs_splits_mget_per_slot_but_not_pipelines(&cluster, &prefix).await;
}

/// The redis-rs 1.8 behaviour the cluster support relies on (see
/// `remote/topology.rs`): a cross-slot MGET is split and reassembled in key
/// order, a cross-slot pipeline is refused.
async fn redis_rs_splits_mget_per_slot_but_not_pipelines(cluster: &PrivateCluster, prefix: &str) {
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("{prefix}raw:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let values: Vec<Option<usize>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(values, (0..20).map(Some).collect::<Vec<_>>());

    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("SET").arg(key).arg("x").ignore();
    }
    let error = pipe.exec_async(&mut conn).await.unwrap_err();
    assert_eq!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
    );
}

/// `SET` and `DEL` by another client, on keys of every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_in_a_cluster_by_others_leave_every_l1() {
    let cluster = PrivateCluster::start().await;
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(cluster.urls().join(","))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    // Keys on every primary: client tracking is per node.
    let ids: Vec<i64> = (1..=12).collect();
    for cache in [&a, &b] {
        assert_eq!(cache.stats().bus.tracking, BusTracking::On);
        for &id in &ids {
            wait_for(
                Duration::from_secs(5),
                "the key to settle in L1",
                || async {
                    let lookup = cache.get_or_load(&id, || async move { found(id) }).await;
                    lookup.unwrap().source == Source::L1
                },
            )
            .await;
        }
    }

    let mut outside = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    // Even ids are set to a new value, odd ones deleted (read back: reloaded).
    for &id in &ids {
        let cmd = if id % 2 == 0 {
            let value =
                serde_json::to_string(&Item::with_name(id, format!("outside {id}"))).unwrap();
            let mut set = redis::cmd("SET");
            set.arg(a.redis_key(&id)).arg(value);
            set
        } else {
            let mut del = redis::cmd("DEL");
            del.arg(a.redis_key(&id));
            del
        };
        let _: redis::Value = cmd.query_async(&mut outside).await.unwrap();
    }
    let expected = |id: i64| {
        if id % 2 == 0 {
            format!("outside {id}")
        } else {
            "reloaded".to_owned()
        }
    };

    for cache in [&a, &b] {
        wait_for(
            Duration::from_secs(1),
            "the outside writes to reach L1",
            || async {
                for &id in &ids {
                    let reload = || async move {
                        Ok::<_, support::StoreDown>(Some(Item::with_name(
                            id,
                            "reloaded".to_owned(),
                        )))
                    };
                    let lookup = cache.get_or_load(&id, reload).await.unwrap();
                    if lookup.value.map(|item| item.name.clone()) != Some(expected(id)) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        assert!(cache.stats().bus.tracked_keys >= ids.len() as u64);
    }
}

/// Slots moved between primaries (`redis-cli --cluster reshard`: keys
/// migrate one by one, answering `ASK` and then `MOVED`) while two tasks
/// read through L2: every read answers the right value, and afterwards
/// the moved keys are read from L2 again, not reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_slots_move_between_primaries() {
    let cluster = PrivateCluster::start().await;
    let prefix = support::unique_prefix();
    let cache = support::builder::<Item>(&prefix)
        .redis_url(cluster.cluster_url())
        // Every read goes to L2.
        .l1_max_entries(1)
        .build()
        .await
        .unwrap();
    let keys: Vec<i64> = (1..=300).collect();
    cache
        .warm(
            keys.clone(),
            100,
            |keys| async move { found_all(&keys, &[]) },
        )
        .await
        .unwrap();
    let primaries = cluster.primaries().await;
    let id_of = |index: usize| {
        let port = cluster.seeds()[index]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "cluster", "myid"])
            .output()
            .expect("redis-cli runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (from, to) = (id_of(primaries[0]), id_of(primaries[1]));
    let seed = cluster.seeds()[primaries[0]].clone();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, keys, done) = (cache.clone(), keys.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for &key in &keys {
                        let lookup = cache.get_or_load(&key, || async move { found(key) }).await;
                        assert_eq!(lookup.unwrap().value.as_deref(), Some(&Item::new(key)));
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let resharded = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
            ])
            .args([
                "--cluster-slots",
                "2000",
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs")
    })
    .await
    .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader
            .await
            .expect("no read failed or answered a wrong value");
    }

    assert!(resharded.success(), "redis-cli --cluster reshard failed");
    assert!(reads > 0);
    wait_for(
        Duration::from_secs(5),
        "every key answered by the cache again",
        || async {
            let mut all = true;
            for &key in &keys {
                let lookup = cache
                    .get_or_load(&key, || async move { found(key) })
                    .await
                    .unwrap();
                // L2, or the one key the one-entry L1 holds.
                all &= lookup.source != Source::Loader;
            }
            all
        },
    )
    .await;
}

/// A URL whose topology is not the server's is refused at build, in one
/// line saying which way round it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_the_wrong_topology_is_a_config_error() {
    support::raw_redis().await;
    let cluster = PrivateCluster::start().await;
    let single_as_cluster = format!(
        "redis+cluster://{}",
        testkit::redis_url().replace("redis://", "")
    );
    let cluster_node_as_single = cluster.urls()[0].clone();

    for (url, says) in [
        (single_as_cluster, "not in cluster mode"),
        (cluster_node_as_single, "is a Redis Cluster node"),
    ] {
        let error = support::builder::<Item>(&support::unique_prefix())
            .redis_url(url.clone())
            .build()
            .await
            .unwrap_err();
        assert!(error.is_config(), "{url}: {error}");
        assert!(error.to_string().contains(says), "{url}: {error}");
    }
}
