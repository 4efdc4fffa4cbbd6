"""Optuna studies: each trial is a k-fold run scored by its fold-mean score; the best config is then refit on all
of data.train and its members' WBF ensemble is tuned on held-out data (data.val) and published in STUDY/best.

The only package that imports optuna, one job a module: `space` (search.space -> drawn values), `objective`
(one trial), `storage` (where a study lives), `workers` (several processes on one study: claiming,
heartbeats, dead workers), `study` (run_study), `best` (publishing STUDY/best) and `report` (reading a study).
The study folder's layout is drawn in layout.py.
"""
from .best import publish, ranked_trials
from .objective import Objective, PruningHook, free_checkpoints
from .report import report_study, trial_rows
from .space import check_space, suggest
from .storage import load_study
from .study import StudyResult, run_study, summarize

__all__ = ["Objective", "PruningHook", "StudyResult", "check_space", "free_checkpoints", "load_study",
           "publish", "ranked_trials", "report_study", "run_study", "summarize", "suggest", "trial_rows"]
