"""Mutation check: does the suite notice single-line defects in the package?

    python tests/mutate.py              # every defect below, two at a time
    python tests/mutate.py -k kd        # only defects whose name contains "kd"

Each defect replaces one exact line fragment of ``entropymix/`` in a throwaway copy of the
repository, then runs the fast test modules there (stopping at the first failure). A defect that
no test catches is a *survivor*: either the suite has a blind spot, or the defect is equivalent
(it changes nothing observable); the report says which is which only for the ones listed as
equivalent here, with the reason. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_functional.py", "tests/test_mix.py", "tests/test_loss.py", "tests/test_bad_inputs.py",
         "tests/test_tap.py"]
COMPILE_TESTS = ["tests/test_compile.py"]

# (name, file, original fragment, replacement, tests): each fragment occurs exactly once in its file.
DEFECTS = [
    # SPEEDLoss settings must reach their terms
    ("loss: temperature not passed", "loss.py", "temperature=self.temperature,", ""),
    ("loss: entropy_weighting not passed", "loss.py", "entropy_weighting=self.entropy_weighting, ", ""),
    ("loss: ignore_index not passed to relation", "loss.py",
     "student_features, teacher_features, valid, ignore_index=self.ignore_index,",
     "student_features, teacher_features, valid,"),
    ("functional: ignore_index hard-coded", "functional.py", "    return valid != ignore_index", "    return valid != 255"),
    ("loss: relation averaged over all images", "loss.py", "/ has.sum().clamp_min(1)", "/ has.numel()"),
    ("loss: kd mask as a product", "loss.py", "total = torch.where(mask, kl, 0.0).sum()", "total = (kl * mask).sum()"),
    ("loss: student logits not masked", "loss.py", "s = torch.where(mask[:, None], s, 0.0)", "pass"),
    ("loss: features masked by a product", "loss.py",
     "f = torch.where(mask[:, None], _wide(features), 0.0).flatten(2)",
     "f = (_wide(features) * mask[:, None]).flatten(2)"),
    ("loss: -inf teacher logits not clamped", "loss.py",
     "log_q = torch.log_softmax(t / temperature if temperature != 1 else t, dim=1).clamp_min_(torch.finfo(t.dtype).min)",
     "log_q = torch.log_softmax(t / temperature if temperature != 1 else t, dim=1)"),
    ("loss: entropy weight inverted", "loss.py", "kl = kl * (1 + q_log_q / math.log(K)).clamp(0, 1)",
     "kl = kl * (-q_log_q / math.log(K)).clamp(0, 1)"),
    ("loss: auto picks the slower form", "loss.py", 'method = "gram" if gram_cost <= naive_cost else "naive"',
     'method = "gram" if gram_cost >= naive_cost else "naive"'),
    ("loss: relation in autocast precision", "loss.py", "    with _float32_math(student_features.device):",
     "    if True:"),
    # value checks, every condition
    ("checks: negative probabilities allowed", "functional.py", "~torch.isfinite(total) | (probs < 0).any(1) |",
     "~torch.isfinite(total) |"),
    ("checks: simplex ignored", "functional.py",
     "(probs < 0).any(1) | ((total - 1).abs() > SIMPLEX_TOLERANCE)", "(probs < 0).any(1)"),
    ("checks (compiled): simplex ignored", "functional.py",
     "return ent, ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)",
     "return ent, ~torch.isfinite(total) | (low < 0)"),
    ("checks: +inf / all -inf logits allowed", "functional.py", "return ~torch.isfinite(logits.amax(1))",
     "return torch.isnan(logits).any(1)"),
    ("checks (compiled): +inf logits allowed", "functional.py", "~torch.isfinite(logits.float().amax(1))",
     "torch.isnan(logits.float().amax(1))"),
    ("checks: generator not validated", "functional.py", "    _check_generator(generator)\n    src", "    src"),
    # entropy, cells, selection
    ("entropy: compiled 0 log 0 is NaN", "functional.py",
     "torch.where(p > 0, -p * p.log(), 0.0).sum(1)", "(-p * p.log()).sum(1)"),
    ("entropy: compiled ignores negatives", "functional.py",
     "ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))",
     "ent = torch.where(torch.isnan(total), math.nan, ent)"),
    ("entropy: compiled ignores NaN rows", "functional.py",
     "ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))",
     "ent = torch.where(low < 0, -math.inf, ent)"),
    ("cells: caller's entropy multiplied in place", "functional.py",
     "ent = entropy.float() if mask is None else torch.where(mask, entropy.float(), 0.0)",
     "ent = entropy.float() if mask is None else entropy.float().mul_(mask)"),
    ("cells: empty cells look full", "functional.py", "            nonempty = counts > 0", "            nonempty = counts >= 0"),
    ("select: ties to the highest view", "functional.py", "    return score.argmax(0)",
     "    return score.shape[0] - 1 - score.flip(0).argmax(0)"),
    ("select: empty cells compete", "functional.py", "valid = valid | ~valid.any(0, keepdim=True)",
     "valid = torch.ones_like(valid)"),
    # plans
    ("plan: to() does not move", "mix.py",
     "return MixPlan(self.index.to(device, non_blocking=non_blocking), self.num_views, self.size, False)",
     "return self"),
    ("plan: stale mask cache", "mix.py", "key = (size, self.index._version)", "key = size"),
    ("plan: index range unchecked", "mix.py", "if lo < 0 or hi >= self.num_views:", "if lo < 0:"),
    ("mix: p ignored", "mix.py", "keep = F._uniform((plan.shape[0],), plan.device, generator) >= p",
     "keep = F._uniform((plan.shape[0],), plan.device, generator) > 2"),
    # CutMix and ClassMix
    ("cutmix: fallback not shifted inside", "functional.py", "x0 = torch.minimum(x0.gather(1, pick), W - bw)",
     "x0 = x0.gather(1, pick)"),
    ("cutmix: last candidate, not first", "functional.py", "fits.byte().argmax(1)", "fits.byte().flip(1).argmax(1)"),
    ("classmix: floor(n / 2) classes", "functional.py", "(rank < (present.sum(1, keepdim=True) + 1) // 2)",
     "(rank < present.sum(1, keepdim=True) // 2)"),
    ("classmix: ignore pixels pasted", "functional.py",
     "pasted = drawn.gather(1, flat.clamp(0, num_classes - 1)) & keep",
     "pasted = drawn.gather(1, flat.clamp(0, num_classes - 1))"),
]

# Defects that change nothing observable, with the reason.
EQUIVALENT = {
    "loss: kd mask as a product": "the logits of ignored pixels are zeroed before the KL, so kl is exactly 0 there "
                                  "and kl * mask equals torch.where(mask, kl, 0) for every input",
}


def run_defect(name: str, file: str, old: str, new: str, workdir: Path) -> tuple:
    target = workdir / "entropymix" / file
    source = (workdir / "pristine" / file).read_text()  # the package as it was when the run started
    if source.count(old) != 1:
        return name, "stale", f"fragment found {source.count(old)} times in {file}"
    target.write_text(source.replace(old, new))
    mirror = f"tests/test_{Path(file).stem}.py"  # the module that mirrors the file runs first
    tests = [mirror] + [t for t in TESTS if t != mirror] + (COMPILE_TESTS if "compiled" in name else [])
    env = dict(os.environ, PYTHONPATH=str(workdir), HYPOTHESIS_PROFILE="ci", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=workdir, env=env, capture_output=True, text=True)
    target.write_text(source)
    caught = proc.returncode != 0
    first = next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
    return name, "caught" if caught else "SURVIVED", f"{time.time() - t0:.0f}s {first[:110]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only defects whose name contains this")
    ap.add_argument("--jobs", type=int, default=2, help="defects tried at once, each in its own copy")
    args = ap.parse_args(argv)
    defects = [d for d in DEFECTS if args.k in d[0]]
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for j in range(args.jobs):
            work = Path(tmp) / str(j)
            shutil.copytree(ROOT / "entropymix", work / "entropymix", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(work / "entropymix", work / "pristine")
            shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(ROOT / "setup.cfg", work / "setup.cfg")  # pytest's testpaths and options
            copies.append(work)
        free = queue.Queue()
        for work in copies:
            free.put(work)

        def attempt(defect):
            work = free.get()
            try:
                result = run_defect(*defect, work)
            finally:
                free.put(work)
            print(f"{result[1]:>8}  {result[0]}  ({result[2]})", flush=True)
            return result

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(attempt, defects))
    caught = sum(r[1] == "caught" for r in results)
    survivors = [r for r in results if r[1] != "caught"]
    print(f"\nmutation score: {caught}/{len(results)} caught")
    for name, status, _ in survivors:
        print(f"  {status}: {name}" + (f" (equivalent: {EQUIVALENT[name]})" if name in EQUIVALENT else ""))
    return 0 if not [s for s in survivors if s[0] not in EQUIVALENT] else 1


if __name__ == "__main__":
    sys.exit(main())
