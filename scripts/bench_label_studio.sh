#!/usr/bin/env bash
# The many-hosts figures (`camsam bench --project ID --workers N`) against a real Label Studio.
#
#   scripts/bench_label_studio.sh DATA_DIR OUT_DIR [TASKS] [WORKERS] -- [camsam train options...]
#   scripts/bench_label_studio.sh ../shared/data/magnetic-tile runs/ls-bench 240 2 -- \
#       --background-class Free --epochs 3
#
# Everything runs on loopback and is started here, in OUT_DIR: a redis-server, Label Studio
# 1.23.2 (installed into .venv-label-studio by scripts/label_studio_venv.sh, as the end-to-end
# test does) with an admin and a project of TASKS images of DATA_DIR served from local files, and a version
# trained on DATA_DIR with the options given, shared through Redis (MODEL_STORE=redis). The bench
# then starts its own `camsam worker` processes, one MODEL_DIR each. Figures go to OUT_DIR/bench.json.
set -euo pipefail
positional=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do positional+=("$1") && shift; done
[ "${1:-}" = "--" ] && shift
data=${positional[0]:?DATA_DIR} out=${positional[1]:?OUT_DIR}
tasks=${positional[2]:-240} workers=${positional[3]:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
camsam=${CAMSAM:-$repo/.venv/bin/camsam}
python=${camsam%camsam}python
token=camsam-bench-token-0123456789
mkdir -p "$out" && out=$(cd "$out" && pwd)

label_studio=$("$repo/scripts/label_studio_venv.sh")

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port) ls_port=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$out" \
  >"$out/redis.log" 2>&1 &
pids+=($!)

# TASKS images, spread over the classes (their folders), copied where Label Studio serves them.
documents=$out/documents
rm -rf "$documents" && mkdir -p "$documents/images"
"$python" - "$data" "$documents/images" "$tasks" <<'PY'
import shutil, sys
from itertools import zip_longest
from pathlib import Path
data, dest, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
folders = [sorted(p for p in d.iterdir() if p.suffix.lower() in suffixes)
           for d in sorted(data.iterdir()) if d.is_dir()]
taken = [p for row in zip_longest(*folders) for p in row if p is not None][:count]
for path in taken:
    shutil.copy(path, dest / f"{path.parent.name}__{path.name}")
print(f"{len(taken)} images for the project")
PY

ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false LOCAL_FILES_SERVING_ENABLED=true \
  LOCAL_FILES_DOCUMENT_ROOT=$documents LABEL_STUDIO_BASE_DATA_DIR=$out/ls-data \
  "$label_studio" start --no-browser --port "$ls_port" --data-dir "$out/ls-data" \
  --username admin@camsam.test --password camsam-bench-pw --user-token "$token" \
  --enable-legacy-api-token >"$out/label-studio.log" 2>&1 &
pids+=($!)

export REDIS_URL=redis://127.0.0.1:$redis_port/0 MODEL_STORE=redis
export LABEL_STUDIO_URL=http://127.0.0.1:$ls_port LABEL_STUDIO_API_KEY=$token
export LOCAL_FILES_DOCUMENT_ROOT=$documents MODEL_DIR=$out/models DEVICE=${DEVICE:-cpu}

project=$("$python" - "$repo/label_config.xml" "$documents/images" <<'PY'
import sys, time
import requests
config, images = open(sys.argv[1]).read(), sys.argv[2]
import os
url, token = os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"]
session = requests.Session()
session.headers["Authorization"] = f"Token {token}"
for _ in range(600):
    try:
        if session.get(f"{url}/api/projects/", timeout=5).ok:
            break
    except requests.RequestException:
        pass
    time.sleep(1)
else:
    sys.exit("Label Studio did not start: see label-studio.log")
def call(method, path, **kwargs):
    answer = session.request(method, url + path, timeout=300, **kwargs)
    answer.raise_for_status()
    return answer.json() if answer.content else None
pid = call("POST", "/api/projects/", json={"title": "camsam bench", "label_config": config})["id"]
storage = call("POST", "/api/storages/localfiles/", json={
    "project": pid, "title": "images", "path": images, "regex_filter": r".*",
    "use_blob_urls": True})
call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
for _ in range(300):
    if call("GET", f"/api/projects/{pid}/")["task_number"] >= len(os.listdir(images)):
        break
    time.sleep(1)
print(pid)
PY
)
echo "project $project at $LABEL_STUDIO_URL"

"$camsam" train "$data" --model-dir "$MODEL_DIR/$project" "$@" 2>"$out/train.log" | tail -n 2
version=$(cat "$MODEL_DIR/$project/CURRENT")
"$camsam" rollback "$version" --project "$project"
"$camsam" bench --project "$project" --workers "$workers" --json "$out/bench.json"
