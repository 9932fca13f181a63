//! Load + validate + render of a generated repository with 1,000 Functions (and their ConfigMap),
//! the size of a large GitOps repository. Run with `cargo bench --bench validate`.

mod common;

use common::generate;
use criterion::{criterion_group, criterion_main, Criterion};
use meshops::load::{LoadOptions, Tree};
use meshops::model::RenderSettings;
use meshops::render::{render, render_each, yaml_document};
use meshops::validate::{validate, Schemas, ValidateOptions};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1000);
    let schemas = Schemas::new();
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
    // What `meshops render` does: each object to its YAML document on the thread that made it.
    c.bench_function("render 1000 functions as YAML", |b| {
        b.iter(|| {
            render_each(
                &validation.checked,
                &RenderSettings::default(),
                "bench",
                yaml_document,
            )
            .unwrap()
        })
    });
    c.bench_function("compile the Function schema", |b| {
        b.iter(|| Schemas::new().check(meshops::model::Kind::Function, &serde_json::Value::Null))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
