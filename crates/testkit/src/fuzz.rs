//! Fuzzing on a stable toolchain.
//!
//! `cargo fuzz` needs a nightly compiler, which this project's toolchain is
//! not, so each decoder is fuzzed by a proptest property instead: inputs are
//! the files of a committed corpus (`<crate>/fuzz/corpus/<target>/`),
//! mutated byte by byte, or random bytes. A property asserts what must hold
//! for every input (no panic, and whatever the decoder promises), and a
//! failure is shrunk and its seed saved under `proptest-regressions/`, to be
//! committed with the fix. `FUZZ_CASES` sets the cases per target (256 by
//! default, the short run `cargo test` does).

use std::path::Path;

use proptest::prelude::*;

/// Cases each fuzz target runs: `FUZZ_CASES`, else 256.
pub fn fuzz_cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

/// A proptest configuration for a fuzz target.
pub fn fuzz_config() -> ProptestConfig {
    ProptestConfig::with_cases(fuzz_cases())
}

/// Every file of the corpus directory `dir`.
///
/// # Panics
/// If the directory cannot be read or holds no file: a fuzz target without
/// its corpus would only ever see random bytes.
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    entries.sort();
    let files: Vec<Vec<u8>> = entries
        .iter()
        .map(|path| std::fs::read(path).expect("a corpus file"))
        .collect();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip { at: usize, mask: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
}

impl Edit {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *self {
            Self::Flip { at: i, mask } if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] ^= mask;
            }
            Self::Insert { at: i, byte } => {
                let i = at(i, bytes.len() + 1);
                bytes.insert(i, byte);
            }
            Self::Delete { at: i } if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes.remove(i);
            }
            Self::Truncate { at: i } => {
                let i = at(i, bytes.len() + 1);
                bytes.truncate(i);
            }
            _ => {}
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Edit::Flip { at, mask }),
        // Bytes that matter to the decoders here: JSON punctuation and
        // quotes, digits, markers, NUL, high bytes.
        (
            any::<usize>(),
            prop::sample::select(
                b"{}[]:,\"\\0123456789-+.eE \x00\x01\x02\x03\x04\x05\xff".to_vec()
            )
        )
            .prop_map(|(at, byte)| Edit::Insert { at, byte }),
        any::<usize>().prop_map(|at| Edit::Delete { at }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// Fuzz inputs from the committed corpus of `target` in the crate at
/// `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`).
pub fn corpus_input(manifest_dir: &str, target: &str) -> impl Strategy<Value = Vec<u8>> + use<> {
    fuzz_input(corpus(
        &Path::new(manifest_dir).join("fuzz/corpus").join(target),
    ))
}

/// Fuzz inputs: a corpus file as it is, mutated by up to eight edits, or
/// random bytes.
pub fn fuzz_input(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(corpus),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(mut bytes, edits)| {
            for edit in &edits {
                edit.apply(&mut bytes);
            }
            bytes
        });
    prop_oneof![
        4 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}
