"""Claims decided in several seeds, summarized over them: the share of seeds in which a claim
holds (95% Clopper-Pearson interval) and a one-sided paired Wilcoxon signed-rank test of its
margin. PASS when it holds in every seed where it can be decided, FAIL when it fails in one."""

from __future__ import annotations

from scipy import stats

from .claims import FAIL, NA, PASS, fmt

ALPHA = 0.05  #: the level below which a p-value is worth stating as reachable


def over_all_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Claims decided per seed (``per_seed``: seed -> its claims), each summarized over the seeds
    (:func:`over_seeds`); with one seed, that seed's claims."""
    seeds = sorted(per_seed)
    if len(seeds) == 1:
        return per_seed[seeds[0]]
    names = list(dict.fromkeys(c["claim"] for s in seeds for c in per_seed[s]))
    return [over_seeds({s: next(c for c in per_seed[s] if c["claim"] == name) for s in seeds
                        if any(c["claim"] == name for c in per_seed[s])}) for name in names]


def over_seeds(per_seed: dict[int, dict]) -> dict:
    """One claim decided in several seeds: the share of seeds in which it holds (95% Clopper-Pearson
    interval) and a one-sided paired Wilcoxon signed-rank test that its margin is positive; when it
    fails in most seeds, also a one-sided sign test that it fails more often than not (7 of 7: p =
    2^-7 = 0.0078), the test that decides a claim the data contradict."""
    first = next(iter(per_seed.values()))
    decided = {s: c for s, c in per_seed.items() if c["verdict"] != NA}
    held = [s for s, c in decided.items() if c["verdict"] == PASS]
    numbers = {f"s{s}": c["verdict"] for s, c in per_seed.items()}
    out = {k: first[k] for k in ("claim", "kind", "statement")}
    out["per_seed"] = {f"s{s}": {"verdict": c["verdict"], "numbers": c["numbers"], "why": c["why"]}
                       for s, c in per_seed.items()}
    if not decided:
        return {**out, "verdict": NA, "numbers": numbers, "why": f"not decidable in any of {len(per_seed)} seeds: "
                + per_seed[min(per_seed)]["why"]}
    n, k = len(decided), len(held)
    ci = stats.binomtest(k, n).proportion_ci(0.95)
    numbers.update({"holds in": f"{k} of {n} seeds", "95% CI": f"{ci.low:.2f}-{ci.high:.2f}"})
    margins = [c["margin"] for c in decided.values() if c.get("margin") is not None]
    test = ""
    if len(margins) == n and n >= 2 and any(m != 0 for m in margins):
        kind = "tau" if first["kind"] == "agreement" else "margin"
        p = float(stats.wilcoxon(margins, alternative="greater").pvalue) if first["kind"] != "agreement" else None
        numbers[f"mean {kind}"] = fmt(float(sum(margins) / n))
        if p is not None:
            numbers["paired Wilcoxon p"] = fmt(p)
            test = (f"; paired Wilcoxon signed-rank p = {p:.3g} (one-sided"
                    + (f"; with {n} seeds p cannot go below {0.5 ** n:.3g})" if 0.5 ** n >= ALPHA else ")"))
    if n - k > n / 2:  # it fails in most seeds: how unlikely that is if it held or failed by chance
        p_rev = float(stats.binomtest(n - k, n, 0.5, alternative="greater").pvalue)
        numbers["fails in"] = f"{n - k} of {n} seeds"
        numbers["sign test p (it fails)"] = fmt(p_rev)
        test += f"; it fails in {n - k} of {n} seeds: one-sided sign test p = {p_rev:.3g} that it fails more often than not"
    undecided = len(per_seed) - n
    extra = f", not decidable in {undecided}" if undecided else ""
    verdict = PASS if k == n else FAIL
    return {**out, "verdict": verdict, "numbers": numbers,
            "why": f"holds in {k} of {n} seeds{extra} (95% CI {ci.low:.2f}-{ci.high:.2f}){test}"}
