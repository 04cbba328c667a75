"""Sweep YAML: shipped files load, round trips, the Optuna define-by-run space, one-line errors, fuzzing."""
from __future__ import annotations

import copy
import glob
import os
import pickle
import warnings

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revsearch.errors import ConfigError
from revsearch.orchestration import (SweepConfig, TrialSettings, define_by_run, derived_params, load_sweep,
                                     resolve_trial, safe_eval, validate_sweep_dict)
from revsearch.orchestration.sweep import DATA_SPACE_KEYS, SEARCH_KEYS, TOP_KEYS
from revsearch.search import SearchConfig, SupernetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "tune_configs", "*.yaml"))
                 if not os.path.basename(p).startswith("cluster"))  # Ray cluster files, not sweeps
QUICKSTART = os.path.join(ROOT, "tune_configs", "quickstart.yaml")
SRC = "sweep.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quickstart_raw() -> dict:
    with open(QUICKSTART, encoding="utf-8") as f:
        return yaml.safe_load(f)


def assert_one_line(err: ConfigError, source: str = SRC) -> str:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{source}: "), msg
    assert "internal validation error" not in msg, msg
    return msg


# --- shipped files ---------------------------------------------------------------------------------
def test_shipped_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"quickstart.yaml", "micro.yaml", "wmt14_en_de.yaml", "wmt14_en_fr.yaml",
            "wmt14_en_cs.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_loads_and_round_trips(path):
    sweep = load_sweep(path)
    assert isinstance(sweep, SweepConfig)
    assert os.path.isabs(sweep.storage)
    assert sweep.tracking_uri.startswith("sqlite:////")
    assert sweep.experiment_name == sweep.name
    assert sweep.registered_model_name == f"revsearch-{sweep.name}"
    resolved = sweep.to_dict()
    assert set(resolved) == set(TOP_KEYS)
    # plain types only: survives YAML both ways
    again = validate_sweep_dict(yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False)), "resolved.yaml")
    assert again.to_dict() == resolved
    assert again.search == sweep.search and again.data == sweep.data and again.space == sweep.space
    assert again.retrain == sweep.retrain and again.objective == sweep.objective
    # the search defaults resolve into a valid trial
    params = {p.name: (p.values[0] if p.type == "choice" else p.low) for p in sweep.space.values()
              if p.sampled}
    settings_ = resolve_trial(sweep, params)
    SupernetConfig(vocab_size=settings_.vocab_size, **settings_.supernet)


def test_wmt14_configs_follow_the_paper():
    for pair in ("en_de", "en_fr", "en_cs"):
        s = load_sweep(os.path.join(ROOT, "tune_configs", f"wmt14_{pair}.yaml"))
        assert (s.data.kind, s.data.pair) == ("wmt14", pair.replace("_", "-"))
        assert (s.search.embed_dim, s.search.hidden, s.search.splits) == (256, 960, 2)
        assert (s.search.lr, s.search.warmup_steps, s.search.steps) == (5e-4, 10000, 30000)
        assert (s.search.alpha_lr, s.search.alpha_weight_decay) == (3e-4, 1e-3)
        # the paper's 5,000 tokens per GPU on 8 GPUs: 8 workers x 1 GPU, max_tokens the global batch
        assert (s.data.max_tokens, s.resources.gpu, s.resources.workers) == (8 * 5000, 1, 8)
        r = s.retrain
        assert (r.hidden, r.encoder_layers, r.decoder_layers, r.beam, r.length_penalty, r.average_last) == \
            (512, 6, 6, 4, 0.6, 5)


def test_relative_paths_resolve_against_the_yaml_directory(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "s.yaml").write_text("name: x\nstorage: ../out\ndata: {kind: corpus, path: corpus, src_lang: en, "
                                "tgt_lang: fr}\ntracking: {uri: 'sqlite:///db/m.db'}\n", encoding="utf-8")
    s = load_sweep(str(sub / "s.yaml"))
    assert s.storage == str(tmp_path / "out")
    assert s.data.path == str(sub / "corpus")
    assert s.tracking_uri == "sqlite:///" + str(sub / "db" / "m.db")
    # the default database follows a later storage override (CLI --storage)
    (sub / "t.yaml").write_text("name: t\nstorage: runs/t\n", encoding="utf-8")
    t = load_sweep(str(sub / "t.yaml"))
    assert t.tracking_uri == "sqlite:///" + str(sub / "runs" / "t" / "mlflow.db")
    t.storage = str(tmp_path / "elsewhere")
    assert t.tracking_uri == "sqlite:///" + str(tmp_path / "elsewhere" / "mlflow.db")


def test_defaults_follow_the_library_dataclasses():
    s = validate_sweep_dict({"name": "d"}, SRC)
    sn, sc = SupernetConfig(vocab_size=100), SearchConfig()
    for key in ("hidden", "splits", "embed_dim", "heads", "dropout", "pooling", "mode", "cell_layers"):
        assert getattr(s.search, key) == getattr(sn, key)
    for key in ("lr", "warmup_steps", "alpha_lr", "alpha_weight_decay", "label_smoothing", "second_order"):
        assert getattr(s.search, key) == getattr(sc, key)
    assert s.data.kind == "synthetic" and s.data.synthetic["train"] > 0
    assert (s.data.src_lang, s.data.tgt_lang) == ("en", "de")
    assert s.objective.metric == "valid_loss" and s.space == {}
    settings_ = resolve_trial(s, {})
    assert settings_.supernet["encoder_ops"] == sn.encoder_ops and settings_.op_set == "full"


# --- the define-by-run space ----------------------------------------------------------------------
def test_define_by_run_with_a_real_study():
    sweep = load_sweep(QUICKSTART)
    space = define_by_run(sweep)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen_splits, seen_ops, skipped, sampled_cells = set(), set(), 0, 0
    for i in range(20):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **(constants or {})}
        assert constants == {"hidden": trial.params["splits"] * trial.params["per_split_width"]}
        assert trial.user_attrs == constants
        settings_ = resolve_trial(sweep, config)
        assert isinstance(settings_, TrialSettings)
        assert settings_.supernet["hidden"] == config["hidden"]
        assert settings_.supernet["hidden"] % settings_.supernet["splits"] == 0
        assert 32 <= settings_.supernet["hidden"] <= 96
        assert settings_.search.alpha_lr == config["alpha_lr"]
        enc, dec = sweep.op_names(config["op_set"])
        assert settings_.supernet["encoder_ops"] == enc and settings_.supernet["decoder_ops"] == dec
        if config["splits"] == 2:
            assert "cell_layers" in trial.params
            sampled_cells += 1
            assert settings_.supernet["cell_layers"] == trial.params["cell_layers"]
        else:
            assert "cell_layers" not in trial.params
            skipped += 1
            assert settings_.supernet["cell_layers"] == sweep.search.cell_layers
        assert derived_params(sweep, trial.params) == constants
        settings_.supernet_config(vocab_size=37)
        seen_splits.add(config["splits"])
        seen_ops.add(config["op_set"])
        study.tell(trial, float(settings_.supernet["hidden"]) / 10 + i * 1e-3)
    assert seen_splits == {2, 3} and seen_ops == {"light", "full"}
    assert skipped and sampled_cells


def test_define_by_run_is_picklable_and_works_through_ray_optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    sweep = load_sweep(os.path.join(ROOT, "tune_configs", "micro.yaml"))
    space = pickle.loads(pickle.dumps(define_by_run(sweep)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = OptunaSearch(space=space, metric="valid_loss", mode="min",
                                sampler=optuna.samplers.TPESampler(seed=0))
        for i in range(3):
            config = searcher.suggest(f"t{i}")
            assert config["hidden"] == config["splits"] * config["per_split_width"]
            settings_ = resolve_trial(sweep, config)
            searcher.on_trial_complete(f"t{i}", {"valid_loss": 1.0 + i, "training_iteration": 1})
    assert settings_.steps == 20


def test_resolve_trial_checks_its_input():
    sweep = load_sweep(QUICKSTART)
    good = {"splits": 3, "per_split_width": 24, "op_set": "light", "alpha_lr": 1e-2, "unrelated": object()}
    assert resolve_trial(sweep, good).params["hidden"] == 72
    cases = [({k: v for k, v in good.items() if k != "op_set"}, "space.op_set: missing"),
             (dict(good, splits=4), "space.splits: trial value 4 is outside"),
             (dict(good, hidden=70), "space.hidden: trial value 70 differs"),
             (dict(good, per_split_width=20), "space.per_split_width")]
    for params, expected in cases:
        with pytest.raises(ConfigError) as e:
            resolve_trial(sweep, params)
        assert expected in assert_one_line(e.value, sweep.source)


def test_resolve_trial_partial_settings():
    sweep = load_sweep(QUICKSTART)
    s = resolve_trial(sweep, {"splits": 3, "per_split_width": 16}, partial=True)
    assert (s.supernet["splits"], s.supernet["hidden"], s.op_set) == (3, 48, sweep.search.op_set)
    assert s.search.alpha_lr == sweep.search.alpha_lr
    with pytest.raises(ConfigError) as e:   # hidden not derived: the fixed 64 is not divisible by 3
        resolve_trial(sweep, {"splits": 3}, partial=True)
    assert "search.hidden: must be divisible by search.splits (3)" in assert_one_line(e.value, sweep.source)
    s = resolve_trial(sweep, {"splits": 2, "hidden": 48, "embed_dim": 32}, partial=True)
    assert (s.supernet["hidden"], s.supernet["embed_dim"]) == (48, 32)


def test_search_levers_reach_the_search_config():
    sweep = validate_sweep_dict({"name": "d"}, SRC)
    assert (sweep.search.alpha_betas, sweep.search.alpha_warmup_steps) == (None, 0)
    config = resolve_trial(sweep, {}).search
    assert (config.alpha_betas, config.alpha_warmup_steps) == (SearchConfig().alpha_betas, 0)
    assert config.alpha_adam_betas() == config.betas  # null: α uses θ's betas, as before
    raw = quickstart_raw()
    raw["search"].update(alpha_betas=[0.5, 0.9], alpha_warmup_steps=20)
    raw["space"]["alpha_warmup_steps"] = {"type": "choice", "values": [0, 50]}
    sweep = validate_sweep_dict(raw, SRC)
    assert sweep.search.alpha_betas == (0.5, 0.9)
    assert validate_sweep_dict(sweep.to_dict(), SRC).search == sweep.search  # round trip
    assert sweep.to_dict()["search"]["alpha_betas"] == [0.5, 0.9]
    trial = {"splits": 2, "per_split_width": 16, "op_set": "light", "alpha_lr": 0.01, "cell_layers": 1,
             "alpha_warmup_steps": 50}
    settings_ = resolve_trial(sweep, trial)
    assert (settings_.search.alpha_betas, settings_.search.alpha_warmup_steps) == ((0.5, 0.9), 50)
    assert settings_.search.betas == (0.9, 0.98)
    assert settings_.to_dict()["search"]["alpha_betas"] == [0.5, 0.9]


def test_invalid_combination_is_caught_at_load_time():
    raw = quickstart_raw()
    raw["space"] = {"splits": {"type": "choice", "values": [2, 3]},
                    "hidden": {"type": "choice", "values": [64, 96]}}
    with pytest.raises(ConfigError) as e:
        validate_sweep_dict(raw, SRC)
    msg = assert_one_line(e.value)
    assert "space: an invalid combination" in msg
    assert "search.hidden: must be divisible by search.splits (3)" in msg


@pytest.mark.parametrize("expr,names,value", [
    ("splits * per_split_width", {"splits": 3, "per_split_width": 16}, 48),
    ("(a + b) // 2 - -c % 5", {"a": 7, "b": 8, "c": 3}, 5),
    ("a / 4", {"a": 10}, 2.5),
    ("2 * 3 + 1.5", {}, 7.5),
])
def test_safe_eval(expr, names, value):
    assert safe_eval(expr, names) == value


@pytest.mark.parametrize("expr,names,fragment", [
    ("a ** 2", {"a": 2}, "Pow"),
    ("__import__('os')", {}, "Call"),
    ("a.b", {"a": 1}, "Attribute"),
    ("x", {"a": 1}, "unknown name 'x'; known: a"),
    ("a // 0", {"a": 1}, "division by zero"),
    ("a +", {"a": 1}, "invalid expression"),
    ("a if a else 1", {"a": 1}, "IfExp"),
    ("'s' * 3", {}, "constant 's'"),
    ("True + 1", {}, "constant True"),
    ("a", {"a": "text"}, "not a number"),
    ("1e308 * 10", {}, "not finite"),
    ("1" * 600, {}, "longer than"),
])
def test_safe_eval_rejects(expr, names, fragment):
    with pytest.raises(ConfigError) as e:
        safe_eval(expr, names)
    assert fragment in str(e.value) and "\n" not in str(e.value)


# --- bad configs: one line naming the file and the key --------------------------------------------
def _set(doc, dotted, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        doc = doc.setdefault(k, {})
    if value is _DELETE:
        doc.pop(keys[-1], None)
    else:
        doc[keys[-1]] = value


_DELETE = object()
BAD_CASES = [
    ({"search.splits": 1}, "search.splits: must be an integer >= 2, got 1"),
    ({"search.hidden": 65}, "search.hidden: must be divisible by search.splits (2), got 65"),
    ({"search.hiden": 64}, "search.hiden: unknown key (did you mean 'hidden'?)"),
    ({"serach": {}}, "serach: unknown key"),
    ({"name": "my exp"}, "name: must be a name of letters"),
    ({"name": _DELETE}, "name: required"),
    ({"seed": -1}, "seed: must be an integer in [0, "),
    ({"search.lr": "fast"}, "search.lr: must be a number > 0, got 'fast'"),
    ({"search.dropout": 1.0}, "search.dropout: must be a number in [0, 1), got 1.0"),
    ({"search.pooling": "maxx"}, "search.pooling: must be one of: max, mean, got 'maxx' (did you mean 'max'?)"),
    ({"search.betas": [0.9]}, "search.betas: must be a list of two numbers"),
    ({"search.alpha_betas": [0.9]}, "search.alpha_betas: must be null (the same as betas) or a list of two"),
    ({"search.alpha_betas": [0.5, 1.0]}, "search.alpha_betas[1]: must be a number in [0, 1), got 1.0"),
    ({"search.alpha_warmup_steps": -1}, "search.alpha_warmup_steps: must be an integer >= 0, got -1"),
    ({"search.alpha_warmup_steps": 2.5}, "search.alpha_warmup_steps: must be an integer >= 0, got 2.5"),
    ({"search.alpha_warmup_steps": 150}, "search.alpha_warmup_steps: must be < search.steps (150)"),
    ({"space.alpha_betas": {"type": "choice", "values": [0.5]}}, "space.alpha_betas: unknown setting"),
    ({"space.alpha_warmup_steps": {"type": "choice", "values": [0, 200]}},
     "space: an invalid combination can be sampled: search.alpha_warmup_steps: must be < search.steps"),
    ({"search.report_every": 500}, "search.report_every: must be <= search.steps (150)"),
    ({"search.checkpoint_every": 75}, "search.checkpoint_every: must be a multiple of search.report_every (50)"),
    ({"search.op_set": "heavy"}, "search.op_set: unknown op set 'heavy'; defined: full, light"),
    ({"num_samples": 0}, "num_samples: must be an integer in [1, 10000], got 0"),
    ({"num_samples": 10 ** 9}, "num_samples: must be an integer in [1, 10000], got 1000000000"),
    ({"max_concurrent": True}, "max_concurrent: must be an integer >= 1, got True"),
    ({"data.arch_fraction": 1.0}, "data.arch_fraction: must be a number in (0, 1), got 1.0"),
    ({"data.synthetic.p_plural": 1.5}, "data.synthetic.p_plural: must be a number in [0, 1]"),
    ({"data.synthetic.max_words": 4}, "data.synthetic.max_words: must be >= data.synthetic.min_words"),
    ({"data.kind": "wmt14"}, "data.synthetic: only allowed with data.kind synthetic"),
    ({"data.kind": "corpus", "data.synthetic": _DELETE}, "data.path: required with data.kind corpus"),
    ({"data.kind": "wmt14", "data.synthetic": _DELETE, "data.pair": "en-ru"},
     "data.pair: must be one of: en-de, en-fr, en-cs"),
    ({"data.kind": "wmt14", "data.synthetic": _DELETE, "data.pair": "en-fr", "data.tgt_lang": "de"},
     "data.tgt_lang: must be 'fr' for data.kind wmt14 en-fr"),
    ({"data.max_tokens": 32}, "data.max_tokens: must be >= data.max_len (64)"),
    ({"data.vocab_size": 2.5}, "data.vocab_size: must be an integer >= 8, got 2.5"),
    ({"op_sets.light.encoder": ["conv3", "cross_attn"]}, "op_sets.light.encoder: op 'cross_attn' is decoder-only"),
    ({"op_sets.light.encoder": ["conv4"]}, "op_sets.light.encoder: unknown op 'conv4'"),
    ({"op_sets.light.decoder": "conv3"}, "op_sets.light.decoder: must be a list of op names"),
    ({"op_sets.full": {"encoder": ["conv3"]}}, "op_sets.full: 'full' is built in"),
    ({"op_sets.light.encoder": []}, "op_sets.light.encoder: encoder op set is empty"),
    ({"space.splits.type": "normal"}, "space.splits.type: unknown type 'normal'; one of: choice, int, uniform"),
    ({"space.splits.values": []}, "space.splits.values: must be a non-empty list"),
    ({"space.splits.values": [[2]]}, "space.splits.values[0]: must be null, a boolean, a number or a string"),
    ({"space.splits.values": [2, 2]}, "space.splits.values[1]: duplicate value 2"),
    ({"space.splits.values": [1, 2]}, "space.splits.values[0]: must be an integer >= 2, got 1"),
    ({"space.op_set.values": ["light", "heavy"]}, "space.op_set.values[1]: unknown op set 'heavy'"),
    ({"space.alpha_lr.low": 0.1}, "space.alpha_lr.high: must be > low (0.1), got 0.03"),
    ({"space.alpha_lr.type": "uniform", "space.alpha_lr.low": 0.0},
     "space.alpha_lr.low: must be a number > 0, got 0.0"),
    ({"space.alpha_lr.low": -1.0}, "space.alpha_lr.low: must be a number > 0"),
    ({"space.per_split_width.step": 5},
     "space.per_split_width.high: high - low (16) must be a multiple of step (5)"),
    ({"space.per_split_width.type": "uniform"}, "space.per_split_width.step: unknown key; allowed: type, low"),
    ({"space.per_split_width": {"type": "uniform", "low": 16, "high": 32}},
     "space: an invalid combination can be sampled: search.hidden: must be an integer >= 1, got 32.0"),
    ({"space.per_split_width.low": 0}, "space: an invalid combination can be sampled: search.hidden: must be "
                                       "an integer >= 1, got 0"),
    ({"space.splits.type": "uniform", "space.splits.low": 2, "space.splits.high": 3,
      "space.splits.values": _DELETE},
     "space.splits.type: search.splits is an integer >= 2; use type int, choice or derived"),
    ({"space.hidden.expr": "splits * width"},
     "space.hidden.expr: unknown name 'width'; known: splits, per_split_width"),
    ({"space.hidden.expr": "__import__('os').system('x')"}, "space.hidden.expr: Call not allowed"),
    ({"space.hidden.expr": "alpha_lr * 2"}, "space.hidden.expr: unknown name 'alpha_lr'"),
    ({"space.op_set.type": "derived", "space.op_set.expr": "1", "space.op_set.values": _DELETE},
     "space.op_set.type: search.op_set is not numeric"),
    ({"space.hiden": {"type": "int", "low": 1, "high": 2}}, "space.hiden: unknown setting"),
    ({"space.cell_layers.when": {"depth": 2}}, "space.cell_layers.when.depth: unknown name 'depth'"),
    ({"space.cell_layers.when": {"splits": 4}}, "space.cell_layers.when.splits: 4 is not one of splits's values"),
    ({"space.splits.when": {"cell_layers": 1}}, "space.splits.when.cell_layers: unknown name 'cell_layers'"),
    ({"space.dropout": {"type": "uniform", "low": 0.0, "high": 1.0}},
     "space.dropout.high: must be a number in [0, 1), got 1.0"),
    ({"space.splits.colour": 1}, "space.splits.colour: unknown key; allowed: type, values, when"),
    ({"objective.metric": "bleu"}, "objective.metric: must be one of: valid_loss"),
    ({"objective.metric": ["valid_loss", "params"], "objective.mode": ["min"]},
     "objective.mode: must have one entry per metric (2), got 1"),
    ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period: must be an integer >= 1"),
    ({"scheduler": {"type": "none", "grace_period": 2}},
     "scheduler.grace_period: only allowed with scheduler.type asha"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type: must be one of: none, asha"),
    ({"resources.cpu": 0}, "resources.cpu: must be a number > 0, got 0"),
    ({"retrain.top_k": 5}, "retrain.top_k: must be <= num_samples (4), got 5"),
    ({"retrain.steps": None, "retrain.budget_minutes": None},
     "retrain.steps: retrain.steps and retrain.budget_minutes"),
    ({"retrain.hidden": 100},
     "retrain.hidden: must be divisible by every possible split count (search.splits can be 3)"),
    ({"retrain.beam": 0}, "retrain.beam: must be an integer >= 1, got 0"),
    ({"retrain.size": {"match": "flops"}}, "retrain.size.match: must be one of: params, width, got 'flops'"),
    ({"retrain.size": {"tolerance": 0}}, "retrain.size.tolerance: must be a number in (0, 1), got 0"),
    ({"retrain.size": {"tolerance": 1.5}}, "retrain.size.tolerance: must be a number in (0, 1), got 1.5"),
    ({"retrain.size": {"params": -5}}, "retrain.size.params: must be null or an integer >= 1, got -5"),
    ({"retrain.size": {"params": 1.5e6}}, "retrain.size.params: must be null or an integer >= 1, got 1500000.0"),
    ({"retrain.size": {"match": "width", "params": 1000}},
     "retrain.size.params: only used with retrain.size.match: params (match is width)"),
    ({"retrain.size": "params"}, "retrain.size: must be a mapping with keys match, params, tolerance, got 'params'"),
    ({"retrain.size": {"tolerence": 0.1}}, "retrain.size.tolerence: unknown key (did you mean 'tolerance'?)"),
    ({"retrain.random_genotypes": 100}, "retrain.random_genotypes: must be an integer in [0, 64], got 100"),
    ({"retrain.random_genotypes": True}, "retrain.random_genotypes: must be an integer in [0, 64], got True"),
    ({"search.derive_allow_zero": "no"}, "search.derive_allow_zero: must be true or false, got 'no'"),
    ({"tracking.uri": "mlruns"}, "tracking.uri: must be null (sqlite database under storage) or an MLflow"),
    ({"tracking.uri": "file:///tmp/mlruns"}, "tracking.uri: MLflow 3.17 refuses file stores"),
    ({"tracking.registered_model": "a/b"}, "tracking.registered_model: must be null or a model name"),
    ({"storage": "s3://bucket/x"}, "storage: must be a local (or shared-filesystem) directory path"),
    ({"storage": 5}, "storage: must be a directory path, got 5"),
]


@pytest.mark.parametrize("changes,expected", BAD_CASES, ids=[c[1].split(":")[0] + f"-{i}"
                                                            for i, c in enumerate(BAD_CASES)])
def test_bad_config_one_line_names_file_and_key(changes, expected):
    raw = quickstart_raw()
    for key, value in changes.items():
        _set(raw, key, value)
    with pytest.raises(ConfigError) as e:
        validate_sweep_dict(raw, SRC)
    msg = assert_one_line(e.value)
    assert msg.startswith(f"{SRC}: {expected}") or f"{SRC}: {expected}" in msg, msg


FILE_CASES = [
    (b"name: [unclosed\n", "invalid YAML at line"),
    (b"name: a\n  bad: indent\n", "invalid YAML at line"),
    (b"", "the file is empty"),
    (b"# only a comment\n", "the file is empty"),
    (b"- a\n- b\n", "the top level must be a mapping"),
    (b"just a string\n", "the top level must be a mapping"),
    (b"name: a\nname: b\n", "duplicate key 'name'"),
    (b"name: caf\xe9\n", "not valid UTF-8 (byte 0xe9"),
    (b"name: a\n---\nname: b\n", "invalid YAML"),
    (b"name: a\x07\n", "invalid YAML"),
    (b"name: !!python/object:os.system x\n", "invalid YAML"),
    (b"name: a\nseed: 2020-13-45\n", "seed: must be an integer"),
    (b"[" * 600 + b"]" * 600, "invalid YAML: nested too deeply"),
]


@pytest.mark.parametrize("content,expected", FILE_CASES, ids=[c[1][:20] for c in FILE_CASES])
def test_bad_file_one_line(tmp_path, content, expected):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_sweep(str(path))
    msg = assert_one_line(e.value, str(path))
    assert expected in msg, msg


def test_missing_file_and_directory(tmp_path):
    for path, expected in ((tmp_path / "nope.yaml", "sweep file not found"), (tmp_path, "is a directory")):
        with pytest.raises(ConfigError) as e:
            load_sweep(str(path))
        assert expected in assert_one_line(e.value, str(path))


def test_yaml_conveniences(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: e\nsearch: {lr: 5e-4, alpha_lr: 1E-3, hidden: 96}\n"
                    "space:\n  splits: &s {type: choice, values: [2, 4]}\n"
                    "  encoder_layers: {<<: *s, values: [1, 2]}\n", encoding="utf-8")
    s = load_sweep(str(path))   # 1e-4 is a float (YAML 1.1 would read a string); merge keys work
    assert s.search.lr == 5e-4 and s.search.alpha_lr == 1e-3
    assert s.space["splits"].values == [2, 4] and s.space["encoder_layers"].values == [1, 2]


# --- fuzzing: nothing but ConfigError, ever -------------------------------------------------------
KEYS = st.sampled_from(list(TOP_KEYS) + list(SEARCH_KEYS) + list(DATA_SPACE_KEYS) + [
    "kind", "synthetic", "type", "values", "low", "high", "step", "expr", "when", "metric", "mode",
    "encoder", "decoder", "light", "uri", "top_k", "cpu", "gpu", "path", "pair", "train"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-4, 1100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["full", "light", "synthetic", "corpus", "wmt14", "choice", "int", "uniform",
                              "loguniform", "derived", "splits * per_split_width", "asha", "min", "max",
                              "valid_loss", "en-de", "conv3", "cross_attn", "sqlite:///x.db", "", "\n", "a/b"]))
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(KEYS | st.text(max_size=6) | st.integers(), children, max_size=5),
                      max_leaves=25)


def _check_never_crashes(doc) -> None:
    try:
        sweep = validate_sweep_dict(doc, SRC)
    except ConfigError as e:
        assert_one_line(e)
        return
    # a valid document: its space samples and resolves without any other exception
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_by_run(sweep)
    for _ in range(3):
        trial = study.ask()
        try:
            constants = space(trial)
            resolve_trial(sweep, {**trial.params, **(constants or {})})
        except ConfigError as e:
            assert_one_line(e)
        study.tell(trial, 0.0)
    assert validate_sweep_dict(sweep.to_dict(), SRC).to_dict() == sweep.to_dict()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(VALUES, st.dictionaries(KEYS, VALUES, max_size=6)))
def test_fuzz_random_documents(doc):
    _check_never_crashes(doc)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_mutated_quickstart(data):
    doc = quickstart_raw()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(KEYS | st.text(max_size=6))] = data.draw(VALUES)
        else:
            parent.append(data.draw(VALUES))
    _check_never_crashes(copy.deepcopy(doc))


# --- the reference stays in sync --------------------------------------------------------------------
def test_reference_documents_every_key_and_its_example_loads(tmp_path):
    with open(os.path.join(ROOT, "docs", "sweep-reference.md"), encoding="utf-8") as f:
        text = f.read()
    resolved = validate_sweep_dict({"name": "doc"}, SRC).to_dict()
    for section, value in resolved.items():
        assert f"`{section}`" in text, section
        if isinstance(value, dict) and section not in ("op_sets", "space"):
            for key in value:
                if section == "data" and key == "synthetic":
                    continue
                assert f"`{key}`" in text or f"/ `{key}`" in text or f"`{key}` /" in text, f"{section}.{key}"
    example = text.split("## Worked example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "example.yaml").write_text(example, encoding="utf-8")
    sweep = load_sweep(str(tmp_path / "example.yaml"))
    config = {"splits": 3, "per_split_width": 24, "op_set": "light", "alpha_lr": 9.0e-4, "hidden": 72}
    settings_ = resolve_trial(sweep, config)
    assert (settings_.supernet["hidden"], settings_.supernet["cell_layers"]) == (72, 2)


SPACE_NAMES = st.sampled_from(["splits", "per_split_width", "hidden", "op_set", "dropout", "width",
                               "cell_layers", "lr", "vocab_size", "max_len", "steps", "share_alpha"])
NUMBERS = st.integers(-3, 130) | st.floats(-1.0, 200.0) | st.sampled_from([0, 1, 2, 3, 8, 16, 1e-4, 0.5])
EXPRS = st.lists(st.sampled_from(["splits", "per_split_width", "width", "hidden", "2", "8", "0", "1.5", "+",
                                  "-", "*", "/", "//", "%", "(", ")", "**", "x"]),
                 min_size=1, max_size=7).map(" ".join)
WHEN = st.dictionaries(SPACE_NAMES, NUMBERS | st.lists(NUMBERS, max_size=2), max_size=2)
SPECS = st.one_of(
    st.fixed_dictionaries({"type": st.just("choice"), "values": st.lists(
        st.integers(0, 130) | st.sampled_from(["light", "full", True, None, 0.1, 1e-3]), min_size=1,
        max_size=4, unique=True)}, optional={"when": WHEN}),
    st.fixed_dictionaries({"type": st.just("int"), "low": st.integers(-2, 64), "high": st.integers(0, 130)},
                          optional={"step": st.integers(1, 9), "log": st.booleans(), "when": WHEN}),
    st.fixed_dictionaries({"type": st.sampled_from(["uniform", "loguniform"]), "low": NUMBERS, "high": NUMBERS},
                          optional={"when": WHEN}),
    st.fixed_dictionaries({"type": st.just("derived"), "expr": EXPRS | st.sampled_from(
        ["splits * per_split_width", "splits * width", "width // 2", "per_split_width * 2 + 2"])},
        optional={"when": WHEN}),
    st.fixed_dictionaries({"type": st.sampled_from(["choice", "int", "uniform", "loguniform", "derived"])},
                          optional={"values": st.lists(NUMBERS, max_size=3), "low": NUMBERS, "high": NUMBERS,
                                    "step": st.integers(0, 9), "expr": EXPRS, "when": WHEN}),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(SPACE_NAMES, SPECS, min_size=1, max_size=5))
def test_fuzz_spaces(space):
    doc = quickstart_raw()
    doc["space"] = space
    _check_never_crashes(doc)


def test_equal_size_random_baseline_and_derivation_defaults_round_trip():
    sweep = validate_sweep_dict({"name": "x"}, SRC)
    assert sweep.retrain.size == {"match": "params", "params": None, "tolerance": 0.03}
    assert sweep.retrain.random_genotypes == 0 and sweep.search.derive_allow_zero is False
    custom = validate_sweep_dict({"name": "x", "search": {"derive_allow_zero": True}, "retrain": {
        "size": {"params": 2_000_000, "tolerance": 0.05}, "random_genotypes": 3}}, SRC)
    assert custom.retrain.size == {"match": "params", "params": 2_000_000, "tolerance": 0.05}
    again = validate_sweep_dict(custom.to_dict(), SRC)
    assert again.retrain == custom.retrain and again.search.derive_allow_zero is True
    width = validate_sweep_dict({"name": "x", "retrain": {"size": {"match": "width"}}}, SRC)
    assert width.retrain.size == {"match": "width", "params": None, "tolerance": 0.03}
    # the derivation option reaches the search trial's SearchConfig (and may even be a space parameter)
    assert resolve_trial(custom, {}).search.derive_allow_zero is True
