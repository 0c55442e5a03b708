#!/usr/bin/env bash
# The whole product on one machine, on embedded defaults (SQLite store in .demo/relay-data):
# a demo component (the "cluster UI"), a relay, a connector that registers once and heartbeats,
# an access request that sets the cluster's flag, and an expert session with `relayctl session open`.
# Prints the URL to open; Ctrl-C stops everything. Each run starts from a fresh store.
#
#   Scripts/demo.sh            ports: relay 8443, component 8080, session 8000
#   RELAY_PORT=9443 COMPONENT_PORT=9080 SESSION_PORT=9000 Scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY_PORT="${RELAY_PORT:-8443}"
COMPONENT_PORT="${COMPONENT_PORT:-8080}"
SESSION_PORT="${SESSION_PORT:-8000}"
demo=.demo
rm -rf "$demo"
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

cat > "$demo/relay.yaml" <<YAML
listen: 127.0.0.1:$RELAY_PORT
tls:
  certificate_file: ../Certs/dev/relay.pem
  private_key_file: ../Certs/dev/relay.key
data_dir: relay-data
YAML
cat > "$demo/connector.yaml" <<YAML
node_id: node-1
credential_file: connector-credential.json
relay:
  url: https://127.0.0.1:$RELAY_PORT
  ca_file: ../Certs/dev/ca.pem
heartbeat:
  interval: 5s          # shortened for the demo (default 60s)
privacy:
  mode: all
  denied_paths: [/api/v1/credentials]
health:
  master_node: true
components:
  ui: http://127.0.0.1:$COMPONENT_PORT
YAML

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/demo-component" --listen "127.0.0.1:$COMPONENT_PORT" --name ui > "$demo/component.log" 2>&1 & pids+=($!)
"$bin/relay" --config "$demo/relay.yaml" > "$demo/relay.log" 2>&1 & pids+=($!)
for _ in $(seq 1 50); do [ -s "$demo/relay-data/bootstrap-ops-token" ] && grep -q "listening" "$demo/relay.log" && break; sleep 0.2; done
echo "== relay on https://127.0.0.1:$RELAY_PORT, component on 127.0.0.1:$COMPONENT_PORT (logs in $demo/)"

ctl() { "$bin/relayctl" "$1" "$2" --relay "https://127.0.0.1:$RELAY_PORT" --ca Certs/dev/ca.pem "${@:3}"; }
export RELAYCTL_TOKEN="$(cat "$demo/relay-data/bootstrap-ops-token")"
echo "== operator: relayctl clusters add demo; relayctl tokens create --name alice --role expert"
ctl clusters add demo --description "demo cluster" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["enrollmentToken"])' > "$demo/enrollment-token"
ctl tokens create --name alice --role expert --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])' > "$demo/alice.token"

echo "== customer: connector register (once), then the connector heartbeats"
"$bin/connector" register --config "$demo/connector.yaml" --enrollment-token-file "$demo/enrollment-token"
"$bin/connector" --config "$demo/connector.yaml" > "$demo/connector.log" 2>&1 & pids+=($!)
for _ in $(seq 1 50); do ctl clusters list | grep -q "^demo *all" && break; sleep 0.2; done
ctl clusters list

echo "== engineer: relayctl requests create (auto-approved: the customer's mode is all)"
RELAYCTL_TOKEN="$(cat "$demo/alice.token")" ctl requests create --cluster demo --role admin --duration 2h --reason "demo session"
echo "== customer: connector status (over the connector's local control socket)"
"$bin/connector" status --config "$demo/connector.yaml"
echo "== customer, in another terminal while the session runs:"
echo "     $bin/connector sessions list --config $demo/connector.yaml"
echo "     $bin/connector audit tail --config $demo/connector.yaml      # every request, hash-chained"
echo "     $bin/connector audit verify --config $demo/connector.yaml"
echo "     $bin/connector mode readOnly --config $demo/connector.yaml   # or: disabled (kill switch)"
echo "== opening an expert session; it waits until the connector dials at its next heartbeat"
echo "   open the sign-in link it prints; Enter prints new links, Ctrl-C ends everything"
# In the foreground: Enter reaches it (new sign-in links), Ctrl-C ends it and then the rest.
RELAYCTL_TOKEN="$(cat "$demo/alice.token")" "$bin/relayctl" session open \
  --relay "https://127.0.0.1:$RELAY_PORT" --ca Certs/dev/ca.pem \
  --cluster demo --component ui --listen "127.0.0.1:$SESSION_PORT"
