//! No input makes meshops panic: every example file, mutated many times over (bytes flipped,
//! dropped, duplicated, lines shuffled), goes through load, validate and render. Every
//! diagnostic must point inside its file.

use std::path::PathBuf;

use meshops::load::{LoadOptions, Tree};
use meshops::render::{render, settings_of};
use meshops::validate::{validate, Schemas, ValidateOptions};

/// xorshift64*: a fixed seed keeps the test reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let i = rng.below(bytes.len());
        match rng.below(5) {
            0 => {
                let alphabet = b" :-[]{}&*!|>'\"\n\t#%@`,?0aZ\xff";
                bytes[i] = alphabet[rng.below(alphabet.len())];
            }
            1 => {
                bytes.remove(i);
            }
            2 => {
                let end = (i + rng.below(40)).min(bytes.len());
                let chunk = bytes[i..end].to_vec();
                bytes.splice(i..i, chunk);
            }
            3 => bytes.insert(i, b' '),
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    bytes
}

#[test]
fn mutated_manifests_never_panic_and_diagnostics_point_inside_the_file() {
    let schemas = Schemas::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/prod");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rejected = 0;
    for file in &files {
        let original = std::fs::read(file).unwrap();
        for _ in 0..150 {
            let bytes = mutate(&original, &mut rng);
            let mut tree = Tree::default();
            tree.add_bytes("fuzz.yaml".into(), bytes.clone(), &LoadOptions::default());
            let result = validate(&tree, &schemas, ValidateOptions::default());
            let lines = bytes.split(|&b| b == b'\n').count() as u32 + 1;
            for d in &result.diagnostics {
                if let Some(p) = d.position {
                    assert!(
                        p.line >= 1 && p.line <= lines,
                        "{:?} outside a {lines}-line file",
                        d
                    );
                }
            }
            if result.is_valid() {
                render(&result.checked, &settings_of(&result.checked), "fuzz").unwrap();
            } else {
                rejected += 1;
            }
        }
    }
    assert!(
        rejected > 100,
        "mutations should break most files, broke {rejected}"
    );
}
