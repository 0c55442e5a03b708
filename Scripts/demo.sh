#!/usr/bin/env bash
# The whole product on one machine, on embedded defaults: a demo component (the "cluster UI"),
# a relay, a connector that dials out to it, and an expert session with `relayctl session open`.
# Prints the URL to open; Ctrl-C stops everything.
#
#   Scripts/demo.sh            ports: relay 8443, component 8080, session 8000
#   RELAY_PORT=9443 COMPONENT_PORT=9080 SESSION_PORT=9000 Scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY_PORT="${RELAY_PORT:-8443}"
COMPONENT_PORT="${COMPONENT_PORT:-8080}"
SESSION_PORT="${SESSION_PORT:-8000}"
demo=.demo
mkdir -p "$demo"
chmod 700 "$demo"

echo "== building (swift build; the first build takes a few minutes)"
swift build --product relay >/dev/null
swift build --product connector >/dev/null
swift build --product relayctl >/dev/null
swift build --product demo-component >/dev/null
bin="$(swift build --show-bin-path)"

[ -f Certs/dev/ca.pem ] || Certs/make-dev-certs.sh Certs/dev >/dev/null
umask 077
[ -f "$demo/cluster-demo.secret" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$demo/cluster-demo.secret"
[ -f "$demo/alice.token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$demo/alice.token"

cat > "$demo/relay.yaml" <<YAML
listen: 127.0.0.1:$RELAY_PORT
tls:
  certificate_file: ../Certs/dev/relay.pem
  private_key_file: ../Certs/dev/relay.key
clusters:
  - id: demo
    secret_file: cluster-demo.secret
experts:
  - name: alice
    token_file: alice.token
YAML
cat > "$demo/connector.yaml" <<YAML
cluster_id: demo
node_id: node-1
secret_file: cluster-demo.secret
relay:
  urls: [wss://127.0.0.1:$RELAY_PORT/v1/tunnel]
  ca_file: ../Certs/dev/ca.pem
components:
  ui: http://127.0.0.1:$COMPONENT_PORT
YAML

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/demo-component" --listen "127.0.0.1:$COMPONENT_PORT" --name ui > "$demo/component.log" 2>&1 & pids+=($!)
"$bin/relay" --config "$demo/relay.yaml" > "$demo/relay.log" 2>&1 & pids+=($!)
sleep 0.5
"$bin/connector" --config "$demo/connector.yaml" > "$demo/connector.log" 2>&1 & pids+=($!)

echo "== relay on wss://127.0.0.1:$RELAY_PORT, component on 127.0.0.1:$COMPONENT_PORT (logs in $demo/)"
for _ in $(seq 1 50); do grep -q "tunnel up" "$demo/relay.log" 2>/dev/null && break; sleep 0.2; done
grep -q "tunnel up" "$demo/relay.log" || { echo "connector did not connect; see $demo/connector.log"; exit 1; }
echo "== connector dialed out; tunnel is up"
echo "== opening an expert session (relayctl session open)"
RELAYCTL_TOKEN="$(cat "$demo/alice.token")" "$bin/relayctl" session open \
  --relay "wss://127.0.0.1:$RELAY_PORT" --ca Certs/dev/ca.pem \
  --cluster demo --component ui --listen "127.0.0.1:$SESSION_PORT" & pids+=($!)
wait "${pids[-1]}"
