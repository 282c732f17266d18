#!/usr/bin/env bash
# Checks every manifest here against the Kubernetes API schemas, offline
# (kubernetes-validate bundles them: pip install kubernetes-validate), in
# strict mode: unknown fields fail too.
set -euo pipefail
cd "$(dirname "$0")"
files=(secret.yaml config.yaml redis.yaml router.yaml ws-node.yaml gateway.yaml)
# Every resource kustomization.yaml lists is checked, and nothing else lies around.
listed=$(awk '/^resources:/ { on = 1; next } on && /^  - / { print $2 }' kustomization.yaml | sort)
[ "$listed" = "$(printf '%s\n' "${files[@]}" | sort)" ] || { echo "kustomization.yaml lists: $listed" >&2; exit 1; }
kubernetes-validate --strict --quiet -k "${K8S_VERSION:-1.30.0}" "${files[@]}"
echo "k8s manifests: ${#files[@]} files valid (Kubernetes ${K8S_VERSION:-1.30.0}, strict)"
