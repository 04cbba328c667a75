"""``retrain.average_last`` works: with k > 1 the scored and registered weights are the element-wise mean
of the last k numbered checkpoints (not the best single checkpoint, as before)."""
import pytest
import torch

from revsearch.models.transformer import StandardTransformer, TransformerConfig
from revsearch.train.checkpoint import load_checkpoint
from revsearch.train.trainer import TrainConfig, Trainer, load_evaluated_weights
from tests.test_train_trainer import data


def mean_of(paths):
    """The reference: each tensor's mean over the files, computed here from the files themselves."""
    states = [load_checkpoint(p)["model"] for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]}


def assert_state_equals(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.allclose(state[k].double(), v, atol=1e-6, rtol=0), k


def tiny_model():
    torch.manual_seed(1)
    return StandardTransformer(TransformerConfig(vocab_size=30, embed_dim=16, hidden=32, encoder_layers=1,
                                                 decoder_layers=1, heads=2, ffn_dim=32, dropout=0.1))


@pytest.mark.parametrize("k", [1, 3])
def test_evaluated_weights_are_the_mean_of_the_last_k_checkpoints(tmp_path, k):
    model = tiny_model()
    config = TrainConfig(lr=3e-3, warmup_steps=2, max_tokens=60, max_steps=12, valid_every=2, log_every=2,
                         quiet=True, save_dir=str(tmp_path), keep_last=max(k, 2), average_last=k)
    result = Trainer(model, data(), data(8, 1), config).train()
    path = load_evaluated_weights(model, result)
    if k == 1:
        assert path == result.checkpoints["best"]
        assert_state_equals(model, mean_of([path]))
        return
    assert path == result.checkpoints["avg"] == str(tmp_path / "checkpoint_avg.pt")
    last = [tmp_path / f"checkpoint_{step}.pt" for step in (8, 10, 12)]
    assert_state_equals(model, mean_of(last))
    best = load_checkpoint(result.checkpoints["best"])["model"]
    assert any(not torch.equal(v, best[key]) for key, v in model.state_dict().items())  # not the best one


@pytest.mark.slow
def test_run_retrain_scores_and_tags_the_averaged_weights(tmp_path, monkeypatch):
    """Through ``run_retrain`` (real SentencePiece, sacreBLEU and MLflow): the model handed to the BLEU
    evaluation holds the mean of the last 3 checkpoints, and the checkpoint tagged for registration is
    that average."""
    import revsearch.train.evaluate as evaluate
    from revsearch.orchestration.data_prep import prepare_data
    from revsearch.orchestration.candidates import retrain_candidates
    from revsearch.orchestration.sweep import validate_sweep_dict
    from revsearch.orchestration.tracking import KIND_TAG, Tracker
    from revsearch.orchestration.trainables import run_retrain
    from revsearch.search import uniform_genotype
    from tests.test_sizing import chosen

    sweep = validate_sweep_dict({
        "name": "avg", "storage": str(tmp_path), "data": {
            "kind": "synthetic", "synthetic": {"train": 200, "valid": 8, "test": 8, "seed": 3},
            "vocab_size": 120, "max_len": 24, "max_tokens": 256},
        "search": {"hidden": 16, "splits": 2, "embed_dim": 16, "heads": 2, "cell_layers": 1, "steps": 4,
                   "report_every": 2, "checkpoint_every": 2},
        "num_samples": 1,
        "retrain": {"top_k": 1, "steps": 8, "validate_every": 2, "average_last": 3, "beam": 1,
                    "max_tokens": 256, "baseline": False, "size": {"match": "width"}}}, "avg.yaml")
    genotype = uniform_genotype(2, "conv3", "self_attn", layers=1)
    candidate = retrain_candidates(sweep, chosen(genotype))[0]
    d = sweep.data
    prepared = prepare_data(d.kind, sweep.storage, synthetic=d.synthetic, log=lambda m: None, max_words=d.max_len)
    tracker = Tracker(sweep.tracking_uri, sweep.experiment_name, artifact_root=str(tmp_path / "mlartifacts"))
    parent = tracker.start_run("parent", {KIND_TAG: "test"})
    context = {"tracking_uri": sweep.tracking_uri, "experiment": sweep.experiment_name,
               "artifact_root": str(tmp_path / "mlartifacts"), "parent_run_id": parent,
               "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1, "prepared": prepared.to_dict(),
               "retrain": sweep.retrain.to_dict()}
    evaluated = []
    real = evaluate.evaluate_model

    def recording(model, *args, **kwargs):
        evaluated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_model", recording)
    final = run_retrain(candidate, context, lambda metrics: None)
    save_dir = tmp_path / "run" / "retrain" / candidate["label"] / "seed0"
    assert final["checkpoint_path"] == str(save_dir / "checkpoint_avg.pt")
    run = tracker.client.get_run(final["mlflow_run_id"])
    assert run.data.tags["revsearch.checkpoint"] == final["checkpoint_path"]
    assert run.data.tags["revsearch.evaluated_weights"] == "avg"
    expected = mean_of([save_dir / f"checkpoint_{step}.pt" for step in (4, 6, 8)])
    assert len(evaluated) == 2   # validation and test, both with the averaged weights
    for state in evaluated:
        for k, v in expected.items():
            assert torch.allclose(state[k].double(), v, atol=1e-6, rtol=0), k
    from revsearch.train.checkpoint import load_for_inference   # what register_best loads and logs
    registered, _, _ = load_for_inference(final["checkpoint_path"])
    for k, v in expected.items():
        assert torch.allclose(registered.state_dict()[k].double(), v, atol=1e-6, rtol=0), k
    tracker.end_run(parent, "FINISHED")
