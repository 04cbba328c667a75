"""The edge of revsearch: sweep files, the Optuna search space, and (elsewhere in this package) the Ray
Tune trainables, the two-stage pipeline and MLflow tracking.

Import-light on purpose: ``import revsearch.orchestration`` pulls in neither Ray nor MLflow (nor
Optuna); modules that need them import them themselves.
"""
from .space import TrialSettings, define_by_run, derived_params, resolve_trial, safe_eval
from .sweep import (DataSection, ObjectiveSection, ResourcesSection, RetrainSection, SchedulerSection,
                    SearchSection, SpaceParam, SweepConfig, TrackingSection, load_sweep,
                    validate_sweep_dict)

__all__ = ["DataSection", "SearchSection", "SpaceParam", "ObjectiveSection", "SchedulerSection",
           "ResourcesSection", "RetrainSection", "TrackingSection", "SweepConfig", "load_sweep",
           "validate_sweep_dict", "TrialSettings", "define_by_run", "derived_params", "resolve_trial",
           "safe_eval"]
