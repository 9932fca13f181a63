{{/* Names, labels and the values the templates share. */}}

{{- define "meshops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meshops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "meshops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meshops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the name of an existing ServiceAccount is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshops.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "meshops.leaseName" -}}
{{- default (include "meshops.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Where the files the AgentConfig names are mounted. */}}
{{- define "meshops.configDir" -}}/etc/meshops/config{{- end -}}
{{- define "meshops.webhookDir" -}}/etc/meshops/webhook{{- end -}}
{{- define "meshops.githubDir" -}}/etc/meshops/github{{- end -}}
{{- define "meshops.gitDir" -}}/etc/meshops/git{{- end -}}

{{/*
The namespace of a source's inventory ConfigMap ({"root": ., "source": $source}): as set, else
the release namespace, unless the source's `namespaces` allow-list leaves that out (the agent
counts the inventory as a write), then the first namespace of the list.
*/}}
{{- define "meshops.inventoryNamespace" -}}
{{- $source := .source -}}
{{- $release := .root.Release.Namespace -}}
{{- if $source.inventoryNamespace -}}
{{- $source.inventoryNamespace -}}
{{- else if and $source.namespaces (not (has $release $source.namespaces)) -}}
{{- first $source.namespaces -}}
{{- else -}}
{{- $release -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the agent may write to with `rbac.scope: namespaces`, as a JSON list:
`rbac.namespaces`, else every namespace the sources list.
*/}}
{{- define "meshops.rbacNamespaces" -}}
{{- $namespaces := list -}}
{{- if .Values.rbac.namespaces -}}
{{- $namespaces = .Values.rbac.namespaces -}}
{{- else -}}
{{- range .Values.sources -}}
{{- $namespaces = concat $namespaces (default list .namespaces) -}}
{{- end -}}
{{- end -}}
{{- $namespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/*
Inventory ConfigMaps by namespace, as a JSON object {namespace: [name, ...]}.
*/}}
{{- define "meshops.inventories" -}}
{{- $byNamespace := dict -}}
{{- range .Values.sources -}}
{{- $namespace := include "meshops.inventoryNamespace" (dict "root" $ "source" .) -}}
{{- $names := get $byNamespace $namespace | default list -}}
{{- $_ := set $byNamespace $namespace (append $names (printf "meshops-inventory-%s" .name)) -}}
{{- end -}}
{{- $byNamespace | toJson -}}
{{- end -}}

{{/*
What the agent does to the kinds it applies (docs/security.md), for a ClusterRole or a Role:
read them (GET, LIST by label), server-side apply them (PATCH; creating through apply needs
`create`), prune them (DELETE), write the status of the CRs it runs, record Events, list the
pods of a rollout it follows.
*/}}
{{- define "meshops.applyRules" -}}
- apiGroups: [""]
  resources: [configmaps, serviceaccounts, services{{ if .Values.rbac.secrets }}, secrets{{ end }}]
  verbs: [get, list, create, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, create, patch, delete]
- apiGroups: [autoscaling.k8s.io]
  resources: [verticalpodautoscalers]
  verbs: [get, list, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, create, patch, delete]
- apiGroups: [security.istio.io]
  resources: [authorizationpolicies]
  verbs: [get, list, create, patch, delete]
- apiGroups: [compute.functionmesh.io]
  resources: [functions, sources, sinks, functionmeshes, backendconfigs]
  verbs: [get, list, create, patch, delete]
- apiGroups: [compute.functionmesh.io]
  resources: [functions/status, sources/status, sinks/status]
  verbs: [patch]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
- apiGroups: [compute.functionmesh.io]
  resources: [functions/finalizers, sources/finalizers, sinks/finalizers]
  verbs: [update]
{{- end }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Following a rollout (src/cluster/rollout.rs): each StatefulSet's pods, by its selector.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end -}}

{{/* A duration as the AgentConfig writes it (1m30s) in whole seconds, rounded up. */}}
{{- define "meshops.seconds" -}}
{{- $total := 0.0 -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d)" . -1 -}}
{{- $count := regexFind "^[0-9]+" . | float64 -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $total = addf $total (mulf $count (get $units $unit)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "meshops.validate" -}}
{{- if not .Values.sources -}}
{{- fail "sources: at least one source is required (see the chart's values.yaml)" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.sources -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "sources: %q is defined twice; each source is its own inventory" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) -}}
{{- fail "leaderElection.enabled: false needs replicaCount: 1, or several replicas would apply at once" -}}
{{- end -}}
{{- with .Values.stateDir.persistence -}}
{{- if and .enabled (not .existingClaim) (gt (int $.Values.replicaCount) 1) (not (has "ReadWriteMany" .accessModes)) -}}
{{- fail "stateDir.persistence: every replica mounts the claim; with replicaCount > 1 it needs accessModes [ReadWriteMany] (or keep the default emptyDir: the state dir is a cache)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.github.token.secretName .Values.github.app.privateKey.secretName -}}
{{- fail "github: set either token.secretName or app.privateKey.secretName, not both" -}}
{{- end -}}
{{- if and .Values.rbac.create (eq .Values.rbac.scope "namespaces") (not (include "meshops.rbacNamespaces" . | fromJsonArray)) -}}
{{- fail "rbac.scope: namespaces needs rbac.namespaces or sources with `namespaces` lists" -}}
{{- end -}}
{{- end -}}
