//! Helpers shared by the integration tests: the reference fixture and comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use undertale_maskedlm::Size;
use undertale_maskedlm::model::Config;

/// The vocabulary of [`odd_config`]: ids 0..6 special (`[MASK]` 4, `[NEXT]` 5), the rest ordinary.
pub const ODD_VOCAB: usize = 30;
/// `[NEXT]` in [`odd_config`].
pub const ODD_NEXT: i32 = 5;
/// `[MASK]` in [`odd_config`].
pub const ODD_MASK: i32 = 4;

/// A small model whose sizes are no multiple of any tile: hidden 36 over 3 heads of 12, sequence 21.
pub fn odd_config() -> Config {
    let size = Size {
        depth: 2,
        hidden_dimensions: 36,
        heads: 3,
        intermediate_dimensions: 52,
        sequence_length: 21,
    };
    Config::new(size, ODD_VOCAB, ODD_NEXT, ODD_MASK)
}

/// A padded batch for [`odd_config`]: `rows` rows of `seq` positions, real lengths from half to
/// all of `seq` (the last row a single token), `[NEXT]` separators among random ordinary tokens.
/// Returns the tokens and the attention mask.
pub fn odd_batch(rng: &mut ChaCha8Rng, rows: usize, seq: usize) -> (Vec<i32>, Vec<i32>) {
    let mut tokens = Vec::new();
    let mut mask = Vec::new();
    for r in 0..rows {
        let len = if r == rows - 1 {
            1
        } else {
            rng.random_range(seq / 2..=seq)
        };
        for j in 0..seq {
            let real = j < len;
            let token = if !real {
                0
            } else if rng.random::<f32>() < 0.2 {
                ODD_NEXT
            } else {
                rng.random_range(6..ODD_VOCAB as i32)
            };
            tokens.push(token);
            mask.push(i32::from(real));
        }
    }
    (tokens, mask)
}

/// Labels for a batch: each real position keeps its token as its label with probability 0.3; the
/// rest are -100 (ignored).
pub fn odd_labels(rng: &mut ChaCha8Rng, tokens: &[i32], mask: &[i32]) -> Vec<i32> {
    tokens
        .iter()
        .zip(mask)
        .map(|(&t, &m)| {
            if m == 1 && rng.random::<f32>() < 0.3 {
                t
            } else {
                -100
            }
        })
        .collect()
}

/// The tensors and config written by `scripts/reference.py`.
pub struct Fixture {
    pub config: Config,
    pub f64s: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    pub i64s: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Fixture {
    pub fn load() -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny_reference.safetensors");
        let bytes = std::fs::read(&path).expect("fixture exists (scripts/reference.py writes it)");
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let config_json = meta.metadata().as_ref().unwrap()["config"].clone();
        let config: Config = serde_json::from_str(&config_json).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut f64s = BTreeMap::new();
        let mut i64s = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F64 => {
                    let v = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    f64s.insert(name, (shape, v));
                }
                Dtype::I64 => {
                    let v = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    i64s.insert(name, (shape, v));
                }
                other => panic!("unexpected fixture dtype {other:?} for {name}"),
            }
        }
        Fixture { config, f64s, i64s }
    }

    pub fn f64(&self, name: &str) -> &[f64] {
        &self
            .f64s
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
            .1
    }

    pub fn i32(&self, name: &str) -> (Vec<usize>, Vec<i32>) {
        let (shape, v) = &self.i64s[name];
        (shape.clone(), v.iter().map(|&x| x as i32).collect())
    }

    /// Every tensor under `prefix.` as an f32 state_dict keyed by the rest of the name.
    pub fn state_dict(&self, prefix: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        self.f64s
            .iter()
            .filter_map(|(name, (shape, v))| {
                let key = name.strip_prefix(prefix)?.strip_prefix('.')?;
                // `adamw.loss_step2` is a scalar, not a parameter.
                (key.contains('.')).then(|| {
                    (
                        key.to_string(),
                        (shape.clone(), v.iter().map(|&x| x as f32).collect()),
                    )
                })
            })
            .collect()
    }
}

/// Asserts `|got - want| <= abs + rel * |want|` elementwise, naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let allowed = abs + rel * w.abs();
        assert!(g.is_finite(), "{what}[{i}] is not finite: {g}");
        if err / allowed > worst.1 {
            worst = (i, err / allowed);
        }
    }
    let (i, ratio) = worst;
    assert!(
        ratio <= 1.0,
        "{what}[{i}]: got {} want {} (error {:.3}x the tolerance rel {rel:e} abs {abs:e})",
        got[i],
        want[i],
        ratio
    );
}

/// `count` damaged copies of `bytes`, each with one to four bytes overwritten at random positions
/// by random values (seeded, so every run damages the same bytes).
pub fn damaged_copies(bytes: &[u8], count: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut damaged = bytes.to_vec();
            for _ in 0..rng.random_range(1..=4) {
                let position = rng.random_range(0..damaged.len());
                damaged[position] = rng.random();
            }
            damaged
        })
        .collect()
}
