#!/usr/bin/env bash
# make demo: the local cluster, the bleater sample, the operator, one SnapshotGroup, its status.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STATE=${STATE:-$PWD/.localcluster}
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Local cluster with the bleater sample (PostgreSQL, MongoDB stand-in, MinIO stand-in, data-writer)"
"$PYTHON" -m localcluster up --with-bleater --state-dir "$STATE"
export KUBECONFIG="$STATE/kubeconfig"
KUBECTL=$("$PYTHON" -c 'from localcluster.build import ensure_binaries; print(ensure_binaries() / "kubectl")')
"$KUBECTL" get nodes,pods -n bleater -o wide

step "CRDs"
"$KUBECTL" apply --server-side -f crds/
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/snapshotgroups.snapgroup.dev

step "Operator (log: $STATE/logs/operator.log)"
health_port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PYTHON" -m snapgroup --kubeconfig "$KUBECONFIG" run --metrics-port 0 \
  --liveness "http://127.0.0.1:$health_port/healthz" >"$STATE/logs/operator.log" 2>&1 &
operator_pid=$!
finish() {
  kill $operator_pid 2>/dev/null; wait $operator_pid 2>/dev/null || true
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    printf '\nThe cluster keeps running: export KUBECONFIG=%s   (stop it: make cluster-down)\n' "$KUBECONFIG"
  else
    # One local cluster runs per machine at a time: stop it so `make test` can start its own.
    "$PYTHON" -m localcluster down --state-dir "$STATE" >/dev/null
    printf '\nCluster stopped (KEEP_CLUSTER=1 make demo keeps it running).\n'
  fi
}
trap finish EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$health_port/healthz" >/dev/null 2>&1 && break
  kill -0 $operator_pid 2>/dev/null || { tail -40 "$STATE/logs/operator.log"; exit 1; }
  sleep 0.5
done

step "SnapshotGroup bleater-snapshot (deploy/samples/bleater-snapshotgroup.yaml)"
"$KUBECTL" delete snapshotgroup -n bleater bleater-snapshot --ignore-not-found --wait=true
"$KUBECTL" apply -f deploy/samples/bleater-snapshotgroup.yaml
phase=""
for _ in $(seq 1 360); do
  phase=$("$KUBECTL" get snapshotgroup -n bleater bleater-snapshot -o jsonpath='{.status.phase}')
  [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
  sleep 0.5
done

step "kubectl get snapshotgroups"
"$KUBECTL" get snapshotgroups -n bleater -o wide
"$KUBECTL" get volumesnapshots -n bleater

step "Status"
"$PYTHON" -m snapgroup status bleater-snapshot -n bleater

step "Verification, as an automated checker would do it"
"$PYTHON" -m snapgroup verify bleater-snapshot -n bleater

[ "$phase" = Succeeded ]
