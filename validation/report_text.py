"""The prose of a suite report: every paragraph that is not a number, in one place, so that the
renderer (report_md) only arranges numbers and these texts. A paragraph that takes numbers has
``str.format`` fields, filled by the renderer."""

SMOKE_BANNER = ("> **Not evidence.** The `{preset}` preset tests the machinery end to end: its networks are tiny "
                "and train for a few steps, so their verdicts say nothing for or against the paper. They are listed "
                "without emphasis and are not tallied in the index of the reports.")

BASELINE_INTRO = (
    "The same path judged against a meaningless theta*: a point at the real theta*'s distance from theta_0, "
    "in a random direction (seeded; the seed is in each run's companions/random.json). If the principle "
    "held there too, \"the principle holds\" would say nothing about minimizers."
)

SENSITIVITY_INTRO = (
    "Every claim decided again with theta* = the iterate at 50%, 75% and 90% of the epochs (each judged on "
    "the steps before it) and, where recorded, a theta* trained longer. A claim that PASSes with one theta* "
    "and FAILs with another is marked fragile in the claims table (NOT APPLICABLE does not count: early "
    "iterates are rarely converged)."
)

PICTURES_INTRO = (
    "Drawn by `gpcheck picture`, which replays each run bit for bit: per run, the epoch iterates projected on "
    "the first two principal components of the path, theta* at the origin, the loss over that plane (a "
    "seeded subset of the training images, batch statistics), and the SGD direction -grad f at every "
    "epoch's iterate. cos: between that SGD direction and the run's own step over the next epoch, in the "
    "full parameter space."
)

READINGS_INTRO = (
    "The paper's gamma orders read four ways (Definition 1's γ_max or the paper's median; raw, or times "
    "‖θ0−θ*‖²) on every run, converged or not, per adjacent pair of the stated order. Descriptive only: a "
    "run that did not converge has no minimizer to point at, so these rows decide nothing (the claims above "
    "compare converged runs, or runs at matched loss). A reversal is a reading that contradicts the paper."
)

RECORDING_NOTE = (
    "- Every trace comes from the exact two-pass measurement (deep/measure.py): pass 2 reproduced pass 1 bit for "
    "bit at every checkpoint and ended on theta*, and the trace meets the recording identity, or the run says "
    "otherwise below."
)

GAMMA_READINGS_NOTE = (
    "*Theory*: Definition 1, one gamma > 0 for every step: does it exist, the feasible set, its largest element, "
    "that times ||theta_0 - theta*||^2, and the steps that break it (on their own, or by bounds in conflict). "
    "Steps with a negative loss gap bound gamma from below. *Paper*: the per-step upper bounds it plots: the "
    "share that is positive, their median, and that times ||theta_0 - theta*||^2. *Quantiles*: the 1% and 5% "
    "quantiles of the per-step upper bounds times ||theta_0 - theta*||^2, steadier than their minimum."
)

THEOREM_NOTE = (
    "Item 1 (distance never grows) follows from Definition 1 where every gap is >= 0. Item 2: last/first epoch "
    "mean loss gap <= 5% (gaps are relative to theta*, so a run that stopped far from a minimizer can meet it; "
    "see *converged* above). Item 3: the rate bound at the largest feasible gamma (at the whole run it is implied "
    "by Definition 1: the identity row). Identity: the recording identity's largest relative residual. Verdict "
    "PASS = Definition 1 and items 1-3 hold."
)

CLAIM_KINDS = (
    "Kinds: *primary*, the paper's claim on the runs it is about (converged); "
    "*pooled*, the same over every run; *consequence*, implied by Definition 1 or by algebra, never "
    "evidence; *premise*, what the principle assumes (Fact 1); *baseline*, a meaningless theta*; *order*, "
    "the paper's stated order for one network; *agreement*, whether gamma ranks a network's variants as "
    "their speed does; *equivalence*, the paper's \"as fast as\"; *observation*, a sentence of the paper "
    "tested on the columns."
)

CONVERGENCE_NOTE = (
    "Converged: last/first epoch mean loss <= {fraction:g}. Speed: mean training loss over the run "
    "(lower is faster). Epochs to loss: the first epoch whose mean loss is <= {threshold} (a tenth of "
    "ln(classes), the loss of a uniform guess). theta*: the last iterate, evaluated on every training image in "
    "evaluation mode (BN running statistics) and in training mode on in-order batches (batch statistics); and, "
    "as the measurement sees it, its mean loss on the steps' own batches of the last epoch (loss_star)."
)

FIGURE_SEED = (
    ", from seed {seed} (every seed's numbers are in the tables above)"
)

FIGURE_CAPTION = (
    "Rows: normalized distance to theta*, training loss, per-step gamma bound; a column per network, "
    "a curve per variant{seed}. A dashed curve did not converge: its gamma is not comparable. In the gamma row, lines are the "
    "upper bounds the paper plots; a step with a negative gap (a lower bound) is a triangle, a step that "
    "breaks inequality (2) on its own a red x, a step whose bound conflicts with another's an open "
    "diamond (triangles and diamonds in the variant's color)."
)
