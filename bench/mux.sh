#!/usr/bin/env bash
# Measures the mux side by side with a bare rustls server (and its twin),
# nginx's ssl_preread passthrough and a plain tokio proxy, all on loopback
# in one run, and ends with one line of name=value ratios. Extra arguments go to
# `edge-bench drive` (see `edge-bench drive --help` for sample counts).
# docs/benchmarks.md explains the method and the figures.
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/bench-fast"

log() { echo "mux.sh: $*" >&2; }

ensure_nginx() {
	if command -v nginx >/dev/null && stream_module >/dev/null; then
		return
	fi
	log "installing nginx and its stream module"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y nginx libnginx-mod-stream >&2; then
		apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y nginx libnginx-mod-stream >&2
	fi
}

# Prints the path of Debian's ngx_stream_module.so, or fails.
stream_module() {
	local dir
	for dir in /usr/lib/nginx/modules /usr/share/nginx/modules; do
		if [[ -f $dir/ngx_stream_module.so ]]; then
			echo "$dir/ngx_stream_module.so"
			return
		fi
	done
	return 1
}

# Edge's runtime and the bare server use tokio's default: one worker thread
# per CPU. nginx gets as many worker processes.
workers() { nproc; }

write_edge_config() {
	cat >"$tmp/edge.toml" <<TOML
[log]
filter = "warn"

[mux]
listen = "127.0.0.1:$edge_port"
# Longer than the slowloris test, so the idle connections stay pending
# for all of it instead of timing out halfway.
peek_timeout = "120s"
max_pending = 4096
max_pending_per_source = 64

[[mux.route]]
name = "pass"
sni = ["pass.bench"]
action = "passthrough"
upstream = "127.0.0.1:$bare_port"

[tls]
self_signed_names = ["localhost"]

[[tls.certificate]]
cert = "$tmp/cert.pem"
key = "$tmp/key.pem"

[metrics]
listen = "127.0.0.1:$metrics_port"
TOML
}

write_nginx_config() {
	cat >"$tmp/nginx.conf" <<NGINX
load_module $(stream_module);
daemon off;
worker_processes $(workers);
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
worker_rlimit_nofile 65536;

events {
    worker_connections 8192;
}

stream {
    server {
        listen 127.0.0.1:$nginx_port;
        ssl_preread on;
        proxy_pass 127.0.0.1:$bare_port;
    }
}
NGINX
}

pids=()
tmp=""
cleanup() {
	local status=$?
	local pid f
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $tmp ]]; then
		if [[ $status -ne 0 ]]; then
			for f in "$tmp"/*.log; do
				[[ -s $f ]] && { log "last lines of $f:"; tail -n 20 "$f" >&2; }
			done
		fi
		rm -rf "$tmp"
	fi
	exit "$status"
}
trap cleanup EXIT

cargo build --profile bench-fast -p appliance -p edge-bench
ensure_nginx
# 1000 idle connections plus the bench's own, at both ends of loopback.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/mux-bench.XXXXXX")"
"$bin/edge-bench" certs --dir "$tmp"
read -r bare_port edge_port nginx_port proxy_port metrics_port twin_port < <("$bin/edge-bench" ports 6)

"$bin/edge-bench" server --listen "127.0.0.1:$bare_port" \
	--cert "$tmp/cert.pem" --key "$tmp/key.pem" 2>"$tmp/bare.log" &
pids+=($!)
"$bin/edge-bench" server --listen "127.0.0.1:$twin_port" \
	--cert "$tmp/cert.pem" --key "$tmp/key.pem" 2>"$tmp/twin.log" &
pids+=($!)

write_edge_config
"$bin/edge" run --config "$tmp/edge.toml" 2>"$tmp/edge.log" &
pids+=($!)

"$bin/edge-bench" proxy --listen "127.0.0.1:$proxy_port" \
	--upstream "127.0.0.1:$bare_port" 2>"$tmp/proxy.log" &
pids+=($!)

write_nginx_config
nginx -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" &
pids+=($!)

log "bare rustls 127.0.0.1:$bare_port (twin $twin_port), edge 127.0.0.1:$edge_port, nginx 127.0.0.1:$nginx_port, tokio proxy 127.0.0.1:$proxy_port ($(workers) workers)"
"$bin/edge-bench" drive \
	--direct "127.0.0.1:$bare_port" \
	--edge "127.0.0.1:$edge_port" \
	--nginx "127.0.0.1:$nginx_port" \
	--tokio-proxy "127.0.0.1:$proxy_port" \
	--twin "127.0.0.1:$twin_port" \
	--edge-metrics "127.0.0.1:$metrics_port" \
	--ca "$tmp/ca.pem" \
	"$@"
