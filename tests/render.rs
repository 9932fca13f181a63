//! Rendering: the operator's worked example field for field (reference §2.18), determinism,
//! identity, operator mode, and snapshots of the bundled examples.

use std::path::PathBuf;

mod common;

use common::{find, function_details, render_path, script, to_yaml};
use meshops::model::settings::Mode;
use meshops::model::RenderSettings;
use meshops::render::{spec_hash, SPEC_HASH};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ten_labels() -> Value {
    json!({
        "app": "function-mesh",
        "app.kubernetes.io/instance": "java-function-sample-function",
        "app.kubernetes.io/name": "java-function-sample-function",
        "component": "function",
        "compute.functionmesh.io/app": "function-mesh",
        "compute.functionmesh.io/component": "function",
        "compute.functionmesh.io/name": "java-function-sample",
        "compute.functionmesh.io/namespace": "default",
        "name": "java-function-sample",
        "namespace": "default",
    })
}

fn without_identity(labels: &Value) -> Value {
    let mut labels = labels.clone();
    let map = labels.as_object_mut().unwrap();
    map.remove("app.kubernetes.io/managed-by");
    map.remove("meshops.io/source");
    labels
}

#[test]
fn renders_the_operators_worked_example_field_for_field() {
    let objects = render_path(&root().join("tests/data/render/worked-example.yaml"), None);
    let kinds: Vec<_> = objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            "Function/java-function-sample",
            "Service/java-function-sample-function-headless",
            "StatefulSet/java-function-sample-function",
            "HorizontalPodAutoscaler/java-function-sample-function",
            "PodDisruptionBudget/java-function-sample-function",
        ]
    );
    let cr = find(&objects, "Function", "java-function-sample");
    assert_eq!(
        cr["metadata"]["annotations"]["compute.functionmesh.io/managed"],
        "false"
    );

    let sts = find(&objects, "StatefulSet", "java-function-sample-function");
    assert_eq!(without_identity(&sts["metadata"]["labels"]), ten_labels());
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], Value::Null, "the HPA owns replicas");
    assert_eq!(spec["selector"]["matchLabels"], ten_labels());
    assert_eq!(
        spec["serviceName"],
        "java-function-sample-function-headless"
    );
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    let mut pod_labels = ten_labels();
    pod_labels["locaction"] = json!("mtv");
    let template = &spec["template"];
    assert_eq!(template["metadata"]["labels"], pod_labels);
    assert_eq!(
        template["metadata"]["annotations"],
        json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9094", "managed-function": "true"})
    );
    let pod = &template["spec"];
    let names = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&pod["initContainers"]), ["init-function"]);
    assert_eq!(
        names(&pod["containers"]),
        ["sidecar-function", "pulsar-function"]
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "cache-volume", "emptyDir": {}}])
    );
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        pod["securityContext"],
        json!({"runAsUser": 10000, "runAsGroup": 10001, "runAsNonRoot": false, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        pod["affinity"],
        json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": pod_labels}, "topologyKey": "kubernetes.io/hostname"}
        }]}})
    );
    for absent in [
        "serviceAccountName",
        "nodeSelector",
        "tolerations",
        "terminationGracePeriodSeconds",
    ] {
        assert_eq!(pod[absent], Value::Null, "{absent}");
    }

    let main = &pod["containers"][1];
    assert_eq!(
        main["image"],
        "streamnative/pulsar-functions-java-sample:3.2.2.1"
    );
    assert_eq!(main["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        main["ports"],
        json!([{"name": "tcp-grpc", "containerPort": 9093, "protocol": "TCP"}, {"name": "http-metrics", "containerPort": 9094, "protocol": "TCP"}])
    );
    assert_eq!(
        names(&main["env"]),
        ["POD_NAME", "name", "pwd", "EXAMPLE_VARIABLE"]
    );
    assert_eq!(
        main["env"][1]["valueFrom"]["secretKeyRef"],
        json!({"name": "test-secret", "key": "username"})
    );
    assert_eq!(
        main["envFrom"],
        json!([{"configMapRef": {"name": "test-pulsar"}}])
    );
    assert_eq!(
        main["resources"],
        json!({"requests": {"cpu": "0.1", "memory": "1G"}, "limits": {"cpu": "0.2", "memory": "1.1G"}})
    );
    assert_eq!(
        main["volumeMounts"],
        json!([{"mountPath": "/cache", "name": "cache-volume"}])
    );
    assert_eq!(main["livenessProbe"], Value::Null);
    assert_eq!(
        main["securityContext"],
        json!({"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false})
    );

    let command = main["command"].as_array().unwrap();
    assert_eq!(command[0], "bash");
    assert_eq!(command[1], "-c");
    let script = script(main);
    for part in [
        "SHARD_ID=${POD_NAME##*-} && echo shardId=${SHARD_ID} && mkdir -p /pulsar/conf/java-log/ && echo \"<Configuration>",
        "</Configuration>\" > /pulsar/conf/java-log/java_instance_log4j.xml && exec java -cp /pulsar/instances/java-instance.jar:$(echo /pulsar/lib/com.fasterxml.jackson.dataformat-jackson-dataformat-yaml-*.jar):$(echo /pulsar/lib/org.yaml-snakeyaml-*.jar):random-dir//* ",
        "-Dpulsar.functions.instance.classpath=/pulsar/lib/* -Dlog4j.configurationFile=/pulsar/conf/java-log/java_instance_log4j.xml -Dpulsar.function.log.dir=logs/functions -Dpulsar.function.log.file=java-function-sample-${SHARD_ID} -Dpulsar.allocator.exit_on_oom=true  -XX:MaxRAMPercentage=70 -XX:MaxDirectMemorySize=220M -XX:+UseG1GC",
        "-Xlog:gc*:file=/pulsar/logs/gc.log:time,level,tags:filecount=5,filesize=10M  org.apache.pulsar.functions.instance.JavaInstanceMain --jar /pulsar/examples/api-examples.jar --instance_id ${SHARD_ID} --function_id ${SHARD_ID}-",
        " --function_version 0 --function_details '{",
        "}' --pulsar_serviceurl $brokerServiceURL --max_buffered_tuples 100 --port 9093 --metrics_port 9094 --expected_healthcheck_interval 0 --cluster_name test-pulsar --use_tls false --secrets_provider org.apache.pulsar.functions.secretsprovider.EnvironmentBasedSecretsProvider --pending_async_requests 1000",
    ] {
        assert!(script.contains(part), "missing {part:?} in\n{script}");
    }
    let details = function_details(main);
    assert_eq!(
        details,
        json!({
            "tenant": "public", "namespace": "default", "name": "java-function-sample",
            "className": "org.apache.pulsar.functions.api.examples.ExclamationFunction",
            "logTopic": "persistent://public/default/logging-function-logs",
            "secretsMap": "{\"name\":{\"path\":\"test-secret\",\"key\":\"username\"},\"pwd\":{\"path\":\"test-secret\",\"key\":\"password\"}}",
            "autoAck": true, "parallelism": 1,
            "source": {"typeClassName": "java.lang.String", "inputSpecs": {"persistent://public/default/java-function-input-topic": {}}, "subscriptionPosition": "EARLIEST"},
            "sink": {"typeClassName": "java.lang.String", "topic": "persistent://public/default/java-function-output-topic", "forwardSourceMessageProperty": true},
            "resources": {"cpu": 0.1, "ram": "1000000000"},
            "componentType": "FUNCTION",
        })
    );

    let svc = find(
        &objects,
        "Service",
        "java-function-sample-function-headless",
    );
    assert_eq!(without_identity(&svc["metadata"]["labels"]), ten_labels());
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["selector"], ten_labels());
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "tcp-grpc", "port": 9093, "targetPort": 9093}, {"name": "http-metrics", "port": 9094, "targetPort": 9094}])
    );

    let hpa = find(
        &objects,
        "HorizontalPodAutoscaler",
        "java-function-sample-function",
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "java-function-sample-function"})
    );
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert_eq!(
        hpa["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 160}}}])
    );
    assert!(objects.iter().all(|o| o.kind() != "VerticalPodAutoscaler"));
}

#[test]
fn every_object_carries_identity_and_a_verifiable_spec_hash() {
    let objects = render_path(&root().join("examples"), None);
    assert!(objects.len() > 40);
    let label_value = regex::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap();
    for o in &objects {
        let meta = &o.value["metadata"];
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "meshops");
        assert_eq!(meta["labels"]["meshops.io/source"], "test");
        let hash = meta["annotations"][SPEC_HASH].as_str().unwrap().to_owned();
        let mut without = o.value.clone();
        without["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(SPEC_HASH);
        assert_eq!(spec_hash(&without), hash, "{}/{}", o.kind(), o.name());
        assert!(o.name().len() <= 63, "{}", o.name());
        for labels in [
            &meta["labels"],
            &o.value["spec"]["template"]["metadata"]["labels"],
        ] {
            for (key, value) in labels.as_object().into_iter().flatten() {
                assert!(
                    label_value.is_match(value.as_str().unwrap())
                        && value.as_str().unwrap().len() <= 63,
                    "{key}={value}"
                );
            }
        }
    }
}

#[test]
fn output_is_byte_identical_whatever_the_file_order() {
    let first = to_yaml(&render_path(&root().join("examples"), None));
    assert_eq!(first, to_yaml(&render_path(&root().join("examples"), None)));
    // The same manifests under other file names and directories, in reverse order.
    let dir = tempfile::tempdir().unwrap();
    // The manifests the loader reads there (examples/agent.yaml is in its .meshopsignore).
    let mut files: Vec<PathBuf> = meshops::load::walk(&root().join("examples"))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    files.sort();
    for (i, file) in files.iter().rev().enumerate() {
        let name = file.file_name().unwrap().to_str().unwrap();
        // The settings keep their name: meshops.yaml is only read at the root.
        let target = if name == "meshops.yaml" {
            name.to_owned()
        } else {
            format!("{i:02}-{name}")
        };
        std::fs::copy(file, dir.path().join(target)).unwrap();
    }
    assert_eq!(first, to_yaml(&render_path(dir.path(), None)));
}

#[test]
fn operator_mode_renders_only_the_crs_and_plain_objects() {
    let settings = RenderSettings {
        mode: Some(Mode::Operator),
        ..Default::default()
    };
    let objects = render_path(&root().join("examples/staging"), Some(settings));
    let kinds: std::collections::BTreeSet<_> =
        objects.iter().map(|o| o.kind().to_owned()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "BackendConfig",
            "ConfigMap",
            "Function",
            "FunctionMesh",
            "Secret",
            "ServiceAccount"
        ]
    );
    let function = find(&objects, "Function", "alerts");
    assert_eq!(
        function["metadata"]["annotations"]["compute.functionmesh.io/managed"],
        Value::Null
    );
}

#[test]
fn native_mode_expands_meshes_into_unmanaged_children() {
    let objects = render_path(&root().join("examples/staging"), None);
    assert!(objects.iter().all(|o| o.kind() != "FunctionMesh"));
    let child = find(&objects, "Function", "iot-pipeline-enrich");
    assert_eq!(
        child["metadata"]["annotations"]["compute.functionmesh.io/managed"],
        "false"
    );
    assert_eq!(
        child["metadata"]["annotations"]["meshops.io/function-mesh"],
        "iot-pipeline"
    );
    assert_eq!(
        child["spec"]["name"], "enrich",
        "the Pulsar name stays the entry name"
    );
    for name in [
        "iot-pipeline-readings-source",
        "iot-pipeline-enrich-function",
        "iot-pipeline-elastic-sink",
    ] {
        find(&objects, "StatefulSet", name);
    }
    let phases: Vec<u8> = objects.iter().map(|o| o.phase).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "apply order");
}

#[test]
fn snapshot_of_the_staging_example() {
    insta::assert_snapshot!(to_yaml(&render_path(
        &root().join("examples/staging"),
        None
    )));
}

#[test]
fn snapshot_of_the_prod_example_and_the_worked_example() {
    insta::assert_snapshot!(
        "prod",
        to_yaml(&render_path(&root().join("examples/prod"), None))
    );
    insta::assert_snapshot!(
        "worked_example",
        to_yaml(&render_path(
            &root().join("tests/data/render/worked-example.yaml"),
            None
        ))
    );
}

/// Every rendered document reads back as the object it came from, and strings that any YAML
/// reader could take for something else stay strings.
#[test]
fn yaml_output_reads_back_exactly() {
    use meshops::render::{yaml_document, Object};
    let mut objects = render_path(&root().join("examples"), None);
    let tricky = [
        "1_000",
        "0b101",
        "0o17",
        "0X1F",
        "0x1F",
        "yes",
        "No",
        "ON",
        "off",
        "y",
        "~",
        "null",
        "Null",
        "",
        " lead",
        "trail ",
        "a: b",
        "#c",
        "- x",
        "? q",
        "@x",
        "`x",
        "*a",
        "&a",
        "!t",
        "%p",
        "|",
        "> f",
        "multi\nline\n",
        "multi\nline",
        "tab\tx",
        "quote\"s",
        "back\\s",
        "colon:",
        "1.5",
        "1e3",
        "-1",
        "+1",
        ".5",
        ".inf",
        "-.inf",
        ".nan",
        "12:30",
        "2014-12-31",
        "ünïcode",
        "emoji 🎉",
        "{a}",
        "[b]",
        "key=value",
        "0755",
        "1.2.3",
        "'single'",
        "=",
        "<<",
        "true",
        "False",
        "NO",
    ];
    let data: serde_json::Map<String, Value> = tricky
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("k{i}"), json!(s)))
        .chain(tricky.iter().map(|s| (s.to_string(), json!("as a key"))))
        .collect();
    objects.push(Object {
        phase: 0,
        value: json!({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "tricky", "namespace": "ns"}, "data": data}),
    });
    objects.push(Object {
        phase: 0,
        value: json!({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "plain", "namespace": "ns"},
                      "data": {"a": "yes", "b": "0x10", "c": "1e3", "d": "multi\nline\n"}}),
    });
    for object in &objects {
        let text = yaml_document(object.clone());
        assert!(text.starts_with("---\n"), "{text}");
        let back: Value =
            serde_yaml::from_str(&text[4..]).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, object.value, "{text}");
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(docs.len(), 1);
    }
    // YAML 1.1 readers (Kubernetes') take these for numbers when plain.
    let text = yaml_document(objects.last().unwrap().clone());
    assert!(
        text.contains("b: '0x10'") || text.contains("b: \"0x10\""),
        "{text}"
    );
    let tricky_text = yaml_document(objects[objects.len() - 2].clone());
    for number in ["1_000", "0b101", "0o17", "0X1F"] {
        assert!(
            tricky_text.contains(&format!("\"{number}\"")),
            "{number} written plain: {tricky_text}"
        );
    }
}
