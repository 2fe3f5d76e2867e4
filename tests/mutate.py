"""Mutation check: does the suite notice single-line defects in the package?

    python tests/mutate.py              # every defect below, two at a time
    python tests/mutate.py -k kd        # only defects whose name contains "kd" (-k kd,tap: either)

Each defect replaces one exact line fragment of ``entropymix/`` (or of an example, named with its
``examples/`` path) in a throwaway copy of the
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
         "tests/test_tap.py", "tests/test_docs.py"]
# the modules without a test file of their own name
MIRROR = {"_validation.py": "tests/test_bad_inputs.py", "examples/volume_loop.py": "tests/test_volume_example.py"}
COMPILE_TESTS = ["tests/test_compile.py"]

# (name, file, original fragment, replacement): each fragment occurs exactly once in its file.
DEFECTS = [
    # --- loss.py: SPEEDLoss settings reach their terms; masks, precision, teacher ----------------
    ("loss: temperature not passed", "loss.py", "temperature=self.temperature,", ""),
    ("loss: entropy_weighting not passed", "loss.py", "entropy_weighting=self.entropy_weighting, ", ""),
    ("loss: ignore_index not passed to relation", "loss.py",
     "student_features, teacher_features, valid, ignore_index=self.ignore_index,",
     "student_features, teacher_features, valid,"),
    ("loss: relation averaged over all images", "loss.py", "/ has.sum().clamp_min(1)", "/ has.numel()"),
    ("loss: kd mask as a product", "loss.py", "total = torch.where(mask, kl, 0.0).sum()", "total = (kl * mask).sum()"),
    ("loss: student logits not masked", "loss.py", "s = torch.where(mask[:, None], s, 0.0)", "pass"),
    ("loss: features masked by a product", "loss.py",
     "f = torch.where(mask[:, None], _wide(features, other), 0.0).flatten(2)",
     "f = (_wide(features, other) * mask[:, None]).flatten(2)"),
    ("loss: -inf teacher logits not clamped", "loss.py",
     "log_q = torch.log_softmax(t / temperature if temperature != 1 else t, dim=1).clamp_min_(torch.finfo(t.dtype).min)",
     "log_q = torch.log_softmax(t / temperature if temperature != 1 else t, dim=1)"),
    ("loss: entropy weight inverted", "loss.py", "kl = kl * (1 + q_log_q / math.log(K)).clamp(0, 1)",
     "kl = kl * (-q_log_q / math.log(K)).clamp(0, 1)"),
    ("loss: auto picks the slower form", "loss.py", 'method = "gram" if gram_cost <= naive_cost else "naive"',
     'method = "gram" if gram_cost >= naive_cost else "naive"'),
    ("loss: relation in autocast precision", "loss.py", "    with _float32_math(student_features.device):",
     "    if True:"),
    ("loss: teacher features not detached", "loss.py", "ft = _normalised_rows(teacher_features.detach(), mask, student_features)",
     "ft = _normalised_rows(teacher_features, mask, student_features)"),
    ("loss: teacher logits not detached", "loss.py", "t = _wide(teacher_logits.detach(), student_logits)",
     "t = _wide(teacher_logits, student_logits)"),
    ("loss: T^2 dropped", "loss.py", "kl = (q_log_q - (q * log_p).sum(1)) * temperature ** 2",
     "kl = (q_log_q - (q * log_p).sum(1)) * temperature"),
    ("loss: Gram cross term sign", "loss.py",
     "return g_ss.square().sum((1, 2)) - 2 * g_st.square().sum((1, 2)) + g_tt.square().sum((1, 2))",
     "return g_ss.square().sum((1, 2)) - g_st.square().sum((1, 2)) + g_tt.square().sum((1, 2))"),
    ("loss: Gram backward factor 2", "loss.py", "return grad_fs * (4 * grad.to(fs.dtype))[:, None, None], None",
     "return grad_fs * (2 * grad.to(fs.dtype))[:, None, None], None"),
    ("loss: divided by N, not N^2", "loss.py", "per_image = sq / n.clamp_min(1).to(sq.dtype).square()",
     "per_image = sq / n.clamp_min(1).to(sq.dtype)"),
    ("loss: logit weight ignored", "loss.py", "kd = self.logit_weight * terms[\"logit\"]", "kd = terms[\"logit\"]"),
    ("loss: feature weight ignored", "loss.py", "total = self.feature_weight * terms[\"relation\"]",
     "total = terms[\"relation\"]"),
    ("loss: finite check skips the teacher", "loss.py",
     "        _check_finite(\"teacher_features\", teacher_features, mask)\n", ""),
    ("loss: both weights 0 accepted", "loss.py", "if self.feature_weight == 0 and self.logit_weight == 0:",
     "if False:"),
    # --- functional.py: value checks, every condition ------------------------------------------
    ("checks: negative probabilities allowed (compiled kernel)", "functional.py",
     "return ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)",
     "return ~torch.isfinite(total) | ((total - 1).abs() > SIMPLEX_TOLERANCE)"),
    ("checks: simplex ignored (compiled kernel)", "functional.py",
     "return ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)",
     "return ~torch.isfinite(total) | (low < 0)"),
    ("checks: +inf / all -inf logits allowed", "functional.py", "return (ent, torch.isnan(logp[:, 0])) if return_bad else ent",
     "return (ent, torch.isnan(logits).any(1)) if return_bad else ent"),
    ("checks: simplex ignored (eager)", "functional.py",
     "bads.append((ent - ent).ne(0) | ((c.sum(1) - 1).abs() > SIMPLEX_TOLERANCE))", "bads.append((ent - ent).ne(0))"),
    ("checks: negative probabilities allowed (eager)", "functional.py",
     "bads.append((ent - ent).ne(0) | ((c.sum(1) - 1).abs() > SIMPLEX_TOLERANCE))",
     "bads.append(torch.isnan(ent) | ((c.sum(1) - 1).abs() > SIMPLEX_TOLERANCE))"),
    ("checks: ignored pixels checked too", "functional.py", "bads.append(bad if mask is None else bad & mask)",
     "bads.append(bad)"),
    ("checks: the last bad map named", "functional.py", "v = flags.index(True)", "v = len(bads) - 1"),
    ("checks: generator not validated in select_views", "functional.py",
     "    validate.tensor(\"patch_entropy\", patch_entropy, ndim=(4, 5), floating=True, volumes=True)\n    validate.generator(generator)\n",
     "    validate.tensor(\"patch_entropy\", patch_entropy, ndim=(4, 5), floating=True, volumes=True)\n"),
    ("checks: generator not validated in classmix_masks", "functional.py",
     "    validate.tensor(\"labels\", labels, ndim=(3, 4), volumes=True)\n    validate.generator(generator)\n",
     "    validate.tensor(\"labels\", labels, ndim=(3, 4), volumes=True)\n"),
    # --- functional.py: entropy (eager and compiled), chunks ----------------------------------
    ("entropy (compiled): 0 log 0 is NaN", "functional.py",
     "torch.where(p > 0, -p * p.log(), 0.0).sum(1)", "(-p * p.log()).sum(1)"),
    ("entropy (compiled): negatives ignored", "functional.py",
     "ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))",
     "ent = torch.where(torch.isnan(total), math.nan, ent)"),
    ("entropy (compiled): NaN rows ignored", "functional.py",
     "ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))",
     "ent = torch.where(low < 0, -math.inf, ent)"),
    ("entropy: logits -inf gives NaN", "functional.py",
     "ent = torch.nansum(logp.exp().mul_(logp), 1)", "ent = torch.sum(logp.exp().mul_(logp), 1)"),
    ("entropy: chunks drop the last rows", "functional.py", "for c in x.split(rows):", "for c in x.split(rows)[:max(1, (x.shape[0] - 1) // rows)]:"),
    ("entropy: chunk rows from the whole tensor", "functional.py",
     "rows = max(1, (chunk or EAGER_CHUNK) // max(1, math.prod(x.shape[1:])))",
     "rows = max(1, (chunk or EAGER_CHUNK) // max(1, x.numel()))"),
    ("entropy: probs in their own dtype", "functional.py", "        c = c.float()\n", ""),
    # --- functional.py: cells, selection, plans ---------------------------------------------------
    ("cells: caller's entropy multiplied in place", "functional.py",
     "ent = entropy.float() if mask is None else torch.where(mask, entropy.float(), 0.0)",
     "ent = entropy.float() if mask is None else entropy.float().mul_(mask)"),
    ("cells: empty cells look full", "functional.py", "return sums / counts.clamp_min(1), counts > 0",
     "return sums / counts.clamp_min(1), counts >= 0"),
    ("cells: sums over all pixels", "functional.py", "        counts = _cell_sums(mask.float(), assign)",
     "        counts = _outer([a.sum(1) for a in assign])"),
    ("cells: valid mask not resized", "functional.py", "        mask = resize_nearest(mask, size)\n", ""),
    ("grid rule: ceil instead of floor", "functional.py",
     'return torch.arange(n, device=device).mul_(g).div_(n, rounding_mode="floor")',
     'return torch.arange(n, device=device).mul_(g).add_(n - 1).div_(n, rounding_mode="floor").clamp_(max=g - 1)'),
    ("select: ties to the highest view", "functional.py", "    return score.argmax(0)",
     "    return score.shape[0] - 1 - score.flip(0).argmax(0)"),
    ("select: empty cells compete", "functional.py", "valid = valid | ~valid.any(0, keepdim=True)",
     "valid = torch.ones_like(valid)"),
    ("select: temperature ignored", "functional.py", "score = ent / temperature + gumbel", "score = ent + gumbel"),
    ("select: random never picks the last view", "functional.py", "return (u * V).long().clamp_max_(V - 1)",
     "return (u * (V - 1)).long()"),
    ("select: min is max", "functional.py", "        score = -ent\n", "        score = ent\n"),
    ("apply: view 1 mask for every view", "functional.py",
     "return [resize_nearest(index == v, size) for v in range(1, num_views)]",
     "return [resize_nearest(index == 1, size) for v in range(1, num_views)]"),
    ("apply: one view returned as is", "functional.py", "return out.clone() if len(tensors) == 1 else out",
     "return out"),
    # --- functional.py: CutMix and ClassMix ---------------------------------------------------------
    ("cutmix: fallback not shifted inside", "functional.py",
     "corner = torch.minimum(torch.cat([starts[d].gather(1, pick) for d in range(n)], 1), dims - sides)",
     "corner = torch.cat([starts[d].gather(1, pick) for d in range(n)], 1)"),
    ("cutmix: last candidate, not first", "functional.py", "fits.byte().argmax(1)", "fits.byte().flip(1).argmax(1)"),
    ("cutmix: p inverted", "functional.py", "else u[:, 0] < p", "else u[:, 0] >= p"),
    ("cutmix: aspect swapped", "functional.py", "torch.sqrt(amount / r[0]).floor()]", "torch.sqrt(amount * r[0]).floor()]"),
    ("classmix: floor(n / 2) classes", "functional.py", "(rank < (present.sum(1, keepdim=True) + 1) // 2)",
     "(rank < present.sum(1, keepdim=True) // 2)"),
    ("classmix: ignore pixels pasted", "functional.py",
     "pasted = drawn.byte().gather(1, flat.clamp(0, num_classes - 1)).bool() & keep",
     "pasted = drawn.byte().gather(1, flat.clamp(0, num_classes - 1)).bool()"),
    ("classmix: one draw for the whole batch", "functional.py",
     "keys = torch.where(present, _uniform((B, num_classes), labels.device, generator), 2.0)",
     "keys = torch.where(present, _uniform((1, num_classes), labels.device, generator), 2.0)"),
    ("classmix: invalid pixels counted as present", "functional.py",
     'present.scatter_reduce_(1, flat.clamp(0, num_classes - 1), keep.byte(), reduce="amax")',
     'present.scatter_reduce_(1, flat.clamp(0, num_classes - 1), torch.ones_like(keep).byte(), reduce="amax")'),
    # --- mix.py: plans, mixers ---------------------------------------------------------------------
    ("plan: to() does not move", "mix.py",
     "return MixPlan(self.index.to(device, non_blocking=non_blocking), self.num_views, self.size, False)",
     "return self"),
    ("plan: stale mask cache", "mix.py", "key = (size, self.index._version)", "key = size"),
    ("plan: index range unchecked above", "mix.py", "if lo < 0 or hi >= self.num_views:", "if lo < 0 or hi > self.num_views:"),
    ("plan: negative index accepted", "mix.py", "if lo < 0 or hi >= self.num_views:", "if hi >= self.num_views:"),
    ("plan: == ignores the size", "mix.py", "return (self.num_views == other.num_views and self.size == other.size",
     "return (self.num_views == other.num_views"),
    ("plan: == ignores num_views", "mix.py", "return (self.num_views == other.num_views and self.size == other.size",
     "return (self.size == other.size"),
    ("plan: summary whole share from view 0 only", "mix.py",
     "whole = (cells == cells[:, :1]).all(1)", "whole = (cells == 0).all(1)"),
    ("plan: fractions ignore ragged cells", "mix.py", "weight = F._outer(extents) / math.prod(size)",
     "weight = torch.full(self.grid, 1.0 / math.prod(self.grid), dtype=torch.float64, device=dev)"),
    ("mix: p ignored", "mix.py", "keep = F._uniform((index.shape[0],), index.device, generator) >= p",
     "keep = F._uniform((index.shape[0],), index.device, generator) > 2"),
    ("mixer: views of another batch size mixed", "mix.py",
     "        B, _, *S = validate.views(views, exactly=type(self).__name__ if self.two_views else None)",
     "        B, _, *S = views[0].shape"),
    ("entropymix: value checks always off", "mix.py",
     "ents = F._entropies(kind, names, maps, masks, self.check_values)",
     "ents = F._entropies(kind, names, maps, masks, False)"),
    ("entropymix: masks not passed to cells", "mix.py",
     "cells, nonempty = zip(*(F._cell_means(e, assign, m, counts) for e, m in zip(ents, masks)))",
     "cells, nonempty = zip(*(F._cell_means(e, assign, None, counts) for e, m in zip(ents, masks)))"),
    ("entropymix: temperature not passed", "mix.py",
     "return F.select_views(cells, self.select, self.temperature, generator, valid=cell_valid, share=self.share)",
     "return F.select_views(cells, self.select, 1.0, generator, valid=cell_valid, share=self.share)"),
    ("entropymix: ignore_index not used", "mix.py", "self.ignore_index, ndim=(maps[v].dim() - 1,),",
     "255, ndim=(maps[v].dim() - 1,),"),
    ("cutmix: p not passed", "mix.py", "return F.cutmix_boxes(B, S, self.p, self.size_min, self.size_max, self.ratio,",
     "return F.cutmix_boxes(B, S, 1.0, self.size_min, self.size_max, self.ratio,"),
    ("classmix: classes of the first view", "mix.py",
     "pred = validate.prediction(f\"{kind}[1]\", maps[1], B, device, spatial=views[0].dim() - 2)",
     "pred = validate.prediction(f\"{kind}[1]\", maps[0], B, device, spatial=views[0].dim() - 2)"),
    ("classmix: valid ignored", "mix.py", "mask = self._valid_masks(valid, [pred, pred], kind, only=1)[1]", "mask = None"),
    # --- tap.py: what is recorded, lifecycle, copies, names ----------------------------------------
    ("tap: evaluation forwards recorded", "tap.py", "if not (self._forced or torch.is_grad_enabled()):",
     "if False:"),
    ("tap: recording() ignored", "tap.py", "if not (self._forced or torch.is_grad_enabled()):",
     "if not torch.is_grad_enabled():"),
    ("tap: no bound on records", "tap.py", "if len(self._records) >= self.max_records:", "if False:"),
    ("tap: detach ignored", "tap.py",
     "self._records.append(output.detach() if self.detach and hasattr(output, \"detach\") else output)",
     "self._records.append(output)"),
    ("tap: pop returns the newest", "tap.py", "return self._records.popleft()", "return self._records.pop()"),
    ("tap: clear also unhooks", "tap.py", "        self._records.clear()\n\n    def close(self)",
     "        self._records.clear()\n        self.close()\n\n    def close(self)"),
    ("tap: close keeps the records", "tap.py", "            self._handle = None\n        self._records.clear()",
     "            self._handle = None"),
    ("tap: close keeps the hook", "tap.py", "            self._handle.remove()\n", ""),
    ("tap: a deep copy records into the tap", "tap.py", "if mod is not module_ref() or owner is None:",
     "if owner is None:"),
    ("tap: recording() depth leaks", "tap.py", "        finally:\n            self._forced -= 1", "        finally:\n            pass"),
    ("tap: close matches by the full name only", "tap.py",
     'close += [n for n in names if n not in close and leaf and leaf in n.rsplit(".", 1)[-1]]', "pass"),
    # --- _validation.py: one wording, every condition ---------------------------------------------
    ("validation: p above 1 accepted", "_validation.py", "if not (_number(value) and 0.0 <= value <= 1.0):",
     "if not (_number(value) and 0.0 <= value):"),
    ("validation: infinite temperature accepted", "_validation.py",
     "    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)",
     "    return isinstance(value, (int, float)) and not isinstance(value, bool)"),
    ("validation: zero grid accepted", "_validation.py", "    if min(value) < 1:", "    if min(value) < 0:"),
    ("validation: views of other shapes accepted", "_validation.py", "        if x.shape != first.shape:\n",
     "        if x.shape[:2] != first.shape[:2]:\n"),
    ("validation: label map read as a mask", "_validation.py",
     "return valid if valid.dtype == torch.bool else valid != ignore_index", "return valid.bool()"),
    ("validation: float masks accepted", "_validation.py", "if valid.is_floating_point() or valid.is_complex():",
     "if valid.is_complex():"),
    ("validation: batch of predictions unchecked", "_validation.py", "if batch is not None and t.shape[0] != batch:",
     "if False:"),
    ("validation: views of another dtype accepted", "_validation.py",
     "if x.dtype != first.dtype or x.device != first.device:", "if x.device != first.device:"),
    # --- contracts of issue 31: masks with None entries, nesting, the simplex from below ------------
    ("mix: a None entry of valid drops every mask", "mix.py",
     "        if any(m is not None for m in masks):\n            cell_valid = torch.stack(",
     "        if all(m is not None for m in masks):\n            cell_valid = torch.stack("),
    ("select: empty cells avoided under max only", "functional.py",
     "    if valid is not None and mode != \"random\":\n        score = torch.where(valid, score, -math.inf)",
     "    if valid is not None and mode == \"max\":\n        score = torch.where(valid, score, -math.inf)"),
    ("tap: recording() does not nest", "tap.py", "        finally:\n            self._forced -= 1",
     "        finally:\n            self._forced = 0"),
    ("tap: leaving the with block only clears", "tap.py", "    def __exit__(self, *exc: object) -> None:\n        self.close()",
     "    def __exit__(self, *exc: object) -> None:\n        self.clear()"),
    ("checks: rows summing below 1 accepted", "functional.py",
     "return ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)",
     "return ~torch.isfinite(total) | (low < 0) | ((total - 1) > SIMPLEX_TOLERANCE)"),
    # --- mixing a batch with itself ---------------------------------------------------------------
    ("within: paired with the flip", "functional.py", "return [t, t.roll(1, 0)]", "return [t, t.flip(0)]"),
    ("within: B = 2 not complementary", "functional.py",
     "    if B == 2:\n        return index[:1].expand_as(index).clone()\n", ""),
    ("within: no own cell kept", "functional.py", "return flat.masked_fill(whole & first, 0).view_as(index)",
     "return flat.view_as(index)"),
    # --- volumes: every axis, the cuboids, the N-d plans --------------------------------------------
    ("volumes: cell sums over the first two axes only", "functional.py",
     "    for d, a in enumerate(assignments):\n        axis = x.dim() - len(assignments) + d",
     "    for d, a in enumerate(assignments[:2]):\n        axis = x.dim() - len(assignments) + d"),
    ("volumes: voxel counts of an empty-mask cell from two axes", "functional.py",
     "    out = vectors[0]\n    for v in vectors[1:]:", "    out = vectors[0]\n    for v in vectors[1:2]:"),
    ("volumes: resize skips the last axis", "functional.py",
     "    for axis, (m, n) in enumerate(zip(have, size), start=x.dim() - len(size)):",
     "    for axis, (m, n) in enumerate(zip(have[:2], size[:2]), start=x.dim() - len(size)):"),
    ("volumes: cuboid sides from the inverse aspect", "functional.py",
     "sides = [first.floor()] + [(first / rd).floor() for rd in r]",
     "sides = [first.floor()] + [(first * rd).floor() for rd in r]"),
    ("volumes: cuboid volume not the drawn share", "functional.py",
     "first = (amount * math.prod(r)) ** (1 / n)", "first = (amount * math.prod(r)) ** (1 / 2)"),
    ("bcp: the last position never drawn", "functional.py",
     "(dims - sides + (1 if far_edge else 0)).clamp_min(1)", "(dims - sides).clamp_min(1)"),
    ("bcp: CutMix.bcp reaches the far edge", "functional.py",
     "(dims - sides + (1 if far_edge else 0)).clamp_min(1)", "(dims - sides + 1).clamp_min(1)"),
    ("bcp: CutMix.bcp not shared", "mix.py", "return cls(p=1.0, share=mask_ratio, shared=True, far_edge=False)",
     "return cls(p=1.0, share=mask_ratio, shared=False, far_edge=False)"),
    ("bcp: shared cube at p < 1 drawn per batch", "functional.py",
     "mixed = _uniform((batch_size,), device, generator) < p if shared else u[:, 0] < p",
     "mixed = (_uniform((1,), device, generator) < p).expand(batch_size) if shared else u[:, 0] < p"),
    # --- issue 40: contracts the suite did not hold ------------------------------------------------
    ("within_batch: the partner's valid mask not rolled", "mix.py",
     "cell_valid = None if cell_valid is None else torch.cat([cell_valid, cell_valid.roll(1, 1)])",
     "cell_valid = None if cell_valid is None else torch.cat([cell_valid, cell_valid])"),
    ("views: only the first two views' dtypes checked", "_validation.py",
     "    for v, x in enumerate(seq):\n        tensor(f\"views[{v}]\"", "    for v, x in enumerate(seq[:2]):\n        tensor(f\"views[{v}]\""),
    ("tap: recording depth not restored after an exception", "tap.py",
     "        try:\n            yield self\n        finally:\n            self._forced -= 1",
     "        yield self\n        self._forced -= 1"),
    ("tap: a with block left by an exception keeps the hook", "tap.py",
     "    def __exit__(self, *exc: object) -> None:\n        self.close()",
     "    def __exit__(self, *exc: object) -> None:\n        if exc[0] is None:\n            self.close()"),
    ("loss: float32 and float64 inputs not promoted together", "loss.py",
     "return t.to(dtype if other is None else torch.promote_types(dtype, other.dtype))", "return t.to(dtype)"),
    ("checks: probabilities passed as logits never warned", "functional.py",
     "if any(flags[len(bads):]) and not any(flags[:len(bads)])", "if False"),
    # --- examples/volume_loop.py: the BCP step's logic ---------------------------------------------
    ("volume: loss mask inverted", "examples/volume_loop.py",
     "region_l, region_u = ((p.source_map() == 0).long()", "region_l, region_u = ((p.source_map() == 1).long()"),
    ("volume: mix_loss weights swapped", "examples/volume_loop.py",
     "wi, wp = (u_weight, 1.0) if unlabeled else (1.0, u_weight)", "wi, wp = (1.0, u_weight) if unlabeled else (u_weight, 1.0)"),
    ("volume: logits swapped against their views", "examples/volume_loop.py",
     "mixer([img_a, unimg_a], logits=[t_a, t_ua])", "mixer([img_a, unimg_a], logits=[t_ua, t_a])"),
    ("volume: pseudo-labels swapped", "examples/volume_loop.py",
     "plab_a, plab_b = t_ua.argmax(1), t_ub.argmax(1)", "plab_a, plab_b = t_ub.argmax(1), t_ua.argmax(1)"),
    ("volume: teacher features swapped", "examples/volume_loop.py",
     "plan_l.apply([f_a, f_ua])", "plan_l.apply([f_ua, f_a])"),
    ("volume: flip on the wrong axes", "examples/volume_loop.py",
     "y = torch.where(m.view(-1, 1, 1, 1), y.flip(1 + axis), y)", "y = torch.where(m.view(-1, 1, 1, 1), y.flip(3 - axis), y)"),
    ("volume: a cube per sample", "examples/volume_loop.py", "return CutMix.bcp(2 / 3)",
     "return CutMix(p=1.0, share=2 / 3, far_edge=False)"),
    ("volume: Dice averaged with the background", "examples/volume_loop.py",
     "prob = logits.softmax(1)[:, 1:]", "prob = logits.softmax(1)"),
    ("volume: EMA weights exchanged", "examples/volume_loop.py",
     "t.mul_(decay).add_(s.detach(), alpha=1 - decay)", "t.mul_(1 - decay).add_(s.detach(), alpha=decay)"),
    ("volume: teacher chunks unpacked in the wrong order", "examples/volume_loop.py",
     "t_a, t_b, t_ua, t_ub = logits_t.chunk(4)", "t_a, t_ua, t_b, t_ub = logits_t.chunk(4)"),
    ("bcp: a box per sample when shared", "functional.py", "    B = 1 if shared else batch_size\n",
     "    B = batch_size\n"),
    ("volumes: an int grid means 2 axes", "mix.py", 'grid = validate.dims("grid", self.grid, len(S))',
     'grid = validate.dims("grid", self.grid)'),
    ("volumes: fractions weigh the first axes only", "mix.py",
     "weight = F._outer(extents) / math.prod(size)", "weight = F._outer(extents) / math.prod(size[:2])"),
    ("volumes: one-view summary compares the first axis", "mix.py", "        cells = self.index.flatten(1)\n",
     "        cells = self.index[:, :, 0].flatten(1) if self.index.dim() > 3 else self.index.flatten(1)\n"),
    ("volumes: mixing mask not broadcast over channels", "functional.py",
     "out = torch.where(mask[:, None] if t.dim() > mask.dim() else mask, t, out)",
     "out = torch.where(mask[:, None] if t.dim() == 4 else mask, t, out)"),
    ("volumes: relation cost from two axes", "loss.py", "gram_cost, naive_cost = _relation_cost(math.prod(S), d_s, d_t)",
     "gram_cost, naive_cost = _relation_cost(math.prod(S[:2]), d_s, d_t)"),
    ("within: plan not made distinct", "mix.py", "plan = MixPlan(F.distinct_within_batch(index), 2, tuple(x.shape[2:]), False)",
     "plan = MixPlan(index, 2, tuple(x.shape[2:]), False)"),
    ("within: the partner's cells not rolled", "mix.py",
     "cells = torch.cat([cells, cells.roll(1, 1)])", "cells = torch.cat([cells, cells])"),
]

# Defects that change nothing observable, with the reason.
EQUIVALENT = {
    "loss: kd mask as a product": "the logits of ignored pixels are zeroed before the KL, so kl is exactly 0 there "
                                  "and kl * mask equals torch.where(mask, kl, 0) for every input",
    "entropy: chunk rows from the whole tensor": "the chunk size changes memory, never a value: the eager "
                                                 "entropy is computed per sample, bit for bit the same in any "
                                                 "chunking (a property test holds that for chunks of 1 to 4M "
                                                 "elements), so smaller chunks are observable as time only",
}


def run_defect(name: str, file: str, old: str, new: str, workdir: Path) -> tuple:
    target = workdir / (file if "/" in file else f"entropymix/{file}")
    source = (workdir / "pristine" / file).read_text()  # the package and examples as they were when the run started
    if source.count(old) != 1:
        return name, "stale", f"fragment found {source.count(old)} times in {file}"
    target.write_text(source.replace(old, new))
    mirror = MIRROR.get(file, f"tests/test_{Path(file).stem}.py")  # the module that mirrors the file runs first
    tests = [mirror] + [t for t in TESTS if t != mirror] + (COMPILE_TESTS if "compiled" in name else [])
    if "/" in file:  # an example: its own test module, without the two-process run (slow, and no piece of logic)
        tests = [mirror, "-k", "not two_process"]
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
    ap.add_argument("-k", default="", help="only defects whose name contains this (a comma list: any of these)")
    ap.add_argument("--jobs", type=int, default=2, help="defects tried at once, each in its own copy")
    args = ap.parse_args(argv)
    defects = [d for d in DEFECTS if any(k in d[0] for k in args.k.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for j in range(args.jobs):
            work = Path(tmp) / str(j)
            shutil.copytree(ROOT / "entropymix", work / "entropymix", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__", "runs"))
            shutil.copytree(work / "entropymix", work / "pristine")
            shutil.copytree(work / "examples", work / "pristine" / "examples")
            shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(ROOT / "setup.cfg", work / "setup.cfg")  # pytest's testpaths and options
            shutil.copy(ROOT / "README.md", work / "README.md")  # the examples' tests read what it states
            shutil.copytree(ROOT / "benchmarks" / "results", work / "benchmarks" / "results",
                            ignore=shutil.ignore_patterns("*-runs", "*.png"))
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
