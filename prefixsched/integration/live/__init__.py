"""``prefixsched live``: drive a real (or stand-in) SGLang server with a prefixsched workload and
compare what it measured with the theory bounds and with the simulator.

- :mod:`.client`: the streaming client (asyncio + aiohttp): requests sent at their arrival times
  to ``/generate``, SSE responses recorded per chunk (:class:`~.records.LiveRun`).
- :mod:`.server`: a small SGLang-compatible ``/generate`` SSE server whose clock is a
  :class:`~prefixsched.theory.cost.CostModel` (the tests' stand-in for SGLang).
- :mod:`.fit`: forward steps reconstructed from the token stream; prefill and decode coefficients
  fitted by non-negative least squares; the cost profile JSON.
- :mod:`.compare`: measured per-client service, service gaps against ``theory/bounds.py``, TTFT
  and throughput against a simulator run with the fitted cost model.
- :mod:`.launch`: starts ``python -m sglang.launch_server`` with the plugin and a policy (an
  8B-shaped Llama with random weights by default).
- :mod:`.harness`: the whole run, its JSON and plots; :mod:`.cli`: the subcommand.

aiohttp is needed (``pip install 'prefixsched[live]'``); nothing here imports SGLang.
"""
