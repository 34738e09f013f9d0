"""Pseudo-labels: which unlabeled (and, by option, test) images a round adds to each
unit's training rows, and with which targets — per unit, so no unit's validation images
reach its own model.

- `comp.pseudo.rules`: the pure selection rules (quota, threshold, soft targets) and the
  file table of a unit;
- `comp.pseudo.teacher`: what labels a unit's pool (the entry the nested selection picks
  for the unit, or the voters' mean);
- `comp.pseudo.files`: a round's pseudo/round<r>/fold<u>.csv files and summary.json;
- `comp.pseudo.rows`: a round's files read back as extra training rows, and what they add
  to a model id.
"""

POOL_SPLITS = ("unlabeled", "test")  # pseudo.splits: the splits pseudo-labels may come from
TEACHERS = ("selected", "mean")  # pseudo.teacher (comp.pseudo.teacher.Teacher)
