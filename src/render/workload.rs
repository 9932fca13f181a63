//! The runner workload: StatefulSet, headless Service and the pod inside (reference §2.1–§2.4,
//! §2.7, §2.9, §2.10, §2.14).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    LocalObjectReference, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::command::{self, Connection, Package, Tools, OAUTH2_MOUNT, TLS_MOUNT};
use super::spec::{ComponentKind, RunnerSpec};
use crate::model::{
    BackendConfigSpec, CryptoSecret, Log4jConfigFileType, PodPolicy, PulsarMessaging,
    RenderSettings,
};

const RUNNER_TAG: &str = "2.10.0.0-rc10";
const GENERIC_TAG: &str = "0.1.0";
const DOWNLOADER_IMAGE: &str = "streamnative/pulsarctl:2.10.2.3";
const FILEBEAT_IMAGE: &str = "streamnative/filebeat:v0.6.0";
const PACKAGE_TLS_MOUNT: &str = "/etc/tls/pulsar-functions-package-service";
const PACKAGE_OAUTH2_MOUNT: &str = "/etc/oauth2-package-service";
const DOWNLOAD_DIR: &str = "/pulsar/download";

/// The ten (Functions) or eight (Sources, Sinks) labels that name and select a workload.
pub fn workload_labels(r: &RunnerSpec) -> BTreeMap<String, String> {
    let workload = r.workload_name();
    let component = r.kind.component();
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), workload.clone()),
        ("app.kubernetes.io/instance".to_owned(), workload),
        (
            "compute.functionmesh.io/component".to_owned(),
            component.to_owned(),
        ),
        ("compute.functionmesh.io/name".to_owned(), r.cr_name.clone()),
        (
            "compute.functionmesh.io/namespace".to_owned(),
            r.namespace.clone(),
        ),
        ("component".to_owned(), component.to_owned()),
        ("name".to_owned(), r.cr_name.clone()),
        ("namespace".to_owned(), r.namespace.clone()),
    ]);
    if r.kind == ComponentKind::Function {
        labels.insert("compute.functionmesh.io/app".into(), "function-mesh".into());
        labels.insert("app".into(), "function-mesh".into());
    }
    labels
}

/// The operator's `sanitizeVolumeName`.
pub fn sanitize_volume_name(name: &str) -> String {
    let lowered: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let truncated: String = lowered.chars().take(63).collect();
    truncated.trim_matches('-').to_owned()
}

/// A volume's single `key → path` item.
fn item(key: &str, path: &str) -> Vec<KeyToPath> {
    vec![KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        ..Default::default()
    }]
}

fn secret_volume(secret: &str, key: &str) -> Volume {
    Volume {
        name: sanitize_volume_name(&format!("{secret}-{key}")),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(item(key, key)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: String, path: &str) -> VolumeMount {
    VolumeMount {
        name,
        mount_path: path.to_owned(),
        ..Default::default()
    }
}

/// The runner image: the spec's, else the runtime's default (settings or the operator's).
pub fn runner_image(r: &RunnerSpec, settings: &RenderSettings) -> String {
    let s = &r.spec;
    if let Some(image) = s.image.as_deref().filter(|i| !i.is_empty()) {
        return image.to_owned();
    }
    let images = settings.runner_images.clone().unwrap_or_default();
    let default =
        |name: &str, tag: &str| format!("streamnative/pulsar-functions-{name}-runner:{tag}");
    let java = || {
        images
            .java
            .clone()
            .unwrap_or_else(|| default("java", RUNNER_TAG))
    };
    let all = format!("streamnative/pulsar-all:{RUNNER_TAG}");
    match r.kind {
        ComponentKind::Function => {
            if s.java.is_some() {
                java()
            } else if s.python.is_some() {
                images
                    .python
                    .clone()
                    .unwrap_or_else(|| default("python", RUNNER_TAG))
            } else if s.golang.is_some() {
                images
                    .go
                    .clone()
                    .unwrap_or_else(|| default("go", RUNNER_TAG))
            } else if let Some(generic) = &s.generic_runtime {
                let configured = images
                    .generic_runtime
                    .as_ref()
                    .and_then(|m| m.get(&generic.language))
                    .cloned();
                configured.unwrap_or_else(|| match generic.language.as_str() {
                    "nodejs" => default("generic-nodejs", GENERIC_TAG),
                    "python" => default("generic-python", GENERIC_TAG),
                    _ => default("generic-base", GENERIC_TAG),
                })
            } else {
                all
            }
        }
        ComponentKind::Source | ComponentKind::Sink => {
            let location = s
                .java
                .as_ref()
                .and_then(|j| j.jar_location.as_deref())
                .unwrap_or_default();
            if ["function://", "sink://", "source://"]
                .iter()
                .any(|p| location.starts_with(p))
            {
                java()
            } else {
                all
            }
        }
    }
}

/// Package path and location of the runtime in use.
fn package(r: &RunnerSpec) -> (String, String) {
    let s = &r.spec;
    if let Some(j) = &s.java {
        (j.jar.clone(), j.jar_location.clone().unwrap_or_default())
    } else if let Some(p) = &s.python {
        (p.py.clone(), p.py_location.clone().unwrap_or_default())
    } else if let Some(g) = &s.golang {
        (g.go.clone(), g.go_location.clone().unwrap_or_default())
    } else if let Some(g) = &s.generic_runtime {
        (
            g.function_file.clone(),
            g.function_file_location.clone().unwrap_or_default(),
        )
    } else {
        (String::new(), String::new())
    }
}

/// `extractMountPath`: init-container downloads land under /pulsar.
fn normalized_package_path(path: &str) -> String {
    if !path.starts_with('/') {
        format!("/pulsar/{path}")
    } else if path.starts_with("/pulsar/") {
        path.to_owned()
    } else {
        format!("/pulsar{path}")
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn connection(r: &RunnerSpec) -> Option<Connection<'_>> {
    match (&r.spec.pulsar_package_service, &r.spec.pulsar) {
        (Some(m), _) => Some(Connection {
            messaging: m,
            prefix: "PACKAGE_",
        }),
        (None, Some(m)) => Some(Connection {
            messaging: m,
            prefix: "",
        }),
        _ => None,
    }
}

fn env_from(m: &PulsarMessaging, prefix: &str) -> Vec<EnvFromSource> {
    let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
    let mut out = Vec::new();
    if let Some(cm) = m.pulsar_config.as_deref().filter(|s| !s.is_empty()) {
        out.push(EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: cm.to_owned(),
                optional: None,
            }),
            prefix: prefix.clone(),
            ..Default::default()
        });
    }
    for secret in [&m.auth_secret, &m.tls_secret]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
    {
        out.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: None,
            }),
            prefix: prefix.clone(),
            ..Default::default()
        });
    }
    out
}

fn messaging_volumes(
    m: &PulsarMessaging,
    tls_mount: &str,
    oauth2_mount: &str,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if let Some(tls) = &m.tls_config {
        if let (Some(name), Some(key)) = (
            tls.cert_secret_name.as_deref().filter(|s| !s.is_empty()),
            tls.cert_secret_key.as_deref().filter(|s| !s.is_empty()),
        ) {
            let volume = secret_volume(name, key);
            mounts.push(mount(volume.name.clone(), tls_mount));
            volumes.push(volume);
        }
    }
    if let Some(o) = m
        .auth_config
        .as_ref()
        .and_then(|a| a.oauth2_config.as_ref())
    {
        let volume = secret_volume(&o.key_secret_name, &o.key_secret_key);
        mounts.push(mount(volume.name.clone(), oauth2_mount));
        volumes.push(volume);
    }
    (volumes, mounts)
}

fn crypto_volumes(
    secrets: &[CryptoSecret],
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    for secret in secrets {
        let volume = secret_volume(&secret.secret_name, &secret.secret_key);
        if let Some(path) = secret.as_volume.as_deref().filter(|p| !p.is_empty()) {
            mounts.push(mount(volume.name.clone(), path));
        }
        volumes.push(volume);
    }
}

/// Pod volumes and main-container mounts in the operator's order (§2.4, §2.7).
fn volumes_and_mounts(
    r: &RunnerSpec,
    init_download: Option<&str>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let s = &r.spec;
    let pod = s.pod.clone().unwrap_or_default();
    let mut volumes = pod.volumes.clone().unwrap_or_default();
    let mut mounts = s.volume_mounts.clone().unwrap_or_default();
    if r.sidecar_logs() {
        volumes.push(Volume {
            name: "filebeat-logs".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(mount("filebeat-logs".into(), "/pulsar/logs/functions"));
    }
    if let Some(m) = &s.pulsar {
        let (v, m) = messaging_volumes(m, TLS_MOUNT, OAUTH2_MOUNT);
        volumes.extend(v);
        mounts.extend(m);
    }
    let producer = s
        .output
        .as_ref()
        .and_then(|o| o.producer_conf.as_ref())
        .and_then(|p| p.crypto_config.as_ref());
    crypto_volumes(
        producer
            .and_then(|c| c.crypto_secrets.as_deref())
            .unwrap_or_default(),
        &mut volumes,
        &mut mounts,
    );
    let consumers = s.input.as_ref().and_then(|i| i.source_specs.as_ref());
    for spec in consumers.into_iter().flat_map(|m| m.values()) {
        let secrets = spec
            .crypto_config
            .as_ref()
            .and_then(|c| c.crypto_secrets.as_deref())
            .unwrap_or_default();
        crypto_volumes(secrets, &mut volumes, &mut mounts);
    }
    let java_log = s.java.as_ref().and_then(|j| j.log.as_ref());
    let python_log = s.python.as_ref().and_then(|p| p.log.as_ref());
    if let Some(cm) = java_log.and_then(|l| l.log_config.as_ref()) {
        let file = if java_log.and_then(|l| l.java_log4j_config_file_type)
            == Some(Log4jConfigFileType::Yaml)
        {
            "java_instance_log4j.yaml"
        } else {
            "java_instance_log4j.xml"
        };
        let name = sanitize_volume_name(&format!("{}-java-log-conf", cm.name));
        volumes.push(config_map_volume(&name, &cm.name, &cm.key, file));
        mounts.push(mount(name, command::JAVA_LOG_DIR));
    }
    if let Some(cm) = python_log.and_then(|l| l.log_config.as_ref()) {
        let name = sanitize_volume_name(&format!("{}-python-log-conf", cm.name));
        volumes.push(config_map_volume(
            &name,
            &cm.name,
            &cm.key,
            "python_instance_logging.ini",
        ));
        mounts.push(mount(name, command::PYTHON_LOG_DIR));
    }
    if let Some(m) = &s.pulsar_package_service {
        let (v, m) = messaging_volumes(m, PACKAGE_TLS_MOUNT, PACKAGE_OAUTH2_MOUNT);
        for volume in v {
            if !volumes.iter().any(|existing| existing.name == volume.name) {
                volumes.push(volume);
            }
        }
        mounts.extend(m);
    }
    if let Some(path) = init_download {
        volumes.push(Volume {
            name: "downloader-volume".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        mounts.push(if dir == "/pulsar" {
            VolumeMount {
                name: "downloader-volume".into(),
                mount_path: path.to_owned(),
                sub_path: Some(file.to_owned()),
                ..Default::default()
            }
        } else {
            mount("downloader-volume".into(), dir)
        });
    }
    (volumes, mounts)
}

fn config_map_volume(name: &str, config_map: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            items: Some(item(key, path)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn liveness(pod: &PodPolicy) -> Option<Probe> {
    let l = pod.liveness.as_ref()?;
    let period = l.period_seconds.filter(|p| *p > 0)?;
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(9094),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(l.initial_delay_seconds.unwrap_or(0).max(0)),
        timeout_seconds: Some(period),
        period_seconds: Some(period),
        success_threshold: l.success_threshold,
        failure_threshold: l.failure_threshold,
        ..Default::default()
    })
}

/// `POD_NAME` from the downward API: the runtime derives its shard id from it.
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn default_security_context(run_as_non_root: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(10000),
        run_as_group: Some(10001),
        run_as_non_root: Some(run_as_non_root),
        fs_group: Some(10001),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn merge(maps: &[Option<&BTreeMap<String, String>>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for map in maps.iter().flatten() {
        out.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// The filebeat sidecar that ships the runtime's log files to `logTopic` (§2.8).
fn filebeat(r: &RunnerSpec, pod_env: &[EnvVar], mounts: &[VolumeMount]) -> Container {
    let s = &r.spec;
    let config = "filebeat.inputs:\n- type: log\n  paths:\n  - /pulsar/logs/functions/*.log\noutput.pulsar:\n  url: ${brokerServiceURL}\n  topic: ${logTopic}\n  name: ${logName}\n  token: ${clientAuthenticationParameters:\"\"}\n  oauth2:\n    enabled: ${oauth2Enabled:false}\n    issuerUrl: ${oauth2IssuerUrl:\"\"}\n    privateKey: ${oauth2PrivateKey:\"\"}\n    audience: ${oauth2Audience:\"\"}\n    scope: ${oauth2Scope:\"\"}\nlog_level: info";
    let mut env = pod_env.to_vec();
    env.push(env_var(
        "logTopic",
        s.log_topic.as_deref().unwrap_or_default(),
    ));
    env.push(env_var("logName", r.pulsar_name()));
    env.push(pod_name_env());
    let messaging = s.pulsar.clone().unwrap_or_default();
    if let Some(o) = messaging
        .auth_config
        .as_ref()
        .and_then(|a| a.oauth2_config.as_ref())
    {
        env.push(env_var("oauth2Enabled", "true"));
        env.push(env_var("oauth2IssuerUrl", &o.issuer_url));
        env.push(env_var("oauth2Audience", &o.audience));
        env.push(env_var(
            "oauth2PrivateKey",
            &format!("{OAUTH2_MOUNT}/{}", o.key_secret_key),
        ));
        env.push(env_var(
            "oauth2Scope",
            o.scope.as_deref().unwrap_or_default(),
        ));
    } else if let Some(g) = messaging
        .auth_config
        .as_ref()
        .and_then(|a| a.generic_auth.as_ref())
    {
        env.push(env_var(
            "clientAuthenticationParameters",
            &g.client_authentication_parameters,
        ));
    }
    let mut filebeat_mounts: Vec<VolumeMount> = s.volume_mounts.clone().unwrap_or_default();
    filebeat_mounts.extend(
        mounts
            .iter()
            .filter(|m| {
                m.name == "filebeat-logs"
                    || m.mount_path == TLS_MOUNT
                    || m.mount_path == OAUTH2_MOUNT
            })
            .cloned(),
    );
    Container {
        name: "filebeat".into(),
        image: Some(s.filebeat_image.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| FILEBEAT_IMAGE.into())),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "--".into(),
            format!("echo \"{config}\" > /usr/share/filebeat/config/filebeat.yaml && /usr/share/filebeat/filebeat -e -c /usr/share/filebeat/config/filebeat.yaml"),
        ]),
        env: Some(env),
        env_from: Some(env_from(&messaging, "")),
        volume_mounts: (!filebeat_mounts.is_empty()).then_some(filebeat_mounts),
        security_context: Some(SecurityContext {
            run_as_user: Some(1000),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The StatefulSet as the operator would create it, before identity and BackendConfig.
pub fn stateful_set(
    r: &RunnerSpec,
    settings: &RenderSettings,
    backend: &BackendConfigSpec,
    function_id: &str,
    details: &str,
    hpa_owns_replicas: bool,
) -> StatefulSet {
    let s = &r.spec;
    let pod = s.pod.clone().unwrap_or_default();
    let labels = workload_labels(r);
    let image = runner_image(r, settings);
    let (package_file, location) = package(r);
    let init_mode = settings.init_container_download == Some(true);
    let tools = Tools::of(r, &image);
    let conn = connection(r);
    let downloads = !location.is_empty();

    let mut init_containers = pod.init_containers.clone().unwrap_or_default();
    let package = if downloads && init_mode {
        let path = normalized_package_path(&package_file);
        let target = format!("{DOWNLOAD_DIR}/{}", basename(&package_file));
        let default_messaging = PulsarMessaging::default();
        let c = conn.unwrap_or(Connection {
            messaging: &default_messaging,
            prefix: "",
        });
        let mut mounts = vec![mount("downloader-volume".into(), DOWNLOAD_DIR)];
        if !command::has_http_prefix(&location) {
            let (_, m) = messaging_volumes(c.messaging, TLS_MOUNT, OAUTH2_MOUNT);
            mounts.extend(m);
        }
        mounts.extend(s.volume_mounts.clone().unwrap_or_default());
        let all_tools = Tools {
            pulsarctl: true,
            wget: true,
        };
        init_containers.push(Container {
            name: "downloader".into(),
            image: Some(
                s.downloader_image
                    .clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| DOWNLOADER_IMAGE.into()),
            ),
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                command::download_args(&location, &target, all_tools, &c).join(" "),
            ]),
            volume_mounts: Some(mounts),
            image_pull_policy: Some("IfNotPresent".into()),
            env: Some(vec![env_var("HOME", "/tmp")]),
            env_from: Some(env_from(c.messaging, c.prefix)),
            ..Default::default()
        });
        Package {
            path,
            download: None,
        }
    } else {
        let download = conn
            .filter(|_| downloads)
            .map(|c| command::download_args(&location, &package_file, tools, &c).join(" "));
        Package {
            path: package_file,
            download,
        }
    };
    let (volumes, mounts) =
        volumes_and_mounts(r, (downloads && init_mode).then_some(package.path.as_str()));

    let mut env = vec![pod_name_env()];
    for (name, secret) in s.secrets_map.iter().flatten() {
        env.push(EnvVar {
            name: name.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.path.clone().unwrap_or_default(),
                    key: secret.key.clone().unwrap_or_default(),
                    optional: None,
                }),
                ..Default::default()
            }),
        });
    }
    let pod_env = pod.env.clone().unwrap_or_default();
    env.extend(pod_env.iter().cloned());
    if let Some(go) = &s.golang {
        env.push(env_var("LOGGING_LEVEL", command::go_level(go.log.as_ref())));
    }
    let mut env_from_sources = s
        .pulsar
        .as_ref()
        .map(|m| env_from(m, ""))
        .unwrap_or_default();
    if let Some(m) = &s.pulsar_package_service {
        env_from_sources.extend(env_from(m, "PACKAGE_"));
    }

    let backend_pod = backend.pod.clone().unwrap_or_default();
    let main = Container {
        name: format!("pulsar-{}", r.kind.component()),
        image: Some(image),
        command: Some(command::container_command(
            r,
            &package,
            function_id,
            details,
        )),
        ports: Some(vec![
            ContainerPort {
                name: Some("tcp-grpc".into()),
                container_port: 9093,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http-metrics".into()),
                container_port: 9094,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(env),
        env_from: (!env_from_sources.is_empty()).then_some(env_from_sources),
        resources: s.resources.clone(),
        image_pull_policy: Some(format!(
            "{:?}",
            settings
                .image_pull_policy
                .unwrap_or(crate::model::ImagePullPolicy::IfNotPresent)
        )),
        liveness_probe: liveness(&pod).or_else(|| liveness(&backend_pod)),
        startup_probe: pod
            .startup_probe
            .clone()
            .or_else(|| backend_pod.startup_probe.clone()),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then(|| mounts.clone()),
        ..Default::default()
    };
    let mut containers = pod.sidecars.clone().unwrap_or_default();
    containers.push(main);
    if r.sidecar_logs() {
        containers.push(filebeat(r, &pod_env, &mounts));
    }
    // BackendConfig env goes first in every regular container, sorted for determinism.
    let backend_env: Vec<EnvVar> = backend
        .env
        .iter()
        .flatten()
        .map(|(k, v)| env_var(k, v))
        .collect();
    if !backend_env.is_empty() {
        for container in &mut containers {
            let mut env = backend_env.clone();
            env.extend(container.env.take().unwrap_or_default());
            container.env = Some(env);
        }
    }

    let pod_labels = merge(&[
        backend_pod.labels.as_ref(),
        Some(&labels),
        settings.resource_labels.as_ref(),
        pod.labels.as_ref(),
    ]);
    let annotations = merge(&[
        backend_pod.annotations.as_ref(),
        Some(&BTreeMap::from([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), "9094".to_owned()),
        ])),
        settings.resource_annotations.as_ref(),
        pod.annotations.as_ref(),
    ]);
    let mut affinity = pod.affinity.clone();
    if settings.default_affinity != Some(false) && pod.disable_default_affinity != Some(true) {
        let a = affinity.get_or_insert_with(Affinity::default);
        let anti = a
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default);
        anti.preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(pod_labels.clone()),
                        match_expressions: None,
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                },
            });
    }
    let affinity = affinity.or_else(|| backend_pod.affinity.clone());
    let mut tolerations = backend_pod.tolerations.clone().unwrap_or_default();
    tolerations.extend(pod.tolerations.clone().unwrap_or_default());
    let mut pull_secrets: Vec<LocalObjectReference> =
        backend_pod.image_pull_secrets.clone().unwrap_or_default();
    pull_secrets.extend(pod.image_pull_secrets.clone().unwrap_or_default());
    pull_secrets.extend(
        settings
            .runner_image_pull_secrets
            .clone()
            .unwrap_or_default(),
    );
    let node_selector = merge(&[
        backend_pod.node_selector.as_ref(),
        pod.node_selector.as_ref(),
    ]);

    let pod_spec =
        PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            termination_grace_period_seconds: pod
                .termination_grace_period_seconds
                .or(backend_pod.termination_grace_period_seconds),
            volumes: (!volumes.is_empty()).then_some(volumes),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            affinity,
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            security_context: Some(pod.security_context.clone().unwrap_or_else(|| {
                default_security_context(settings.run_as_non_root == Some(true))
            })),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            service_account_name: pod
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .or(backend_pod.service_account_name.clone()),
            ..Default::default()
        };
    let volume_claim_templates = s.volume_claim_templates.as_ref().map(|templates| {
        templates
            .iter()
            .map(|t| k8s_openapi::api::core::v1::PersistentVolumeClaim {
                metadata: t.metadata.clone().unwrap_or_default(),
                spec: t.spec.clone(),
                status: None,
            })
            .collect()
    });
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(r.workload_name()),
            namespace: Some(r.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: StatefulSetSpec {
            replicas: if hpa_owns_replicas { None } else { s.replicas },
            selector: LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            service_name: Some(format!("{}-headless", r.workload_name())),
            volume_claim_templates,
            persistent_volume_claim_retention_policy: s
                .persistent_volume_claim_retention_policy
                .clone(),
            ..Default::default()
        },
        status: None,
    }
}

/// The headless Service `<workload>-headless`.
pub fn service(r: &RunnerSpec) -> Service {
    let labels = workload_labels(r);
    Service {
        metadata: ObjectMeta {
            name: Some(format!("{}-headless", r.workload_name())),
            namespace: Some(r.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels),
            ports: Some(vec![
                ServicePort {
                    name: Some("tcp-grpc".into()),
                    port: 9093,
                    target_port: Some(IntOrString::Int(9093)),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("http-metrics".into()),
                    port: 9094,
                    target_port: Some(IntOrString::Int(9094)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}
