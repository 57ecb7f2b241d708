"""Bad input: a one-line ``dirichlet-prune: error: ...`` on stderr (a bad option value too: no
usage block), a non-zero exit status, and no output written (neither the --out folder nor a
``.partial`` folder beside it); Ctrl-C says what it left for ``--resume``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pyro_dirichlet_prune import cli
from pyro_dirichlet_prune.models import build_model
from pyro_dirichlet_prune.models.checkpoint import save_checkpoint

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained lenet5 and lenet5-caffe checkpoints (the errors happen before any training)."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    for model in ("lenet5", "lenet5-caffe"):
        save_checkpoint(d / f"{model}.pt", build_model(model), model, "mnist", 10, SHAPE)
    (d / "corrupt.pt").write_bytes(os.urandom(4096))
    (d / "text.pt").write_text("not a checkpoint\n")
    torch.save({"hello": 1}, d / "foreign.pt")
    return d


def _no_output(out):
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        stray = [p.name for p in out.parent.iterdir() if ".partial" in p.name]
        assert not stray, stray


def _user_error(capsys, argv, match):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dirichlet-prune: error:"), err
    assert match in lines[0], err
    return lines[0]


def _usage_error(capsys, argv, match):
    """An option argparse refuses: the same one line as every other error, status 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    captured = capsys.readouterr()
    assert exc.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dirichlet-prune: error: ") and match in lines[0], captured.err
    assert "usage:" not in captured.err and captured.out == ""
    return lines[0]


def _prune(ckpt, out, *extra, arch="6-8-40-20", data=("--dataset", "fake-mnist", "--val-size", "500")):
    return ["prune", "--checkpoint", str(ckpt), "--arch", arch, "--finetune-epochs", "0", *data, *extra,
            "--out", str(out)]


def test_unknown_model(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, "--model", "resnet"), "unknown model 'resnet'")
    _no_output(out)
    _user_error(capsys, ["pretrain", "--model", "vgg", "--dataset", "fake-mnist", "--out", str(out)], "unknown model")
    _no_output(out)


@pytest.mark.parametrize("arch,match", [("6-8-40", "has 3 widths"), ("6-8-40-20-1", "has 5 widths"),
                                        ("6-8-400-20", "cannot keep 400"), ("6-0-40-20", "cannot keep 0"),
                                        ("six-8-40-20", "not a dash-separated list")])
def test_bad_arch(ckpts, tmp_path, capsys, arch, match):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, arch=arch), match)
    _no_output(out)


def test_missing_data_dir(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "no-such-data"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, data=("--dataset", "mnist", "--data-dir", str(missing))),
                "does not exist")
    _no_output(out)
    assert not missing.exists()


@pytest.mark.parametrize("name,match", [("corrupt.pt", "not a readable PyTorch file"),
                                        ("text.pt", "not a readable PyTorch file"),
                                        ("foreign.pt", "is not a pyro-dirichlet-prune/1 checkpoint"),
                                        ("missing.pt", "does not exist")])
def test_bad_checkpoint_file(ckpts, tmp_path, capsys, name, match):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / name, out), match)
    _no_output(out)
    _user_error(capsys, ["evaluate", str(ckpts / name), "--dataset", "fake-mnist"], match)


def test_checkpoint_of_another_model(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5-caffe.pt", out, "--model", "lenet5"), "holds a lenet5-caffe network")
    _no_output(out)


def test_existing_out_without_overwrite(ckpts, tmp_path, capsys, monkeypatch):
    import pyro_dirichlet_prune.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_data", _tiny_fake_data)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out), "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    _user_error(capsys, ["pretrain", "--dataset", "fake-mnist", "--val-size", "500", "--out", str(out)], "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("argv,match", [
    (["prune", "--checkpoint", "x.pt", "--cutoff", "magic", "--out", "o"], "--cutoff"),
    (["prune", "--checkpoint", "x.pt", "--target-macs", "-5", "--out", "o"], "--target-macs"),
    (["prune", "--checkpoint", "x.pt", "--arch", "1-1-1-1", "--rate", "0.5", "--out", "o"], "not allowed with"),
    (["prune", "--checkpoint", "x.pt", "--rate", "1.5", "--out", "o"], "--rate"),
    (["prune", "--checkpoint", "x.pt", "--rate", "0.5", "--alpha0", "-1", "--out", "o"], "--alpha0"),
    (["prune", "--checkpoint", "x.pt", "--rate", "0.5", "--dataset", "svhn", "--out", "o"], "--dataset"),
    (["prune", "--checkpoint", "x.pt", "--rate", "0.5", "--guide", "gauss", "--out", "o"], "--guide"),
    (["pretrain", "--epochs", "0", "--out", "o"], "--epochs"),
    (["frobnicate"], "invalid choice"),
])
def test_argparse_usage_errors(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    _usage_error(capsys, argv, match)
    assert not (tmp_path / "o").exists()


def test_failure_inside_the_run_leaves_nothing(ckpts, tmp_path, capsys, monkeypatch):
    """An error after the output folder was opened (here: during switch learning) removes the
    temporary folder; nothing appears at --out."""
    import pyro_dirichlet_prune.pipeline as pipeline
    from pyro_dirichlet_prune.errors import UserError

    def boom(*a, **k):
        raise UserError("switch learning failed on purpose")

    monkeypatch.setattr(pipeline, "fit_switches", boom)
    monkeypatch.setattr(pipeline, "load_data", _tiny_fake_data)
    out = tmp_path / "nested" / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out), "failed on purpose")
    _no_output(out)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit_switches", interrupt)
    assert cli.main(_prune(ckpts / "lenet5.pt", out)) == 130
    assert "nothing was written" in capsys.readouterr().err
    _no_output(out)


def test_interrupt_keeps_the_saved_state_for_resume(ckpts, tmp_path, capsys, monkeypatch):
    """Ctrl-C after a run saved its state: the one line says where the partial run is kept and
    that the same command with --resume continues it; and it does."""
    import pyro_dirichlet_prune.pipeline as pipeline

    real = pipeline.fit_switches

    def interrupted(*args, state, **kwargs):
        state.save("before-ctrl-c", {"global_step": 1})  # state.pt in the work folder, as after a save
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit_switches", interrupted)
    monkeypatch.setattr(pipeline, "load_data", _tiny_fake_data)
    out = tmp_path / "run"
    argv = _prune(ckpts / "lenet5.pt", out, "--switch-batch-size", "50")
    assert cli.main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    work = tmp_path / ".run.partial"
    assert len(lines) == 1 and lines[0].startswith("dirichlet-prune: interrupted; "), lines
    assert "nothing was written" not in lines[0]
    assert f"kept in {work}" in lines[0] and "same command with --resume" in lines[0], lines[0]
    assert (work / "state.pt").is_file() and not out.exists()

    monkeypatch.setattr(pipeline, "fit_switches", real)
    assert cli.main(argv + ["--resume"]) == 0, capsys.readouterr().err
    assert (out / "report.json").is_file() and not work.exists()


def test_a_bad_option_value_is_one_line_in_a_real_process(tmp_path):
    """``dirichlet-prune prune --rate 1.5``: the one line ``dirichlet-prune: error: ...``, no
    usage block, status 2; ``--help`` still prints the whole usage and exits 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pyro_dirichlet_prune", "prune", "--rate", "1.5", "--out", "o"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "dirichlet-prune: error: argument --rate: expected a fraction in [0, 1), got 1.5 "
        "(see dirichlet-prune prune --help)"], proc.stderr
    assert not (tmp_path / "o").exists()
    proc = subprocess.run([sys.executable, "-m", "pyro_dirichlet_prune", "prune", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: dirichlet-prune prune") and "--rate RATE" in proc.stdout


def test_help_and_errors_of_every_command(capsys):
    for command in ([], ["pretrain"], ["prune"], ["compare-guides"], ["search"], ["evaluate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*command, "--help"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {' '.join(['dirichlet-prune', *command])}")
    assert "the following arguments are required: --out" in _usage_error(capsys, ["search"], "--out")
    _usage_error(capsys, ["search", "--out", "x", "--every", "0"], "argument --every")
    _usage_error(capsys, ["prune", "--out", "x", "--bogus"], "unrecognized arguments: --bogus")
    _usage_error(capsys, [], "COMMAND")


def test_library_argument_names_become_flags():
    """The library names its arguments (``resume=True``, ``checkpoint=PATH``, ``input_shape``);
    the command line says the flags instead, and leaves paths and other words alone."""
    from pyro_dirichlet_prune.cli.options import flag_words

    parser = cli.build_parser()
    assert flag_words("pass resume=True to continue it or overwrite=True to start over", parser, "search") == \
        "pass --resume to continue it or --overwrite to start over"
    assert flag_words("give checkpoint=PATH", parser, "search") == "give --checkpoint PATH"
    assert flag_words("input_shape must be 3 integers", parser, "prune") == "--input-shape must be 3 integers"
    assert flag_words("load it with allow_pickle=True", parser, "prune") == "load it with --allow-pickle"
    assert flag_words("guide normal needs elbo='trace'", parser, "prune") == "guide normal needs --elbo trace"
    for kept in ("input_shape is not an option of search", "see /tmp/max_train_examples/x.pt, data_dir.txt",
                 "alpha=True and foo_bar=PATH", "foo='bar'"):
        assert flag_words(kept, parser, "search") == kept


def _tiny_fake_data(name, data_dir=None, val_size=5000, seed=0, download=True):
    from pyro_dirichlet_prune.data import load_data

    return load_data(name, data_dir, 50, seed, download, fake_sizes=(150, 50))


def test_evaluate_fake_checkpoint_with_default_options(tmp_path, capsys, monkeypatch):
    """``evaluate`` only needs the test set: a fake-mnist checkpoint must evaluate with the
    default options (the default --val-size 5000 exceeds fake-mnist's 2000 training images)."""
    ck = tmp_path / "fake.pt"
    save_checkpoint(ck, build_model("lenet5"), "lenet5", "fake-mnist", 10, SHAPE)
    rc = cli.main(["evaluate", str(ck)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert '"dataset": "fake-mnist"' in captured.out


def test_error_through_a_real_process(ckpts, tmp_path):
    """The installed entry point behaves the same: status 2, one line on stderr, nothing on stdout."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pyro_dirichlet_prune", *_prune(ckpts / "corrupt.pt", out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dirichlet-prune: error: checkpoint"), proc.stderr
    assert "Traceback" not in proc.stderr
    _no_output(out)


@pytest.mark.parametrize("bad,match", [(dict(widths=[10, 20, 100]), "bad.pt"), (dict(widths=[0, 20, 100, 25]), "bad.pt"),
                                       (dict(input_shape=[]), "bad.pt"), (dict(model="resnet"), "resnet"),
                                       (dict(num_classes=0), "bad.pt")],
                         ids=["short-widths", "zero-width", "no-shape", "unknown-model", "no-classes"])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_checkpoint_with_inconsistent_metadata(tmp_path, capsys, bad, match):
    """A checkpoint file whose metadata cannot describe a network is a corrupt checkpoint:
    clean one-line error, no traceback."""
    from pyro_dirichlet_prune.models.checkpoint import FORMAT

    payload = dict(format=FORMAT, model="lenet5", widths=[10, 20, 100, 25], num_classes=10, input_shape=[1, 28, 28],
                   dataset="mnist", state_dict=build_model("lenet5").state_dict(), meta={})
    payload.update(bad)
    ck = tmp_path / "bad.pt"
    torch.save(payload, ck)
    _user_error(capsys, ["evaluate", str(ck), "--dataset", "fake-mnist"], match)


def test_prune_without_checkpoint_when_none_ships(tmp_path, capsys):
    out = tmp_path / "run"
    _user_error(capsys, ["prune", "--model", "lenet5-caffe", "--dataset", "fake-mnist", "--arch", "1-1-1",
                         "--out", str(out)], "no pre-trained lenet5-caffe")
    _no_output(out)


@pytest.mark.parametrize(
    "option,value",
    [("--switch-lr", "-1"), ("--switch-lr", "nan"), ("--alpha0", "0"), ("--alpha0", "inf"), ("--particles", "0"),
     ("--particles", "two"), ("--switch-epochs", "0"), ("--finetune-epochs", "-1"), ("--floor", "-0.1"),
     ("--rate", "1.0"), ("--rate", "-0.2"), ("--seed", "-3"), ("--checkpoint-every", "0"), ("--threads", "0"),
     ("--switch-batch-size", "0"), ("--val-size", "0"), ("--guide", "gaussian"), ("--elbo", "renyi"),
     ("--schedule", "random"), ("--switch-scale", "log"), ("--switch-sampling", "each"), ("--tau", "0"),
     ("--tau", "inf"), ("--delta", "0"), ("--delta", "1"), ("--target-params", "0"), ("--target-params", "1e3")],
)
def test_every_prune_option_is_range_checked(ckpts, tmp_path, capsys, option, value):
    argv = _prune(ckpts / "lenet5.pt", tmp_path / "run")
    if option in ("--rate", "--target-params"):
        i = argv.index("--arch")
        del argv[i : i + 2]
    _usage_error(capsys, argv + [option, value], option)
    _no_output(tmp_path / "run")


@pytest.mark.parametrize("extra,match", [
    (["--target-macs", "1000"], "give one cut-off, not arch and budget"),
    (["--cutoff", "uncertainty"], "--cutoff uncertainty does not take the options of the arch cut-off"),
    (["--cutoff", "budget"], "--cutoff budget does not take"),
])
def test_conflicting_cutoffs_are_refused(ckpts, tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, *extra), match)
    _no_output(out)


@pytest.mark.parametrize("extra,match", [
    (["--cutoff", "arch"], "--cutoff arch needs --arch"),
    (["--cutoff", "budget"], "--cutoff budget needs --target-macs"),
    (["--target-macs", "100"], "cannot be met"),
    (["--switch-sampling", "per-example", "--guide", "normal"], "per-example switch sampling needs --guide dirichlet"),
])
def test_cutoffs_without_their_options_are_refused(ckpts, tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    argv = _prune(ckpts / "lenet5.pt", out, *extra)
    i = argv.index("--arch")
    del argv[i : i + 2]
    _user_error(capsys, argv, match)
    _no_output(out)


def test_pretrain_negative_weight_decay_is_refused(tmp_path, capsys):
    _usage_error(capsys, ["pretrain", "--dataset", "fake-mnist", "--weight-decay", "-1", "--out", str(tmp_path / "p")],
                 "--weight-decay")


def test_public_functions_validate(tmp_path):
    from pyro_dirichlet_prune.training import TrainConfig
    from pyro_dirichlet_prune.inference.svi import SwitchConfig

    with pytest.raises(ValueError):
        SwitchConfig(particles=0).validate()
    with pytest.raises(ValueError):
        SwitchConfig(init_concentration=0.01, floor=0.05).validate()
    with pytest.raises(ValueError):
        TrainConfig(lr=-1).validate()
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0).validate()


def test_data_of_another_shape_is_refused(ckpts, tmp_path, capsys):
    """A 1×28×28 LeNet-5 checkpoint against 3×32×32 CIFAR-shaped data: one line, no output."""
    line = _user_error(capsys, _prune(ckpts / "lenet5.pt", tmp_path / "run", data=("--dataset", "fake-cifar10",
                                                                                     "--val-size", "500")),
                       "expects inputs (1, 28, 28)")
    assert "(3, 32, 32)" in line
    _no_output(tmp_path / "run")
    _user_error(capsys, ["evaluate", str(ckpts / "lenet5.pt"), "--dataset", "fake-cifar10"], "does not take")


def test_prune_help_describes_the_model_the_code_fits(capsys):
    """``prune --help`` says what ``run_prune`` does by default: output times GAIN*s_l, layers
    learned one at a time, the uncertainty cut-off; --arch/--rate keep the highest posterior means."""
    from pyro_dirichlet_prune.inference.svi import SwitchConfig
    from pyro_dirichlet_prune.pipeline import PruneConfig, resolve_cutoff

    d = SwitchConfig()
    assert (d.scale, d.schedule, resolve_cutoff(PruneConfig())) == ("simplex", "sequential", "uncertainty")
    with pytest.raises(SystemExit):
        cli.main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("the layer's output is multiplied by GAIN*s_l and the layers learn one at a time",
                  "by default the uncertainty cut-off removes unit j of layer l when the posterior is confident "
                  "that it is unimportant, P(D_l*s_lj < TAU) >= 1 - DELTA",
                  "--arch and --rate keep the units with the highest posterior means",
                  "simplex: a layer's output is multiplied by GAIN*s_l", "(default simplex)",
                  "sequential: the layers learn one at a time", "(default sequential)",
                  "those with the highest posterior means", "the units with the lowest posterior means"):
        assert words in text, words
    assert "rank units by posterior mean" not in text


def test_min_epochs_without_patience(ckpts, tmp_path, capsys):
    """A floor on the epochs means something only to a rule that can end the run early: early
    stopping (--finetune-patience) or the plateau schedule (the LeNets' default)."""
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, "--finetune-schedule", "cosine", "--finetune-min-epochs", "3"),
                "--finetune-min-epochs goes with --finetune-patience or --finetune-schedule plateau")
    _no_output(out)


def test_settled_concentrations_need_a_dirichlet_guide(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    _user_error(capsys, _prune(ckpts / "lenet5.pt", out, "--guide", "normal", "--concentration", "settled"),
                "--concentration settled needs guide 'dirichlet' or 'dirichlet-mean' and frozen weights "
                "(no --learn-weights)")
    _no_output(out)


def test_a_switch_fit_that_hits_its_cap_unconverged_says_so(ckpts, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    rc = cli.main(_prune(ckpts / "lenet5.pt", out, "--switch-until-converged", "--switch-epochs", "1",
                         "--no-latency"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert ("dirichlet-prune: warning: switch learning did not converge within --switch-epochs 1 in conv1, conv2, "
            "fc1, fc2") in captured.err
    report = json.loads((out / "report.json").read_text())
    conv = report["switches"]["convergence"]
    assert conv["converged"] is False and [s["layers"] for s in conv["stages"]] == [["conv1"], ["conv2"], ["fc1"],
                                                                                   ["fc2"]]
    assert [s["steps"] for s in conv["stages"]] == [s["steps"] for s in report["switches"]["stages"]]


@pytest.mark.default_recipe
def test_the_default_quadratic_settle_says_what_its_intervals_rest_on(ckpts, tmp_path, capsys):
    """With no switch option given, the recipe: 3 averaged epochs a stage, then the quadratic settle."""
    import json

    out = tmp_path / "run"
    rc = cli.main(_prune(ckpts / "lenet5.pt", out, "--no-latency"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert ("did not converge within --switch-epochs 3 in conv1, conv2, fc1, fc2: the quadratic settle then set "
            "every concentration, which is what the intervals rest on") in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["posterior"]["intervals"].startswith("quadratic: ")
    assert [s["epochs"] for s in report["switches"]["stages"]] == [3, 3, 3, 3]
    assert report["config"]["switch"]["concentration"] == "auto" and report["switches"]["concentration"] == "quadratic"
    settled = report["switches"]["settled_concentrations"]
    assert sorted(settled) == ["conv1", "conv2", "fc1", "fc2"] and all(v["surrogate_gain"] >= 0 for v in settled.values())
