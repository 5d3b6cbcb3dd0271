"""The documentation keeps up with the code: the README's walkthrough runs as written, docs/cli.md is what
the commands' --help says, and every option explains itself."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from alexfeat.cli.app import app
from alexfeat.cli.docs import CLI_DOC, REGENERATE, cli_reference, main as docs_main
from tests.conftest import ALEXNET_CACHE_NAME, COLORS, SHARED, make_image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _commands() -> dict[str, click.Command]:
    return dict(typer.main.get_command(app).commands)


def _blocks(text: str, language: str) -> list[str]:
    """The code blocks fenced as ```language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def test_docs_cli_md_is_generated_from_the_commands_help():
    assert CLI_DOC.read_text(encoding="utf-8") == cli_reference(), f"docs/cli.md is stale: run {REGENERATE}"


def test_a_stale_reference_fails_the_check_and_names_the_command_that_regenerates_it(tmp_path, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text(cli_reference().replace("Images per forward pass.", "Images per batch."))
    assert docs_main(["--check", "--out", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err and "make docs" in REGENERATE
    assert docs_main(["--out", str(stale)]) == 0 and stale.read_text() == cli_reference()
    assert docs_main(["--check", "--out", str(stale)]) == 0


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch):
    text = cli_reference()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert cli_reference() == text and "\x1b[" not in text


def test_every_argument_and_option_of_every_command_has_help():
    missing = []
    for name, command in _commands().items():
        assert (command.help or "").strip(), f"{name} has no description"
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{name} {'/'.join(param.opts)}")
    assert not missing, f"no help text: {', '.join(missing)}"


def test_help_shows_one_default_per_option(cli):
    for name, command in _commands().items():
        ctx = click.Context(command, info_name=name)
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                assert record[1].lower().count("default") <= 1, f"{name} {record[0]}: {record[1]}"
    help_text = re.sub(r"[│\s]+", " ", cli("finetune", "--help").output)
    assert "(default: 10, or layer-wise 2 per round)" in help_text and "[default: 10]" not in help_text


def _photos(root: Path) -> None:
    """photos/train and photos/test with two classes, and one photo.jpg, as the README lays them out:
    real photos from ../shared when it is there, else generated ones."""
    shared = SHARED / "data" / "dogs-vs-cats"
    for split, count in (("train", 4), ("test", 2)):
        for c, (name, color) in enumerate(zip(("cats", "dogs"), COLORS.values())):
            folder = root / "photos" / split / name
            folder.mkdir(parents=True)
            if shared.is_dir():
                for path in sorted((shared / split / name).glob("*.jpg"))[:count]:
                    shutil.copy(path, folder / path.name)
            else:
                for i in range(count):
                    make_image(folder / f"{name}.{i}.jpg", color, size=(120, 100), seed=10 * c + i)
    shutil.copy(next((root / "photos" / "test" / "cats").iterdir()), root / "photo.jpg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's serve step uses curl")
def test_the_readme_walkthrough_runs_as_written(tmp_path, alexnet_weights):
    """Every ```bash block of the README, in order, in one shell (stopping at the first failure), then every
    ```python block, on a few photos; AlexNet's 'pretrained' weights are random ones in torch's cache."""
    text = README.read_text(encoding="utf-8")
    bash, python = _blocks(text, "bash"), _blocks(text, "python")
    assert bash and python
    port = str(_free_port())  # the README's port 8000 may be taken on this machine
    script = "set -euo pipefail\n" + "\n".join(bash).replace("8000", port)
    _photos(tmp_path)
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(alexnet_weights, checkpoints / ALEXNET_CACHE_NAME)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = shell.communicate(timeout=240)
    finally:  # the shell and what it started (the server, if a step failed before `kill %1`): one group
        try:
            os.killpg(shell.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert shell.returncode == 0, output
    assert '"label"' in output and '"scores"' in output  # the served prediction
    assert (tmp_path / "predictions.csv").read_text().startswith("path,prediction")
    assert '"accuracy"' in (tmp_path / "report.json").read_text()
    for block in python:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr


def test_the_commands_the_readme_and_the_docs_show_but_do_not_run_exist_with_those_options():
    """The ```sh blocks (installing, training, clusters: not for the suite) name real commands and options."""
    commands = _commands()
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    blocks = [block.replace("\\\n", " ")  # a command continued on the next line
              for page in pages for block in _blocks(page.read_text(encoding="utf-8"), "sh")]
    lines = [line.split(" #")[0] for block in blocks for line in block.splitlines()]
    checked = 0
    for line in lines:
        words = shlex.split(line)
        if not words or not words[0].endswith("alexfeat") or len(words) < 2 or words[1].startswith("-"):
            continue
        assert words[1] in commands, line
        options = {opt for param in commands[words[1]].params for opt in (*param.opts, *param.secondary_opts)}
        for word in words[2:]:
            if word.startswith("-"):
                assert word.split("=")[0] in options, f"{word} in: {line}"
        checked += 1
    assert checked >= 10


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_readme_and_the_docs_leads_somewhere():
    pages = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
    broken = []
    for page in pages:
        text = re.sub(r"^```.*?^```$", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```$", "", file.read_text(encoding="utf-8"),
                                                             flags=re.S | re.M), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target}")
    assert not broken, f"links to nothing: {', '.join(broken)}"
