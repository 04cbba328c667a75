"""Trainer mechanics: exact resume, budgets, early stopping, reporting, quiet mode, checkpoint files,
averaging, and clear errors for bad checkpoints."""
import random

import pytest
import torch

from revsearch import cli
from revsearch.errors import ConfigError, RevsearchError
from revsearch.models.transformer import StandardTransformer, TransformerConfig
from revsearch.train.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from revsearch.train.trainer import TrainConfig, Trainer


def data(n=40, seed=0):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        k = r.randint(2, 8)
        s = [r.randint(4, 29) for _ in range(k)]
        out.append((s + [3], [2] + s[::-1] + [3]))
    return out


def model(dropout=0.1):
    torch.manual_seed(1)
    return StandardTransformer(TransformerConfig(vocab_size=30, embed_dim=16, hidden=32, encoder_layers=1,
                                                 decoder_layers=1, heads=2, ffn_dim=32, dropout=dropout))


def cfg(tmp_path=None, **kw):
    base = dict(lr=1e-3, warmup_steps=5, max_tokens=60, max_steps=8, valid_every=4, log_every=2, quiet=True,
                save_dir=str(tmp_path) if tmp_path else None, restore_best=False)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_exact(tmp_path):
    train, valid = data(), data(8, 1)
    a = model()
    Trainer(a, train, valid, cfg(tmp_path / "a")).train()
    b = model()
    r1 = Trainer(b, train, valid, cfg(tmp_path / "b", max_steps=4)).train()
    assert r1.stop_reason == "max_steps" and r1.steps == 4
    b2 = model()
    r2 = Trainer(b2, train, valid, cfg(tmp_path / "b", max_steps=8)).train()   # resumes mid-epoch at step 4
    assert r2.steps == 8
    for (k, va), vb in zip(a.state_dict().items(), b2.state_dict().values()):
        assert torch.equal(va, vb), k
    ck = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert ck["step"] == 8 and {"optimizer", "rng", "schedule", "epoch", "batch_in_epoch"} <= ck.keys()


def test_checkpoint_files_keep_last_and_average(tmp_path):
    r = Trainer(model(), data(), data(8, 1), cfg(tmp_path, max_steps=12, valid_every=2, keep_last=3,
                                                 average_last=3)).train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*.pt"))
    assert names == ["checkpoint_10.pt", "checkpoint_12.pt", "checkpoint_8.pt", "checkpoint_avg.pt",
                     "checkpoint_best.pt", "checkpoint_last.pt"]
    assert set(r.checkpoints) == {"last", "best", "avg"}
    avg = load_checkpoint(r.checkpoints["avg"])
    assert "optimizer" not in avg and avg["averaged_from"] == ["checkpoint_8.pt", "checkpoint_10.pt", "checkpoint_12.pt"]
    parts = [load_checkpoint(tmp_path / n)["model"] for n in avg["averaged_from"]]
    key = "encoder.layers.0.linear1.weight"
    assert torch.allclose(avg["model"][key], sum(p[key] for p in parts) / 3, atol=1e-6)
    assert torch.allclose(average_checkpoints([tmp_path / "checkpoint_8.pt"])[key], parts[0][key])


def test_budgets_reports_and_quiet(tmp_path, capsys):
    reports = []
    r = Trainer(model(), data(), data(8, 1), cfg(max_steps=None, time_budget_s=0.3, valid_every=0),
                on_report=lambda step, m: reports.append((step, m))).train()
    assert r.stop_reason == "time_budget" and r.tokens_per_s > 0 and r.elapsed_s >= 0.3
    assert any("train_loss" in m and "tokens_per_s" in m for _, m in reports)
    assert "valid_nll" in reports[-1][1] and reports[-1][0] == r.steps     # validated once at the end
    assert capsys.readouterr().err == ""
    r = Trainer(model(), data(), [], cfg(max_steps=None, max_epochs=2, valid_every=0)).train()
    assert r.stop_reason == "max_epochs" and r.epochs == 2


def test_progress_line(capsys):
    logs = []
    Trainer(model(), data(), data(8, 1), cfg(quiet=False, max_steps=4), log=logs.append).train()
    line = next(m for m in logs if m.startswith("step      2 |"))
    assert "loss" in line and "tok/s" in line and "lr" in line
    assert any("valid nll" in m for m in logs) and logs[-1].startswith("done: max_steps after 4 steps")


def test_early_stopping_restores_best():
    t = Trainer(model(), data(), data(8, 1), cfg(max_steps=100, valid_every=2, patience=2, restore_best=True))
    values = iter([3.0, 2.0, 2.5, 2.4, 9.0])
    t.validate = lambda: next(values)
    r = t.train()
    assert r.stop_reason == "early_stopping" and r.steps == 8 and r.best_step == 4 and r.best_valid_nll == 2.0


def test_config_errors():
    with pytest.raises(ConfigError, match="at least one of"):
        TrainConfig(max_steps=None)
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(max_steps=1, label_smoothing=1.0)


@pytest.fixture
def good_checkpoint(tmp_path):
    Trainer(model(), data(), data(8, 1), cfg(tmp_path / "run", max_steps=2, valid_every=2)).train()
    return tmp_path / "run" / "checkpoint_last.pt"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign", "pickled_object"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, good_checkpoint, damage):
    bad = tmp_path / f"{damage}.pt"
    blob = good_checkpoint.read_bytes()
    if damage == "truncated":
        bad.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x80\x02garbage" * 50)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, bad)
    else:
        torch.save({"format": "revsearch-seq2seq", "model": {}, "model_spec": {}, "x": ConfigError("x")}, bad)
    with pytest.raises(RevsearchError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    assert ("corrupt or truncated" in msg or "not a revsearch checkpoint" in msg or "weights_only" in msg)


def test_resume_from_truncated_last_checkpoint_names_it(tmp_path, good_checkpoint):
    good_checkpoint.write_bytes(good_checkpoint.read_bytes()[:100])
    with pytest.raises(RevsearchError, match=r"checkpoint_last\.pt: corrupt or truncated checkpoint"):
        Trainer(model(), data(), data(8, 1), cfg(good_checkpoint.parent, max_steps=4))


def test_checkpoint_wrong_model_is_a_clear_error(tmp_path, good_checkpoint):
    other = StandardTransformer(TransformerConfig(vocab_size=30, embed_dim=16, hidden=64, encoder_layers=1,
                                                  decoder_layers=1, heads=2, ffn_dim=32))
    with pytest.raises(RevsearchError, match="weights do not match the model"):
        Trainer(other, data(), data(8, 1), cfg(good_checkpoint.parent, max_steps=4))


def test_cli_translate_with_corrupt_checkpoint(tmp_path, good_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ["data", "train", "translate", "evaluate"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good_checkpoint.read_bytes()[:-500])
    (tmp_path / "in.txt").write_text("hello world\n", encoding="utf-8")   # translate checks its input too
    rc = cli.main(["translate", "--checkpoint", str(bad), "--input", str(tmp_path / "in.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"revsearch: error: {bad}: corrupt or truncated checkpoint (not a complete torch archive)\n"
    rc = cli.main(["translate", "--checkpoint", str(good_checkpoint), "--input", str(tmp_path / "in.txt")])
    err = capsys.readouterr().err       # this checkpoint was trained without a SentencePiece model
    assert rc == 2 and "has no SentencePiece model" in err and err.count("\n") == 1


def test_save_is_atomic(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "model_spec": {}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
