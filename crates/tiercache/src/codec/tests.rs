//! Unit and fuzz tests of the stored format: round trips, markers, corrupt input.

use super::*;
use serde::Deserialize;

#[test]
fn tombstones_tell_their_version() {
    assert_eq!(tombstone_version(&tombstone(42)), Some(42));
    assert_eq!(tombstone_version(&deleted(42)), None);
    assert_eq!(tombstone_version(b"{}"), None);
    assert_eq!(tombstone_version(b""), None);
}
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    price: f64,
    tags: Vec<String>,
    note: Option<String>,
}

fn product(name_len: usize) -> Product {
    Product {
        id: -42,
        name: "x".repeat(name_len),
        price: 19.99,
        tags: vec!["a".into(), "ünïcödé".into()],
        note: None,
    }
}

fn round_trip<C: Codec<Product>>(codec: &C, compress_from: Option<usize>, value: &Product) {
    let sealed = seal(codec.encode(value).unwrap(), compress_from).unwrap();
    let Opened::Value(bytes) = open(&sealed).unwrap() else {
        panic!("a value opened as a negative entry");
    };
    assert_eq!(&codec.decode(&bytes).unwrap(), value);
}

#[test]
fn every_codec_round_trips_with_and_without_compression() {
    let values = [product(0), product(10), product(5_000), product(200_000)];
    for value in &values {
        for compress_from in [None, Some(0), Some(1), Some(1_024), Some(usize::MAX)] {
            round_trip(&JsonCodec, compress_from, value);
            round_trip(&PostcardCodec, compress_from, value);
        }
    }
}

#[test]
fn versioned_values_and_tombstones_open_as_values_and_misses() {
    let value = product(3);
    for compress_from in [None, Some(0)] {
        for codec in [&JsonCodec as &dyn Codec<Product>, &PostcardCodec] {
            let sealed = seal(codec.encode(&value).unwrap(), compress_from).unwrap();
            let marked = with_version(sealed.clone(), 17);
            if sealed[0] < 0x09 {
                assert!(marked.starts_with(b"\x0317:"), "{marked:?}");
            } else {
                assert_eq!(marked, sealed, "JSON text stays plain");
            }
            let Opened::Value(bytes) = open(&marked).unwrap() else {
                panic!("a versioned value did not open as a value");
            };
            assert_eq!(codec.decode(&bytes).unwrap(), value);
        }
    }
    assert_eq!(with_version(Vec::new(), 3), Vec::<u8>::new());
    assert_eq!(open(&tombstone(9)).unwrap(), Opened::Tombstone);
    assert_eq!(open(&deleted(9)).unwrap(), Opened::Deleted);
    assert_eq!(tombstone(9), b"\x049");
    assert!(open(b"\x0312").is_err());
    assert!(open(b"\x0312:").is_err());
    assert!(open(b"\x0312:\x049").is_err());
}

#[test]
fn json_codec_stores_plain_json() {
    let encoded = JsonCodec.encode(&product(3)).unwrap();
    let sealed = seal(encoded, None).unwrap();
    let text = std::str::from_utf8(&sealed).unwrap();
    assert!(text.starts_with(r#"{"id":-42,"name":"xxx""#), "{text}");
}

#[test]
fn large_values_are_compressed_and_marked() {
    let encoded = JsonCodec.encode(&product(10_000)).unwrap();
    let plain_len = encoded.len();
    let sealed = seal(encoded, Some(1_024)).unwrap();
    assert_eq!(sealed[0], LZ4_MARKER);
    assert!(sealed.len() < plain_len / 10);
}

#[test]
fn small_or_incompressible_values_stay_plain() {
    let small = seal(b"{\"a\":1}".to_vec(), Some(1_024)).unwrap();
    assert_eq!(small, b"{\"a\":1}");
    let noise: Vec<u8> = (0..4_096u32)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap())
        .map(|b| b.max(0x20))
        .collect();
    let sealed = seal(noise.clone(), Some(16)).unwrap();
    assert!(sealed == noise || sealed[0] == LZ4_MARKER);
}

#[test]
fn markers_never_start_json() {
    let samples: Vec<Vec<u8>> = vec![
        JsonCodec.encode(&serde_json::json!({"a": 1})).unwrap(),
        JsonCodec.encode(&serde_json::json!([1, 2])).unwrap(),
        JsonCodec.encode(&serde_json::json!("s")).unwrap(),
        JsonCodec.encode(&serde_json::json!(-1)).unwrap(),
        JsonCodec.encode(&serde_json::json!(null)).unwrap(),
        JsonCodec.encode(&serde_json::json!(true)).unwrap(),
    ];
    for sample in samples {
        assert!(sample[0] > 0x08, "{sample:?}");
    }
}

#[test]
fn empty_string_is_the_negative_marker() {
    assert_eq!(open(b"").unwrap(), Opened::Absent);
}

#[test]
fn ambiguous_codec_output_is_refused() {
    assert!(seal(Vec::new(), None).is_err());
    assert!(seal(vec![LZ4_MARKER, 1, 2], None).is_err());
}

#[test]
fn foreign_and_corrupt_values_are_errors_not_panics() {
    let json = JsonCodec.encode(&product(3)).unwrap();
    let postcard = PostcardCodec.encode(&product(3)).unwrap();
    let compressed = seal(JsonCodec.encode(&product(5_000)).unwrap(), Some(1)).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("json read as postcard", json.clone()),
        ("postcard read as json", postcard.clone()),
        (
            "truncated postcard",
            postcard[..postcard.len() / 2].to_vec(),
        ),
        (
            "postcard with trailing bytes",
            [postcard.clone(), vec![0]].concat(),
        ),
        ("plain text", b"hello world".to_vec()),
        ("truncated json", json[..json.len() - 1].to_vec()),
        ("lone marker", vec![POSTCARD_MARKER]),
        (
            "huge varint length",
            vec![POSTCARD_MARKER, 0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
        ("invalid utf-8", vec![0xff, 0xfe, 0xfd]),
    ];
    for (what, bytes) in &cases {
        let Ok(Opened::Value(opened)) = open(bytes) else {
            panic!("{what}: should open as a plain value");
        };
        let as_json: Result<Product, _> = JsonCodec.decode(&opened);
        let as_postcard: Result<Product, _> = PostcardCodec.decode(&opened);
        let expected_ok = match *what {
            "json read as postcard" => (true, false),
            "postcard read as json" => (false, true),
            _ => (false, false),
        };
        assert_eq!(
            (as_json.is_ok(), as_postcard.is_ok()),
            expected_ok,
            "{what}"
        );
    }

    let envelopes: Vec<(&str, Vec<u8>)> = vec![
        ("lz4 marker only", vec![LZ4_MARKER]),
        ("lz4 short header", vec![LZ4_MARKER, 1, 0]),
        ("lz4 zero length", vec![LZ4_MARKER, 0, 0, 0, 0, 1]),
        (
            "lz4 absurd length",
            vec![LZ4_MARKER, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        (
            "lz4 truncated block",
            compressed[..compressed.len() / 2].to_vec(),
        ),
        (
            "lz4 garbage block",
            [&compressed[..5], &[0xff; 64][..]].concat(),
        ),
    ];
    for (what, bytes) in &envelopes {
        assert!(open(bytes).is_err(), "{what}");
    }
}

#[test]
fn every_prefix_of_a_valid_value_fails_cleanly() {
    let values: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        (
            "json",
            seal(JsonCodec.encode(&product(300)).unwrap(), None).unwrap(),
        ),
        (
            "postcard",
            seal(PostcardCodec.encode(&product(300)).unwrap(), None).unwrap(),
        ),
        (
            "lz4",
            seal(JsonCodec.encode(&product(3_000)).unwrap(), Some(1)).unwrap(),
        ),
    ]);
    for (what, full) in &values {
        for cut in 1..full.len() {
            let decoded = open(&full[..cut]).ok().and_then(|opened| match opened {
                Opened::Absent | Opened::Tombstone | Opened::Deleted => None,
                Opened::Value(b) => {
                    let json: Option<Product> = JsonCodec.decode(&b).ok();
                    let postcard: Option<Product> = PostcardCodec.decode(&b).ok();
                    json.or(postcard)
                }
            });
            assert!(decoded.is_none(), "{what} cut at {cut} decoded");
        }
    }
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(testkit::fuzz_config())]

        /// Whatever Redis holds, opening and decoding it is a value or
        /// an error, never a panic; a value that decodes as JSON
        /// survives sealing and opening again unchanged.
        #[test]
        fn stored_bytes_open_and_decode_or_fail_cleanly(stored in testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "codec")) {
            let Ok(Opened::Value(bytes)) = open(&stored) else {
                return Ok(());
            };
            let _ = <PostcardCodec as Codec<Product>>::decode(&PostcardCodec, &bytes);
            if let Ok(value) = <JsonCodec as Codec<serde_json::Value>>::decode(&JsonCodec, &bytes) {
                let encoded = JsonCodec.encode(&value).unwrap();
                for compress_from in [None, Some(1)] {
                    let Ok(sealed) = seal(encoded.clone(), compress_from) else {
                        continue; // a JSON text starting with a reserved byte
                    };
                    let Opened::Value(again) = open(&sealed).unwrap() else {
                        panic!("a sealed value opened as a marker");
                    };
                    let decoded: serde_json::Value = JsonCodec.decode(&again).unwrap();
                    prop_assert_eq!(&decoded, &value);
                }
            }
        }

        /// Any value of the test type round-trips through both codecs,
        /// compressed or not, versioned or not.
        #[test]
        fn any_value_round_trips(
            id in any::<i64>(),
            name in any::<String>(),
            tags in prop::collection::vec(any::<String>(), 0..4),
            note in any::<Option<String>>(),
            version in any::<u64>(),
            compress_from in prop::option::of(0usize..64),
        ) {
            let value = Product { id, name, price: 19.99, tags, note };
            for codec in [&JsonCodec as &dyn Codec<Product>, &PostcardCodec] {
                let sealed = seal(codec.encode(&value).unwrap(), compress_from).unwrap();
                let stored = with_version(sealed, version);
                let Opened::Value(bytes) = open(&stored).unwrap() else {
                    panic!("a value opened as a marker");
                };
                prop_assert_eq!(&codec.decode(&bytes).unwrap(), &value);
            }
        }
    }
}
