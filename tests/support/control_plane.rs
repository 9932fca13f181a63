//! A real control plane for the e2e suite: etcd and kube-apiserver on free loopback ports, as
//! controller-runtime's envtest starts them.
//!
//! The binaries are found the way envtest finds them: `$KUBEBUILDER_ASSETS`, else
//! `/usr/local/kubebuilder/bin` (files `etcd` and `kube-apiserver`). Everything the server needs
//! is made fresh in a temp dir: a CA and serving certificate (so the kubeconfig verifies TLS
//! instead of skipping it), service-account signing keys, a static token file with an admin in
//! `system:masters` and an unprivileged user for RBAC checks. Dropping the value stops exactly
//! the two processes it started and removes the temp dir.
//!
//! An API server alone runs no controllers: no pods, no garbage collection, namespaces never
//! finish deleting. Tests written against it must not wait for any of that.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// The unprivileged user of the token file: authenticated, bound to nothing.
pub const UNPRIVILEGED_USER: &str = "e2e-nobody";

pub struct ControlPlane {
    /// https://127.0.0.1:PORT
    pub server: String,
    /// Kubeconfig of the admin (`system:masters`), context `e2e`.
    pub kubeconfig: PathBuf,
    /// The CA that signed the serving certificate, PEM.
    pub ca_file: PathBuf,
    pub admin_token: String,
    pub unprivileged_token: String,
    // Fields drop in order: the API server stops before etcd, both before the dir goes.
    apiserver: Process,
    etcd: Process,
    dir: tempfile::TempDir,
}

/// A child process that is killed and reaped when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where envtest looks for `etcd` and `kube-apiserver`; `None` when either is missing.
pub fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/kubebuilder/bin"));
    let usable = ["etcd", "kube-apiserver"]
        .iter()
        .all(|b| dir.join(b).is_file());
    usable.then_some(dir)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|_| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

fn spawn(dir: &Path, name: &'static str, args: &[String], log: &Path) -> Result<Process, String> {
    let binary = dir.join(name);
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(|child| Process { name, child })
        .map_err(|e| format!("starting {}: {e}", binary.display()))
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A kubeconfig for `server` that trusts the CA in `ca_file` and authenticates with `token`.
pub fn kubeconfig(server: &str, ca_file: &Path, token: &str) -> String {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "e2e", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
        "current-context": "e2e",
    });
    serde_yaml::to_string(&config).unwrap_or_default()
}

impl ControlPlane {
    /// The process ids of kube-apiserver and etcd (the benchmarks read their CPU time).
    pub fn server_pids(&self) -> [u32; 2] {
        [self.apiserver.child.id(), self.etcd.child.id()]
    }

    /// Starts etcd and kube-apiserver from `assets` and waits until `/readyz` answers ok.
    pub async fn start(assets: &Path) -> Result<ControlPlane, String> {
        let dir = tempfile::Builder::new()
            .prefix("meshops-e2e-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| {
            fs::write(path(name), text).map_err(|e| format!("{name}: {e}"))
        };

        let pki = |e: rcgen::Error| format!("generating certificates: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "meshops-e2e-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(pki)?)
            .map_err(pki)?;
        let serving_key = KeyPair::generate().map_err(pki)?;
        let mut serving =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(pki)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let serving_cert = serving.signed_by(&serving_key, &ca).map_err(pki)?;
        let service_account = KeyPair::generate().map_err(pki)?;
        write("ca.crt", &ca.pem())?;
        write("apiserver.crt", &serving_cert.pem())?;
        write("apiserver.key", &serving_key.serialize_pem())?;
        write("sa.key", &service_account.serialize_pem())?;
        write("sa.pub", &service_account.public_key_pem())?;

        let admin_token = random_token();
        let unprivileged_token = random_token();
        write(
            "tokens.csv",
            &format!(
                "{admin_token},e2e-admin,e2e-admin,\"system:masters\"\n\
                 {unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n"
            ),
        )?;

        let (client_port, peer_port, secure_port) = (
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
        );
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            format!("--data-dir={}", path("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_owned(),
        ];
        let etcd = spawn(assets, "etcd", &etcd_args, &path("etcd.log"))?;
        let server = format!("https://127.0.0.1:{secure_port}");
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={secure_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", path("certs").display()),
            format!("--tls-cert-file={}", path("apiserver.crt").display()),
            format!("--tls-private-key-file={}", path("apiserver.key").display()),
            format!("--token-auth-file={}", path("tokens.csv").display()),
            format!("--service-account-key-file={}", path("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            "--allow-privileged=true".to_owned(),
            // No controller-manager creates the `default` ServiceAccount of new namespaces.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
        ];
        let apiserver = spawn(
            assets,
            "kube-apiserver",
            &apiserver_args,
            &path("kube-apiserver.log"),
        )?;
        let plane = ControlPlane {
            kubeconfig: path("kubeconfig"),
            server: server.clone(),
            ca_file: path("ca.crt"),
            admin_token,
            unprivileged_token,
            apiserver,
            etcd,
            dir,
        };
        let config = kubeconfig(&server, &plane.ca_file, &plane.admin_token);
        fs::write(&plane.kubeconfig, config).map_err(|e| e.to_string())?;
        let mut plane = plane;
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// The API server's serving certificate and key (PEM files): it is for `127.0.0.1` and
    /// `localhost`, so a proxy on another loopback port can serve it to clients that verify
    /// with [`ControlPlane::ca_file`].
    pub fn serving_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("apiserver.crt"),
            self.dir.path().join("apiserver.key"),
        )
    }

    /// A kubeconfig file for the same server with another token.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let _ = fs::write(&path, kubeconfig(&self.server, &self.ca_file, token));
        path
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| e.to_string())?,
            &Default::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(90) {
            for process in [&mut self.etcd, &mut self.apiserver] {
                if let Ok(Some(status)) = process.child.try_wait() {
                    let name = process.name;
                    let log = self.dir.path().join(format!("{name}.log"));
                    return Err(format!("{name} exited ({status}):\n{}", tail(&log)));
                }
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            match client.request_text(request).await {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                Ok(text) => last = text,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!(
            "kube-apiserver not ready after 90s ({last}):\n{}",
            tail(&self.dir.path().join("kube-apiserver.log"))
        ))
    }
}

/// Waits until every named CustomResourceDefinition is Established (at most 30 s): its kinds
/// are served from then on.
/// The Function Mesh CRDs from `meshops crds`, Established, and `namespaces`: what the
/// benchmarks deploy into.
pub async fn install_function_mesh(cluster: &meshops::cluster::Cluster, namespaces: &[&str]) {
    use meshops::model::crd::{crd, CRD_KINDS};
    for (kind, plural) in CRD_KINDS {
        cluster.apply(&crd(kind, plural), false).await.unwrap();
    }
    for namespace in namespaces {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        cluster.apply(&object, false).await.unwrap();
    }
    let names: Vec<String> = CRD_KINDS
        .iter()
        .map(|(_, plural)| format!("{plural}.compute.functionmesh.io"))
        .collect();
    wait_established(cluster, &names).await;
}

pub async fn wait_established(cluster: &meshops::cluster::Cluster, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in names {
        let crd = meshops::plan::ObjectRef {
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            namespace: String::new(),
            name: name.clone(),
        };
        loop {
            let live = cluster.get(&crd).await.unwrap().unwrap_or_default();
            let established = live["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not Established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
