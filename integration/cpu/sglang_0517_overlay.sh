#!/usr/bin/env bash
# Build a CPU overlay that makes SGLang 0.5.17 (the GPU image's version, sglang.md §3) importable
# in the SGLang 0.5.23 CPU venv, so the plugin's tests run against 0.5.17's scheduler on CPU:
#
#   bash integration/cpu/sglang_0517_overlay.sh /tmp/sgl0517-overlay
#   PREFIXSCHED_SGLANG_0517_OVERLAY=/tmp/sgl0517-overlay <sglang venv>/bin/python -m pytest tests/test_plugin_sglang.py
#
# The overlay is put first on PYTHONPATH. It holds the sglang 0.5.17 package (no-deps wheel, 21 MB)
# and the versions 0.5.17 needs where the 0.5.23 venv differs: transformers 5.12.1 (its pin; 5.17+
# already defines the 'qwen3_asr' config that 0.5.17 registers itself, so `import sglang` fails
# with "'qwen3_asr' is already used by a Transformers config"), tokenizers 0.22.2 and
# huggingface_hub < 2 (what transformers 5.12.1 accepts at import). About 50 MB. Needs pip access.
set -euo pipefail
DIR="${1:?usage: $0 OVERLAY_DIR}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR/wheels" "$DIR/site"
"$PY" -m pip download -q --no-deps -d "$DIR/wheels" sglang==0.5.17 transformers==5.12.1 "huggingface_hub>=1.5,<2"
"$PY" -m pip download -q --no-deps -d "$DIR/wheels" --only-binary=:all: --platform manylinux_2_17_x86_64 \
  --python-version 3.11 tokenizers==0.22.2
cd "$DIR/site"
for w in "$DIR"/wheels/*.whl; do
  case "$(basename "$w")" in
    sglang-*) unzip -q -o "$w" 'sglang/*' ;;   # the package only: keep the venv's sglang metadata out
    *) unzip -q -o "$w" ;;
  esac
done
echo "overlay ready: PYTHONPATH=$DIR/site"
