import os
import secrets

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests run eager (the library's default): one torch.compile per random shape would blow
# the CI budget. tests/test_compile.py is the one place that opts in to the compiled kernel.
os.environ.pop("ENTROPYMIX_COMPILE", None)

# Profiles (HYPOTHESIS_PROFILE):
#   ci         the fixed core: derandomized, the same 60 cases per property on every run.
#   ci-seeded  CI's second pass over the property modules: 40 fresh cases per property from a
#              seed printed in the header (HYPOTHESIS_SEED=<seed> replays a failure exactly).
#   dev        local and nightly runs: 300 cases per property, random.
QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=QUIET)
settings.register_profile("ci-seeded", max_examples=40, deadline=None, print_blob=True, database=None,
                          suppress_health_check=QUIET)
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=QUIET)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SEED = int(os.environ.get("HYPOTHESIS_SEED") or secrets.randbelow(2**32)) if PROFILE == "ci-seeded" else None

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Every device-capable test runs on these (parametrize "device"); the CUDA cases skip cleanly
# without a GPU, and run in benchmarks/gpu_check.sh when one is lent.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
# Autocast as training loops use it: bfloat16 on CPU; float16 (with a GradScaler) and bfloat16 on CUDA.
AUTOCAST = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=requires_cuda),
            pytest.param("cuda", torch.bfloat16, marks=requires_cuda)]


def autocast_dtypes(device: str):
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if SEED is not None and config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(SEED)  # read by hypothesis's plugin right after this hook


def pytest_report_header(config):
    if SEED is None:
        return f"hypothesis profile: {PROFILE}"
    return (f"hypothesis profile: {PROFILE}, seed {config.getoption('hypothesis_seed')} "
            f"(replay: HYPOTHESIS_PROFILE=ci-seeded HYPOTHESIS_SEED={config.getoption('hypothesis_seed')} "
            f"python -m pytest tests/test_functional.py tests/test_mix.py tests/test_loss.py)")
