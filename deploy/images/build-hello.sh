#!/usr/bin/env bash
# Builds rouse's small test and demo image from busybox-static, with no
# network: an HTTP server on $PORT (busybox httpd) that serves
#   /            "hello from rouse"
#   /cgi-bin/env the process environment
#   /cgi-bin/slow?SECONDS  answers after sleeping
#   /cgi-bin/record  notes X-Rouse-Trigger and X-Rouse-Event-Id in its log
#   /cgi-bin/maybe   the same, but 500 for a body holding "fail"
#   /cgi-bin/spin?SECONDS  burns CPU for that long
#   /cgi-bin/oom     with ROUSE_TEST_OOM=MB set: the instance's first process
#                    allocates that much memory (past its limit: OOM-killed)
# and pushes it to a registry, or writes an OCI-layout tarball.
#
#   build-hello.sh push REGISTRY REPO:TAG     (plain-HTTP registry on loopback)
#   build-hello.sh tar FILE.tar NAME:TAG
set -euo pipefail
mode=$1; dest=$2; ref=$3
BUSYBOX=$(command -v busybox)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:img" >/dev/null
umoci unpack --rootless --image "$work/oci:img" "$work/bundle" >/dev/null 2>&1 || umoci unpack --image "$work/oci:img" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
mkdir -p "$root/bin" "$root/www/cgi-bin" "$root/tmp" "$root/etc"
cp "$BUSYBOX" "$root/bin/busybox"
# Tools the isolation tests run inside instances.
for app in sh httpd env sleep cat echo ls wget nc unshare mount dd grep head id arping touch timeout tr kill; do ln -sf busybox "$root/bin/$app"; done
echo "hello from rouse" > "$root/www/index.html"
cat > "$root/www/cgi-bin/env" <<'CGI'
#!/bin/sh
echo "Content-Type: text/plain"
echo
env
CGI
cat > "$root/www/cgi-bin/slow" <<'CGI'
#!/bin/sh
sleep "${QUERY_STRING:-1}"
host=$(cat /proc/sys/kernel/hostname)
echo "Content-Type: text/plain"
echo
echo "slept ${QUERY_STRING:-1} on $host"
CGI
# /cgi-bin/record: notes a trigger's delivery in the instance's log.
cat > "$root/www/cgi-bin/record" <<'CGI'
#!/bin/sh
echo "rouse-event ${HTTP_X_ROUSE_TRIGGER:-none} ${HTTP_X_ROUSE_EVENT_ID:-none} ${REQUEST_METHOD}" >&2
echo "Content-Type: text/plain"
echo
echo "recorded ${HTTP_X_ROUSE_EVENT_ID:-none}"
CGI
# /cgi-bin/maybe: like record, but answers 500 to a body holding "fail".
cat > "$root/www/cgi-bin/maybe" <<'CGI'
#!/bin/sh
body=$(head -c "${CONTENT_LENGTH:-0}")
case "$body" in
  *fail*)
    echo "rouse-event ${HTTP_X_ROUSE_TRIGGER:-none} ${HTTP_X_ROUSE_EVENT_ID:-none} refused" >&2
    echo "Status: 500 Internal Server Error"; echo "Content-Type: text/plain"; echo; echo "refused" ;;
  *)
    echo "rouse-event ${HTTP_X_ROUSE_TRIGGER:-none} ${HTTP_X_ROUSE_EVENT_ID:-none} ${REQUEST_METHOD} ${HTTP_X_NATS_K:-}" >&2
    echo "Content-Type: text/plain"; echo; echo "ok" ;;
esac
CGI
# /cgi-bin/spin?SECONDS: burns CPU for that long.
cat > "$root/www/cgi-bin/spin" <<'CGI'
#!/bin/sh
# Shell builtins only: the loop itself is the CPU burnt. /proc/uptime in
# centiseconds.
read up rest < /proc/uptime
now=${up%.*}${up#*.}
end=$(( now + ${QUERY_STRING:-1} * 100 ))
n=0
while [ "$now" -lt "$end" ]; do
  n=$((n + 1))
  read up rest < /proc/uptime
  now=${up%.*}${up#*.}
done
echo "Content-Type: text/plain"
echo
echo "spun $n"
CGI
# /cgi-bin/oom: asks the first process to allocate (see the entrypoint).
cat > "$root/www/cgi-bin/oom" <<'CGI'
#!/bin/sh
kill -USR1 1
echo "Content-Type: text/plain"
echo
echo "allocating ${ROUSE_TEST_OOM:-0} MB in process 1"
CGI
chmod 755 "$root/www/cgi-bin/env" "$root/www/cgi-bin/slow" "$root/www/cgi-bin/record" "$root/www/cgi-bin/maybe" "$root/www/cgi-bin/spin" "$root/www/cgi-bin/oom"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "nobody:x:65534:65534:nobody:/:/bin/sh" >> "$root/etc/passwd"
# APP_BINARY=/path: ship that (dynamically linked) program and its
# libraries as /app and run it instead of httpd.
if [ -n "${APP_BINARY:-}" ]; then
  cp "$APP_BINARY" "$root/app"
  for lib in $(ldd "$APP_BINARY" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
fi
umoci repack --image "$work/oci:img" "$work/bundle" >/dev/null
if [ -n "${APP_BINARY:-}" ]; then
  umoci config --image "$work/oci:img" --config.entrypoint /app \
    --architecture amd64 --os linux >/dev/null
else
umoci config --image "$work/oci:img" \
  --config.entrypoint /bin/sh --config.entrypoint -c \
  --config.cmd "$(cat <<'ENTRY'
echo "rouse hello listening on ${PORT:-8080}"
if [ -z "${ROUSE_TEST_OOM:-}" ]; then exec httpd -f -v -p "${PORT:-8080}" -h /www; fi
# Test mode: stay process 1 and, on SIGUSR1, hold ROUSE_TEST_OOM MB in it.
trap 'hog=$(dd if=/dev/zero bs=1048576 count="$ROUSE_TEST_OOM" 2>/dev/null | tr "\0" a)' USR1
trap 'kill "$pid"; exit 0' TERM
httpd -f -v -p "${PORT:-8080}" -h /www & pid=$!
while kill -0 "$pid" 2>/dev/null; do wait; done
ENTRY
)" \
  --config.workingdir /www --config.env GREETING_FROM_IMAGE=image \
  --config.exposedports 8080/tcp --architecture amd64 --os linux >/dev/null
fi
umoci gc --layout "$work/oci" >/dev/null

case "$mode" in
  push) skopeo copy --quiet --dest-tls-verify=false ${DEST_CREDS:+--dest-creds "$DEST_CREDS"} "oci:$work/oci:img" "docker://$dest/$ref" ;;
  tar)
    # An OCI-layout tarball whose index names the image.
    skopeo copy --quiet "oci:$work/oci:img" "oci-archive:$dest:$ref" ;;
  *) echo "usage: $0 push REGISTRY REPO:TAG | tar FILE NAME:TAG" >&2; exit 2 ;;
esac
