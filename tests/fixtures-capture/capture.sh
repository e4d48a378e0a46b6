#!/bin/sh
# Captures the ClientHello fixtures in mux/tests/fixtures/hello/ from real
# clients talking to a one-shot listener on 127.0.0.1. Needs openssl, curl
# and chromium (Debian packages) and runs chromium as root without sandbox,
# so it is meant for a throwaway build machine, not for CI.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/mux/tests/fixtures/hello"
port=${PORT:-18443}
cd "$root"
cargo build -q -p mux --example capture_hello
capture="${CARGO_TARGET_DIR:-$root/target}/debug/examples/capture_hello"

# listen NAME CLIENT...: starts the listener, runs the client until the
# listener has saved the hello, then stops the client.
listen() {
    name=$1
    shift
    "$capture" listen "$port" "$out/$name" &
    listener=$!
    sleep 0.5
    "$@" </dev/null >/dev/null 2>&1 &
    client=$!
    wait "$listener"
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
}

"$capture" rustls "$out/rustls-pq.bin"

listen openssl-mixed-case.bin \
    openssl s_client -connect "127.0.0.1:$port" -servername Mixed.Example.ORG. -alpn http/1.1

listen openssl-no-sni.bin \
    openssl s_client -connect "127.0.0.1:$port" -noservername

listen curl.bin \
    curl -sk --max-time 5 --resolve "x.example.org:$port:127.0.0.1" "https://x.example.org:$port/"

profile=$(mktemp -d)
listen chromium.bin \
    /usr/bin/chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --host-resolver-rules="MAP chrome.example.org 127.0.0.1" \
    "https://chrome.example.org:$port/"
rm -rf "$profile"
