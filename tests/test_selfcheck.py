"""trilib.selfcheck: it accepts correct exercises written here from scratch, rejects wrong ones
with a message that names what is wrong and where, and stays fast enough for a notebook cell."""

from __future__ import annotations

import math
import time

import pytest
import torch

from trilib import selfcheck


def substitution(B, r):
    """Back-substitution: v[k-1] = r[k-1], then v[i] = r[i] + B[i] v[i+1]."""
    v = [r[-1]]
    for i in range(len(B) - 1, -1, -1):
        v.insert(0, r[i] + (B[i] @ v[0].unsqueeze(-1)).squeeze(-1))
    return torch.stack(v)


def doubling(B, r):
    """Recursive doubling on the rows v[i] = C[i] v[i+1] + c[i] (C[k-1] = 0): in each step every
    row absorbs the row d places after it, and d doubles."""
    k, batch, n = r.shape
    C = torch.cat([B, torch.zeros(1, batch, n, n, dtype=r.dtype)])
    c, d = r, 1
    while d < k:
        c = torch.cat([c[:k - d] + (C[:k - d] @ c[d:].unsqueeze(-1)).squeeze(-1), c[k - d:]])
        C = torch.cat([C[:k - d] @ C[d:], C[k - d:]])
        d *= 2
    return c


def levels_by_longest_path(children):
    level = [0] * len(children)
    for i in reversed(range(len(children))):
        level[i] = 1 + max((level[j] for j in children[i]), default=-1)
    return [[i for i, s in enumerate(level) if s == t] for t in range(max(level, default=-1) + 1)]


@pytest.mark.parametrize("fn", [substitution, doubling])
def test_accepts_correct_scans_fast(fn):
    start = time.perf_counter()
    verdict = selfcheck.solver(fn)
    assert verdict, verdict.message
    assert verdict.message.startswith("correct on 200 systems")
    assert time.perf_counter() - start < 10      # < 2 s on a quiet machine; this one is shared


def test_random_systems_cover_the_sizes_the_issue_names():
    seen = []
    selfcheck.solver(lambda B, r: seen.append(tuple(r.shape)) or substitution(B, r))
    ks = {k for k, _, _ in seen}
    assert 1 in ks and any(k % 2 for k in ks - {1}) and any(k % 2 == 0 for k in ks)
    assert len({n for *_, n in seen}) > 1 and len({b for _, b, _ in seen}) > 1
    assert len(seen) == 200


def test_names_the_first_wrong_block_in_solve_order():
    def off_by_one_row(B, r):            # row 2 from the bottom forgets its coupling
        v = substitution(B, r)
        k = len(r)
        if k >= 3:
            i = k - 2
            v[i] = r[i]
            for j in range(i - 1, -1, -1):
                v[j] = r[j] + (B[j] @ v[j + 1].unsqueeze(-1)).squeeze(-1)
        return v

    verdict = selfcheck.solver(off_by_one_row)
    assert not verdict
    k = verdict.case["r"].shape[0]
    assert k == 3 and f"v[{k - 2}]" in verdict.message and "k = 3" in verdict.message
    assert "never absorbed" in verdict.message
    torch.testing.assert_close(verdict.case["expected"][k - 1], verdict.case["got"][k - 1])


@pytest.mark.parametrize("mistake, words", [
    (lambda B, r: substitution(B.mT, r), "transposed"),
    (lambda B, r: substitution(-B, r), "sign"),
    (lambda B, r: list(substitution(B, r)), "torch.stack"),
    (lambda B, r: substitution(B, r).float(), "float64"),
    (lambda B, r: substitution(B, r)[:, :, :1], "shape"),
    (lambda B, r: B[0] @ r, "IndexError"),
])
def test_rejects_wrong_solvers_with_an_actionable_message(mistake, words):
    verdict = selfcheck.solver(mistake)
    assert not verdict and words in verdict.message, verdict.message
    assert "k = " in verdict.message and str(verdict).startswith("FAIL")


def test_bad_arguments_raise_before_running():
    with pytest.raises(TypeError, match="fn must be a function"):
        selfcheck.solver("substitution")
    with pytest.raises(ValueError, match="systems must be >= 1"):
        selfcheck.solver(substitution, systems=0)
    with pytest.raises(ValueError, match="method must be one of"):
        selfcheck.schedule(lambda k: k, "bubble_sort")


def test_level_sets_accept_longest_paths_and_reject_shortest():
    assert selfcheck.level_sets(levels_by_longest_path)

    def shortest(children):
        level = [0] * len(children)
        for i in reversed(range(len(children))):
            level[i] = 1 + min((level[j] for j in children[i]), default=-1)
        return [[i for i, s in enumerate(level) if s == t] for t in range(max(level) + 1)]

    verdict = selfcheck.level_sets(shortest)
    assert not verdict and "expected level" in verdict.message and "children" in verdict.message


def test_schedules_against_the_trace():
    log2 = lambda k: math.ceil(math.log2(k))  # noqa: E731
    assert selfcheck.schedule(log2, "recursive_doubling")
    assert selfcheck.schedule(lambda k: max(2 * log2(k) - 1, 0), "cyclic_reduction")
    pcr = lambda k: [[(i, i + 2 ** s) for i in range(k - 2 ** s)] for s in range(log2(k))]  # noqa: E731
    assert selfcheck.schedule(pcr, "parallel_cyclic_reduction")
    verdict = selfcheck.schedule(lambda k: 2 * log2(k), "blelloch")
    assert not verdict and "k = 2" in verdict.message and "takes 1" in verdict.message
    wrong = lambda k: [[(i + 2 ** s, i) for i in range(k - 2 ** s)] for s in range(log2(k))]  # noqa: E731
    verdict = selfcheck.schedule(wrong, "parallel_cyclic_reduction")
    assert not verdict and "step 0 should be [(0, 1)]" in verdict.message
