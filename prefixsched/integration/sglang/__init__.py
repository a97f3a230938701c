"""prefixsched inside SGLang: the plugin, its adapter, the CPU twin driver and the DP hook.

- :mod:`.plugin`: the ``sglang.srt.plugins`` entry point (``register``) and its hooks.
- :mod:`.adapter`: SGLang's scheduler state as a policy ``Snapshot``; ``PrefillAdder`` as the
  ``BatchBuilder``.
- :mod:`.twin`: steps SGLang's real scheduler pieces on CPU with a cost-model clock and compares
  them with prefixsched's ``sglang`` engine.
- :mod:`.dp`: D²LPM as the dispatcher of SGLang's data-parallel controller.
- :mod:`._shim`: lazy, version-checked import of SGLang on a CPU-only machine.

Importing this package does not import SGLang.
"""
