#!/usr/bin/env bash
# Mutation testing of the reference policies and the radix cache with mutmut 3 (issue #4).
#
# Usage (from anywhere):
#   benchmarks/run_mutation.sh [MODULE ...]
# MODULE is a dotted module glob known to mutmut, e.g.
#   prefixsched.reference.policies.dlpm   prefixsched.reference.radix_cache
# Without arguments every target module is run, in this order: dlpm, vtc, klpm, lpm, fcfs,
# random, dfs_weight, radix_cache.
#
# Environment:
#   MUT_DIR      work directory (default /tmp/mut): $MUT_DIR/repo is a copy of the repository,
#                $MUT_DIR/venv a separate virtual environment with mutmut. The repository itself
#                is never touched (mutmut writes mutants/ and setup.cfg into the copy only).
#   MUT_FRESH=1  recopy the repository from scratch (drops previous results); otherwise the
#                copy is refreshed and the named modules' mutants are all run again.
#   MUT_CHILDREN worker processes (default 1; the machine is shared).
#
# Slow (about 3-5 s per mutant, 1251 mutants, ~1.5 h with one worker): NOT for CI. Results: `mutmut results`
# inside $MUT_DIR/repo; scores are recorded in benchmarks/mutation.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MUT_DIR="${MUT_DIR:-/tmp/mut}"
CHILDREN="${MUT_CHILDREN:-1}"
COPY="$MUT_DIR/repo"
VENV="$MUT_DIR/venv"

copy_repo() {
    mkdir -p "$COPY"
    (cd "$REPO" && tar --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.hypothesis --exclude=.pytest_cache --exclude=mutants --exclude=benchmarks/out \
        -cf - prefixsched tests docs pyproject.toml README.md) | (cd "$COPY" && tar xf -)
}

if [[ "${MUT_FRESH:-0}" == 1 ]]; then rm -rf "$COPY"; fi
if [[ ! -d "$COPY/prefixsched" ]]; then copy_repo; else
    # refresh the sources and tests, keep mutants/ (mutmut re-runs what changed)
    copy_repo
fi

if [[ ! -x "$VENV/bin/mutmut" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q mutmut numpy networkx ortools z3-solver matplotlib tqdm \
        sortedcontainers pytest hypothesis
    "$VENV/bin/pip" install -q -e "$COPY"
fi

# A "mutation" hypothesis profile (in the copy only): the ci profile without the shrink phase.
# A mutant makes a property test fail; shrinking that failure takes 10-60 s and only makes
# mutmut report a timeout instead of a kill. Loaded after conftest's own load_profile.
cat >> "$COPY/tests/conftest.py" <<'PY'


# --- added by benchmarks/run_mutation.sh (mutation copy only) ---
from hypothesis import Phase as _Phase  # noqa: E402

settings.register_profile(
    "mutation", settings.get_profile("ci"), phases=[_Phase.explicit, _Phase.reuse, _Phase.generate]
)
settings.load_profile("mutation")
PY

cat > "$COPY/setup.cfg" <<'CFG'
[mutmut]
source_paths=
    prefixsched/reference/policies/dlpm.py
    prefixsched/reference/policies/vtc.py
    prefixsched/reference/policies/klpm.py
    prefixsched/reference/policies/lpm.py
    prefixsched/reference/policies/fcfs.py
    prefixsched/reference/policies/random.py
    prefixsched/reference/policies/dfs_weight.py
    prefixsched/reference/radix_cache.py
pytest_add_cli_args_test_selection=
    tests/test_policies.py
    tests/test_simulator.py
    tests/test_invariants.py
    tests/test_broken_policies.py
    tests/test_radix_cache.py
    tests/test_bounds.py
    tests/test_mutation_kills.py
pytest_add_cli_args=
    -x
    -q
    -p
    no:cacheprovider
also_copy=
    prefixsched/
    docs/
timeout_multiplier=3.0
timeout_constant=2.0
CFG

if [[ $# -eq 0 ]]; then
    set -- prefixsched.reference.policies.dlpm prefixsched.reference.policies.vtc \
        prefixsched.reference.policies.klpm prefixsched.reference.policies.lpm \
        prefixsched.reference.policies.fcfs prefixsched.reference.policies.random \
        prefixsched.reference.policies.dfs_weight prefixsched.reference.radix_cache
fi

cd "$COPY"
export PREFIXSCHED_HYPOTHESIS_PROFILE=ci   # derandomized (no flaky kills); conftest then loads "mutation"
for m in "$@"; do
    echo "=== $m"
    nice -n 10 "$VENV/bin/mutmut" run --max-children "$CHILDREN" "${m}*"
done
nice -n 10 "$VENV/bin/mutmut" results || true
