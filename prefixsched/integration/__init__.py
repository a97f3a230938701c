"""Meeting the real engine (SGLang). Optional; nothing here is imported by the core package, and
nothing here imports SGLang or torch at import time.

- :mod:`~prefixsched.integration.sglang_env`: lazy, version-checked SGLang loader for CPU
  (torchvision stand-in, published runtime config).
- :mod:`~prefixsched.integration.conformance`: replays on SGLang's own classes (radix trees,
  one prefill pass of its scheduler, retraction, new_token_ratio) and engine-record comparison.
- :mod:`~prefixsched.integration.cli`: the ``prefixsched conformance sglang`` command.
"""
