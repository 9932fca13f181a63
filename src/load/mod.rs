//! Files of a tree → documents with spans.
//!
//! A tree is read in two steps so that the git adapter can feed blobs without a working tree:
//! [`walk`] finds the manifest files under a directory (honouring hidden entries,
//! `.meshopsignore` and symlinks that leave the root) and [`parse_file`] turns one file's
//! bytes into typed-by-kind documents. Problems never stop the load: every one is collected,
//! so `validate` can report them all at once.

mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::Kind;

pub use yaml::YamlError;

/// 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Position {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Where each node of a document was written, by JSON pointer. Map entries point at their key.
///
/// Recorded for every node of every load but read only for diagnostics, so recording is
/// cheap and reading does the work: each node keeps its parent, the last segment of its
/// pointer (in one string shared by the document, so no allocation per node and no copy of
/// its ancestors' keys) and its position; the children are indexed on the first lookup. When
/// two nodes have the same pointer (a merge key and an explicit key), the later one counts.
#[derive(Clone, Debug, Default)]
pub struct Spans {
    /// The last segment of every node's pointer, escaped as in a JSON pointer, one after the
    /// other.
    segments: String,
    nodes: Vec<SpanNode>,
    /// Node ids ordered by (parent, segment, id), built on the first lookup.
    children: std::sync::OnceLock<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct SpanNode {
    /// The parent's id; [`Spans::ROOT`] for the document.
    parent: u32,
    /// Where the segment ends in `segments` (it starts where the previous node's ends).
    end: u32,
    position: Position,
}

impl PartialEq for Spans {
    fn eq(&self, other: &Self) -> bool {
        self.segments == other.segments && self.nodes == other.nodes
    }
}

impl Spans {
    /// The id of the document itself, the parent of its top-level nodes.
    pub const ROOT: u32 = 0;

    /// Records the node at `parent`'s pointer + `/` + `segment` (already escaped) and returns
    /// its id, the parent of its own children.
    pub fn record(&mut self, parent: u32, segment: &str, position: Position) -> u32 {
        self.segments.push_str(segment);
        self.push(parent, position)
    }

    /// [`Spans::record`] for a map entry: `key` is escaped here.
    pub fn record_key(&mut self, parent: u32, key: &str, position: Position) -> u32 {
        if key.contains(['~', '/']) {
            for c in key.chars() {
                match c {
                    '~' => self.segments.push_str("~0"),
                    '/' => self.segments.push_str("~1"),
                    c => self.segments.push(c),
                }
            }
        } else {
            self.segments.push_str(key);
        }
        self.push(parent, position)
    }

    /// [`Spans::record`] for a sequence item.
    pub fn record_index(&mut self, parent: u32, index: usize, position: Position) -> u32 {
        use std::fmt::Write;
        let _ = write!(self.segments, "{index}");
        self.push(parent, position)
    }

    fn push(&mut self, parent: u32, position: Position) -> u32 {
        // A document has fewer nodes and segment bytes than its file has bytes; a file over
        // 4 GiB is refused long before (`Limits::max_file_bytes`).
        let end = u32::try_from(self.segments.len()).expect("document under 4 GiB");
        self.nodes.push(SpanNode {
            parent,
            end,
            position,
        });
        self.children.take();
        u32::try_from(self.nodes.len()).expect("document under 4 GiB")
    }

    /// The node's position (ids start at 1).
    fn position_of(&self, id: u32) -> Position {
        self.nodes[id as usize - 1].position
    }

    fn segment(&self, id: u32) -> &str {
        let index = id as usize - 1;
        let start = match index {
            0 => 0,
            _ => self.nodes[index - 1].end as usize,
        };
        &self.segments[start..self.nodes[index].end as usize]
    }

    pub fn get(&self, pointer: &str) -> Option<Position> {
        let rest = pointer.strip_prefix('/')?;
        let children = self.children.get_or_init(|| {
            let mut ids: Vec<u32> = (1..=self.nodes.len() as u32).collect();
            ids.sort_unstable_by(|&a, &b| {
                let parent = |id: u32| self.nodes[id as usize - 1].parent;
                (parent(a), self.segment(a), a).cmp(&(parent(b), self.segment(b), b))
            });
            ids
        });
        // Every node whose pointer is the prefix walked so far (several when a merge key and
        // an explicit key wrote the same path).
        let mut found = vec![Self::ROOT];
        for segment in rest.split('/') {
            let mut next = Vec::new();
            for &parent in &found {
                let key = |id: &u32| (self.nodes[*id as usize - 1].parent, self.segment(*id));
                let from = children.partition_point(|id| key(id) < (parent, segment));
                let to = children.partition_point(|id| key(id) <= (parent, segment));
                next.extend_from_slice(&children[from..to]);
            }
            if next.is_empty() {
                return None;
            }
            found = next;
        }
        found.into_iter().max().map(|id| self.position_of(id))
    }

    /// The position of `pointer`, or of its nearest ancestor that was written in the file
    /// (a missing field is reported where its parent is; aliased content where the alias is).
    pub fn locate(&self, pointer: &str) -> Option<Position> {
        let mut pointer = pointer;
        loop {
            if let Some(position) = self.get(pointer) {
                return Some(position);
            }
            pointer = &pointer[..pointer.rfind('/')?];
        }
    }
}

/// Bounds on what one file may cost to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    /// Nodes that alias expansion may add to one document.
    pub max_alias_nodes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 5 * 1024 * 1024,
            max_alias_nodes: 10_000,
            max_depth: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Namespace for objects that do not name one.
    pub default_namespace: String,
    pub purpose: Purpose,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            limits: Limits::default(),
            default_namespace: "default".into(),
            purpose: Purpose::Source,
        }
    }
}

/// What the files are: a source's manifests, or the agent's configuration file. Each refuses
/// the other's documents, so neither can be mistaken for the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Purpose {
    #[default]
    Source,
    AgentConfig,
}

/// A file as whoever holds the tree hands it over: read from disk by [`Tree::add_path`], or
/// taken from a commit's tree by the agent (no work tree). Both are parsed the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEntry {
    /// The path shown in diagnostics.
    pub path: PathBuf,
    /// The bytes, or why there are none (unreadable, over the size limit).
    pub content: Result<Vec<u8>, LoadError>,
}

/// A file that was read, kept for showing source lines in diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceFile {
    /// The path as the user should see it (the root they gave, joined with the relative path).
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// The text of a 1-based line, without its line break.
    pub fn line(&self, line: u32) -> Option<&str> {
        self.text.lines().nth((line as usize).checked_sub(1)?)
    }
}

/// One manifest: its kind is supported and its value is a mapping with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Index into [`Tree::files`].
    pub file: usize,
    pub index: usize,
    pub kind: Kind,
    pub start: Position,
    pub value: Value,
    pub spans: Spans,
}

impl Document {
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    /// Where `pointer` was written, falling back to the document start.
    pub fn position(&self, pointer: &str) -> Position {
        self.spans.locate(pointer).unwrap_or(self.start)
    }
}

/// What went wrong while reading a file; each becomes an error diagnostic.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {reason}")]
    Read { reason: String },
    #[error("file is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("symlink points outside the repository root (to {target})")]
    SymlinkEscapes { target: String },
    #[error("{0}")]
    Yaml(String),
    #[error("document is not a mapping")]
    NotAMapping,
    #[error("document has no {field}")]
    MissingType { field: &'static str },
    #[error("a Settings document belongs in meshops.yaml at the root of the source")]
    MisplacedSettings,
    #[error(
        "an AgentConfig belongs in the file given to `meshops agent --config`, not in a source"
    )]
    MisplacedAgentConfig,
    #[error(
        "the agent's config file holds one meshops.io/v1alpha1 AgentConfig document, not a {kind}"
    )]
    NotAgentConfig { kind: String },
    #[error("{kind} is cluster-scoped; meshops only manages namespaced objects")]
    ClusterScoped { kind: String },
    #[error(
        "unsupported kind {api_version}/{kind}: a repository holds Function, Source, Sink, \
         FunctionMesh, BackendConfig (compute.functionmesh.io/v1alpha1), ConfigMap, Secret \
         or ServiceAccount (v1)"
    )]
    UnsupportedKind { api_version: String, kind: String },
}

impl LoadError {
    /// Stable code for machines and docs.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "io",
            LoadError::TooLarge { .. } => "file-too-large",
            LoadError::NotUtf8 => "not-utf8",
            LoadError::SymlinkEscapes { .. } => "symlink-escapes-root",
            LoadError::Yaml(_) => "yaml",
            LoadError::NotAMapping => "not-a-mapping",
            LoadError::MissingType { .. } => "missing-type",
            LoadError::MisplacedSettings => "misplaced-settings",
            LoadError::MisplacedAgentConfig => "misplaced-agent-config",
            LoadError::NotAgentConfig { .. } => "not-agent-config",
            LoadError::ClusterScoped { .. } => "cluster-scoped-kind",
            LoadError::UnsupportedKind { .. } => "unsupported-kind",
        }
    }
}

/// A problem found while loading, with where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadProblem {
    /// Index into [`Tree::files`], or `None` with `path` when the file could not be read.
    pub file: Option<usize>,
    pub path: PathBuf,
    pub position: Option<Position>,
    /// JSON pointer of the field, when the problem is inside a document.
    pub pointer: Option<String>,
    pub error: LoadError,
}

/// Everything read from one or more roots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tree {
    pub files: Vec<SourceFile>,
    pub documents: Vec<Document>,
    pub problems: Vec<LoadProblem>,
}

/// Kinds that exist only at cluster scope; a repository may not hold them.
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// File name of the ignore file, in gitignore syntax, honoured in every directory.
pub const IGNORE_FILE: &str = ".meshopsignore";

impl Tree {
    /// Loads `path`: a directory is walked, a file is read as it is.
    pub fn load(path: &Path, options: &LoadOptions) -> Tree {
        let mut tree = Tree::default();
        tree.add_path(path, options);
        tree
    }

    /// Adds everything under `path` to the tree.
    pub fn add_path(&mut self, path: &Path, options: &LoadOptions) {
        use rayon::prelude::*;
        // Files are read and parsed in parallel, each into a tree of its own, then merged in
        // walk order so the result does not depend on scheduling.
        let parts: Vec<Tree> = walk(path)
            .into_par_iter()
            .map(|entry| match entry {
                Ok(file) => Tree::part(read_file(&file, options), options),
                Err(problem) => Tree {
                    problems: vec![problem],
                    ..Tree::default()
                },
            })
            .collect();
        for part in parts {
            self.merge(part);
        }
    }

    /// Adds the files of a commit's tree: the manifests among them, picked as [`walk`] picks
    /// them on disk (`*.yaml`/`*.yml`, no hidden entries, `.meshopsignore` honoured), parsed
    /// in parallel and in path order.
    pub fn add_entries(&mut self, entries: Vec<FileEntry>, options: &LoadOptions) {
        use rayon::prelude::*;
        let parts: Vec<Tree> = manifests_among(entries)
            .into_par_iter()
            .map(|entry| Tree::part(entry, options))
            .collect();
        for part in parts {
            self.merge(part);
        }
    }

    /// One file's tree.
    fn part(entry: FileEntry, options: &LoadOptions) -> Tree {
        let mut part = Tree::default();
        match entry.content {
            Ok(bytes) => part.add_bytes(entry.path, bytes, options),
            Err(error) => part.problems.push(LoadProblem {
                file: None,
                path: entry.path,
                position: None,
                pointer: None,
                error,
            }),
        }
        part
    }

    /// Appends another tree, renumbering its file indices.
    fn merge(&mut self, other: Tree) {
        let offset = self.files.len();
        self.files.extend(other.files);
        self.documents
            .extend(other.documents.into_iter().map(|mut d| {
                d.file += offset;
                d
            }));
        self.problems
            .extend(other.problems.into_iter().map(|mut p| {
                p.file = p.file.map(|f| f + offset);
                p
            }));
    }

    /// Parses one file's content (from disk or from a git blob) into the tree.
    pub fn add_bytes(&mut self, path: PathBuf, bytes: Vec<u8>, options: &LoadOptions) {
        if bytes.len() as u64 > options.limits.max_file_bytes {
            let (size, limit) = (bytes.len() as u64, options.limits.max_file_bytes);
            return self.problems.push(LoadProblem {
                file: None,
                path,
                position: None,
                pointer: None,
                error: LoadError::TooLarge { size, limit },
            });
        }
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => {
                let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
                let col = valid.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
                return self.problems.push(LoadProblem {
                    file: None,
                    path,
                    position: Some(Position { line, col }),
                    pointer: None,
                    error: LoadError::NotUtf8,
                });
            }
        };
        let file = self.files.len();
        let parsed = yaml::parse_documents(text.trim_start_matches('\u{feff}'), &options.limits);
        self.files.push(SourceFile { path, text });
        let raw_documents = match parsed {
            Ok(documents) => documents,
            Err(err) => {
                return self.problems.push(LoadProblem {
                    file: Some(file),
                    path: self.files[file].path.clone(),
                    position: Some(err.position),
                    pointer: None,
                    error: LoadError::Yaml(err.message),
                })
            }
        };
        let is_settings_file = self.files[file]
            .path
            .file_name()
            .is_some_and(|n| n == crate::model::settings::SETTINGS_FILE);
        for raw in raw_documents {
            let kind = classify(&raw.value).and_then(|kind| match (options.purpose, kind) {
                (Purpose::Source, Kind::Settings) if !is_settings_file => {
                    Err(("/kind", LoadError::MisplacedSettings))
                }
                (Purpose::Source, Kind::AgentConfig) => {
                    Err(("/kind", LoadError::MisplacedAgentConfig))
                }
                (Purpose::AgentConfig, Kind::AgentConfig) | (Purpose::Source, _) => Ok(kind),
                (Purpose::AgentConfig, other) => Err((
                    "/kind",
                    LoadError::NotAgentConfig {
                        kind: other.to_string(),
                    },
                )),
            });
            match kind {
                Ok(kind) => {
                    let mut value = raw.value;
                    if !matches!(kind, Kind::Settings | Kind::AgentConfig) {
                        set_default_namespace(&mut value, &options.default_namespace);
                    }
                    self.documents.push(Document {
                        file,
                        index: raw.index,
                        kind,
                        start: raw.start,
                        value,
                        spans: raw.spans,
                    });
                }
                Err((pointer, error)) => {
                    let position = raw.spans.get(pointer).unwrap_or(raw.start);
                    self.problems.push(LoadProblem {
                        file: Some(file),
                        path: self.files[file].path.clone(),
                        position: Some(position),
                        pointer: Some(pointer.to_owned()),
                        error,
                    });
                }
            }
        }
    }

    pub fn file_of(&self, document: &Document) -> &SourceFile {
        &self.files[document.file]
    }
}

/// Resolves a document's kind, or says (with the pointer to blame) why it is not acceptable.
fn classify(value: &Value) -> Result<Kind, (&'static str, LoadError)> {
    let Some(map) = value.as_object() else {
        return Err(("", LoadError::NotAMapping));
    };
    let field = |name: &'static str| match map.get(name).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(("", LoadError::MissingType { field: name })),
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    if let Some(kind) = Kind::from_type(api_version, kind) {
        return Ok(kind);
    }
    if CLUSTER_SCOPED.contains(&kind) {
        return Err((
            "/kind",
            LoadError::ClusterScoped {
                kind: kind.to_owned(),
            },
        ));
    }
    Err((
        "/kind",
        LoadError::UnsupportedKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        },
    ))
}

fn set_default_namespace(value: &mut Value, namespace: &str) {
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        let missing = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing {
            metadata.insert("namespace".into(), Value::String(namespace.into()));
        }
    }
}

/// Manifest files under `root` in a stable order (sorted by path). A file given directly is
/// returned as is. Hidden entries and whatever `.meshopsignore` files list are skipped;
/// symlinks are followed only to files inside the root. A root that cannot be read is one
/// problem in the list.
pub fn walk(root: &Path) -> Vec<Result<PathBuf, LoadProblem>> {
    let problem = |path: &Path, error| LoadProblem {
        file: None,
        path: path.to_path_buf(),
        position: None,
        pointer: None,
        error,
    };
    let unreadable = |err: std::io::Error| {
        vec![Err(problem(
            root,
            LoadError::Read {
                reason: err.to_string(),
            },
        ))]
    };
    let meta = match std::fs::metadata(root) {
        Ok(meta) => meta,
        Err(err) => return unreadable(err),
    };
    if meta.is_file() {
        return vec![Ok(root.to_path_buf())];
    }
    let canonical_root = match root.canonicalize() {
        Ok(path) => path,
        Err(err) => return unreadable(err),
    };
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .hidden(true)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    let mut files = Vec::new();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                files.push(Err(problem(
                    root,
                    LoadError::Read {
                        reason: err.to_string(),
                    },
                )));
                continue;
            }
        };
        let path = entry.path();
        if entry.path_is_symlink() {
            match path.canonicalize() {
                Ok(target) if !target.starts_with(&canonical_root) => {
                    files.push(Err(problem(
                        path,
                        LoadError::SymlinkEscapes {
                            target: target.display().to_string(),
                        },
                    )));
                }
                Ok(target) if target.is_file() && is_manifest(path) => {
                    files.push(Ok(path.to_path_buf()))
                }
                // Directories behind symlinks are not descended: their files are already
                // reached through their real path inside the root.
                Ok(_) => {}
                Err(err) => files.push(Err(problem(
                    path,
                    LoadError::Read {
                        reason: err.to_string(),
                    },
                ))),
            }
            continue;
        }
        if entry.file_type().is_some_and(|t| t.is_file()) && is_manifest(path) {
            files.push(Ok(path.to_path_buf()));
        }
    }
    files
}

/// Reads one file from disk, refusing it unread when it is over the size limit.
fn read_file(path: &Path, options: &LoadOptions) -> FileEntry {
    let unreadable = |err: std::io::Error| LoadError::Read {
        reason: err.to_string(),
    };
    // One lookup of the path and one status call: the size comes from the open file, and
    // reading stops past the limit should the file have grown since.
    let limit = options.limits.max_file_bytes;
    let content = std::fs::File::open(path)
        .and_then(|file| Ok((file.metadata()?.len(), file)))
        .map_err(unreadable)
        .and_then(|(size, file)| {
            if size > limit {
                return Err(LoadError::TooLarge { size, limit });
            }
            let mut bytes = Vec::with_capacity(size as usize + 1);
            std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
                .map_err(unreadable)?;
            match bytes.len() as u64 {
                size if size > limit => Err(LoadError::TooLarge { size, limit }),
                _ => Ok(bytes),
            }
        });
    FileEntry {
        path: path.to_path_buf(),
        content,
    }
}

/// The manifests among a commit's files, in path order: what [`walk`] would return for the
/// same files on disk. A `.meshopsignore` applies to its directory and below; the deepest
/// one with a matching rule decides, as with `.gitignore`.
fn manifests_among(mut entries: Vec<FileEntry>) -> Vec<FileEntry> {
    use ignore::gitignore::GitignoreBuilder;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut ignores: Vec<(PathBuf, ignore::gitignore::Gitignore)> = entries
        .iter()
        .filter(|e| e.path.file_name().is_some_and(|n| n == IGNORE_FILE))
        .filter_map(|e| {
            let text = String::from_utf8_lossy(e.content.as_ref().ok()?);
            let dir = e.path.parent().unwrap_or(Path::new("")).to_path_buf();
            let mut builder = GitignoreBuilder::new(&dir);
            for line in text.lines() {
                // A malformed pattern is skipped, as git and the directory walk skip it.
                let _ = builder.add_line(None, line);
            }
            builder.build().ok().map(|matcher| (dir, matcher))
        })
        .collect();
    ignores.sort_by_key(|(dir, _)| std::cmp::Reverse(dir.components().count()));
    let ignored = |path: &Path| {
        for (dir, matcher) in &ignores {
            if !path.starts_with(dir) {
                continue;
            }
            let verdict = matcher.matched_path_or_any_parents(path, false);
            if verdict.is_ignore() {
                return true;
            }
            if verdict.is_whitelist() {
                return false;
            }
        }
        false
    };
    let hidden = |path: &Path| {
        path.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    };
    entries
        .into_iter()
        .filter(|e| is_manifest(&e.path) && !hidden(&e.path) && !ignored(&e.path))
        .collect()
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Tree {
        let mut tree = Tree::default();
        tree.add_bytes(
            "x.yaml".into(),
            text.as_bytes().to_vec(),
            &LoadOptions::default(),
        );
        tree
    }

    #[test]
    fn classifies_kinds_and_defaults_the_namespace() {
        let tree = load_str(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
             apiVersion: compute.functionmesh.io/v1alpha1\nkind: Function\nmetadata: {name: f, namespace: prod}\n",
        );
        assert!(tree.problems.is_empty(), "{:?}", tree.problems);
        assert_eq!(tree.documents[0].kind, Kind::ConfigMap);
        assert_eq!(tree.documents[0].namespace(), "default");
        assert_eq!(tree.documents[1].kind, Kind::Function);
        assert_eq!(tree.documents[1].namespace(), "prod");
    }

    #[test]
    fn refuses_documents_it_cannot_manage() {
        let tree = load_str(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             metadata: {name: x}\n---\n- 1\n",
        );
        let errors: Vec<_> = tree.problems.iter().map(|p| p.error.code()).collect();
        assert_eq!(
            errors,
            [
                "cluster-scoped-kind",
                "unsupported-kind",
                "missing-type",
                "not-a-mapping"
            ]
        );
        assert_eq!(
            tree.problems[0].position,
            Some(Position { line: 2, col: 1 })
        );
        assert_eq!(
            tree.problems[1].position,
            Some(Position { line: 6, col: 1 })
        );
        assert!(tree.documents.is_empty());
    }

    #[test]
    fn refuses_non_utf8_with_position() {
        let mut tree = Tree::default();
        tree.add_bytes(
            "bad.yaml".into(),
            b"a: 1\nb: \xff\n".to_vec(),
            &LoadOptions::default(),
        );
        assert_eq!(tree.problems[0].error, LoadError::NotUtf8);
        assert_eq!(
            tree.problems[0].position,
            Some(Position { line: 2, col: 4 })
        );
    }

    #[test]
    fn refuses_files_over_the_limit() {
        let options = LoadOptions {
            limits: Limits {
                max_file_bytes: 10,
                ..Limits::default()
            },
            ..LoadOptions::default()
        };
        let mut tree = Tree::default();
        tree.add_bytes("big.yaml".into(), vec![b'#'; 11], &options);
        assert_eq!(
            tree.problems[0].error,
            LoadError::TooLarge {
                size: 11,
                limit: 10
            }
        );
    }

    /// A commit's files and the same files on disk load into the same documents.
    #[test]
    fn a_commit_tree_loads_as_the_directory_does() {
        let cm =
            |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
        let files: Vec<(&str, String)> = vec![
            ("a.yaml", cm("a")),
            ("b.yml", cm("b")),
            ("notes.txt", cm("txt")),
            (".hidden/x.yaml", cm("hidden")),
            (".meshopsignore", "drafts/\n*.skip.yaml\n".into()),
            ("drafts/d.yaml", cm("draft")),
            ("sub/c.yaml", cm("c")),
            ("sub/c.skip.yaml", cm("skipped")),
            ("sub/keep/.meshopsignore", "!k.skip.yaml\n".into()),
            ("sub/keep/k.skip.yaml", cm("kept")),
            ("sub/big.yaml", "#".repeat(64)),
        ];
        let options = LoadOptions {
            limits: Limits {
                max_file_bytes: 60,
                ..Limits::default()
            },
            ..LoadOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in &files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let on_disk = Tree::load(dir.path(), &options);
        let mut from_commit = Tree::default();
        let entries = files
            .iter()
            .rev()
            .map(|(path, text)| FileEntry {
                path: path.into(),
                content: if text.len() as u64 > options.limits.max_file_bytes {
                    Err(LoadError::TooLarge {
                        size: text.len() as u64,
                        limit: options.limits.max_file_bytes,
                    })
                } else {
                    Ok(text.clone().into_bytes())
                },
            })
            .collect();
        from_commit.add_entries(entries, &options);
        let names = |t: &Tree| {
            t.documents
                .iter()
                .map(|d| d.name().to_owned())
                .collect::<Vec<_>>()
        };
        let problems = |t: &Tree| {
            t.problems
                .iter()
                .map(|p| p.error.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&from_commit), ["a", "b", "c", "kept"]);
        assert_eq!(names(&on_disk), names(&from_commit));
        assert_eq!(problems(&on_disk), problems(&from_commit));
        assert_eq!(
            problems(&from_commit).len(),
            1,
            "{:?}",
            from_commit.problems
        );
        assert_eq!(from_commit.problems[0].path, Path::new("sub/big.yaml"));
    }

    #[test]
    fn sources_and_the_agent_config_refuse_each_others_documents() {
        let agent = "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\nsources: []\n";
        let source_tree = load_str(agent);
        assert_eq!(
            source_tree.problems[0].error,
            LoadError::MisplacedAgentConfig
        );
        let options = LoadOptions {
            purpose: Purpose::AgentConfig,
            ..LoadOptions::default()
        };
        let mut config = Tree::default();
        config.add_bytes("agent.yaml".into(), agent.as_bytes().to_vec(), &options);
        assert!(config.problems.is_empty());
        assert_eq!(config.documents[0].kind, Kind::AgentConfig);
        let mut wrong = Tree::default();
        wrong.add_bytes(
            "agent.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n".to_vec(),
            &options,
        );
        assert_eq!(wrong.problems[0].error.code(), "not-agent-config");
    }

    #[test]
    fn locate_falls_back_to_the_nearest_written_ancestor() {
        let tree = load_str("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n");
        let doc = &tree.documents[0];
        assert_eq!(doc.position("/metadata/name"), Position { line: 4, col: 3 });
        assert_eq!(
            doc.position("/metadata/labels/x"),
            Position { line: 3, col: 1 }
        );
        assert_eq!(doc.position("/nothing"), doc.start);
    }
}
