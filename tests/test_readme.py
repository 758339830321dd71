"""The README is tested documentation: every Python block runs as shown (in order, in one folder;
a block starting `# my_file.py` is that file), every `mmcompress` line of a bash block runs, `make`
targets exist, and every command and option of the CLI synopsis exists."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmcompress.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def test_readme_has_the_blocks_this_test_runs():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 5 and kinds.count("bash") >= 2 and "" in kinds


@pytest.mark.slow
def test_every_python_and_bash_block_runs_as_shown(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    program = ["import mmcompress"]
    commands: list[str] = []
    for kind, body in BLOCKS:
        first = body.splitlines()[0] if body.strip() else ""
        if kind == "python" and re.fullmatch(r"# [\w]+\.py", first):
            (tmp_path / first[2:]).write_text(body)
        elif kind == "python":
            program.append(body)
        elif kind == "bash":
            commands += [line.split("#")[0].strip() for line in body.splitlines() if line.startswith("mmcompress ")]
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n".join(program))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert commands, "the README shows no mmcompress command line"
    for line in commands:
        args = line.split()[1:]
        proc = subprocess.run([sys.executable, "-m", "mmcompress", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"


def test_make_targets_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_cli_synopsis_names_real_commands_and_options():
    synopsis = next(body for kind, body in BLOCKS if kind == "" and "mmcompress run" in body)
    entries = re.split(r"\n(?=mmcompress |torchrun )", textwrap.dedent(synopsis))
    checked = 0
    for entry in entries:
        words = entry.split()
        if words[0] == "torchrun":
            words = words[words.index("mmcompress") :] if "mmcompress" in words else ["mmcompress", words[-2]]
        command = words[1]
        if command == "models" or "|" in command:
            command = command.split("|")[0]
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0, f"{command}: {result.output}"
        for option in set(re.findall(r"(--[a-z][a-z-]+)", entry.split("#")[0])):
            assert option in result.output, f"mmcompress {command} has no {option}"
        checked += 1
    assert checked >= 12
