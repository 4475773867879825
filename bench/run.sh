#!/bin/sh
# bench/run.sh: comfygate vs a direct connection vs nginx, in one run, on
# this machine. Two simulated ComfyUI instances (comfygate sim, -delay 0s)
# stand in for the GPUs; nginx (Debian's nginx-light) round-robins over the
# same two with upstream keepalive; wrk drives each target in turn, REPEAT
# times, and the medians are printed. Needs: go, nginx, wrk
# (apt-get install nginx-light wrk). Loopback only; ends by itself.
#
#   bench/run.sh                 # defaults: 3 repeats of 10 s, 32 connections
#   REPEAT=5 DURATION=20s CONNS=64 bench/run.sh
set -eu
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
BASE=${BASE_PORT:-18180}
SIM1=$((BASE + 8)) SIM2=$((BASE + 9)) GATE=$((BASE + 10)) NGINX=$((BASE + 11))
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=""
cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null || true; done
	[ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for tool in nginx wrk; do
	command -v $tool >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
	command -v $tool >/dev/null 2>&1 || { echo "need $tool: apt-get install nginx-light wrk" >&2; exit 1; }
done

go build -o "$WORK/comfygate" .
"$WORK/comfygate" sim -listen 127.0.0.1:$SIM1 -delay 0s >"$WORK/sim1.log" 2>&1 & PIDS="$PIDS $!"
"$WORK/comfygate" sim -listen 127.0.0.1:$SIM2 -delay 0s >"$WORK/sim2.log" 2>&1 & PIDS="$PIDS $!"
COMFYUI_HOST_1=127.0.0.1:$SIM1 COMFYUI_HOST_2=127.0.0.1:$SIM2 LOG_LEVEL=warn \
	"$WORK/comfygate" -listen 127.0.0.1:$GATE >"$WORK/gate.log" 2>&1 & PIDS="$PIDS $!"

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon on;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $WORK/body;
	proxy_temp_path $WORK/proxy;
	fastcgi_temp_path $WORK/fcgi;
	uwsgi_temp_path $WORK/uwsgi;
	scgi_temp_path $WORK/scgi;
	upstream comfy { server 127.0.0.1:$SIM1; server 127.0.0.1:$SIM2; keepalive 64; }
	server {
		listen 127.0.0.1:$NGINX;
		location / {
			proxy_pass http://comfy;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host \$host;
		}
	}
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

wait_up() {
	i=0
	until curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 100 ] && { echo "127.0.0.1:$1 did not come up" >&2; exit 1; }
		sleep 0.1
	done
}
wait_up $SIM1 /system_stats; wait_up $SIM2 /system_stats; wait_up $NGINX /system_stats; wait_up $GATE /health

# median of the numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# wrk's latency figures in microseconds
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000000} else print v}'; }

RESULT="$OUT/bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
echo "comfygate bench: $(date -u) · $(nproc) cores · wrk -t$THREADS -c$CONNS -d$DURATION · $REPEAT runs each, medians"
echo "direct = one simulated instance; nginx and comfygate balance over two"
printf "%-14s %-10s %12s %12s %12s\n" path target "req/s" "p50 (us)" "p99 (us)"
for path in /system_stats /object_info; do
	for target in direct nginx comfygate; do
		case $target in direct) port=$SIM1 ;; nginx) port=$NGINX ;; comfygate) port=$GATE ;; esac
		: >"$WORK/rps"; : >"$WORK/p50"; : >"$WORK/p99"
		r=0
		while [ $r -lt "$REPEAT" ]; do
			wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port$path" >"$WORK/wrk.txt"
			awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt" >>"$WORK/rps"
			awk '$1=="50%" {print $2}' "$WORK/wrk.txt" | to_us >>"$WORK/p50"
			awk '$1=="99%" {print $2}' "$WORK/wrk.txt" | to_us >>"$WORK/p99"
			if grep -q "Non-2xx" "$WORK/wrk.txt"; then echo "warning: $target $path had non-2xx answers" >&2; fi
			r=$((r + 1))
		done
		printf "%-14s %-10s %12s %12s %12s\n" "$path" "$target" "$(median <"$WORK/rps")" "$(median <"$WORK/p50")" "$(median <"$WORK/p99")"
	done
done
} | tee "$RESULT"
echo "saved to $RESULT"
