"""Stage the wheels for an offline SGLang 0.5.17 on the GPU image (sglang.md §3), in <= 64 MiB parts.

Run HERE (pip access), from the repository root:  python integration/gpu/stage.py [--dest .whl]

1. Dummy wheels (version ``X+image``, pinned by a constraint so PyPI's real wheel never wins) stand
   for what the GPU image already has (torch 2.11.0, torchvision 0.26.0,
   torchaudio 2.11.0, triton 3.6.0, numpy, scipy, numba, einops, uvloop, aiohttp, sentencepiece,
   tiktoken), so the resolver treats them as installed and downloads nothing of them.
2. ``pip download`` resolves the closure of sglang==0.5.17 for CPython 3.12 / manylinux x86_64
   (binary wheels only) plus transformers==5.12.1, tokenizers==0.22.2, huggingface_hub<2
   (0.5.17's pins: transformers >= 5.17 already defines the 'qwen3_asr' config that 0.5.17
   registers, so the image's transformers 5.17 cannot import it; checked on CPU) and the live
   harness's own needs (sortedcontainers, matplotlib for the plots).
3. Wheels not needed to serve a Llama model with ``--attention-backend triton --sampling-backend
   pytorch`` are dropped (:data:`DROP`; decision from sglang.md §3, not verified on a GPU), and
   ``sglang-kernel`` is replaced by a trimmed tar.gz of its package without ``flash_ops`` (FA3),
   ``infllm``, ``flashmla`` and ``sm100`` (H100/H200 only).
4. Everything is split into parts of at most ``--part-mib`` (default 60) under ``DEST/p1``,
   ``DEST/p2``, ... and ``DEST/MANIFEST.txt`` lists every file with its size.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: What the GPU image has (sglang.md §3); versions for the resolver only, never installed.
IMAGE = {
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "torchaudio": "2.11.0",
    "triton": "3.6.0",
    "numpy": "2.3.5",
    "scipy": "1.16.3",
    "numba": "0.65.1",
    "einops": "0.8.1",
    "uvloop": "0.22.1",
    "aiohttp": "3.13.2",
    "sentencepiece": "0.2.1",
    "tiktoken": "0.12.0",
}

#: Distributions dropped after resolution (normalized names, prefixes allowed with a trailing *).
DROP = [
    "flashinfer*",  # --attention-backend triton, --sampling-backend pytorch
    "sglang-kernel",  # replaced by the trimmed tar.gz
    "tokenspeed*",
    "nvidia-*",  # CUDA toolkits for JIT kernels and CUTLASS DSL (the image's torch brings the runtime); see KEEP
    "tilelang",
    "z3-solver",
    "flash-attn-4",
    "quack-kernels",
    "helion",
    "humming-kernels",
    "sgl-deep-gemm",
    "torchao",
    "torchcodec",
    "datasets",
    "pyarrow",
    "pandas",
    "modelscope",
    "decord2",
    "av",
    "timm",
    "apache-tvm-ffi-cu*",
    "torch-memory-saver",
    "py-spy",
    "xformers",
]

#: Kept although DROP matches them (small, and imported by some server paths).
KEEP = ["nvidia-ml-py"]

EXTRA = [
    "transformers==5.12.1",
    "tokenizers==0.22.2",
    "huggingface_hub>=1.5,<2",
    "sortedcontainers",
    "matplotlib",
]

#: glibc of the image (Ubuntu 24.04, Python 3.12.3) is 2.39: any manylinux tag up to it installs.
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64" for v in (17, 24, 27, 28, 31, 34, 35, 38, 39)]

KERNEL_DROP = re.compile(r"(^|/)(flash_ops[^/]*\.so|infllm|flashmla|sm100)(/|$|[._])")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dummy_wheel(directory: Path, name: str, version: str) -> None:
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: prefixsched-stage\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            data = text.encode()
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")


def _dropped(fname: str) -> bool:
    dist = _norm(fname.split("-")[0])
    if dist in {_norm(k) for k in KEEP}:
        return False
    for pat in DROP:
        if pat.endswith("*") and dist.startswith(_norm(pat[:-1])):
            return True
        if dist == _norm(pat):
            return True
    return False


def _trim_kernel(wheel: Path, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.startswith(("sgl_kernel/", "sglang_kernel")) and not KERNEL_DROP.search(m)]
            z.extractall(tmp, members)
        tgt = out / "sgl_kernel-trimmed.tar.gz"
        with tarfile.open(tgt, "w:gz") as tf:
            for entry in sorted(os.listdir(tmp)):
                tf.add(os.path.join(tmp, entry), arcname=entry)
    return tgt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=".whl", help="staging folder (git-ignored; default: %(default)s)")
    p.add_argument("--part-mib", type=float, default=60.0, help="largest part in MiB (default: %(default)s)")
    p.add_argument("--python-version", default="3.12", help="target CPython (default: %(default)s)")
    p.add_argument("--trace", default="../shared/data/mooncake/conversation_trace.jsonl", help="trace to slice (default: %(default)s)")
    p.add_argument("--trace-lines", type=int, default=2000, help="first N lines of the trace to carry (default: %(default)s)")
    a = p.parse_args()
    dest = Path(a.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dl = dest / "download"
    dummies = dest / "dummies"
    dl.mkdir(parents=True)
    dummies.mkdir(parents=True)
    for name, ver in IMAGE.items():  # local label "+image": a == pin without label still matches
        _dummy_wheel(dummies, name, f"{ver}+image")
    cons = dest / "constraints.txt"
    cons.write_text("".join(f"{n}=={v}+image\n" for n, v in IMAGE.items()))
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "-d", str(dl),
        "--find-links", str(dummies), "-c", str(cons),
        "--only-binary=:all:", "--python-version", a.python_version, "--implementation", "cp",
        *[x for tag in PLATFORMS for x in ("--platform", tag)],
        "sglang==0.5.17", *EXTRA,
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    keep: list[Path] = []
    dropped: list[str] = []
    for f in sorted(dl.iterdir()):
        dist = _norm(f.name.split("-")[0])
        if dist in {_norm(n) for n in IMAGE}:
            continue
        if dist == "sglang-kernel":
            keep.append(_trim_kernel(f, dl))
            dropped.append(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB, trimmed)")
            continue
        if _dropped(f.name):
            dropped.append(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)")
            continue
        keep.append(f)
    limit = a.part_mib * 2**20
    keep.sort(key=lambda f: -f.stat().st_size)
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for f in keep:  # first fit decreasing
        s = f.stat().st_size
        if s > limit:
            raise SystemExit(f"{f.name} is {s / 2**20:.1f} MiB, more than a part ({a.part_mib} MiB)")
        for i, tot in enumerate(sizes):
            if tot + s <= limit:
                parts[i].append(f)
                sizes[i] += s
                break
        else:
            parts.append([f])
            sizes.append(s)
    lines = []
    for i, files in enumerate(parts, 1):
        d = dest / f"p{i}"
        d.mkdir()
        for f in files:
            shutil.move(str(f), d / f.name)
        lines.append(f"p{i}: {len(files)} files, {sizes[i - 1] / 2**20:.1f} MiB")
        lines += [f"  {f.name} {(d / f.name).stat().st_size}" for f in files]
    trace = Path(a.trace)
    if trace.exists():
        td = dest / "trace"
        td.mkdir()
        with open(trace, encoding="utf-8") as src, open(td / "trace_slice.jsonl", "w", encoding="utf-8") as out:
            for k, line in enumerate(src):
                if k >= a.trace_lines:
                    break
                out.write(line)
        lines.append(f"trace: first {a.trace_lines} lines of {trace} ({(td / 'trace_slice.jsonl').stat().st_size / 2**20:.1f} MiB)")
    else:
        lines.append(f"trace: {trace} not found, no slice staged")
    lines.append("dropped: " + (", ".join(dropped) or "none"))
    shutil.rmtree(dl)
    shutil.rmtree(dummies)
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(x for x in lines if not x.startswith("  ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
