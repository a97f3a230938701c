"""Starting an SGLang server for a live run: the plugin's policy, an 8B-shaped random-weight model.

:func:`launch_command` builds ``python -m sglang.launch_server --model-path DIR --load-format
dummy --skip-tokenizer-init --host 127.0.0.1 --port P --schedule-policy lpm ...``; the policy goes
in the environment (``PREFIXSCHED_POLICY``, read by the plugin in every scheduler process) and the
scheduler's per-pass state log in ``PREFIXSCHED_STATE_LOG``.

Model: a user path, or ``dummy-8b``: a directory holding only :data:`LLAMA_8B_CONFIG` (the shape
of Llama-3.1-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads, vocabulary 128256) loaded with
``--load-format dummy`` (random weights, no hub access), so the forward passes cost what an 8B
model costs. No tokenizer: ``--skip-tokenizer-init``, token ids in and out.

Policy specs: a prefixsched spec (``dlpm:8000``) runs the plugin with SGLang's
``--schedule-policy lpm`` underneath; ``sglang:lpm`` / ``sglang:fcfs`` run SGLang's own policy
(no ``PREFIXSCHED_POLICY``) as the baseline. :func:`simulator_spec` maps these to the prefixsched
policy the simulator compares with (``sglang:lpm`` -> ``lpm:128``: SGLang's LPM with its FCFS
fallback above 128 waiting requests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from prefixsched.errors import InputError
from prefixsched.integration.live.client import LiveRunError

__all__ = ["LLAMA_8B_CONFIG", "write_dummy_model", "launch_command", "simulator_spec", "LaunchedServer"]

#: Llama-3.1-8B's shape (Meta, ``config.json`` of meta-llama/Llama-3.1-8B), weights random.
LLAMA_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}


def write_dummy_model(directory: str | os.PathLike[str]) -> Path:
    """Write :data:`LLAMA_8B_CONFIG` as ``config.json`` in ``directory`` (created); returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG, indent=1) + "\n", encoding="utf-8")
    return d


def simulator_spec(spec: str | None) -> str | None:
    """The prefixsched policy the simulator runs for a live policy spec (module docstring)."""
    if spec is None:
        return None
    if spec.startswith("sglang:"):
        native = spec.split(":", 1)[1]
        return {"lpm": "lpm:128", "fcfs": "fcfs"}.get(native)
    return spec


def launch_command(
    model_path: str,
    *,
    port: int,
    policy: str | None,
    python: str = sys.executable,
    dummy: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``sglang.launch_server`` command line (module docstring)."""
    native = "lpm"
    if policy is not None and policy.startswith("sglang:"):
        native = policy.split(":", 1)[1]
        if native not in ("lpm", "fcfs", "dfs-weight", "lof", "random", "hrrn", "shortest-prefill-first", "routing-key"):
            raise InputError("--policy", f"unknown SGLang policy {native!r} in {policy!r}")
    cmd = [
        python, "-m", "sglang.launch_server",
        "--model-path", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--skip-tokenizer-init",
        "--schedule-policy", native,
    ]
    if dummy:
        cmd += ["--load-format", "dummy"]
    return cmd + list(extra_args)


class LaunchedServer:
    """An SGLang server process this harness started (and stops: its whole process group, by the
    id of the child it started). Use as a context manager; ``url`` once :meth:`wait_ready`."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        log_path: str | os.PathLike[str],
        port: int,
    ) -> None:
        self.cmd = list(cmd)
        self.env = env
        self.log_path = Path(log_path)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "LaunchedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> str:
        """Poll ``GET /health`` until 200. Raises :class:`LiveRunError` (with the log's tail) if
        the process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LiveRunError(
                    f"the SGLang server exited with status {self.proc.returncode} before it was ready "
                    f"(log {self.log_path}):\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise LiveRunError(f"the SGLang server was not ready after {timeout_s:.0f} s (log {self.log_path}):\n{self.tail()}")

    def stop(self, grace_s: float = 20.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # the group of the child we started (start_new_session)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.proc = None
        self._log.close()
