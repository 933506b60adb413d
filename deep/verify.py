"""What a file of a suite folder must look like before gpcheck trusts it, and the checks that
tie the files of a run together.

Every JSON file gpcheck reads as state goes through :func:`gamma_theory.files.read_json` with a
shape from here (a bounded nesting depth, a schema, one :class:`~gamma_theory.files.BadFile`
naming the file when it does not fit): ``trace.json`` (:data:`TRACE_JSON`), ``manifest.json``
(:data:`MANIFEST`), ``suite.json`` (:data:`SUITE_JSON`), ``setup.json`` (:data:`SETUP_JSON`),
the companions a ``trace.json`` lists (:data:`COMPANION`, paths confined to the run folder), and
what ``gpcheck picture`` replays (:func:`picture_inputs`, with a bound on the replay's length).

The manifest records, when a run finishes, the sha256 of its ``trace.npz`` and of its
``trace.json``'s canonical content (:func:`gamma_theory.files.canonical_sha256`): an edit of
either afterwards is found (:func:`manifest_problem`). Manifests written before the second
digest existed carry only the first; their ``trace.json`` is taken as found, and the digest is
recorded the next time ``gpcheck deep`` records the run.
"""

from __future__ import annotations

from pathlib import Path

from gamma_theory.files import (BadFile, Int, ListOf, MapOf, Match, Nullable, Num, OneOf, Opt, PathEscape,
                                canonical_sha256, inside, read_json)

SHA256 = Match(r"[0-9a-f]{64}", "a sha256 (64 hex digits)")
DIVERGED = {"reason": str, "epoch": Opt(Int(0)), "step": Opt(Int(0))}

#: a companion trace listed in a ``trace.json``: a file of the run's own ``companions/`` folder
COMPANION = {"file": Match(r"companions/[A-Za-z0-9][A-Za-z0-9_.-]*\.npz", "a file companions/NAME.npz of the run "
                                                                           "folder"),
             "npz_sha256": SHA256, "theta_star": Opt(str), "steps": Opt(Int(0)), "dist0_sq": Opt(float),
             # where a theta* from outside the run came from (absent for the run's own: backward compatible)
             "source": Opt({"kind": OneOf("external"), "path": str, "sha256": SHA256})}

#: ``trace.json`` of a finished run that has a trace
TRACE_JSON = {
    "status": OneOf("ok", "diverged"), "diverged": Opt(DIVERGED), "npz_sha256": SHA256,
    "companions": Opt(MapOf(COMPANION)), "companions_unjudged": Opt(MapOf(dict)),
    "epochs_measured": Opt(Int(0)), "steps_per_epoch": Opt(Int(1)), "num_params": Opt(Int(0)),
    "run": Opt(dict), "setup": Opt(dict), "env": Opt(dict), "pass1": Opt(dict), "pass2": Opt(dict),
    "theta_star_eval": Opt(dict), "theta_star_extended": Opt(dict), "replay_verified": Opt(dict),
}
#: ``trace.json`` of a run that diverged before anything could be measured (no trace)
TRACE_JSON_NO_TRACE = {"status": OneOf("diverged"), "diverged": DIVERGED, "setup": Opt(dict), "pass1": Opt(dict),
                       "run": Opt(dict)}

MANIFEST = {"runs": Opt(MapOf((
    {"status": OneOf("ok", "diverged"), "trace_sha256": Nullable(SHA256), "trace_json_sha256": Opt(SHA256)},
    {"status": OneOf("error"), "error": str},
)))}

SUITE_JSON = {
    "suite": str, "preset": str, "dataset": Opt(str), "data": Opt(str), "n_train": Opt(Int(1)),
    "num_classes": Opt(Int(2, 100_000)),  # seeds and labels: checked, with their own words, by the report
    "threads": Opt(Int(1)), "device": Opt(str), "command": Opt(str), "wall_s": Opt(Num(0)),
    "last_invocation_wall_s": Opt(Num(0)), "started_utc": Opt(str), "finished_utc": Opt(str),
    "extras": Opt({"star_extend": Opt(Num(0, 10)), "sensitivity": Opt(ListOf(Num(0, 1)))}),
    "runs": Opt(ListOf(dict)), "assumptions": Opt(ListOf(str)), "jobs": Opt(Int(1)),
    "networks": Opt(ListOf(str)),  # --networks: the suite measured on these of its networks only
    "variants": Opt(ListOf(str)),  # --variants: and these of its variants
}

#: ``setup.json`` of a run folder: the settings it was measured with (compared key by key)
SETUP_JSON = {"lr": Num(), "epochs": Int(0), "batch_size": Int(1), "seed": Int(), "data_seed": Int(),
              "checkpoint_every": Int(1), "n_train": Int(1), "extras": Opt(dict), "run": Opt(dict)}


def read_trace_json(path: Path) -> dict:
    """A run's ``trace.json``, checked against :data:`TRACE_JSON` (or, for a run that diverged
    before anything was measured, :data:`TRACE_JSON_NO_TRACE`); :class:`BadFile` if it fits neither."""
    return read_json(path, (TRACE_JSON, TRACE_JSON_NO_TRACE), "a finished run's trace.json")


def consistent_status(info: dict, path: Path) -> None:
    """``status`` "ok" goes with no ``diverged``, "diverged" with one: else :class:`BadFile`."""
    if (info.get("status") == "ok") != (info.get("diverged") is None):
        raise BadFile(path, f"says status {info.get('status')!r} with diverged {info.get('diverged')!r}; a run that "
                            "diverged says where, and one that did not says nothing")


def read_manifest_file(path: Path) -> dict:
    return read_json(path, MANIFEST, "a gpcheck manifest")


def manifest_entry_for(info: dict) -> dict:
    """What the manifest records for a run whose ``trace.json`` holds ``info``."""
    return {"status": info.get("status"), "trace_sha256": info.get("npz_sha256"),
            "trace_json_sha256": canonical_sha256(info)}


def manifest_problem(info: dict, entry: dict | None) -> str | None:
    """Why a run's ``trace.json`` (its content ``info``) is not the one the manifest recorded when
    the run finished, or None when it is. An entry without the ``trace.json`` digest (an older
    manifest) checks the trace digest only."""
    if entry is None:
        return None
    if entry.get("trace_sha256") is not None and info.get("npz_sha256") != entry["trace_sha256"]:
        return "does not describe the trace recorded in manifest.json when the run finished (its files were replaced)"
    want = entry.get("trace_json_sha256")
    if want is not None and canonical_sha256(info) != want:
        return ("was changed after the run finished (its content's sha256 differs from the one manifest.json "
                "recorded)")
    return None


def companion_path(run_dir: Path, name: str, c) -> Path:
    """The file of companion ``name`` as a ``trace.json`` lists it (``c``), after checking its
    entry (:data:`COMPANION`) and that the file lies inside ``run_dir``; else :class:`BadFile` /
    :class:`PathEscape`."""
    from gamma_theory.files import ShapeError, check_shape

    try:
        check_shape(c, COMPANION, f"companions.{name}")
    except ShapeError as exc:
        raise BadFile(Path(run_dir) / "trace.json", f"lists a companion that is not one gpcheck wrote: {exc}") from None
    return inside(c["file"], run_dir, f"companion {name}")


def stray_reason(name: str, run_dir: Path, specs: dict, manifest: dict | None) -> str | None:
    """Why the run folder ``name`` is no evidence of this suite, or None: a folder that is no run
    of the suite (``specs``: the suite's runs, empty when unknown), or a finished one that the
    suite's manifest (``manifest``: its runs, None when there is no manifest) does not know."""
    if specs and name not in specs:
        return f"{run_dir} is not a run of this suite: not measured by this suite"
    if manifest is not None and name not in manifest and (Path(run_dir) / "trace.json").exists():
        return (f"{run_dir} has no entry in manifest.json: not measured by this suite (copied in from elsewhere, or "
                "its process was killed before recording it)")
    return None


def suite_manifest(out: Path) -> tuple[dict | None, bool]:
    """``(runs, missing)``: the manifest's runs (None when there is no manifest.json) and whether it
    is missing although runs of the suite finished (deleted), with a warning then;
    :class:`BadFile` when it is damaged."""
    import warnings

    path = Path(out) / "manifest.json"
    if path.exists():
        return (read_manifest_file(path).get("runs") or {}), False
    finished = [p for p in (Path(out) / "runs").glob("*/trace.json")]
    if finished:
        warnings.warn(f"{path} is missing although {len(finished)} run(s) finished; it is rebuilt from the runs whose "
                      "files verify", stacklevel=2)
    return None, bool(finished)


#: the longest replay ``gpcheck picture`` starts: no preset has more epochs than the paper's 150
MAX_PICTURE_EPOCHS = 1000


def picture_inputs(info: dict, path: Path, trace_epochs: int, trace_steps: int) -> None:
    """Check what ``gpcheck picture`` takes from a ``trace.json`` to replay a run: the device,
    threads, network and optimizer it names, and a replay length that is the trace's own
    (``trace_epochs`` epochs, ``trace_steps`` steps) and at most :data:`MAX_PICTURE_EPOCHS`;
    :class:`BadFile` naming the field otherwise."""
    from gamma_theory.files import ShapeError, check_shape
    from gamma_theory.optimizers import OPTIMIZERS

    from .models import ACTIVATIONS, BN_SETTINGS, MODEL_NAMES, SKIP_SETTINGS

    shape = {
        "env": {"device": Match(r"cpu|cuda(:[0-9]{1,3})?", "cpu, cuda or cuda:N"), "num_threads": Int(1, 4096)},
        "run": {"network": OneOf(*MODEL_NAMES), "optimizer": OneOf(*OPTIMIZERS), "lr": Num(0),
                "activation": OneOf(*ACTIVATIONS), "bn": OneOf(*BN_SETTINGS), "skip": OneOf(*SKIP_SETTINGS),
                "width": Num(1e-6, 64), "seed": Int(0)},
        "setup": {"batch_size": Int(1), "data_seed": Int(0), "n_train": Int(1), "epochs": Int(1),
                  "channels_last": Opt(bool), "allow_tf32": Opt(bool)},
        "epochs_measured": Int(1, MAX_PICTURE_EPOCHS),
    }
    try:
        check_shape(info, shape)
    except ShapeError as exc:
        raise BadFile(path, f"cannot be replayed: {exc}") from None
    e, setup = info["epochs_measured"], info["setup"]
    if e > setup["epochs"] or e != trace_epochs:
        raise BadFile(path, f"cannot be replayed: epochs_measured is {e}, but the run has {setup['epochs']} epochs and "
                            f"its trace {trace_epochs}")
    per = -(-setup["n_train"] // setup["batch_size"])
    if per * e != trace_steps:
        raise BadFile(path, f"cannot be replayed: {e} epochs of {per} steps are {per * e} steps, and the trace has "
                            f"{trace_steps}")


__all__ = ["BadFile", "PathEscape", "COMPANION", "MANIFEST", "SETUP_JSON", "SUITE_JSON", "TRACE_JSON",
           "companion_path", "consistent_status", "manifest_entry_for", "manifest_problem", "picture_inputs",
           "read_manifest_file", "read_trace_json"]
