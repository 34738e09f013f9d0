"""stage=predict: class probabilities for new images from a finished model or ensemble."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from comp.artifacts import write_csv
from comp.data.pixels import recorded_order
from comp.errors import CompError
from comp.inference import (
    best_prediction_set,
    input_images,
    predict_paths,
    prediction_frame,
    submitted_metric,
)
from comp.log import get_logger
from comp.selection import ranking_metric
from comp.workspace import is_folder_target, run_dir


def run(cfg: DictConfig) -> pd.DataFrame:
    """Predict `predict.input` with `predict.using` (default: the leaderboard's rank 1)."""
    if not cfg.predict.input:
        raise CompError("config: predict.input is not set; give an image file, a folder or "
                        "a CSV of pixel rows")
    run = run_dir(cfg.runs_dir, cfg.name, writable=not cfg.predict.output)
    using = cfg.predict.using or best_prediction_set(
        run, ranking_metric(submitted_metric(run, cfg.submit.metric), cfg.submit.rank_by))
    # a pixel CSV's rows become PNGs: in the run's cache, or with predict.output set (the
    # run directory may be read-only) in a temporary folder for this prediction alone
    with ExitStack() as scratch:
        pixel_dir = (run.pixel_images if not cfg.predict.output
                     else Path(scratch.enter_context(tempfile.TemporaryDirectory())))
        images = input_images(Path(cfg.predict.input), pixel_dir, cfg.data.pixel_order,
                              recorded_order(run.pixel_images))
        probs, classes = predict_paths(cfg, run, using, list(images.values()))
    frame = prediction_frame(list(images), probs, classes)
    file_name = f"{Path(cfg.predict.input).stem}__{using}.csv"
    output = cfg.predict.output
    target = (run.predictions_dir / file_name if not output
              else Path(output) / file_name if is_folder_target(output) else Path(output))
    write_csv(target, frame)
    get_logger().info("predict: %d image(s) with %s -> %s", len(frame), using, target)
    return frame
