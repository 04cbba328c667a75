"""The sweep file: one YAML document describing a whole two-stage experiment (search, then retrain).

``load_sweep(path)`` reads (``sweep_yaml``), validates (the pydantic models of ``sweep_model`` and its
sections), fills every default and resolves relative paths against the YAML file's directory, then
checks every combination the ``space`` can produce (``space.check_space_combinations``);
``validate_sweep_dict(data, source)`` does the same for an already-parsed mapping. Both return a
``SweepConfig`` whose ``to_dict()`` is the fully resolved document (it validates back to an equal
config). Every problem is a ``ConfigError`` of one line: ``<file>: <dotted.key>: <what is allowed>``
(``sweep_errors``). The schema is documented key by key in ``docs/sweep-reference.md``, whose tables
are generated from the models (``python -m revsearch.orchestration.sweep_reference``).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from pydantic import ValidationError

from ..errors import ConfigError, RevsearchError
from .space import check_space_combinations
from .sweep_errors import first_error, located, one_line, quoted_value
from .sweep_model import MAX_NUM_SAMPLES, TOP_KEYS, SweepConfig
from .sweep_retrain import SIZE_DEFAULTS, RetrainSection, SizeSection
from .sweep_search import (PROXY_DEFAULTS, SEARCH_KEYS, SEARCH_PAIR_KEYS, SEARCH_SPACE_KEYS, ProxyRetrainSection,
                           SearchSection, search_problem)
from .sweep_sections import (DATA_KINDS, FULL_OP_SET, PROXY_METRICS, SEARCH_METRICS, DataSection, ObjectiveSection,
                             ResourcesSection, SchedulerSection, TrackingSection, data_problem, resolve_tracking_uri)
from .sweep_space_schema import DATA_SPACE_KEYS, MAX_CHOICE_VALUES, SPACE_TYPES, SpaceParam
from .sweep_yaml import MAX_SWEEP_BYTES, MAX_YAML_NODES, SweepYamlLoader, parse_yaml_text, read_sweep_document

__all__ = ["SweepConfig", "DataSection", "SearchSection", "ProxyRetrainSection", "SpaceParam", "ObjectiveSection",
           "SchedulerSection", "ResourcesSection", "RetrainSection", "SizeSection", "TrackingSection",
           "load_sweep", "validate_sweep_dict", "resolve_tracking_uri_option", "parse_yaml_text", "quoted_value",
           "SweepYamlLoader", "TOP_KEYS", "SEARCH_KEYS", "SEARCH_SPACE_KEYS", "SEARCH_PAIR_KEYS",
           "DATA_SPACE_KEYS", "DATA_KINDS", "FULL_OP_SET", "SEARCH_METRICS", "PROXY_METRICS", "SPACE_TYPES",
           "MAX_NUM_SAMPLES", "MAX_CHOICE_VALUES", "MAX_SWEEP_BYTES", "MAX_YAML_NODES", "PROXY_DEFAULTS",
           "SIZE_DEFAULTS", "search_problem", "data_problem"]


def load_sweep(path: Union[str, os.PathLike]) -> SweepConfig:
    """Read, validate and resolve a sweep file. Relative paths inside resolve against its directory."""
    source = os.fspath(path)
    data = read_sweep_document(source)
    return validate_sweep_dict(data, source, base_dir=os.path.dirname(os.path.abspath(source)))


def validate_sweep_dict(data: Any, source: str, base_dir: Optional[str] = None) -> SweepConfig:
    """Validate a parsed sweep document. Relative paths resolve against ``base_dir`` (default: the
    directory of ``source``, i.e. the working directory for a bare label)."""
    source = one_line(source, 200) or "<sweep>"
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    try:
        config = SweepConfig.model_validate(data, context={"base_dir": base_dir})
        config.source = source
        check_space_combinations(config)
        return config
    except ValidationError as e:
        path, message = first_error(e, SweepConfig)
        raise located(source, path, message) from None
    except ConfigError:
        raise
    except RevsearchError as e:
        raise ConfigError(f"{source}: {one_line(e)}") from None
    except Exception as e:  # a safety net: a bad document must never surface as a traceback
        raise ConfigError(f"{source}: invalid sweep (internal validation error {type(e).__name__}: "
                          f"{one_line(e, 120)})") from None


def resolve_tracking_uri_option(uri: Any, label: str = "--tracking-uri") -> Optional[str]:
    """A tracking URI given outside a sweep file (``--tracking-uri``): its form checked by the rules of
    ``tracking.uri`` and a relative ``sqlite:///`` path resolved against the working directory. Nothing is
    contacted; whether the store is usable is ``tracking.probe_tracking_uri`` / ``check_tracking_store``."""
    try:
        return resolve_tracking_uri(uri, os.getcwd())
    except ValueError as e:
        raise ConfigError(f"{label}: {e}") from None
