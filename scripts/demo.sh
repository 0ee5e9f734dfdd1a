#!/usr/bin/env bash
# `make demo`: run `devpilot dev` (control plane + simulated DigitalOcean and
# Vultr) in the foreground and print what to try in another terminal.
set -euo pipefail
dir=${1:-.demo}
listen=${2:-127.0.0.1:8443}
mkdir -p "$dir"
rm -f "$dir/dev.env"
bin/devpilot dev --data-dir "$dir" --listen "$listen" --log-level warn &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null' INT TERM EXIT
for _ in $(seq 1 100); do
  [ -s "$dir/dev.env" ] && break
  kill -0 $pid 2>/dev/null || { echo "devpilot dev exited; see above" >&2; exit 1; }
  sleep 0.1
done
[ -s "$dir/dev.env" ] || { echo "devpilot dev did not come up in 10 s" >&2; exit 1; }
cat <<TXT

Devpilot is running locally with simulated clouds. In another terminal, from $(pwd):

  set -a; . $dir/dev.env; set +a; export PATH=\$PWD/bin:\$PATH

  # connect both clouds (the secret is read from stdin, never from argv)
  devpilot integrations connect --provider digitalocean --access-key my-do <<<"\$DO_SIM_TOKEN"
  devpilot integrations connect --provider vultr --access-key my-vultr <<<"\$VULTR_SIM_KEY"
  devpilot integrations list

  # refusals you can act on
  devpilot integrations connect --provider digitalocean --access-key ro <<<"\$DO_SIM_READONLY_TOKEN"
  devpilot integrations connect --provider vultr --access-key blocked <<<"\$VULTR_SIM_BLOCKED_KEY"

  # test, rotate (a bad token is refused; the old one keeps working), browse the catalog
  devpilot integrations test my-do
  devpilot integrations catalog my-do --region nyc3
  devpilot integrations rotate my-do <<<"not-a-valid-token"

  # a server: watch it walk through its steps until its agent confirms the install
  devpilot servers create --integration my-do --name web-1 --region nyc3 --size s-1vcpu-1gb --image debian-12 --wait
  devpilot servers show web-1
  devpilot servers list -o json

  # run something on it and follow the output
  devpilot tasks run --server web-1 -- sh -c 'uname -a; uptime'
  devpilot tasks run --server web-1 -- sh -c 'exit 3'; echo \$?   # 3: the remote exit code

  # a rolling deployment (see controlplane/cli/testdata/plan.yaml for a fuller plan)
  devpilot deploy -f plan.yaml --tag devpilot

  # remove the integration: its credentials go, its servers stay
  devpilot integrations remove my-vultr   # asks first; --force to skip

  # shell completion, server names included
  source <(devpilot completion bash)

  # faults: the next 3 DigitalOcean requests answer 429 (Retry-After: 1)
  curl -s -X POST "\$DO_SIM_URL/_sim/faults" -d '{"rate_limit":{"requests":3,"retry_after_s":1}}'

The web console is at \$DEVPILOT_URL (sign in with \$DEVPILOT_TOKEN; your browser will
not know the dev CA: accept it, or import $dir/tls/ca.crt).

Press Ctrl-C to stop.
TXT
wait $pid
