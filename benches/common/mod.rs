//! A generated repository for the benchmarks.

use std::path::Path;

/// Writes `count` Functions in a chain (each reads the previous one's output), spread over
/// ten directories, plus the Pulsar ConfigMap they all use, in namespace `bench`.
#[allow(dead_code)]
pub fn generate(root: &Path, count: usize) {
    generate_in(root, count, "bench");
}

/// [`generate`] in `namespace`.
pub fn generate_in(root: &Path, count: usize, namespace: &str) {
    std::fs::write(
        root.join("pulsar.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pulsar\n  namespace: {namespace}\ndata:\n  webServiceURL: http://pulsar:8080\n  brokerServiceURL: pulsar://pulsar:6650\n"),
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
  namespace: {namespace}
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
