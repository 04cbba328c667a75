"""Issue 12, in-process: bounded parsing (YAML aliases, messages, choice lists), size estimates checked
against the real models, sizes validated before anything is built, checks that create nothing, language
codes that cannot name a path, and ``retrain --hidden`` kept out of the search space. The same inputs
through the real CLI (one line, exit 2, memory-capped) are cases of ``tests/test_bad_inputs.py``."""
from __future__ import annotations

import copy
import os
import time

import pytest

from revsearch.errors import ConfigError, DataError, RevsearchError
from revsearch.orchestration.sweep import (MAX_CHOICE_VALUES, MAX_YAML_NODES, parse_yaml_text, quoted_value,
                                           validate_sweep_dict)
from tests.test_bad_inputs import BASE, GENOTYPE   # the same valid sweep and genotype the CLI cases break

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def memory_cap():
    """These checks run in the pytest process itself: were the bound they test to regress, the input would
    allocate without end (a 2.7 GB repr, a million modules, tens of GB of weights). Address space is
    capped at what the process has now plus 3 GiB for the duration of the test, and restored after."""
    import resource
    with open("/proc/self/status", encoding="ascii") as status:
        current = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    before = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + 3 * 2 ** 30
    if before[1] != resource.RLIM_INFINITY:
        cap = min(cap, before[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, before[1]))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


def sweep(edit=None):
    data = copy.deepcopy(BASE)
    if edit:
        edit(data)
    return validate_sweep_dict(data, "bounds.yaml", base_dir="/tmp")


# --- YAML and messages ------------------------------------------------------------------------------
def test_alias_bomb_is_refused_from_the_node_graph():
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES:,} values"):
        parse_yaml_text("seed: [" + ", ".join(levels) + "]\n", "bomb.yaml")
    assert time.perf_counter() - start < 2


def test_ordinary_aliases_and_merge_keys_still_work():
    text = "ops: &ops [conv3, self_attn]\nop_sets: {a: {encoder: *ops}}\nbase: &b {x: 1}\nmore: {<<: *b, y: 2}\n"
    data = parse_yaml_text(text, "ok.yaml")
    assert data["op_sets"]["a"]["encoder"] == ["conv3", "self_attn"]
    assert data["more"] == {"x": 1, "y": 2}


def test_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="recursive alias"):
        parse_yaml_text("seed: &r [*r]\n", "rec.yaml")


def test_show_cuts_before_rendering(memory_cap):
    value = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9          # 9**9 elements through shared references
    start = time.perf_counter()
    text = quoted_value(value)
    assert len(text) <= 60 and time.perf_counter() - start < 0.1
    assert quoted_value("fast") == "'fast'" and quoted_value([1, 2]) == "[1, 2]" and quoted_value(10 ** 5000) == "<int>"


def test_choice_values_are_bounded_and_checked_in_linear_time():
    big = list(range(256, 256 + MAX_CHOICE_VALUES))
    start = time.perf_counter()
    config = sweep(lambda d: d.update(space={"max_tokens": {"type": "choice", "values": big}}))
    assert len(config.space["max_tokens"].values) == MAX_CHOICE_VALUES
    assert time.perf_counter() - start < 10      # was quadratic: 20,000 values took 40 s
    with pytest.raises(ConfigError, match=r"space.max_tokens.values: 10,001 values; at most 10,000"):
        sweep(lambda d: d.update(space={"max_tokens": {"type": "choice", "values": big + [99999]}}))
    # duplicates as before: equal values (1 == 1.0) are one value
    with pytest.raises(ConfigError, match=r"values\[1\]: duplicate value 0.1"):
        sweep(lambda d: d.update(space={"dropout": {"type": "choice", "values": [0.1, 0.1]}}))
    with pytest.raises(ConfigError, match="duplicate value"):
        sweep(lambda d: d.update(space={"dropout": {"type": "choice", "values": [0, 0.0]}}))


# --- sizes ------------------------------------------------------------------------------------------
def test_supernet_estimate_counts_exactly_the_built_model():
    from revsearch.orchestration.capacity import supernet_parameters
    from revsearch.orchestration.space import resolve_trial
    from revsearch.search.supernet import Supernet, SupernetConfig
    for edit in (None, lambda d: d["search"].update(hidden=24, splits=3, encoder_layers=2, op_set="full"),
                 lambda d: d["search"].update(tie_embeddings=False, decoder_layers=3)):
        config = sweep(edit)
        settings = resolve_trial(config, {}, partial=True)
        net = Supernet(SupernetConfig(vocab_size=settings.vocab_size, **settings.supernet))
        alphas = sum(a.numel() for a in net.arch_parameters())
        real = sum(p.numel() for p in net.parameters())
        assert supernet_parameters(settings.supernet, settings.vocab_size) == real - alphas


def test_capacity_names_what_was_asked_and_what_exists():
    from revsearch.orchestration.capacity import check_capacity
    ok = sweep()
    check_capacity(ok, cpus=2, gpus=0, memory=2 ** 30, where="node X")
    with pytest.raises(ConfigError, match=r"resources.cpu: each trial asks for 64 CPUs; node X has 2"):
        check_capacity(sweep(lambda d: d.update(resources={"cpu": 64})), 2, 0, None, "node X")
    with pytest.raises(ConfigError, match=r"resources.gpu: each trial asks for 1 GPU\(s\); node X has 0"):
        check_capacity(sweep(lambda d: d.update(resources={"gpu": 1})), 2, 0, None, "node X")
    with pytest.raises(ConfigError, match=r"search: one trial needs ~[\d,.]+ GiB for a supernet of ~[\d,]+ "
                                          r"parameters \(hidden 200000"):
        check_capacity(sweep(lambda d: d["search"].update(hidden=200_000)), 2, 0, 2 ** 34, "node X")
    with pytest.raises(ConfigError, match="too many parameters to count .* which no memory holds"):
        check_capacity(sweep(lambda d: d["search"].update(hidden=10 ** 12)), 2, 0, 2 ** 34, "node X")
    with pytest.raises(ConfigError, match=r"data.synthetic.train: 1,000,000,016 synthetic pairs need ~"):
        check_capacity(sweep(lambda d: d["data"]["synthetic"].update(train=10 ** 9)), 2, 0, 2 ** 34, "node X")
    with pytest.raises(ConfigError, match=r"num_samples: must be an integer in \[1, 10000\]"):
        sweep(lambda d: d.update(num_samples=10 ** 9))


def test_checkpoint_spec_is_checked_on_the_meta_device(memory_cap):
    from dataclasses import asdict
    from revsearch.models.transformer import StandardTransformer, TransformerConfig
    from revsearch.train.checkpoint import check_spec_fits_weights
    config = TransformerConfig(vocab_size=64, embed_dim=16, hidden=16, encoder_layers=1, decoder_layers=1,
                               heads=2, ffn_dim=32)
    model = StandardTransformer(config)
    check_spec_fits_weights(model.spec(), model.state_dict(), "ok.pt")
    big = dict(model.spec(), config=dict(asdict(config), hidden=24000, ffn_dim=96000))
    with pytest.raises(RevsearchError, match=r"big.pt: the model config does not match the weights: .* would "
                                             r"be \[24000, 16\]"):
        check_spec_fits_weights(big, model.state_dict(), "big.pt")
    deep = dict(model.spec(), config=dict(asdict(config), encoder_layers=10 ** 6))
    with pytest.raises(RevsearchError, match="encoder_layers = 1,000,000; at most"):
        check_spec_fits_weights(deep, model.state_dict(), "deep.pt")


def test_genotype_sizes_are_bounded_before_building():
    from revsearch.search.genotype import MAX_CELL_LAYERS, MAX_SPLITS, Genotype
    g = copy.deepcopy(GENOTYPE)
    g["encoder"]["cell"] = [["conv3", "self_attn"]] * MAX_CELL_LAYERS
    assert len(Genotype.from_dict(g).encoder.cell) == MAX_CELL_LAYERS
    g["encoder"]["cell"].append(["conv3", "self_attn"])
    with pytest.raises(ConfigError, match=f"encoder.cell has {MAX_CELL_LAYERS + 1} layers"):
        Genotype.from_dict(g, "g.json")
    with pytest.raises(ConfigError, match=rf"splits must be an integer in \[2, {MAX_SPLITS}\], got 100000"):
        Genotype.from_dict(dict(GENOTYPE, splits=100_000), "g.json")
    g = copy.deepcopy(GENOTYPE)
    g["encoder"]["cell"] = [["conv4"]]      # misspelt and too short: the name is the error
    with pytest.raises(ConfigError, match=r"encoder.cell\[0\]: unknown op 'conv4'"):
        Genotype.from_dict(g, "g.json")


# --- creating nothing -------------------------------------------------------------------------------
def test_creatable_problem_creates_nothing(tmp_path):
    from revsearch.orchestration.writable import creatable_problem
    before = sorted(os.listdir(tmp_path))
    assert creatable_problem(str(tmp_path / "a" / "b" / "c")) is None
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert creatable_problem(str(afile / "sub")) == "Not a directory"
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    assert "symbolic link loop" in creatable_problem(str(loop))
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["afile", "loop"])


def test_ensure_output_dir_creates_only_what_creatable_problem_allows(tmp_path):
    from revsearch.commands.output_dir import ensure_output_dir
    nested = str(tmp_path / "a" / "b")
    assert ensure_output_dir(nested) == nested and os.path.isdir(nested)
    assert ensure_output_dir(nested) == nested                     # an existing directory is fine
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError) as err:
        ensure_output_dir(str(afile))
    assert str(err.value) == f"--out: {afile} is a file, expected a directory"
    with pytest.raises(ConfigError) as err:
        ensure_output_dir(str(afile / "sub"), "--dir")
    assert str(err.value) == f"--dir: cannot write the directory {afile / 'sub'} (Not a directory)"
    assert sorted(os.listdir(tmp_path)) == ["a", "afile"]


def test_sqlite_tracking_store_is_checked_without_creating_it(tmp_path):
    from revsearch.orchestration.tracking import Tracker, check_tracking_store
    db = tmp_path / "new" / "deeper" / "mlflow.db"
    check_tracking_store(f"sqlite:///{db}", "exp")
    assert not (tmp_path / "new").exists()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="names a directory"):
        check_tracking_store(f"sqlite:///{tmp_path}", "exp")
    assert time.perf_counter() - start < 1        # MLflow's retries took 107 s
    (tmp_path / "text.db").write_text("not a database, just text that is long enough to have a header" * 4)
    with pytest.raises(ConfigError, match="is not an SQLite database"):
        check_tracking_store(f"sqlite:///{tmp_path / 'text.db'}", "exp")
    with pytest.raises(ConfigError, match="no MLflow database at"):
        Tracker(f"sqlite:///{db}", "exp", create=False)
    assert not (tmp_path / "new").exists()


def test_import_language_codes_and_overwrite(tmp_path):
    from revsearch.data.corpus import write_corpus
    from revsearch.data.importer import ImportConfig, import_corpus
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_text("".join(f"a house {i}\n" for i in range(8)))
    tgt.write_text("".join(f"ein Haus {i}\n" for i in range(8)))
    with pytest.raises(DataError, match="--src-lang: must be a language code"):
        ImportConfig(src=str(src), tgt=str(tgt), src_lang="/../../x", tgt_lang="de")
    with pytest.raises(DataError, match="source language: must be a language code"):
        write_corpus(tmp_path / "out", "../x", "de", {"train": [("a", "b")]})
    config = ImportConfig(src=str(src), tgt=str(tgt), src_lang="en", tgt_lang="de", valid_size=1, test_size=1)
    with pytest.raises(DataError, match="would overwrite the input --src"):
        import_corpus(config, str(tmp_path))
    assert src.read_text().startswith("a house 0")
    import_corpus(config, str(tmp_path / "out"), log=lambda m: None)
    assert (tmp_path / "out" / "train.en").exists()


# --- retrain --hidden -------------------------------------------------------------------------------
def test_retrain_hidden_is_not_checked_against_a_derived_space():
    from revsearch.commands.retrain import genotype_trial_params
    from revsearch.orchestration.candidates import retrain_candidates
    from revsearch.orchestration.space import resolve_trial
    from revsearch.search.genotype import Genotype
    config = sweep(lambda d: d.update(space={"splits": {"type": "choice", "values": [2]},
                                             "hidden": {"type": "derived", "expr": "splits * 8"}}))
    genotype = Genotype.from_dict(GENOTYPE)
    with pytest.raises(ConfigError, match="differs from its expression's value"):   # what --hidden 32 did
        resolve_trial(config, {"splits": 2, "pooling": "max", "hidden": 32}, partial=True)
    config.retrain.hidden = 32                     # what --hidden 32 does now
    params = genotype_trial_params(config, genotype)
    chosen = [{"rank_in_search": 1, "trial_id": "manual", "config": params, "genotype": genotype.to_json(),
               "genotype_key": genotype.key(), "search_run_id": "", "search_seconds": 0.0}]
    assert "hidden" not in params          # the space derives it: computed, not given
    derived = [c for c in retrain_candidates(config, chosen, partial=True) if c["kind"] == "derived"]
    assert len(derived) == 1 and derived[0]["model"]["splits"] == 2   # no "differs from its expression"


def test_retrain_of_a_3_split_genotype_with_a_sweep_sized_for_2_splits():
    """micro.yaml's space derives hidden = splits * per_split_width and its fixed search.hidden (32) is
    not divisible by 3: a 3-split genotype file gets 3 x the search width per split (3 x 16)."""
    from revsearch.commands.retrain import genotype_trial_params
    from revsearch.orchestration import load_sweep
    from revsearch.orchestration.candidates import retrain_candidates
    from revsearch.search.genotype import Genotype
    config = load_sweep(os.path.join(REPO, "tune_configs", "micro.yaml"))
    three = dict(GENOTYPE, splits=3,
                 encoder={"candidates": ["conv3", "self_attn"], "cell": [["conv3", "self_attn", "conv3"]]},
                 decoder={"candidates": ["conv3", "cross_attn"], "cell": [["conv3", "cross_attn", "conv3"]]})
    genotype = Genotype.from_dict(three)
    params = genotype_trial_params(config, genotype)
    assert params["hidden"] == 3 * (config.search.hidden // config.search.splits)
    chosen = [{"rank_in_search": 1, "trial_id": "manual", "config": params, "genotype": genotype.to_json(),
               "genotype_key": genotype.key(), "search_run_id": "", "search_seconds": 0.0}]
    derived = [c for c in retrain_candidates(config, chosen, partial=True) if c["kind"] == "derived"]
    assert derived[0]["model"]["splits"] == 3 and derived[0]["model"]["hidden"] % 3 == 0


@pytest.mark.slow
def test_cluster_run_is_checked_against_its_largest_node(tmp_path):
    """A real 1-CPU Ray head joined with ``--address``: a sweep asking 2 CPUs a trial ends in one line
    right after the join, before stage 1, with nothing recorded (no mlflow.db, no run directory)."""
    import subprocess
    import sys

    import yaml
    from tests.local_cluster import LocalRayCluster
    (tmp_path / "cluster").mkdir()
    cluster = LocalRayCluster(str(tmp_path / "cluster"))
    try:
        address = cluster.start_head(num_cpus=1)
        data = copy.deepcopy(BASE)
        data["resources"] = {"cpu": 2}
        path = tmp_path / "cpu2.yaml"
        path.write_text(yaml.safe_dump(data))
        storage = tmp_path / "storage"
        proc = subprocess.run([sys.executable, "-m", "revsearch.cli", "run", str(path), "--address", address,
                               "--storage", str(storage)], env=dict(cluster.env, PYTHONWARNINGS="ignore"),
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        cluster.stop()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1] == (f"revsearch: error: {path}: resources.cpu: each trial asks for 2 CPUs; the largest "
                         f"node of the Ray cluster at {address} has 1, so no trial could ever start"), proc.stderr
    assert not (storage / "mlflow.db").exists() and not (storage / "runs").exists()
