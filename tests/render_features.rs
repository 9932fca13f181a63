//! Rendering per field family: init-container downloads, BackendConfig, sidecar logs, batch
//! sources, Go, VPA, PDB and AuthorizationPolicy.

mod common;

use common::{find, function_details, render_path, script};
use meshops::render::Object;
use serde_json::{json, Value};

/// Renders a repository given as (file name, YAML) pairs.
fn render_files(files: &[(&str, &str)]) -> Vec<Object> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    render_path(dir.path(), None)
}

fn container<'a>(sts: &'a Value, name: &str) -> &'a Value {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

const FUNCTION: &str = "apiVersion: compute.functionmesh.io/v1alpha1
kind: Function
metadata: {name: fn, namespace: ns}
spec:
  className: io.example.Fn
  input: {topics: [persistent://public/default/in]}
  output: {topic: persistent://public/default/out}
  pulsar: {pulsarConfig: pulsar}
";

#[test]
fn init_container_mode_downloads_into_a_shared_volume() {
    let settings =
        "apiVersion: meshops.io/v1alpha1\nkind: Settings\nspec: {initContainerDownload: true}\n";
    let function = format!("{FUNCTION}  java: {{jar: /tmp/java-function.jar, jarLocation: function://public/default/java-function}}\n");
    let objects = render_files(&[("meshops.yaml", settings), ("fn.yaml", &function)]);
    let sts = find(&objects, "StatefulSet", "fn-function");
    let pod = &sts["spec"]["template"]["spec"];
    let downloader = &pod["initContainers"][0];
    assert_eq!(downloader["name"], "downloader");
    assert_eq!(downloader["image"], "streamnative/pulsarctl:2.10.2.3");
    assert_eq!(
        downloader["env"],
        json!([{"name": "HOME", "value": "/tmp"}])
    );
    assert_eq!(
        downloader["volumeMounts"][0],
        json!({"name": "downloader-volume", "mountPath": "/pulsar/download"})
    );
    assert!(script(downloader).ends_with("packages download function://public/default/java-function --path /pulsar/download/java-function.jar"), "{}", script(downloader));
    assert_eq!(
        downloader["envFrom"],
        json!([{"configMapRef": {"name": "pulsar"}}])
    );
    let main = container(sts, "pulsar-function");
    assert!(main["volumeMounts"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "downloader-volume", "mountPath": "/pulsar/tmp"})));
    assert!(script(main).contains("--jar /pulsar/tmp/java-function.jar "));
    assert!(
        !script(main).contains("download"),
        "the main container does not download"
    );
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "downloader-volume", "emptyDir": {}})));
}

#[test]
fn main_container_downloads_when_init_containers_are_off() {
    let function = format!("{FUNCTION}  image: streamnative/pulsar-functions-pulsarctl-java-runner:3.2.2.1\n  java: {{jar: fn.jar, jarLocation: function://public/default/fn}}\n");
    let objects = render_files(&[("fn.yaml", &function)]);
    let main = container(
        find(&objects, "StatefulSet", "fn-function"),
        "pulsar-function",
    );
    assert!(script(main).starts_with(
        "export PATH=$PATH:/pulsar/bin &&  pulsarctl --admin-service-url $webServiceURL packages download function://public/default/fn --path fn.jar && SHARD_ID=${POD_NAME##*-}"
    ), "{}", script(main));
}

#[test]
fn backend_config_is_merged_into_the_runner_pods() {
    let backend = "apiVersion: compute.functionmesh.io/v1alpha1
kind: BackendConfig
metadata: {name: backend-config, namespace: ns}
spec:
  env: {ZED: z, ALPHA: a}
  pod:
    labels: {from: backend, team: backend}
    tolerations: [{key: dedicated, operator: Exists}]
    liveness: {periodSeconds: 10, initialDelaySeconds: 30}
";
    let function = format!("{FUNCTION}  java: {{jar: /pulsar/fn.jar}}\n  pod:\n    labels: {{team: fn}}\n    tolerations: [{{key: gpu, operator: Exists}}]\n    env: [{{name: OWN, value: x}}]\n");
    let objects = render_files(&[("backend.yaml", backend), ("fn.yaml", &function)]);
    let sts = find(&objects, "StatefulSet", "fn-function");
    let pod = &sts["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["from"], "backend");
    assert_eq!(pod["metadata"]["labels"]["team"], "fn", "the CR wins");
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}, {"key": "gpu", "operator": "Exists"}])
    );
    let main = container(sts, "pulsar-function");
    let env: Vec<&str> = main["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["ALPHA", "ZED", "POD_NAME", "OWN"]);
    assert_eq!(
        main["livenessProbe"],
        json!({"httpGet": {"path": "/", "port": 9094, "scheme": "HTTP"}, "initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 10})
    );
}

#[test]
fn sidecar_log_agent_adds_filebeat_and_a_rolling_log_file() {
    let function = format!("{FUNCTION}  java: {{jar: /pulsar/fn.jar}}\n  logTopic: persistent://public/default/logs\n  logTopicAgent: sidecar\n");
    let objects = render_files(&[("fn.yaml", &function)]);
    let sts = find(&objects, "StatefulSet", "fn-function");
    let names: Vec<&str> = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pulsar-function", "filebeat"]);
    let filebeat = container(sts, "filebeat");
    assert_eq!(filebeat["image"], "streamnative/filebeat:v0.6.0");
    assert!(filebeat["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "logTopic", "value": "persistent://public/default/logs"})));
    let main = container(sts, "pulsar-function");
    assert!(main["volumeMounts"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "filebeat-logs", "mountPath": "/pulsar/logs/functions"})));
    assert!(
        script(main).contains("<size>10MB</size>"),
        "rolling appender for the sidecar"
    );
    assert!(
        !script(main).contains("\"logTopic\""),
        "the runtime does not publish logs itself"
    );
}

#[test]
fn batch_source_wraps_the_connector_in_the_batch_executor() {
    let source = "apiVersion: compute.functionmesh.io/v1alpha1
kind: Source
metadata: {name: batch, namespace: ns}
spec:
  className: org.apache.pulsar.io.batchdatagenerator.BatchDataGeneratorSource
  output: {topic: persistent://public/default/out}
  batchSourceConfig:
    discoveryTriggererClassName: org.apache.pulsar.io.batchdiscovery.ImmediateTriggerer
  sourceConfig: {b: 2, a: 1}
  pulsar: {pulsarConfig: pulsar}
  java: {jar: connectors/batch.nar}
";
    let objects = render_files(&[("source.yaml", source)]);
    let main = container(
        find(&objects, "StatefulSet", "batch-source"),
        "pulsar-source",
    );
    let details = function_details(main);
    assert_eq!(
        details["className"],
        "org.apache.pulsar.functions.api.utils.IdentityFunction"
    );
    assert_eq!(details["componentType"], "SOURCE");
    assert_eq!(
        details["source"]["className"],
        "org.apache.pulsar.functions.source.batch.BatchSourceExecutor"
    );
    assert_eq!(
        details["source"]["configs"],
        "{\"__BATCHSOURCECLASSNAME__\":\"org.apache.pulsar.io.batchdatagenerator.BatchDataGeneratorSource\",\"__BATCHSOURCECONFIGS__\":\"{\\\"discoveryTriggererClassName\\\":\\\"org.apache.pulsar.io.batchdiscovery.ImmediateTriggerer\\\"}\",\"a\":1,\"b\":2}"
    );
    assert_eq!(details["userConfig"], "{\"a\":1,\"b\":2}");
    assert_eq!(
        details["sink"]["producerSpec"],
        json!({"maxPendingMessages": 1000, "maxPendingMessagesAcrossPartitions": 1000, "useThreadLocalProducers": true})
    );
    assert_eq!(main["image"], "streamnative/pulsar-all:2.10.0.0-rc10");
}

#[test]
fn go_functions_get_their_instance_conf_and_no_auth_flags() {
    let function = format!("{FUNCTION}  golang: {{go: /pulsar/fn, log: {{level: debug}}}}\n");
    let objects = render_files(&[("fn.yaml", &function)]);
    let main = container(
        find(&objects, "StatefulSet", "fn-function"),
        "pulsar-function",
    );
    let s = script(main);
    assert!(s.starts_with("SHARD_ID=${POD_NAME##*-} && echo shardId=${SHARD_ID} && GO_FUNCTION_CONF={\\\"pulsarServiceURL\\\":\\\"${brokerServiceURL}\\\",\\\"instanceID\\\":${SHARD_ID},"), "{s}");
    assert!(s.ends_with(" && goFunctionConfigs=${GO_FUNCTION_CONF} && echo goFunctionConfigs=\"'${goFunctionConfigs}'\" && ls -l /pulsar/fn && chmod +x /pulsar/fn && exec /pulsar/fn -instance-conf ${goFunctionConfigs}"), "{s}");
    assert!(!s.contains("--client_auth"));
    // The segments the operator's TestMakeGoFunctionCommand pins.
    let segments: Vec<&str> = s.split("&&").collect();
    assert_eq!(segments[0], "SHARD_ID=${POD_NAME##*-} ");
    assert_eq!(segments[1], " echo shardId=${SHARD_ID} ");
    assert!(segments[2].starts_with(" GO_FUNCTION_CONF"));
    assert_eq!(segments[3], " goFunctionConfigs=${GO_FUNCTION_CONF} ");
    assert_eq!(
        segments[4],
        " echo goFunctionConfigs=\"'${goFunctionConfigs}'\" "
    );
    assert_eq!(segments[5], " ls -l /pulsar/fn ");
    assert_eq!(segments[6], " chmod +x /pulsar/fn ");
    assert_eq!(
        segments[7],
        " exec /pulsar/fn -instance-conf ${goFunctionConfigs}"
    );
    assert!(main["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "LOGGING_LEVEL", "value": "debug"})));
    assert_eq!(
        main["image"],
        "streamnative/pulsar-functions-go-runner:2.10.0.0-rc10"
    );
}

#[test]
fn vpa_pdb_and_authorization_policy() {
    let settings = "apiVersion: meshops.io/v1alpha1
kind: Settings
spec:
  podDisruptionBudget: {maxUnavailable: 50%}
  authorizationPolicy:
    enabled: true
    brokerPrincipals: [cluster.local/ns/pulsar/sa/pulsar-broker]
    metricsNamespaces: [monitoring]
";
    let function = format!("{FUNCTION}  java: {{jar: /pulsar/fn.jar}}\n  replicas: 3\n  pod:\n    vpa:\n      updatePolicy: {{updateMode: Auto}}\n");
    let objects = render_files(&[("meshops.yaml", settings), ("fn.yaml", &function)]);
    let vpa = find(&objects, "VerticalPodAutoscaler", "fn-function");
    assert_eq!(vpa["apiVersion"], "autoscaling.k8s.io/v1");
    assert_eq!(
        vpa["spec"]["targetRef"],
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "fn-function"})
    );
    assert_eq!(vpa["spec"]["updatePolicy"], json!({"updateMode": "Auto"}));
    let pdb = find(&objects, "PodDisruptionBudget", "fn-function");
    assert_eq!(pdb["spec"]["maxUnavailable"], "50%");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "fn-function"
    );
    let policy = find(&objects, "AuthorizationPolicy", "fn-function");
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["spec"]["action"], "ALLOW");
    assert_eq!(
        policy["spec"]["rules"],
        json!([
            {"from": [{"source": {"principals": ["cluster.local/ns/pulsar/sa/pulsar-broker"]}}], "to": [{"operation": {"ports": ["9093"]}}]},
            {"from": [{"source": {"namespaces": ["monitoring"]}}], "to": [{"operation": {"ports": ["9094"]}}]}
        ])
    );
    // A single replica without an HPA cannot lose a pod to a disruption budget.
    let single = render_files(&[(
        "fn.yaml",
        &format!("{FUNCTION}  java: {{jar: /pulsar/fn.jar}}\n"),
    )]);
    assert!(single.iter().all(|o| o.kind() != "PodDisruptionBudget"));
    assert_eq!(
        find(&single, "StatefulSet", "fn-function")["spec"]["replicas"],
        1
    );
}

/// The operator's `TestBatchSource` (controllers/spec/utils_test.go), its exact configs JSON.
#[test]
fn batch_source_configs_match_the_operators_oracle() {
    let source = "apiVersion: compute.functionmesh.io/v1alpha1
kind: Source
metadata: {name: test-source, namespace: ns}
spec:
  name: test-suorce
  className: org.apache.pulsar.ecosystem.io.bigquery.BigQuerySource
  tenant: public
  clusterName: test-pulsar
  output:
    topic: persistent://public/default/destination
    typeClassName: org.apache.pulsar.common.schema.KeyValue
    producerConf: {maxPendingMessages: 1000, maxPendingMessagesAcrossPartitions: 50000, useThreadLocalProducers: true}
  batchSourceConfig:
    discoveryTriggererClassName: test-trigger-class
    discoveryTriggererConfig: {test-key: test-value}
  sourceConfig: {tableName: test-table}
  pulsar: {pulsarConfig: test-pulsar}
  image: test-image
  java: {jar: connectors/test.jar, jarLocation: \"\"}
";
    let objects = render_files(&[("source.yaml", source)]);
    let main = container(
        find(&objects, "StatefulSet", "test-source-source"),
        "pulsar-source",
    );
    let details = function_details(main);
    assert_eq!(
        details["source"]["className"],
        "org.apache.pulsar.functions.source.batch.BatchSourceExecutor"
    );
    assert_eq!(
        details["source"]["configs"],
        r#"{"__BATCHSOURCECLASSNAME__":"org.apache.pulsar.ecosystem.io.bigquery.BigQuerySource","__BATCHSOURCECONFIGS__":"{\"discoveryTriggererClassName\":\"test-trigger-class\",\"discoveryTriggererConfig\":{\"test-key\":\"test-value\"}}","tableName":"test-table"}"#
    );
}

/// The operator's `TestGeneratePodVolumes` / `TestGenerateContainerVolumeMounts` cases, in one
/// Function: trust cert, producer and consumer crypto secrets, a log4j ConfigMap.
#[test]
fn volumes_and_mounts_follow_the_operators_order_and_names() {
    let function = "apiVersion: compute.functionmesh.io/v1alpha1
kind: Function
metadata: {name: fn, namespace: ns}
spec:
  className: io.example.Fn
  input:
    topics: [persistent://public/default/in]
    sourceSpecs:
      persistent://public/default/in:
        cryptoConfig:
          cryptoKeyReaderClassName: io.example.Keys
          cryptoSecrets: [{secretName: test-consumer-secret, secretKey: test-consumer-key, asVolume: /test-consumer}]
  output:
    topic: persistent://public/default/out
    producerConf:
      cryptoConfig:
        cryptoKeyReaderClassName: io.example.Keys
        encryptionKeys: [k]
        cryptoSecrets:
          - {secretName: test-producer-secret, secretKey: test-producer-key, asVolume: /test-producer}
          - {secretName: no-mount-secret, secretKey: no-mount-key}
  pulsar:
    pulsarConfig: pulsar
    tlsConfig: {enabled: true, allowInsecure: true, hostnameVerification: true, certSecretName: test-trust-secret, certSecretKey: test-trust-key}
  java:
    jar: /pulsar/fn.jar
    log:
      logConfig: {name: test-log-config, key: java-xml}
";
    let objects = render_files(&[("fn.yaml", function)]);
    let sts = find(&objects, "StatefulSet", "fn-function");
    let secret = |name: &str, key: &str| json!({"name": format!("{name}-{key}"), "secret": {"secretName": name, "items": [{"key": key, "path": key}]}});
    assert_eq!(
        sts["spec"]["template"]["spec"]["volumes"],
        json!([
            secret("test-trust-secret", "test-trust-key"),
            secret("test-producer-secret", "test-producer-key"),
            secret("no-mount-secret", "no-mount-key"),
            secret("test-consumer-secret", "test-consumer-key"),
            {"name": "test-log-config-java-log-conf", "configMap": {"name": "test-log-config", "items": [{"key": "java-xml", "path": "java_instance_log4j.xml"}]}},
        ])
    );
    let main = container(sts, "pulsar-function");
    assert_eq!(
        main["volumeMounts"],
        json!([
            {"name": "test-trust-secret-test-trust-key", "mountPath": "/etc/tls/pulsar-functions"},
            {"name": "test-producer-secret-test-producer-key", "mountPath": "/test-producer"},
            {"name": "test-consumer-secret-test-consumer-key", "mountPath": "/test-consumer"},
            {"name": "test-log-config-java-log-conf", "mountPath": "/pulsar/conf/java-log/"},
        ])
    );
    let s = script(main);
    assert!(s.contains("--use_tls true --tls_allow_insecure true --hostname_verification_enabled true --tls_trust_cert_path /etc/tls/pulsar-functions/test-trust-key"), "{s}");
    assert!(
        !s.contains("mkdir -p /pulsar/conf/java-log/"),
        "a ConfigMap log config is mounted, not generated"
    );
}

/// The operator's `TestJavaFunctionCommandWithConnectorOverrides`.
#[test]
fn connector_overrides_reach_the_function_details() {
    let function = "apiVersion: compute.functionmesh.io/v1alpha1
kind: Function
metadata: {name: connector-test, namespace: ns}
spec:
  className: io.example.Fn
  pulsar: {pulsarConfig: pulsar}
  java: {jar: /pulsar/fn.jar}
  sourceConfig:
    sourceType: kinesis
    typeClassName: java.lang.Object
    configs:
      awsEndpoint: http://localstack:4566
      awsKinesisStreamName: demo-stream
      initialPositionInStream: TRIM_HORIZON
      useEnhancedFanOut: false
  sinkConfig:
    sinkType: kafka
    typeClassName: java.lang.Object
    configs:
      bootstrapServers: kafka:9092
      acks: all
      producerConfigProperties: {enable.idempotence: true}
";
    let objects = render_files(&[("fn.yaml", function)]);
    let main = container(
        find(&objects, "StatefulSet", "connector-test-function"),
        "pulsar-function",
    );
    assert!(script(main).contains("--connectors_directory /pulsar/connectors"));
    let details = function_details(main);
    assert_eq!(details["tenant"], "public");
    assert_eq!(details["name"], "connector-test");
    assert_eq!(details["source"]["builtin"], "kinesis");
    assert_eq!(details["source"]["typeClassName"], "java.lang.Object");
    let source: Value =
        serde_json::from_str(details["source"]["configs"].as_str().unwrap()).unwrap();
    assert_eq!(source["awsKinesisStreamName"], "demo-stream");
    assert_eq!(source["initialPositionInStream"], "TRIM_HORIZON");
    let sink: Value = serde_json::from_str(details["sink"]["configs"].as_str().unwrap()).unwrap();
    assert_eq!(sink["sinkType"], "kafka");
    assert_eq!(sink["bootstrapServers"], "kafka:9092");
    assert_eq!(sink["producerConfigProperties"]["enable.idempotence"], true);
}
