//! Mutating valid inputs at random for the fuzz tests: a deterministic
//! generator (`SLUICE_FUZZ_SEED`), strings worth trying, and JSON values
//! changed in place (a value replaced, a key removed or added, an array
//! emptied or grown). Paths the mutations write name places under the
//! test's own directory only.

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{Value, json};

/// The generator for one fuzz test, `salt` telling tests apart.
pub fn rng(salt: u8) -> TestRng {
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5c1a_2026);
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = salt;
    TestRng::from_seed(RngAlgorithm::ChaCha, &s)
}

/// `SLUICE_FUZZ_SEED`'s value, for reports.
pub fn seed_name() -> String {
    std::env::var("SLUICE_FUZZ_SEED").unwrap_or_else(|_| "default".into())
}

/// A number of cases from `var`, else `default`.
pub fn cases(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn pick<'a, T>(rng: &mut TestRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// Strings worth trying where a string goes.
pub struct Strings {
    /// Paths under the test's directory (existing or not, a FIFO, a file,
    /// a directory).
    pub paths: Vec<String>,
}

impl Strings {
    pub fn any(&self, rng: &mut TestRng) -> String {
        match rng.random_range(0..12) {
            0 => String::new(),
            1 => " ".into(),
            2 => "%d".into(),
            3 => "..".into(),
            4 => "eth0".into(),
            5 => "x".repeat(rng.random_range(16..5000)),
            6 => "ünïcødé-名前".into(),
            7 => pick(rng, &self.paths).clone(),
            8 => format!("{}/../..", pick(rng, &self.paths)),
            9 => pick(rng, &["1.1.0", "1.0.0", "0.4.0", "0.3.1", "9.9.9", "1.1"]).to_string(),
            10 => pick(
                rng,
                &[
                    "10.244.1.5/24",
                    "10.244.1.5",
                    "::/0",
                    "0.0.0.0/0",
                    "fd00::1/129",
                    "10.0.0.1/33",
                ],
            )
            .to_string(),
            _ => (0..rng.random_range(1..24))
                .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                .filter(|c| *c != '/')
                .collect(),
        }
    }
}

/// A random JSON value, `depth` levels at most.
pub fn value(rng: &mut TestRng, s: &Strings, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(*pick(rng, &[0i64, -1, 1, 65535, 65536, i64::MAX, i64::MIN, 1500, 9000])),
        3 => json!(*pick(rng, &[0.5f64, -1e308, 1e308])),
        4 | 5 => json!(s.any(rng)),
        6 => Value::Array((0..rng.random_range(0..4)).map(|_| value(rng, s, depth - 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                m.insert(s.any(rng), value(rng, s, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// Every place in `v` a mutation can land: (path of keys/indices).
fn places(v: &Value, here: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let mut p = here.clone();
                p.push(json!(k));
                places(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = here.clone();
                p.push(json!(i));
                places(x, p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(k) => &mut v[k.as_str()],
        k => &mut v[k.as_u64().unwrap() as usize],
    })
}

/// Another value of `v`'s JSON type (a container keeps its content).
fn same_type(rng: &mut TestRng, s: &Strings, v: &Value) -> Value {
    match v {
        Value::String(_) => json!(s.any(rng)),
        Value::Number(_) => json!(*pick(rng, &[0i64, -1, 1, 80, 65535, 65536, 2_147_483_648, i64::MAX])),
        Value::Bool(b) => json!(!b),
        other => other.clone(),
    }
}

/// One to four changes: a value replaced, a key removed or added, an array
/// emptied or grown.
pub fn mutate(rng: &mut TestRng, s: &Strings, conf: &mut Value) {
    for _ in 0..rng.random_range(1..=4) {
        let mut all = Vec::new();
        places(conf, Vec::new(), &mut all);
        let path = pick(rng, &all).clone();
        let target = at(conf, &path);
        match rng.random_range(0..5) {
            // Half the replacements keep the value's type: a schema that
            // refuses the wrong type still meets odd values of the right one.
            0 | 1 if rng.random_bool(0.5) => *target = same_type(rng, s, target),
            0 | 1 => *target = value(rng, s, 2),
            2 => {
                if let Value::Object(m) = target
                    && !m.is_empty()
                {
                    let k = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
                    m.remove(&k);
                }
            }
            3 => {
                if let Value::Object(m) = target {
                    m.insert(s.any(rng), value(rng, s, 1));
                }
            }
            _ => {
                if let Value::Array(a) = target {
                    if rng.random_bool(0.5) {
                        a.clear();
                    } else {
                        let x = a.first().cloned().unwrap_or(Value::Null);
                        a.extend(std::iter::repeat_n(x, rng.random_range(1..40)));
                    }
                }
            }
        }
    }
}
