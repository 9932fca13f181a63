//! Load + validate + render of a generated repository with 1,000 Functions (and their ConfigMap),
//! the size of a large GitOps repository. Run with `cargo bench --bench validate`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use meshops::load::{LoadOptions, Tree};
use meshops::model::RenderSettings;
use meshops::render::render;
use meshops::validate::{validate, Schemas, ValidateOptions};

/// Writes `count` Functions in a chain (each reads the previous one's output), spread over
/// ten directories, plus the Pulsar ConfigMap they all use.
fn generate(root: &Path, count: usize) {
    std::fs::write(
        root.join("pulsar.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pulsar\n  namespace: bench\ndata:\n  webServiceURL: http://pulsar:8080\n  brokerServiceURL: pulsar://pulsar:6650\n",
    )
    .unwrap();
    for i in 0..count {
        let dir = root.join(format!("team-{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "apiVersion: compute.functionmesh.io/v1alpha1
kind: Function
metadata:
  name: fn-{i}
  namespace: bench
spec:
  className: io.example.Fn{i}
  image: registry.example.com/fn:{i}
  minReplicas: 1
  maxReplicas: 4
  input:
    topics:
      - persistent://bench/default/t-{i}
  output:
    topic: persistent://bench/default/t-{next}
  funcConfig:
    key: value-{i}
  pulsar:
    pulsarConfig: pulsar
  java:
    jar: /pulsar/fn.jar
  resources:
    requests: {{cpu: 100m, memory: 256Mi}}
    limits: {{cpu: 500m, memory: 512Mi}}
  pod:
    labels:
      team: team-{team}
    env:
      - name: LEVEL
        value: info
",
            next = i + 1,
            team = i % 10
        );
        std::fs::write(dir.join(format!("fn-{i}.yaml")), text).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1000);
    let schemas = Schemas::new().unwrap();
    let options = LoadOptions::default();
    c.bench_function("load+validate 1000 functions", |b| {
        b.iter(|| {
            let tree = Tree::load(dir.path(), &options);
            let result = validate(&tree, &schemas, ValidateOptions::default());
            assert_eq!(result.documents, 1001);
            result
        })
    });
    c.bench_function("load 1000 functions", |b| {
        b.iter(|| Tree::load(dir.path(), &options))
    });
    let tree = Tree::load(dir.path(), &options);
    c.bench_function("validate 1000 loaded functions", |b| {
        b.iter(|| validate(&tree, &schemas, ValidateOptions::default()))
    });
    let validation = validate(&tree, &schemas, ValidateOptions::default());
    c.bench_function("render 1000 functions", |b| {
        b.iter(|| render(&validation.checked, &RenderSettings::default(), "bench").unwrap())
    });
    c.bench_function("compile embedded schemas", |b| {
        b.iter(|| Schemas::new().unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
