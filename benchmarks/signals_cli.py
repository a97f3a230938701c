"""Interrupt the ``prefixsched`` command at many moments; count clobbered and left-behind files.

Target (issue #7): 0 files clobbered or left behind under SIGINT and SIGTERM. Each run starts
a real process (``python -m prefixsched.cli``) in a fresh directory that already holds an old
``o.json`` and ``o.png``, sends the signal after a delay from a sweep, and checks afterwards:

- exit status: 0 (it finished first), 130 (SIGINT) or 143 (SIGTERM), or killed by the signal
  (``-2``/``-15``) when it arrives after ``main()`` returned, during interpreter shutdown (Python
  has restored the default handlers then; every output is already complete);
- no temporary file (``*.tmp``) left in the directory;
- every output is either the old file, byte for byte, or a complete new one (JSON that parses,
  a PNG that ends with its IEND chunk): anything else counts as *clobbered*;
- ``solve`` interrupted: the old ``o.json`` is untouched (no output after an interrupt) and stdout
  says ``interrupted``.

    python benchmarks/signals_cli.py [--delays 0.5:6:0.25] [--signals INT,TERM]

Prints one line per run and the totals; exits 1 if anything was clobbered or left behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_JSON = b'{"old": true}\n'
OLD_PNG = b"old png bytes"

COMMANDS = {
    "simulate": ["simulate", "--max-requests", "500", "--policy", "fcfs", "lpm", "--no-progress",
                 "--json", "o.json", "--plot", "o.png"],
    "solve": ["solve", "i.json", "--solver", "cpsat", "--time-limit", "8", "--json", "o.json"],
}


def _complete_png(b: bytes) -> bool:
    return b.startswith(b"\x89PNG\r\n\x1a\n") and b.endswith(b"IEND\xaeB`\x82")


def _complete_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except ValueError:
        return False


def one_run(command: str, sig: int, delay: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="prefixsched-sig-"))
    try:
        (work / "o.json").write_bytes(OLD_JSON)
        (work / "o.png").write_bytes(OLD_PNG)
        if command == "solve":
            from prefixsched.instance_io import save_instance
            from prefixsched.reductions.families import klpm_definition4

            save_instance(work / "i.json", klpm_definition4(u=100, d=20, s=20, k=4, users=10, seed=0))
        p = subprocess.Popen([sys.executable, "-m", "prefixsched.cli", *COMMANDS[command]], cwd=work,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        rc = p.returncode
        left = sorted(q.name for q in work.iterdir() if q.name.endswith(".tmp"))
        clobbered = []
        j, g = (work / "o.json").read_bytes(), (work / "o.png").read_bytes()
        if j != OLD_JSON and not _complete_json(j):
            clobbered.append("o.json")
        if g != OLD_PNG and not _complete_png(g):
            clobbered.append("o.png")
        # -sig: the signal came after main() returned, while the interpreter was shutting down
        # (Python has restored the default handlers by then); every output is complete by then
        expect_rc = {0, 128 + sig, -sig}
        ok_rc = rc in expect_rc
        if command == "solve" and rc == 128 + sig:
            if j != OLD_JSON:
                clobbered.append("o.json written after the interrupt")
            ok_rc = ok_rc and "interrupted" in out
        return {"command": command, "signal": signal.Signals(sig).name, "delay": delay, "rc": rc, "ok_rc": ok_rc,
                "left": left, "clobbered": clobbered, "traceback": "Traceback" in err,
                "new_json": j != OLD_JSON, "new_png": g != OLD_PNG}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delays", default="0.5:6:0.25", help="START:STOP:STEP seconds (default: 0.5:6:0.25)")
    ap.add_argument("--signals", default="INT,TERM", help="signals to send (default: INT,TERM)")
    ap.add_argument("--commands", default="simulate,solve", help="which commands (default: simulate,solve)")
    args = ap.parse_args()
    a, b, c = (float(x) for x in args.delays.split(":"))
    delays = [round(a + k * c, 3) for k in range(int((b - a) / c) + 1)]
    sigs = [getattr(signal, "SIG" + s.strip()) for s in args.signals.split(",")]
    runs = []
    for command in args.commands.split(","):
        for sig in sigs:
            for d in delays if command == "simulate" else delays[::4]:
                r = one_run(command, sig, d)
                runs.append(r)
                print(f"{command:<8} {r['signal']:<7} {d:5.2f} s  rc {r['rc']:>3}  new json {r['new_json']!s:<5} "
                      f"new png {r['new_png']!s:<5} left {r['left'] or '-'}  clobbered {r['clobbered'] or '-'}"
                      + ("" if r["ok_rc"] else "  UNEXPECTED EXIT") + ("  TRACEBACK" if r["traceback"] else ""))
    bad = [r for r in runs if r["left"] or r["clobbered"] or not r["ok_rc"] or r["traceback"]]
    interrupted = sum(r["rc"] != 0 for r in runs)
    print(f"{len(runs)} runs ({interrupted} interrupted, {len(runs) - interrupted} finished first): "
          f"{sum(len(r['left']) for r in runs)} temporary files left, {sum(len(r['clobbered']) for r in runs)} files "
          f"clobbered, {sum(not r['ok_rc'] for r in runs)} unexpected exits, {sum(r['traceback'] for r in runs)} tracebacks")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
