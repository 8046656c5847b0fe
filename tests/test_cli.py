"""The command line a new user meets: one flag vocabulary, global options anywhere, help for
every option with an example, plugins beside the user, errors that give the command that runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from refbench.cli import build_parser
from tests.conftest import PLUGIN_ENV, REPO, assert_user_error, run_cli


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_has_help_and_every_command_an_example():
    commands = dict(_subparsers(build_parser()))
    assert {"run", "grid", "report", "regress", "train", "ls", "show", "reported", "export",
            "pretrain-shapes", "data make-shapes"} <= set(commands)
    for name, parser in commands.items():
        if name == "data":
            continue
        assert parser.epilog and "example" in parser.epilog, name
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    help_text = " ".join(commands["run"].format_help().split())
    assert "(default: 8)" in help_text and "(default: 0.05)" in help_text  # defaults are shown


def test_one_flag_vocabulary_across_commands(shapes_root: Path, tmp_path: Path):
    base = ["--data-root", str(shapes_root), "--limit", "3", "--no-progress"]
    grid = run_cli("grid", "--methods", "gt_box", "--param", "grow=0,0.1", *base,
                   "--out", str(tmp_path / "g"))
    assert grid.returncode == 0, grid.stderr  # --methods names the grid's one method
    run = run_cli("run", "--method", "gt_box", *base, "--out", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr  # --method names run's list of one
    for position in (["--strict-plugins", "ls"], ["ls", "--strict-plugins"]):
        result = run_cli(*position, "methods")
        assert result.returncode == 0 and "gt_box" in result.stdout, position
    broken = {"REFBENCH_PLUGINS": "no_such_plugin_module"}
    for position in (["--strict-plugins", "ls"], ["ls", "--strict-plugins"]):
        assert_user_error(run_cli(*position, env=broken), "no_such_plugin_module")


def test_every_method_names_its_source():
    listing = run_cli("ls", "methods")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for name, title in [("vpd", "Unleashing Text-to-Image Diffusion Models for Visual Perception"),
                        ("lora_vpd", "Referring Image Segmentation via Text-to-Image Diffusion Models"),
                        ("diffsegmenter", "Diffusion Model is Secretly a Training-free Open Vocabulary"),
                        ("diffsegmenter_uea", "Attribute binding enhancement improvement")]:
        row = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert lines[row + 1].strip().startswith("source: ") and title in lines[row + 1], (name, lines[row + 1])
    assert not any(word in listing.stdout for word in ("seed 000", "seed 003", "eq. "))
    backbones = run_cli("ls", "backbones")
    assert "methods default to sd15" in backbones.stdout and "--backbone shapes" in backbones.stdout


def test_run_calibrates_as_reports_do_and_says_why(shapes_root: Path, tmp_path: Path):
    args = ["--methods", "noise_blobs", "--data-root", str(shapes_root), "--no-progress"]
    reported = run_cli("run", *args, "--split", "testA", "--out", str(tmp_path / "a"), env=PLUGIN_ENV)
    assert reported.returncode == 0, reported.stderr
    entry = json.loads((tmp_path / "a" / "results.json").read_text())["results"]["noise_blobs"]
    assert entry["calibration"]["split"] == "val"
    assert f"threshold of noise_blobs: {entry['threshold_label']} (maximises mIoU on val)" in reported.stdout
    val = run_cli("run", *args, "--out", str(tmp_path / "v"), env=PLUGIN_ENV)  # val is reported
    assert val.returncode == 0 and "fixed before seeing data" in val.stdout
    assert "the default calibration split, val, is the reported split" in val.stdout
    assert_user_error(run_cli("run", *args, "--calibration-split", "val", "--out", str(tmp_path / "x"),
                              env=PLUGIN_ENV), "also a reported split")


def test_a_plugin_module_in_the_working_directory_is_found(shapes_root: Path, tmp_path: Path):
    source = (REPO / "tests" / "plugins" / "rb_testplugin.py").read_text()
    (tmp_path / "my_methods.py").write_text(source.replace("rb_testplugin:", "my_methods:"))
    result = run_cli("run", "--methods", "noise_blobs", "--data-root", str(shapes_root), "--limit", "2",
                     "--no-progress", "--out", str(tmp_path / "o"), cwd=tmp_path,
                     env={"REFBENCH_PLUGINS": "my_methods", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_missing_checkpoint_or_backbone_names_the_command_that_runs(shapes_root: Path, tmp_path: Path):
    typed = ["run", "--methods", "diffsegmenter_ab,vpd", "--data-root", str(shapes_root), "--limit", "2",
             "--out", str(tmp_path / "o"), "--no-progress"]
    result = run_cli(*typed)
    assert_user_error(result, "vpd is trainable and has no checkpoint", "to run on the bundled model:")
    suggested = result.stderr.split("to run on the bundled model: refbench ", 1)[1].strip().split()
    assert suggested[-4:] == ["--backbone", "shapes", "--set", "vpd.checkpoint=shipped"]
    offline = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root), "--limit", "1",
                      "--out", str(tmp_path / "p"), "--no-progress", env={"HF_HUB_OFFLINE": "1"})
    assert_user_error(offline, "not in the Hugging Face cache", "HF_HUB_OFFLINE is set",
                      "--backbone shapes")


def test_show_lists_what_a_folder_holds(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    for methods in ("gt_box", "full_image"):
        assert run_cli("run", "--methods", methods, "--data-root", str(shapes_root), "--limit", "3",
                       "--out", str(out), "--no-progress").returncode == 0
    # the second run of other methods adds to results.json, it does not replace it
    merged = json.loads((out / "results.json").read_text())["results"]
    assert {"gt_box", "full_image"} <= set(merged) and merged["gt_box"]["n"] == 3
    assert len(list((out / "results").glob("*.json"))) == 2
    shown = run_cli("show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "2 runs" in shown.stdout and "gt_box" in shown.stdout and "full_image" in shown.stdout
    assert_user_error(run_cli("show", str(tmp_path)), "not a run folder")


@pytest.mark.parametrize("tty", [False])
def test_progress_off_a_terminal_is_one_line_per_run(shapes_root: Path, tmp_path: Path, tty: bool):
    result = run_cli("run", "--methods", "gt_box,full_image", "--split", "testA", "--data-root",
                     str(shapes_root), "--out", str(tmp_path / "o"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("refbench: run")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "run 1 of 4", "run 2 of 4", "run 3 of 4", "run 4 of 4"]
    assert "gt_box on refshapes/testA" in lines[0] and "full_image on refshapes/val" in lines[3]
    quiet = run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--out",
                    str(tmp_path / "q"), "--no-progress")
    assert quiet.stderr == ""
