//! Checks across objects: names and their uniqueness, the topic graph that Functions, Sources
//! and Sinks form, and references to ConfigMaps and Secrets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

use super::rules::{topic_name, Component, MAX_COMPONENT_NAME};
use super::{Checked, Finding, Located, Severity};
use crate::model::{CommonFields, Kind, Manifest};

/// A Function, Source or Sink as the cluster will see it: mesh entries become `<mesh>-<entry>`.
pub struct Unit<'a> {
    pub document: usize,
    pub kind: Kind,
    pub namespace: &'a str,
    pub name: String,
    /// Pointer of the spec in its document.
    pub base: String,
    pub component: Component<'a>,
}

/// Every component of the repository, mesh children included, in document order.
pub fn units(checked: &[Checked]) -> Vec<Unit<'_>> {
    let mut units = Vec::new();
    for c in checked {
        let (namespace, name) = (c.manifest.namespace(), c.manifest.name());
        let mut push = |kind, name: String, base: String, component| {
            units.push(Unit {
                document: c.document,
                kind,
                namespace,
                name,
                base,
                component,
            })
        };
        match &c.manifest {
            Manifest::Function(o) => push(
                Kind::Function,
                name.into(),
                "/spec".into(),
                Component::Function(&o.spec),
            ),
            Manifest::Source(o) => push(
                Kind::Source,
                name.into(),
                "/spec".into(),
                Component::Source(&o.spec),
            ),
            Manifest::Sink(o) => push(
                Kind::Sink,
                name.into(),
                "/spec".into(),
                Component::Sink(&o.spec),
            ),
            Manifest::FunctionMesh(mesh) => {
                let child = |entry: Option<&str>| format!("{name}-{}", entry.unwrap_or_default());
                for (i, s) in mesh.spec.sources.iter().flatten().enumerate() {
                    push(
                        Kind::Source,
                        child(s.name.as_deref()),
                        format!("/spec/sources/{i}"),
                        Component::Source(s),
                    );
                }
                for (i, s) in mesh.spec.functions.iter().flatten().enumerate() {
                    push(
                        Kind::Function,
                        child(s.name.as_deref()),
                        format!("/spec/functions/{i}"),
                        Component::Function(s),
                    );
                }
                for (i, s) in mesh.spec.sinks.iter().flatten().enumerate() {
                    push(
                        Kind::Sink,
                        child(s.name.as_deref()),
                        format!("/spec/sinks/{i}"),
                        Component::Sink(s),
                    );
                }
            }
            _ => {}
        }
    }
    units
}

fn error(document: usize, code: &'static str, pointer: String, message: String) -> Located {
    Located {
        document,
        finding: Finding {
            severity: Severity::Error,
            code,
            pointer,
            message,
            notes: Vec::new(),
        },
    }
}

fn warning(document: usize, code: &'static str, pointer: String, message: String) -> Located {
    Located {
        document,
        finding: Finding {
            severity: Severity::Warning,
            code,
            pointer,
            message,
            notes: Vec::new(),
        },
    }
}

/// RFC 1123 label: what a StatefulSet, Service and label value built from the name need.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// RFC 1123 subdomain: the rule for ConfigMap, Secret and ServiceAccount names.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// The `name-invalid` error when `name` is not what Kubernetes accepts for `kind`.
fn name_finding(kind: Kind, name: &str) -> Option<Finding> {
    let component = matches!(
        kind,
        Kind::Function | Kind::Source | Kind::Sink | Kind::FunctionMesh
    );
    let (ok, rule) = if component {
        (
            is_dns_label(name),
            "an RFC 1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
        )
    } else {
        (is_dns_subdomain(name), "an RFC 1123 subdomain")
    };
    (!ok).then(|| Finding {
        severity: Severity::Error,
        code: "name-invalid",
        pointer: "/metadata/name".into(),
        message: format!("name \"{name}\" must be {rule}"),
        notes: Vec::new(),
    })
}

/// The name check of a document too broken for the typed model, from its raw value.
pub fn raw_name_finding(kind: Kind, value: &serde_json::Value) -> Option<Finding> {
    if matches!(kind, Kind::Settings | Kind::AgentConfig) {
        return None;
    }
    name_finding(kind, value.pointer("/metadata/name")?.as_str()?)
}

/// Name syntax and length, and uniqueness per kind and namespace across the repository.
/// `describe` says where a document is, for the "first defined at" note.
pub fn check_names(
    checked: &[Checked],
    units: &[Unit<'_>],
    describe: &dyn Fn(usize, &str) -> String,
) -> Vec<Located> {
    let mut out = Vec::new();
    for c in checked.iter().filter(|c| c.manifest.metadata().is_some()) {
        if let Some(finding) = name_finding(c.manifest.kind(), c.manifest.name()) {
            out.push(Located {
                document: c.document,
                finding,
            });
        }
    }
    for unit in units {
        let in_mesh = unit.base != "/spec";
        let pointer = if in_mesh {
            format!("{}/name", unit.base)
        } else {
            "/metadata/name".into()
        };
        if in_mesh && !is_dns_label(&unit.name) {
            out.push(error(
                unit.document,
                "name-invalid",
                pointer.clone(),
                format!(
                    "mesh child name \"{}\" must be an RFC 1123 label",
                    unit.name
                ),
            ));
        }
        if unit.name.len() > MAX_COMPONENT_NAME {
            let what = if in_mesh { "mesh child name" } else { "name" };
            out.push(error(
                unit.document,
                "name-too-long",
                pointer,
                format!(
                    "{what} \"{}\" is {} characters; a {} name may have at most {MAX_COMPONENT_NAME} so that \"<name>-{}\" fits Kubernetes limits",
                    unit.name,
                    unit.name.len(),
                    unit.kind,
                    unit.kind.as_str().to_ascii_lowercase()
                ),
            ));
        }
    }
    let mut seen: HashMap<(Kind, &str, &str), (usize, String)> = HashMap::new();
    let mut identities: Vec<(Kind, &str, &str, usize, String)> = checked
        .iter()
        .filter(|c| !c.manifest.kind().is_component())
        .map(|c| {
            (
                c.manifest.kind(),
                c.manifest.namespace(),
                c.manifest.name(),
                c.document,
                "/metadata/name".to_owned(),
            )
        })
        .collect();
    for unit in units {
        let pointer = if unit.base == "/spec" {
            "/metadata/name".to_owned()
        } else {
            format!("{}/name", unit.base)
        };
        identities.push((
            unit.kind,
            unit.namespace,
            unit.name.as_str(),
            unit.document,
            pointer,
        ));
    }
    for (kind, namespace, name, document, pointer) in identities {
        match seen.get(&(kind, namespace, name)) {
            Some((first_doc, first_ptr)) => {
                let mut located = error(
                    document,
                    "duplicate-name",
                    pointer,
                    format!("{kind} \"{name}\" is defined twice in namespace \"{namespace}\""),
                );
                located.finding.notes.push(format!(
                    "first defined at {}",
                    describe(*first_doc, first_ptr)
                ));
                out.push(located);
            }
            None => {
                seen.insert((kind, namespace, name), (document, pointer));
            }
        }
    }
    out
}

/// The topic graph: dangling inputs and unconsumed outputs (warnings: they may be served by
/// something outside the repository) and cycles between components (warnings).
pub fn check_topics(units: &[Unit<'_>]) -> Vec<Located> {
    let mut out = Vec::new();
    let mut producers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut consumers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut patterns: Vec<(Regex, usize)> = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        if let Some(topic) = output_topic(unit) {
            producers.entry(topic).or_default().push(i);
        }
        if let Some(input) = unit.component.input() {
            for topic in input.all_topics() {
                let is_pattern = input.topic_pattern.as_deref() == Some(topic)
                    || input
                        .source_specs
                        .as_ref()
                        .and_then(|s| s.get(topic))
                        .and_then(|s| s.is_regex_pattern)
                        == Some(true);
                match topic_name(topic) {
                    Ok(full) if is_pattern => {
                        if let Ok(re) = Regex::new(&format!("^(?:{full})$")) {
                            patterns.push((re, i));
                        }
                    }
                    Ok(full) => consumers.entry(full).or_default().push(i),
                    Err(_) => {}
                }
            }
        }
    }
    for (topic, readers) in &consumers {
        if !producers.contains_key(topic) {
            for &i in readers {
                let unit = &units[i];
                out.push(warning(
                    unit.document,
                    "input-not-produced",
                    format!("{}/input", unit.base),
                    format!(
                        "{} \"{}\" reads {topic}, which nothing in the repository writes",
                        unit.kind, unit.name
                    ),
                ));
            }
        }
    }
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (topic, writers) in &producers {
        let mut readers: Vec<usize> = consumers.get(topic).cloned().unwrap_or_default();
        readers.extend(
            patterns
                .iter()
                .filter(|(re, _)| re.is_match(topic))
                .map(|(_, i)| *i),
        );
        if readers.is_empty() {
            for &i in writers {
                let unit = &units[i];
                out.push(warning(
                    unit.document,
                    "output-not-consumed",
                    format!("{}/output/topic", unit.base),
                    format!(
                        "{} \"{}\" writes {topic}, which nothing in the repository reads",
                        unit.kind, unit.name
                    ),
                ));
            }
        }
        for &w in writers {
            edges
                .entry(w)
                .or_default()
                .extend(readers.iter().copied().filter(|&r| r != w));
        }
    }
    for cycle in cycles(units.len(), &edges) {
        let first = &units[cycle[0]];
        let path: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| units[i].name.as_str())
            .collect();
        out.push(warning(
            first.document,
            "topic-cycle",
            format!("{}/output/topic", first.base),
            format!(
                "components form a cycle through their topics: {}",
                path.join(" -> ")
            ),
        ));
    }
    out
}

fn output_topic(unit: &Unit<'_>) -> Option<String> {
    let topic = unit.component.output()?.topic.as_deref()?;
    topic_name(topic).ok()
}

/// Strongly connected components with more than one member (Tarjan), each as a path order.
fn cycles(n: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges.get(&v).into_iter().flatten() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.reverse();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.found
}

/// ConfigMaps and Secrets a component names that the repository does not define (warnings:
/// they may already exist in the cluster).
pub fn check_references(checked: &[Checked], units: &[Unit<'_>]) -> Vec<Located> {
    let defined: BTreeSet<(Kind, &str, &str)> = checked
        .iter()
        .filter(|c| matches!(c.manifest.kind(), Kind::ConfigMap | Kind::Secret))
        .map(|c| (c.manifest.kind(), c.manifest.namespace(), c.manifest.name()))
        .collect();
    let mut out = Vec::new();
    for unit in units {
        for (kind, name, field) in references(&unit.component.common()) {
            if name.is_empty() || defined.contains(&(kind, unit.namespace, name)) {
                continue;
            }
            out.push(warning(
                unit.document,
                "reference-not-found",
                format!("{}{field}", unit.base),
                format!("{kind} \"{name}\" is not defined in the repository; it must exist in namespace \"{}\"", unit.namespace),
            ));
        }
    }
    out
}

/// Every ConfigMap and Secret the runner pods of a component mount or read, with the field.
fn references<'a>(common: &CommonFields<'a>) -> Vec<(Kind, &'a str, String)> {
    let mut refs = Vec::new();
    for (messaging, base) in [
        (common.pulsar, "/pulsar"),
        (common.pulsar_package_service, "/pulsarPackageService"),
    ] {
        let Some(m) = messaging else { continue };
        if let Some(cm) = &m.pulsar_config {
            refs.push((Kind::ConfigMap, cm.as_str(), format!("{base}/pulsarConfig")));
        }
        if let Some(s) = &m.auth_secret {
            refs.push((Kind::Secret, s.as_str(), format!("{base}/authSecret")));
        }
        if let Some(s) = &m.tls_secret {
            refs.push((Kind::Secret, s.as_str(), format!("{base}/tlsSecret")));
        }
        if let Some(s) = m
            .tls_config
            .as_ref()
            .and_then(|t| t.cert_secret_name.as_deref())
        {
            refs.push((Kind::Secret, s, format!("{base}/tlsConfig/certSecretName")));
        }
        for (auth, field) in [
            (&m.auth_config, "authConfig"),
            (&m.cleanup_auth_config, "cleanupAuthConfig"),
        ] {
            if let Some(oauth2) = auth.as_ref().and_then(|a| a.oauth2_config.as_ref()) {
                refs.push((
                    Kind::Secret,
                    oauth2.key_secret_name.as_str(),
                    format!("{base}/{field}/oauth2Config/keySecretName"),
                ));
            }
        }
    }
    for (key, secret) in common.secrets_map.into_iter().flatten() {
        if let Some(path) = &secret.path {
            refs.push((
                Kind::Secret,
                path.as_str(),
                format!("/secretsMap/{}", key.replace('~', "~0").replace('/', "~1")),
            ));
        }
    }
    let logs = [
        (
            common.java.and_then(|j| j.log.as_ref()),
            "/java/log/logConfig",
        ),
        (
            common.python.and_then(|p| p.log.as_ref()),
            "/python/log/logConfig",
        ),
        (
            common.golang.and_then(|g| g.log.as_ref()),
            "/golang/log/logConfig",
        ),
    ];
    for (log, field) in logs {
        if let Some(config) = log.and_then(|l| l.log_config.as_ref()) {
            refs.push((Kind::ConfigMap, config.name.as_str(), field.to_owned()));
        }
    }
    refs
}
