"""What a training round trains: the model specs of a pseudo-label round, their
pseudo-labelled rows, and training them unit by unit (resumable).

Round r >= 1: each unit u (fold of a repeat; the folds with data.repeats=1) adds the
pseudo-labelled images of pseudo/round<r>/fold<u>.csv (written by comp.pseudo.files) to
its training rows.
"""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig

from comp.artifacts import read_json
from comp.data.prepared import Prepared
from comp.deadline import Deadline
from comp.errors import CompError
from comp.log import get_logger, progress, progress_mode, quiet_tensorflow
from comp.models.choice import Hardware, detect_hardware
from comp.models.spec import (
    ModelSpec,
    labelled_epochs,
    make_classic_spec,
    make_spec,
    native_side,
)
from comp.predictions import read_table
from comp.pseudo.rows import pseudo_identity
from comp.training.compute import available_memory, worker_count
from comp.training.trainer import (
    fold_done,
    pending_units,
    round_options,
    split_keys,
    train_spec,
)
from comp.training.workers import WorkerSetup, train_in_workers
from comp.workspace import FOLD_METRICS


def specs_for_round(cfg: DictConfig, prepared: Prepared, round_: int) -> list[ModelSpec]:
    """The model specs of every configured backbone for pseudo-label round `round_`."""
    pseudo = None if round_ == 0 else pseudo_identity(cfg, prepared, round_)
    if cfg.params == "best":
        from comp.tuning.search import tuned_spec

        finetuned = [tuned_spec(cfg, prepared, name, pseudo) for name in cfg.backbones]
        classic = []
    else:
        native = native_side(prepared.competition.train["path"].tolist())
        finetuned = [make_spec(cfg, name, prepared.folds_key, pseudo, native=native)
                     for name in cfg.backbones]
        classic = [make_classic_spec(cfg, entry, prepared.folds_key, pseudo, native)
                   for entry in cfg.classic.models]
    if round_ > 0 and cfg.pseudo.warm_epochs is not None:
        finetuned = warm_started(finetuned, specs_for_round(cfg, prepared, round_ - 1),
                                 int(cfg.pseudo.warm_epochs))
    if round_ > 0 and cfg.pseudo.epoch_rows != "all":  # in the id; `all` keeps old ids
        finetuned = [replace(spec, pseudo={**spec.pseudo, "epoch_rows": cfg.pseudo.epoch_rows})
                     for spec in finetuned]
    return finetuned + classic


def warm_started(specs: list[ModelSpec], previous: list[ModelSpec],
                 epochs: int) -> list[ModelSpec]:
    """`specs` (fine-tunes of a round r >= 1) each marked to start, unit by unit, from the
    weights of the model of `previous` (round r - 1) it replaces, and to run the last
    `epochs` epochs of its schedule (pseudo.warm_epochs; comp.training.trainer). The mark
    is part of the pseudo settings, so it is in the model id."""
    replaced = {spec.backbone: spec.model_id for spec in previous}
    return [replace(spec, pseudo={**spec.pseudo, "warm_start": {
        "from": replaced[spec.backbone], "epochs": epochs}}) for spec in specs]


def train_round(cfg: DictConfig, prepared: Prepared, round_: int,
                deadline: Deadline | None = None) -> list[dict]:
    """Train every backbone for `round_`; return the finished models' cv.json."""
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise CompError("config: tensorboard=true needs the tensorboard package; "
                            "pip install tensorboard (or comp[tensorboard])") from None
    specs = only_specs(cfg, specs_for_round(cfg, prepared, round_))
    folds = None
    if cfg.only.fold is not None:  # a unit: fold k of repeat r is r * data.folds + k
        if not 0 <= cfg.only.fold < prepared.n_units:
            units = (f" (units: {prepared.n_folds} folds x {prepared.n_repeats} repeats)"
                     if prepared.n_repeats > 1 else "")
            raise CompError(f"config: only.fold={cfg.only.fold} is outside "
                            f"0..{prepared.n_units - 1}{units}")
        folds = [cfg.only.fold]
    deadline = deadline or Deadline.start(cfg.time_limit)  # one for all models
    setup = WorkerSetup(prepared, round_, cfg.pseudo.weight, cfg.pseudo.distill,
                        cfg.tensorboard, progress_mode(), get_logger().level)
    pending = pending_units(specs, prepared, folds)
    hardware = detect_hardware()
    workers = min(unit_workers(cfg, hardware), len(pending))
    if workers > 1:  # the units run there; the loop below finds them done and collects
        train_in_workers(pending, setup, workers, hardware.cpus, deadline)
    elif pending:
        quiet_tensorflow()  # the units train in this process
    options = round_options(setup, folds, deadline)
    results = []
    for spec in progress(specs, desc=f"models round {round_}", disable=len(specs) < 2 or None):
        result = train_spec(spec, prepared, {"round": round_}, options)
        if result is not None:
            results.append(result)
    return results


def unit_workers(cfg: DictConfig, hardware: Hardware | None = None) -> int:
    """How many units this machine (`hardware`; None: detect_hardware's) trains at once
    (compute.workers, resolved)."""
    hardware = hardware or detect_hardware()
    return worker_count(cfg.compute.workers, hardware.gpus, hardware.cpus,
                        cfg.compute.distribute, available_memory())


def round_seconds(cfg: DictConfig, prepared: Prepared, round_: int) -> float | None:
    """About how many seconds training round `round_` (>= 1, its pseudo-labels written)
    still needs: for each unit of each round `round_ - 1` model that round `round_` has
    not finished, the seconds the unit took then (its metrics.json), times the unit's
    training rows now (labelled + pseudo-labelled) over its rows then (a fine-tune whose
    epochs are the labelled rows' batches, pseudo.epoch_rows=labelled: its seconds
    then, as its steps stay those of round `round_ - 1`). 0 when the round
    is done; None when no unit left recorded its seconds. In proportion to the rows is
    on the safe side for `time_limit`: a unit's fixed costs (model, features,
    predictions) do not grow with them (wbc, 2026-12-03: 866 s estimated, 668 s taken)."""
    run, splits = prepared.run, split_keys(prepared)
    again = {spec.backbone: spec for spec in specs_for_round(cfg, prepared, round_)}
    pseudo_rows = [len(read_table(run.pseudo_csv(round_, unit)))
                   for unit in range(prepared.n_units)]
    seconds, left = [], 0
    for spec in specs_for_round(cfg, prepared, round_ - 1):
        replacement = again.get(spec.backbone)
        same_steps = replacement is not None and labelled_epochs(replacement)
        for unit in range(prepared.n_units):
            if replacement is not None and fold_done(
                    run.fold_dir(replacement.model_id, unit), splits):
                continue
            left += 1
            try:
                before = read_json(run.fold_dir(spec.model_id, unit) / FOLD_METRICS)
                labelled = len(prepared.unit_train_rows(unit))
                seconds.append(float(before["seconds"]) * (1.0 if same_steps else (
                    (labelled + pseudo_rows[unit])
                    / (labelled + int(before.get("n_pseudo", 0))))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # never trained, or written by an older comp: no figure
    return sum(seconds) if seconds else (0.0 if left == 0 else None)


def round_trained(cfg: DictConfig, prepared: Prepared, round_: int) -> bool:
    """Whether every model of round `round_` has finished every unit."""
    run, splits = prepared.run, split_keys(prepared)
    return all(fold_done(run.fold_dir(spec.model_id, unit), splits)
               for spec in specs_for_round(cfg, prepared, round_)
               for unit in range(prepared.n_units))


def only_specs(cfg: DictConfig, specs: list[ModelSpec]) -> list[ModelSpec]:
    """The specs `only.model` selects (all when it is not set)."""
    if cfg.only.model is None:
        return specs
    chosen = [s for s in specs if cfg.only.model in (s.model_id, s.backbone)]
    if not chosen:
        raise CompError(f"config: only.model={cfg.only.model!r} is none of "
                        f"{[s.model_id for s in specs]} (see stage=plan)")
    return chosen
