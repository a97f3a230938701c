#!/usr/bin/env bash
# The GPU run of issue #10 §5: SGLang 0.5.17 (the newest release pinning the image's torch 2.11.0,
# sglang.md §3) with the prefixsched plugin, an 8B-shaped Llama with random weights, LPM vs DLPM
# vs VTC vs k-LPM on a multi-client shared-prefix workload and on a time-scaled slice of the real
# trace. Results (JSON, plots, fitted cost profiles, summary.md) go to integration/results/.
#
#   bash integration/gpu/run_live.sh stage     # HERE, with pip access: wheels into .whl/p1..p4 (each
#                                              #   <= 60 MiB), the trimmed sgl-kernel, a trace slice
#   bash integration/gpu/run_live.sh receive   # on the GPU: list what has arrived (one part per call)
#   bash integration/gpu/run_live.sh check     # on the GPU: what the image has
#   bash integration/gpu/run_live.sh install   # on the GPU: .whl/p*/ -> .gl/site (offline, --no-deps)
#   bash integration/gpu/run_live.sh run       # on the GPU: the comparison (integration/gpu/run_live.py)
#   bash integration/gpu/run_live.sh all       # install + run
#
# Device calls (the run tool carries at most 64 MiB per call; ignored folders such as .whl/ stay on
# the machine between calls while it is warm, which is 30 s idle: make the calls back to back):
#   run(carry=[".whl/p1"], command="bash integration/gpu/run_live.sh receive", timeout_s=120)
#   run(carry=[".whl/p2"], command="bash integration/gpu/run_live.sh receive", timeout_s=120)
#   run(carry=[".whl/p3"], command="bash integration/gpu/run_live.sh receive", timeout_s=120)
#   run(carry=[".whl/p4", ".whl/trace"], command="bash integration/gpu/run_live.sh all", timeout_s=600)
# The last call copies integration/results/ to $OUT/results (it comes back with the reply); commit
# those files here. Wheel sizes of the staged set are in .whl/MANIFEST.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SITE="$ROOT/.gl/site"
RESULTS="${RESULTS:-integration/results}"
PY="${PYTHON:-python3}"

stage() {
  # pip download lines: see integration/gpu/stage.py (it prints the exact command it runs)
  local trace="${TRACE:-}"
  if [ -z "$trace" ]; then
    for c in ../shared/data/mooncake/conversation_trace.jsonl ../../shared/data/mooncake/conversation_trace.jsonl /work/shared/data/mooncake/conversation_trace.jsonl; do
      if [ -f "$c" ]; then trace="$c"; break; fi
    done
  fi
  "$PY" integration/gpu/stage.py --dest .whl --trace "${trace:-none}" --trace-lines "${TRACE_LINES:-2000}"
  du -sh .whl/* | sort -k2
}

receive() {
  for d in .whl/p* .whl/trace; do
    [ -d "$d" ] && echo "$d: $(ls "$d" | wc -l) files, $(du -sh "$d" | cut -f1)"
  done
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
}

check() {
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "triton", "transformers", "tokenizers", "torchvision", "numpy", "aiohttp", "matplotlib", "tqdm", "sortedcontainers"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:16s} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m:16s} MISSING ({type(e).__name__})")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
}

install() {
  local t0=$SECONDS
  mkdir -p "$SITE"
  ls .whl/p*/*.whl > /dev/null
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/p*/*.whl
  tar -xzf .whl/p*/sgl_kernel-trimmed.tar.gz -C "$SITE"
  # the plugin's entry point, offline: a minimal dist-info beside the site (prefixsched itself is
  # imported from the repository on PYTHONPATH)
  local info="$SITE/prefixsched_plugin-0.1.0.dist-info"
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: prefixsched-plugin\nVersion: 0.1.0\n' > "$info/METADATA"
  printf '[sglang.srt.plugins]\nprefixsched = prefixsched.integration.sglang.plugin:register\n' > "$info/entry_points.txt"
  : > "$info/RECORD"
  echo "installed into $SITE in $((SECONDS - t0)) s"
  PYTHONPATH="$SITE:$ROOT" "$PY" -c "
from importlib.metadata import entry_points
import sglang.version, transformers, sgl_kernel
print('sglang', sglang.version.__version__, 'transformers', transformers.__version__)
print('plugins', [e.value for e in entry_points(group='sglang.srt.plugins')])
import sglang.srt.managers.scheduler  # the import chain the scheduler processes run
print('scheduler imports: ok')
"
}

run() {
  mkdir -p "$RESULTS"
  PYTHONPATH="$SITE:$ROOT" "$PY" integration/gpu/run_live.py --results "$RESULTS" "$@" 2>&1 | tee "$RESULTS/run_live.log"
}

case "${1:-}" in
  stage) stage ;;
  receive) receive ;;
  check) check ;;
  install) install ;;
  run) shift; run "$@" ;;
  all) shift; install; run "$@" ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
