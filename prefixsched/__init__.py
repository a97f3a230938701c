"""prefixsched: know, not guess, how an LLM-serving request scheduler behaves.

Areas (see ``../shared/DESIGN.md``):

- :mod:`prefixsched.theory`: the formal model (requests, prefix sharing, cost model, service),
  the independent schedule checker and metrics, theorem bounds as code, exact solvers.
- :mod:`prefixsched.reference`: the radix prefix cache, the policies (FCFS, LPM, k-LPM, VTC,
  DLPM, ...) and the deterministic discrete-event continuous-batching simulator.
- :mod:`prefixsched.reductions`: NP-hardness reductions and adversarial instance families.
- :mod:`prefixsched.testing`: hypothesis strategies and the invariant suite for your own policy.
"""

__version__ = "0.1.0"
