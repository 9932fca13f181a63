//! Desired objects + live objects + inventory → a Plan: per object create, update, recreate,
//! delete or unchanged, each with its reason, and the diffs to show.
//!
//! Pure. "Changed" is decided cheaply, without asking the API server: the desired spec-hash
//! against the live annotation, and the field set the `meshops` manager owns (from
//! `metadata.managedFields`) against the fingerprint recorded at the last apply — a foreign
//! edit or a removed label shrinks that set (fixtures 09 and 16). Only changed objects need a
//! server-side dry-run; its result is what [`diff`] compares with the live object.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use similar::TextDiff;

use crate::render::{sensitive, sorted, Object, SOURCE_LABEL, SPEC_HASH};

/// The field manager meshops applies with.
pub const FIELD_MANAGER: &str = "meshops";
/// An object carrying this annotation is never pruned.
pub const PRUNE_ANNOTATION: &str = "meshops.io/prune";
/// The reason of an [`Action::Prunable`] object.
pub const PRUNABLE_REASON: &str = "removed from the repository; would be pruned with --prune";

/// Which object, independent of its content.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn of(value: &Value) -> ObjectRef {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        ObjectRef {
            api_version: text(&value["apiVersion"]),
            kind: text(&value["kind"]),
            namespace: text(&value["metadata"]["namespace"]),
            name: text(&value["metadata"]["name"]),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}/{}",
            self.api_version, self.kind, self.namespace, self.name
        )
    }
}

/// What was applied last time, as the inventory records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InventoryEntry {
    pub object: ObjectRef,
    /// [`fingerprint`] of the live object right after meshops applied it.
    pub fingerprint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    /// The object exists without meshops' labels (made by hand or by the Function Mesh
    /// operator): applying takes it over.
    Adopt,
    Update,
    Recreate,
    Delete,
    /// The object belongs to another source: apply refuses unless told to take it over.
    Conflict,
    /// Removed from the repository but annotated `meshops.io/prune: disabled`: left alone.
    Keep,
    /// Removed from the repository while the apply runs without prune: left in the cluster
    /// and kept in the inventory, so that a later apply with prune deletes it. Its own action,
    /// not a delete, so that a plan never shows (or counts) a delete its apply skips.
    Prunable,
    Unchanged,
}

impl Action {
    /// How `plan` marks the action, terraform-style.
    pub fn sign(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Adopt => "+~",
            Action::Update => "~",
            Action::Recreate => "-/+",
            Action::Delete => "-",
            Action::Conflict => "!",
            Action::Keep => "=",
            Action::Prunable => "(-)",
            Action::Unchanged => " ",
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Adopt => "adopt",
            Action::Update => "update",
            Action::Recreate => "recreate",
            Action::Delete => "delete",
            Action::Conflict => "conflict",
            Action::Keep => "keep",
            Action::Prunable => "not pruned",
            Action::Unchanged => "unchanged",
        }
    }

    /// Whether executing the plan writes the object.
    pub fn writes(self) -> bool {
        !matches!(
            self,
            Action::Unchanged | Action::Conflict | Action::Keep | Action::Prunable
        )
    }

    /// Whether the object differs in a way the apply of this plan acts on (or refuses to, for
    /// a conflict): what `--detailed-exitcode` and the summary count. An object left alone
    /// (kept, or prunable without prune) is not a change.
    pub fn is_change(self) -> bool {
        !matches!(self, Action::Unchanged | Action::Keep | Action::Prunable)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub object: ObjectRef,
    pub action: Action,
    pub reason: String,
}

/// The plan for one source, in apply order (deletes last, in reverse).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    /// Whether the apply of this plan changes anything; a kept object (prune disabled) and
    /// one only an apply with prune would delete are not changes.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.is_change())
    }

    /// The plan of an apply without prune: each delete becomes [`Action::Prunable`], shown as
    /// such and not counted as a delete, since that apply leaves the object where it is.
    pub fn without_prune(mut self) -> Plan {
        for change in &mut self.changes {
            if change.action == Action::Delete {
                change.action = Action::Prunable;
                change.reason = PRUNABLE_REASON.to_owned();
            }
        }
        self
    }

    /// `Plan: 2 to create, 1 to change, 1 to recreate, 0 to delete.`, with adoptions and
    /// conflicts named when there are any, and the objects only `--prune` would delete.
    pub fn summary(&self) -> String {
        let prunable = match self.count(Action::Prunable) {
            0 => String::new(),
            1 => " 1 object removed from the repository would be pruned with --prune.".into(),
            n => format!(" {n} objects removed from the repository would be pruned with --prune."),
        };
        if !self.has_changes() {
            if prunable.is_empty() {
                return "No changes. The cluster matches the repository.".into();
            }
            return format!("No changes.{prunable}");
        }
        let adopt = match self.count(Action::Adopt) {
            0 => String::new(),
            n => format!("{n} to adopt, "),
        };
        let conflicts = match self.count(Action::Conflict) {
            0 => String::new(),
            1 => " 1 object belongs to another source.".into(),
            n => format!(" {n} objects belong to another source."),
        };
        format!(
            "Plan: {} to create, {adopt}{} to change, {} to recreate, {} to delete.{conflicts}{prunable}",
            self.count(Action::Create),
            self.count(Action::Update),
            self.count(Action::Recreate),
            self.count(Action::Delete)
        )
    }
}

/// sha256 of the field set the `meshops` manager owns through `Apply` on the object itself
/// (not a subresource). Equal fingerprints mean nobody took or removed any of our fields.
pub fn fingerprint(live: &Value) -> Option<String> {
    let entry = live["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|m| {
            m["manager"] == FIELD_MANAGER
                && m["operation"] == "Apply"
                && m.get("subresource").is_none()
        })?;
    let canonical = serde_json::to_string(&sorted(entry["fieldsV1"].clone())).ok()?;
    Some(format!("{:x}", Sha256::digest(canonical.as_bytes())))
}

/// The fields other managers own on an object (`spec.template.spec.containers[name=x].image`),
/// to say what drifted.
pub fn foreign_fields(live: &Value) -> Vec<String> {
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        let Some(map) = node.as_object().filter(|m| !m.is_empty()) else {
            out.push(path.to_owned());
            return;
        };
        for (key, child) in map {
            if key == "." {
                continue;
            }
            let segment = match (key.strip_prefix("f:"), key.strip_prefix("k:")) {
                (Some(field), _) => format!("{}{field}", if path.is_empty() { "" } else { "." }),
                (_, Some(selector)) => {
                    let parsed: Value = serde_json::from_str(selector).unwrap_or(Value::Null);
                    let terms: Vec<String> = parsed
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| {
                            format!(
                                "{k}={}",
                                v.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v.to_string())
                            )
                        })
                        .collect();
                    format!("[{}]", terms.join(","))
                }
                _ => format!("[{key}]"),
            };
            walk(child, &format!("{path}{segment}"), out);
        }
    }
    let mut out = Vec::new();
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if entry["manager"] != FIELD_MANAGER && entry.get("subresource").is_none() {
            walk(&entry["fieldsV1"], "", &mut out);
        }
    }
    out
}

/// Other managers that wrote the object, for the reason of a drift or an adoption.
fn foreign_writers(live: &Value) -> Vec<String> {
    let writers: BTreeSet<String> = live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] != FIELD_MANAGER && m.get("subresource").is_none())
        .filter_map(|m| m["manager"].as_str().map(str::to_owned))
        .collect();
    writers.into_iter().collect()
}

/// `kubectl-edit (spec.template.spec.containers[name=pulsar-function].image)`: who changed
/// what, at most a few fields each.
fn drift_reason(live: &Value) -> String {
    const SHOWN: usize = 4;
    let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] != FIELD_MANAGER && m.get("subresource").is_none())
    {
        let manager = entry["manager"].as_str().unwrap_or("unknown").to_owned();
        let fields = foreign_fields(&serde_json::json!({"metadata": {"managedFields": [entry]}}));
        by_manager.entry(manager).or_default().extend(fields);
    }
    let parts: Vec<String> = by_manager
        .into_iter()
        .map(|(manager, fields)| {
            if fields.is_empty() {
                return manager;
            }
            let more = fields.len().saturating_sub(SHOWN);
            let mut shown = fields[..fields.len().min(SHOWN)].join(", ");
            if more > 0 {
                shown.push_str(&format!(", {more} more"));
            }
            format!("{manager} ({shown})")
        })
        .collect();
    if parts.is_empty() {
        "changed in the cluster: fields meshops applied were modified or removed".into()
    } else {
        format!("changed in the cluster by {}", parts.join("; "))
    }
}

/// StatefulSet fields the API server refuses to change (fixture 12): a change is a recreate.
const IMMUTABLE: &[(&str, &str)] = &[
    ("StatefulSet", "/spec/selector"),
    ("StatefulSet", "/spec/serviceName"),
    ("StatefulSet", "/spec/volumeClaimTemplates"),
    ("StatefulSet", "/spec/podManagementPolicy"),
];

fn immutable_change(desired: &Value, live: &Value) -> Option<&'static str> {
    let kind = desired["kind"].as_str()?;
    IMMUTABLE.iter().find_map(|(k, pointer)| {
        let changed = *k == kind
            && desired.pointer(pointer).is_some()
            && desired.pointer(pointer) != live.pointer(pointer);
        changed.then_some(*pointer)
    })
}

/// Decides every object's action from what is cheap to know.
pub fn plan(
    desired: &[Object],
    live: &BTreeMap<ObjectRef, Value>,
    inventory: &[InventoryEntry],
) -> Plan {
    let recorded: BTreeMap<&ObjectRef, Option<&String>> = inventory
        .iter()
        .map(|e| (&e.object, e.fingerprint.as_ref()))
        .collect();
    let mut changes = Vec::new();
    let mut wanted = BTreeSet::new();
    for object in desired {
        let reference = ObjectRef::of(&object.value);
        wanted.insert(reference.clone());
        let Some(current) = live.get(&reference) else {
            changes.push(Change {
                object: reference,
                action: Action::Create,
                reason: "not in the cluster".into(),
            });
            continue;
        };
        let owner = current["metadata"]["labels"][SOURCE_LABEL].as_str();
        let ours = object.value["metadata"]["labels"][SOURCE_LABEL].as_str();
        if owner.is_some() && owner != ours {
            changes.push(Change {
                object: reference,
                action: Action::Conflict,
                reason: format!(
                    "belongs to source \"{}\" ({SOURCE_LABEL}); apply refuses unless told to take it over",
                    owner.unwrap_or_default()
                ),
            });
            continue;
        }
        if owner.is_none() && !recorded.contains_key(&reference) {
            let writers = foreign_writers(current);
            let by = if writers.is_empty() {
                String::new()
            } else {
                format!(", written by {}", writers.join(", "))
            };
            changes.push(Change {
                object: reference,
                action: Action::Adopt,
                reason: format!("exists without meshops' labels{by}: apply adopts it"),
            });
            continue;
        }
        let desired_hash = object.value["metadata"]["annotations"][SPEC_HASH].as_str();
        let live_hash = current["metadata"]["annotations"][SPEC_HASH].as_str();
        let (action, reason) = if desired_hash != live_hash {
            match immutable_change(&object.value, current) {
                Some(field) => (
                    Action::Recreate,
                    format!("{field} cannot be changed in place: delete and create"),
                ),
                None => (Action::Update, "the repository changed".to_owned()),
            }
        } else {
            match recorded.get(&reference).copied().flatten() {
                Some(expected) if fingerprint(current).as_ref() != Some(expected) => {
                    (Action::Update, drift_reason(current))
                }
                _ => (Action::Unchanged, "in sync".to_owned()),
            }
        };
        changes.push(Change {
            object: reference,
            action,
            reason,
        });
    }
    // An entry whose object is not in the cluster plans nothing (it was deleted by someone,
    // or listed by an interrupted pass that never created it); the apply drops it.
    let mut deletes: Vec<Change> = inventory
        .iter()
        .filter(|e| !wanted.contains(&e.object))
        .filter_map(|e| {
            let current = live.get(&e.object)?;
            let keep = current["metadata"]["annotations"][PRUNE_ANNOTATION] == "disabled";
            // Listed without fingerprint and without meshops' label: an interrupted pass
            // recorded it before writing it (an object made by hand it was about to adopt),
            // so meshops never wrote it and must not delete it.
            let never_written =
                e.fingerprint.is_none() && current["metadata"]["labels"][SOURCE_LABEL].is_null();
            let (action, reason) = if keep {
                (
                    Action::Keep,
                    format!("removed from the repository, kept: {PRUNE_ANNOTATION}: disabled"),
                )
            } else if never_written {
                (
                    Action::Keep,
                    format!(
                        "removed from the repository, released: an interrupted apply listed it \
                         but never wrote it (no {SOURCE_LABEL} label)"
                    ),
                )
            } else {
                (Action::Delete, "removed from the repository".to_owned())
            };
            Some(Change {
                object: e.object.clone(),
                action,
                reason,
            })
        })
        .collect();
    deletes.reverse();
    changes.extend(deletes);
    Plan { changes }
}

/// What the server fills in or owns, and meshops' own spec-hash bookkeeping: a diff shows
/// neither.
fn without_noise(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "generation",
            "uid",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(key);
        }
        let empty = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .is_some_and(|a| {
                a.remove(SPEC_HASH);
                a.is_empty()
            });
        if empty {
            meta.remove("annotations");
        }
    }
    sorted(value)
}

/// A unified YAML diff from `live` to `target` (the dry-run result, or the desired object for
/// a create), with server noise removed and credentials masked. Empty when they agree.
///
/// This is the only place object content becomes text for people (plan text, PR comments,
/// drift reports all take their diffs from here), so it is where credentials are masked:
/// Secret values, auth parameters in CRs, env and commands ([`sensitive`]). A credential that
/// changed still shows as `****** (changed)`.
pub fn diff(live: Option<&Value>, target: Option<&Value>) -> String {
    let mut before = live.map(without_noise).unwrap_or(Value::Null);
    let mut after = target.map(without_noise).unwrap_or(Value::Null);
    sensitive::mask_pair(&mut before, &mut after);
    let yaml = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            serde_yaml::to_string(v).unwrap_or_default()
        }
    };
    let (before, after) = (yaml(&before), yaml(&after));
    if before == after {
        return String::new();
    }
    TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header("live", "desired")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Object {
        Object { phase: 3, value }
    }

    fn sts(hash: &str, selector: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "fn-function", "namespace": "ns", "annotations": {SPEC_HASH: hash}, "labels": {SOURCE_LABEL: "s"}},
            "spec": {"selector": {"matchLabels": {"app": selector}}, "serviceName": "fn-function-headless"},
        })
    }

    #[test]
    fn decides_each_action_with_its_reason() {
        let desired = vec![object(sts("a", "x"))];
        let empty = BTreeMap::new();
        let plan_create = plan(&desired, &empty, &[]);
        assert_eq!(plan_create.changes[0].action, Action::Create);
        assert_eq!(
            plan_create.summary(),
            "Plan: 1 to create, 0 to change, 0 to recreate, 0 to delete."
        );

        let reference = ObjectRef::of(&desired[0].value);
        let same = BTreeMap::from([(reference.clone(), sts("a", "x"))]);
        let unchanged = plan(&desired, &same, &[]);
        assert_eq!(unchanged.changes[0].action, Action::Unchanged);
        assert!(!unchanged.has_changes());
        assert_eq!(
            unchanged.summary(),
            "No changes. The cluster matches the repository."
        );

        let old = BTreeMap::from([(reference.clone(), sts("b", "x"))]);
        assert_eq!(plan(&desired, &old, &[]).changes[0].action, Action::Update);

        let other_selector = BTreeMap::from([(reference.clone(), sts("b", "y"))]);
        let recreate = plan(&desired, &other_selector, &[]);
        assert_eq!(recreate.changes[0].action, Action::Recreate);
        assert!(recreate.changes[0].reason.contains("/spec/selector"));
    }

    #[test]
    fn an_unlabelled_object_is_adopted_and_one_of_another_source_is_a_conflict() {
        let desired = vec![object(sts("a", "x"))];
        let reference = ObjectRef::of(&desired[0].value);
        let mut by_hand = sts("a", "x");
        by_hand["metadata"]["labels"] = json!({});
        by_hand["metadata"]["managedFields"] =
            json!([{"manager": "kubectl-create", "operation": "Update"}]);
        let adopt = plan(
            &desired,
            &BTreeMap::from([(reference.clone(), by_hand.clone())]),
            &[],
        );
        assert_eq!(adopt.changes[0].action, Action::Adopt);
        assert!(adopt.changes[0]
            .reason
            .contains("written by kubectl-create"));
        assert!(adopt.summary().contains("1 to adopt"));

        // Ours by the inventory, though someone removed the label: drift, not adoption.
        let recorded = [InventoryEntry {
            object: reference.clone(),
            fingerprint: None,
        }];
        let live = BTreeMap::from([(reference.clone(), by_hand)]);
        assert_eq!(
            plan(&desired, &live, &recorded).changes[0].action,
            Action::Unchanged
        );

        let mut theirs = sts("a", "x");
        theirs["metadata"]["labels"][SOURCE_LABEL] = json!("other");
        let conflict = plan(&desired, &BTreeMap::from([(reference, theirs)]), &[]);
        assert_eq!(conflict.changes[0].action, Action::Conflict);
        assert!(conflict.changes[0]
            .reason
            .contains("belongs to source \"other\""));
        assert!(conflict.has_changes());
        assert!(!Action::Conflict.writes());
    }

    #[test]
    fn prunes_only_what_the_inventory_lists_and_respects_the_opt_out() {
        let gone = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "old", "namespace": "ns", "labels": {SOURCE_LABEL: "s"}}});
        let kept = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep", "namespace": "ns", "annotations": {PRUNE_ANNOTATION: "disabled"}}});
        let stranger = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "labelled-by-someone", "namespace": "ns"}});
        let live: BTreeMap<_, _> = [&gone, &kept, &stranger]
            .into_iter()
            .map(|v| (ObjectRef::of(v), v.clone()))
            .collect();
        let inventory = vec![
            InventoryEntry {
                object: ObjectRef::of(&gone),
                fingerprint: None,
            },
            InventoryEntry {
                object: ObjectRef::of(&kept),
                fingerprint: None,
            },
        ];
        let result = plan(&[], &live, &inventory);
        let actions: Vec<_> = result
            .changes
            .iter()
            .map(|c| (c.object.name.as_str(), c.action))
            .collect();
        assert_eq!(actions, [("keep", Action::Keep), ("old", Action::Delete)]);
        assert_eq!(result.count(Action::Delete), 1);
    }

    #[test]
    fn after_an_interrupted_apply_only_what_meshops_wrote_is_pruned() {
        let labelled = |name: &str| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns", "labels": {SOURCE_LABEL: "s"}}});
        // Written before the kill: labelled, listed without fingerprint.
        let written = labelled("written");
        // Made by hand, listed by the interrupted pass that was going to adopt it.
        let by_hand = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "by-hand", "namespace": "ns"}});
        // Listed, never created.
        let never = labelled("never-created");
        let live: BTreeMap<_, _> = [&written, &by_hand]
            .into_iter()
            .map(|v| (ObjectRef::of(v), v.clone()))
            .collect();
        let inventory: Vec<InventoryEntry> = [&written, &by_hand, &never]
            .into_iter()
            .map(|v| InventoryEntry {
                object: ObjectRef::of(v),
                fingerprint: None,
            })
            .collect();
        let result = plan(&[], &live, &inventory);
        let actions: Vec<_> = result
            .changes
            .iter()
            .map(|c| (c.object.name.as_str(), c.action))
            .collect();
        assert_eq!(
            actions,
            [("by-hand", Action::Keep), ("written", Action::Delete)],
            "nothing planned for the object that is not in the cluster"
        );
        assert!(result.changes[0].reason.contains("released"));
        // A recorded fingerprint says meshops applied it: pruned even without the label.
        let applied = [InventoryEntry {
            object: ObjectRef::of(&by_hand),
            fingerprint: Some("f".into()),
        }];
        assert_eq!(plan(&[], &live, &applied).changes[0].action, Action::Delete);
    }

    #[test]
    fn an_object_listed_without_fingerprint_and_in_sync_is_unchanged() {
        // What the next pass sees of an object an interrupted pass applied.
        let desired = vec![object(sts("a", "x"))];
        let reference = ObjectRef::of(&desired[0].value);
        let live = BTreeMap::from([(reference.clone(), sts("a", "x"))]);
        let pending = [InventoryEntry {
            object: reference,
            fingerprint: None,
        }];
        assert_eq!(
            plan(&desired, &live, &pending).changes[0].action,
            Action::Unchanged
        );
    }

    #[test]
    fn diff_masks_secret_values_but_names_changed_keys() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "resourceVersion": "7"}, "data": {"a": "b2xk", "same": "eA=="}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "bmV3", "same": "eA=="}});
        let text = diff(Some(&live), Some(&desired));
        assert!(
            !text.contains("b2xk") && !text.contains("bmV3") && !text.contains("eA=="),
            "{text}"
        );
        assert!(
            text.contains("a: '****** (changed)'") || text.contains("a: ****** (changed)"),
            "{text}"
        );
        assert!(!text.contains("resourceVersion"));
        assert_eq!(diff(Some(&desired), Some(&desired)), "");
    }
}

/// The plan for people: one line per change with its reason, the diffs, the summary.
pub fn text(plan: &Plan, diffs: &BTreeMap<ObjectRef, String>) -> String {
    let mut out = String::new();
    for change in plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
    {
        out.push_str(&format!(
            "{} {} ({})\n",
            change.action.sign(),
            change.object,
            change.reason
        ));
        if let Some(diff) = diffs.get(&change.object).filter(|d| !d.is_empty()) {
            out.push_str(diff);
            if !diff.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out.push_str(&plan.summary());
    out.push('\n');
    out
}

/// The plan as a pull-request comment: the summary, then one collapsible block per changed
/// object with its diff.
pub fn markdown(plan: &Plan, diffs: &BTreeMap<ObjectRef, String>) -> String {
    let mut out = format!("**{}**\n", plan.summary());
    for change in plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
    {
        let verb = change.action.verb();
        let o = &change.object;
        out.push_str(&format!(
            "\n<details><summary>{verb} <code>{}/{}</code> in <code>{}</code> — {}</summary>\n\n",
            o.kind, o.name, o.namespace, change.reason
        ));
        if let Some(diff) = diffs.get(o).filter(|d| !d.is_empty()) {
            // A diff line could close the fence; four backticks cannot occur in YAML output.
            out.push_str(&format!("````diff\n{}````\n", diff));
        }
        out.push_str("\n</details>\n");
    }
    out
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn without_prune_a_delete_is_prunable_shown_but_neither_counted_nor_a_change() {
        let object = |name: &str| ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "ns".into(),
            name: name.into(),
        };
        let change = |name: &str, action| Change {
            object: object(name),
            action,
            reason: "removed from the repository".into(),
        };
        let pruning = Plan {
            changes: vec![change("a", Action::Delete), change("b", Action::Delete)],
        };
        assert_eq!(
            pruning.summary(),
            "Plan: 0 to create, 0 to change, 0 to recreate, 2 to delete."
        );
        let kept = pruning.clone().without_prune();
        assert!(!kept.has_changes());
        assert_eq!(kept.count(Action::Delete), 0);
        assert_eq!(
            kept.summary(),
            "No changes. 2 objects removed from the repository would be pruned with --prune."
        );
        assert_eq!(
            text(&kept, &BTreeMap::new()).lines().next(),
            Some(
                "(-) v1/ConfigMap ns/a (removed from the repository; would be pruned with --prune)"
            )
        );
        let mut mixed = kept;
        mixed.changes.push(change("c", Action::Update));
        assert_eq!(
            mixed.summary(),
            "Plan: 0 to create, 1 to change, 0 to recreate, 0 to delete. 2 objects removed from \
             the repository would be pruned with --prune."
        );
        assert!(!Action::Prunable.writes());
    }

    #[test]
    fn markdown_has_the_summary_and_a_details_block_per_change() {
        let object = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: "ns".into(),
            name: "fn-function".into(),
        };
        let plan = Plan {
            changes: vec![
                Change {
                    object: object.clone(),
                    action: Action::Update,
                    reason: "the repository changed".into(),
                },
                Change {
                    object: ObjectRef {
                        name: "same".into(),
                        ..object.clone()
                    },
                    action: Action::Unchanged,
                    reason: "in sync".into(),
                },
            ],
        };
        let diffs = BTreeMap::from([(object, "--- live\n+++ desired\n-a\n+b\n".to_owned())]);
        let md = markdown(&plan, &diffs);
        assert!(md.starts_with("**Plan: 0 to create, 1 to change, 0 to recreate, 0 to delete.**\n"));
        assert_eq!(
            md.matches("<details>").count(),
            1,
            "unchanged objects get no block"
        );
        assert!(md.contains("update <code>StatefulSet/fn-function</code> in <code>ns</code>"));
        assert!(md.contains("````diff\n--- live\n+++ desired\n-a\n+b\n````"));
        let text = text(&plan, &diffs);
        assert!(text.starts_with(
            "~ apps/v1/StatefulSet ns/fn-function (the repository changed)\n--- live"
        ));
        assert!(text.ends_with("Plan: 0 to create, 1 to change, 0 to recreate, 0 to delete.\n"));
    }
}
