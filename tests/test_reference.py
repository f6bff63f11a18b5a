"""The fair reference, selection against it, and the divergence guard (issue: trustworthy results)."""

import pytest
import torch
from torch import nn

from basisprune.repro import experiments, reference
from basisprune.repro.cli import main as cli_main
from basisprune.repro.reference import _paired_drop
from basisprune.repro.train import DivergenceError, train_epoch

TINY = dict(subset_train=160, subset_test=64, batch_size=32, warmup_epochs=2, epochs_per_round=2)


def test_reference_is_trained_exactly_as_long_as_each_round(one_thread):
    """With a rule that prunes nothing, every round equals its reference: the reference forks at
    round 0 and sees the same batches for the same number of epochs (warm-up + r * epochs_per_round)."""
    r = experiments.run("basis_pruning", profile="smoke", workdir=False, basis_rounds=2, stop_drop=1.0,
                        basis_fraction=1e-9, **TINY)
    assert [h["epochs"] for h in r["history"]] == [2, 4, 6]
    for h in r["history"]:
        assert h["param_pruning_ratio"] == 0.0
        assert (h["accuracy_val"], h["accuracy_test"]) == (h["reference_val"], h["reference_test"])
        assert h["accuracy_drop"] == h["drop_val"] == 0.0
    assert r["reference"]["epochs"] == r["final"]["epochs"]


def test_drops_are_measured_against_the_reference_at_the_same_epochs(one_thread):
    """Every round's drop is its reference's accuracy minus its own, on the same images; the record's
    reference is the one at the selected round's epochs, not round 0."""
    r = experiments.run("basis_pruning", profile="smoke", workdir=False, basis_rounds=2, stop_drop=1.0,
                        max_drop=1.0, **TINY)
    for h in r["history"]:
        assert h["accuracy_drop"] == pytest.approx(h["reference_test"] - h["accuracy_test"])
        assert h["drop_val"] == pytest.approx(h["reference_val"] - h["accuracy_val"])
    f = r["final"]
    assert r["reference"]["accuracy_test"] == f["reference_test"]
    assert r["reference"]["round0_accuracy_test"] == r["history"][0]["accuracy_test"]
    # The undertrained round 0 is not the reference of a later round.
    assert any(h["reference_test"] != r["history"][0]["accuracy_test"] for h in r["history"][1:])


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_selection_keeps_the_budget_against_the_reference(one_thread, margin):
    """The selected round is the most pruned one whose validation drop stays within max_drop with
    ``select_margin`` standard errors to spare (0: the drop itself)."""
    r = experiments.run("basis_pruning", profile="smoke", workdir=False, basis_rounds=2, stop_drop=1.0,
                        max_drop=0.05, select_margin=margin, **TINY)
    ok = [h for h in r["history"] if h["drop_val"] + margin * h["drop_se_val"] <= 0.05]
    f = r["final"]
    assert f["drop_val"] + margin * f["drop_se_val"] <= 0.05
    assert f["param_pruning_ratio"] == max(h["param_pruning_ratio"] for h in ok)


def test_a_margin_rejects_a_round_that_only_its_noise_keeps_in_budget(one_thread):
    """A round whose drop is within the budget but whose drop plus one SE is not, is selected with
    no margin and refused with one (the rule the calibration chapter chose)."""
    runs = {m: experiments.run("basis_pruning", profile="smoke", workdir=False, basis_rounds=2, stop_drop=1.0,
                               max_drop=1.0, select_margin=m, **TINY) for m in (0.0, 1000.0)}
    assert runs[0.0]["history"] == runs[1000.0]["history"]  # the margin changes the choice, not the run
    assert runs[1000.0]["final"]["round"] == 0  # only round 0 (drop 0, SE 0) survives a huge margin
    assert runs[0.0]["final"]["round"] > 0


def test_double_pruning_has_one_budget_and_one_reference(one_thread):
    """The basis stage of double pruning continues the channel stage's epochs and is judged against
    the unpruned model trained as long (the reference the channel stage forked)."""
    r = experiments.run("double_pruning", profile="smoke", workdir=False, channel_rounds=1, basis_rounds=1,
                        stop_drop=1.0, max_drop=1.0, **TINY)
    ch, ba = r["stages"]["channel"], r["stages"]["basis"]
    assert [h["epochs"] for h in ba["history"]] == [ch["final"]["epochs"] + 1, ch["final"]["epochs"] + 3]
    assert r["reference"]["round0_accuracy_test"] == ch["history"][0]["accuracy_test"]
    assert r["reference"]["epochs"] == r["final"]["epochs"]
    assert r["final"]["accuracy_drop"] == pytest.approx(r["final"]["reference_test"] - r["final"]["accuracy_test"])
    assert r["final_stage"] == "basis" and r["final"] == ba["final"]


def test_double_pruning_keeps_the_channel_selection_when_no_basis_round_keeps_the_budget(one_thread):
    """When even the basis stage's round 0 is beyond the budget against the reference trained as
    long, the double-pruned model is the channel stage's selection (which kept it), not a model over
    budget."""
    r = experiments.run("double_pruning", profile="smoke", workdir=False, channel_rounds=1, basis_rounds=1,
                        stop_drop=1.0, max_drop=0.02, **TINY)
    ch, ba = r["stages"]["channel"], r["stages"]["basis"]
    assert all(h["drop_val"] > 0.02 for h in ba["history"])  # the situation this test is about
    assert r["final_stage"] == "channel" and r["final"] == ch["final"]
    assert r["final"]["drop_val"] <= 0.02 and r["reference"]["epochs"] == ch["final"]["epochs"]


def test_paired_drop_and_its_standard_error():
    """Drop = (b - c) / n and SE = sqrt((b + c)/n - d^2) / sqrt(n), with b, c the disagreements."""
    ref = torch.tensor([True] * 90 + [False] * 10)
    new = ref.clone()
    new[:6] = False  # the pruned model loses 6 images the reference had
    new[95:97] = True  # and wins 2 it did not
    d, se = _paired_drop(ref, new)
    assert d == pytest.approx(0.04)
    assert se == pytest.approx(((0.08 - 0.04 ** 2) / 100) ** 0.5)
    assert _paired_drop(ref, ref) == (0.0, 0.0)


def test_nan_loss_raises_divergence():
    """A non-finite training loss ends the epoch with DivergenceError, never a result."""
    model = nn.Linear(4, 3)
    loader = [(torch.full((8, 4), float("nan")), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(DivergenceError, match="diverged"):
        train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")


@pytest.mark.parametrize("lr, match", [("inf", "lr must be a finite number"), ("1e9", "at chance")])
def test_cli_refuses_infinite_lr_and_reports_divergence_in_one_line(lr, match, tmp_path, capsys, one_thread):
    """--lr inf is refused before work; --lr 1e9 diverges: exit 2, one line, no results file."""
    out = tmp_path / "r.json"
    rc = cli_main(["run", "basis_pruning", "--profile", "smoke", "--lr", lr, "--subset-train", "160",
                   "--subset-test", "64", "--batch-size", "32", "--out", str(out), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("basisprune: error:") and match in err[0]
    assert not out.exists()


@pytest.mark.parametrize("experiment", ["basis_pruning", "channel_pruning"])
def test_distillation_keeps_the_reference_fair(one_thread, experiment):
    """With distillation on and a rule that prunes nothing, every round still equals its reference:
    the pruned run and the reference learn from the same teacher on the same batches."""
    r = experiments.run(experiment, profile="smoke", workdir=False, basis_rounds=2, channel_rounds=2,
                        stop_drop=1.0, basis_fraction=1e-9, channel_fraction=1e-9, distill=0.5, **TINY)
    for h in r["history"]:
        assert (h["accuracy_val"], h["accuracy_test"]) == (h["reference_val"], h["reference_test"])


def test_distillation_changes_the_training(one_thread):
    """distill > 0 trains on another loss: the same run without it ends elsewhere (a mutant that
    ignores the teacher fails here)."""
    runs = [experiments.run("basis_pruning", profile="smoke", workdir=False, basis_rounds=1, stop_drop=1.0,
                            max_drop=1.0, distill=d, **TINY) for d in (0.0, 1.0)]
    assert runs[0]["history"][0] == {**runs[1]["history"][0]}  # the warm-up has no teacher yet
    assert runs[0]["history"][1]["accuracy_val"] != runs[1]["history"][1]["accuracy_val"] or \
        runs[0]["history"][1]["reference_val"] != runs[1]["history"][1]["reference_val"]


def _tiny_track():
    from basisprune.repro.train import freeze

    ctx = experiments.Context(experiments.resolve_params("basis_pruning", "smoke", **TINY))
    model = ctx.fresh_model()
    head = ctx.head(model)
    d = experiments.decompose(model, exclude=[head])
    trainable = freeze(d, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
    opt = torch.optim.Adam(trainable, lr=0.05)
    return reference._ReferenceTrack(ctx, d, opt, None, 0, ctx.evaluate(d, correct=True))


def test_a_reference_trained_past_an_epoch_reports_that_epoch(one_thread):
    """The reference is evaluated only where rounds ask; an epoch it already trained past (double
    pruning's basis stage asks for the channel stage's selected epochs + 1) is evaluated from its
    snapshot and equals the reference evaluated at that epoch directly."""
    direct, past = _tiny_track(), _tiny_track()
    want = direct.at(1)
    assert past.at(3)["accuracy_val"] == direct.at(3)["accuracy_val"]
    got = past.at(1)
    assert past.epochs == 3
    for k in ("correct_val", "correct_test"):
        assert torch.equal(got[k], want[k])
    assert not torch.equal(got["correct_val"], past.at(3)["correct_val"])  # epoch 1 is not epoch 3 here
