//! A no-change plan of a generated 1,000-function repository against the API double: the
//! cost should be O(kinds × namespaces) requests and 0 writes, not O(objects).
//! Run with `cargo bench --bench plan`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::generate;
use criterion::{criterion_group, criterion_main, Criterion};
use meshops::cluster::sync::{self, SyncOptions};
use meshops::load::{LoadOptions, Tree};
use meshops::model::RenderSettings;
use meshops::plan;
use meshops::render::render;
use meshops::validate::{validate, Schemas, ValidateOptions};
use support::FakeApiServer;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1000);
    let tree = Tree::load(dir.path(), &LoadOptions::default());
    let validation = validate(&tree, &Schemas::new(), ValidateOptions::default());
    let desired = render(&validation.checked, &RenderSettings::default(), "bench").unwrap();
    let options = SyncOptions {
        source: "bench".into(),
        inventory_namespace: "default".into(),
        prune: true,
        allow_empty: false,
        revision: "bench".into(),
        take_over: false,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = FakeApiServer::new(&["default", "bench"], true);
    runtime.block_on(async {
        let cluster = server.cluster().await;
        let live = sync::fetch(&cluster, &desired, &options).await.unwrap();
        let plan = plan::plan(&desired, &live.objects, &live.inventory);
        sync::execute(&cluster, &plan, &desired, &live, &options)
            .await
            .unwrap();
        let cluster = server.cluster().await;
        let live = sync::fetch(&cluster, &desired, &options).await.unwrap();
        let plan = plan::plan(&desired, &live.objects, &live.inventory);
        assert!(!plan.has_changes());
        eprintln!(
            "no-change plan of {} objects: {:?} ({} writes)",
            desired.len(),
            cluster.requests().snapshot(),
            cluster.requests().writes()
        );
    });
    c.bench_function("no-change plan, 1000 functions", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let cluster = server.cluster().await;
                let live = sync::fetch(&cluster, &desired, &options).await.unwrap();
                plan::plan(&desired, &live.objects, &live.inventory)
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
