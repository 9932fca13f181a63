//! The real Helm engine for tests/chart.rs: Helm v4 as a library through the Python package
//! `helm-python-sdk` (no helm binary), driven by `tests/support/helm.py` — one process per
//! test, one JSON line per request and answer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

pub struct Helm {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `v4.x.y`, as the library reports it.
    pub version: String,
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chart under test.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/meshops")
}

/// What a render produced: the files by template path, and the objects in them.
pub struct Rendered {
    pub files: BTreeMap<String, String>,
    pub objects: Vec<Value>,
}

impl Rendered {
    fn new(files: BTreeMap<String, String>) -> Rendered {
        let objects = files
            .iter()
            .filter(|(path, _)| path.ends_with(".yaml"))
            .flat_map(|(_, text)| documents(text))
            .collect();
        Rendered { files, objects }
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.sort();
        kinds
    }

    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The only object of `kind`.
    pub fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{kind}: {all:#?}");
        all[0]
    }

    pub fn notes(&self) -> &str {
        self.files
            .iter()
            .find(|(path, _)| path.ends_with("NOTES.txt"))
            .map(|(_, text)| text.as_str())
            .unwrap_or_default()
    }
}

/// The objects of a multi-document YAML text (empty documents dropped).
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

impl Helm {
    /// Starts the helper; `Err` says what is missing (python3 or the package).
    pub fn start() -> Result<Helm, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/helm.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 is not available ({e})"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut helm = Helm {
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        match helm.call(json!({"op": "version"})) {
            Ok(version) => {
                helm.version = version["sdk"].as_str().unwrap_or_default().to_owned();
                Ok(helm)
            }
            Err(_) => {
                let _ = helm.child.wait();
                let mut reason = String::new();
                if let Some(mut stderr) = helm.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut reason);
                }
                Err(reason.trim().to_owned())
            }
        }
    }

    /// One request; `Err` carries Helm's message.
    fn call(&mut self, request: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the helm helper exited".into());
        }
        let mut answer: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match answer.get_mut("ok") {
            Some(ok) => Ok(ok.take()),
            None => Err(format!(
                "{}: {}",
                answer["type"].as_str().unwrap_or_default(),
                answer["error"].as_str().unwrap_or_default()
            )),
        }
    }

    /// `helm lint --strict` with these values: the report.
    pub fn lint(&mut self, values: &Value) -> Value {
        self.call(
            json!({"op": "lint", "chart": chart_dir(), "values": values, "namespace": "meshops"}),
        )
        .unwrap()
    }

    /// `helm template` as an install would render it (schema checked first).
    pub fn render(&mut self, values: &Value, namespace: &str) -> Result<Rendered, String> {
        let files = self.call(json!({
            "op": "render", "chart": chart_dir(), "values": values,
            "name": "meshops", "namespace": namespace,
        }))?;
        Ok(Rendered::new(serde_json::from_value(files).unwrap()))
    }

    /// `helm install --create-namespace` (or `upgrade`): the manifest Helm applied.
    pub fn install(
        &mut self,
        op: &str,
        kubeconfig: &Path,
        name: &str,
        namespace: &str,
        values: &Value,
    ) -> Result<Vec<Value>, String> {
        let release = self.call(json!({
            "op": op, "kubeconfig": kubeconfig, "chart": chart_dir(), "values": values,
            "name": name, "namespace": namespace,
        }))?;
        Ok(documents(release["manifest"].as_str().unwrap_or_default()))
    }

    pub fn uninstall(&mut self, kubeconfig: &Path, name: &str, namespace: &str) {
        self.call(json!({"op": "uninstall", "kubeconfig": kubeconfig, "name": name, "namespace": namespace}))
            .unwrap();
    }
}
