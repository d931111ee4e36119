"""The project image, checked without a Docker engine: a lint of our own over the Dockerfile (plus hadolint when it
is installed), and "every command the image runs exists and starts": each `narrator ...` command line of the
pipeline fronts is run here with `--help` through the venv's `narrator` console script.

`check_commands_start(commands)` is the reusable part: give it argv lists (`["narrator", "prepare", ...]`) and it
returns what is wrong with them (an empty list when every command starts).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
REQUIREMENTS = REPO_ROOT / "requirements.txt"

# External programs the project code runs, and the Debian package of the image that provides each.
TOOL_PACKAGES = {"espeak-ng": "espeak-ng", "ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "git": "git"}
_PINNED_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+$")
_PIP_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                           "-f", "--find-links", "-e", "--editable"}


# ---------------------------------------------------------------------------------------------- Dockerfile model


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its line number, keyword (upper case) and arguments (continuations joined)."""

    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments and blank lines dropped, backslash continuations joined."""
    instructions, buffer, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buffer = ""
    return instructions


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at `&&`, `||`, `;` and `|`, with `if/then/else/fi` keywords dropped."""
    tokens = shlex.split(run_args.replace(";", " ; "), posix=True)
    commands, current = [], []
    for token in tokens:
        if token in {"&&", "||", ";", "|"}:
            commands.append(current)
            current = []
        elif not current and token in {"if", "then", "else", "fi", "do", "done"}:
            continue
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `pip install` (also `python -m pip install`), or None for any other command."""
    for index in range(len(command) - 1):
        if Path(command[index]).name in {"pip", "pip3"} and command[index + 1] == "install":
            return command[index + 2:]
        if command[index] == "-m" and command[index + 1] == "pip" and command[index + 2:index + 3] == ["install"]:
            return command[index + 3:]
    return None


def unpinned_pip_arguments(args: list[str]) -> list[str]:
    """What a `pip install` installs without an exact version: packages without `==`, requirement files with
    unpinned lines, and local projects installed with their dependencies (no `--no-deps`)."""
    problems, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg in _PIP_OPTIONS_WITH_VALUE:
            value = args[index + 1] if index + 1 < len(args) else ""
            if arg in {"-r", "--requirement"}:
                problems += [f"{value}: {line}" for line in unpinned_requirements(REPO_ROOT / value)]
            elif arg in {"-e", "--editable"} and "--no-deps" not in args:
                problems.append(f"-e {value} without --no-deps")
            index += 2
            continue
        if not arg.startswith("-"):
            local = arg in {".", "./"} or arg.startswith(("/", "./"))
            if local and "--no-deps" not in args:
                problems.append(f"{arg} without --no-deps")
            elif not local and "==" not in arg:
                problems.append(arg)
        index += 1
    return problems


def unpinned_requirements(path: Path) -> list[str]:
    """The lines of a requirements file that do not pin one exact version (`name==X` or `name[extra]==X`)."""
    if not path.exists():
        return [f"{path.name} does not exist"]
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not _PINNED_REQUIREMENT.match(line)]


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()] if DOCKERIGNORE.exists() else []
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (relative to the repo) out of the build context (no `!` exceptions)."""
    parts = Path(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (bare != pattern and fnmatch.fnmatch(Path(candidate).name, bare)):
                return True
    return False


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _runs(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if i.keyword == "RUN"]


def _installs(instruction: Instruction) -> bool:
    return any(pip_install_args(c) is not None or c[:2] == ["apt-get", "install"]
               for c in shell_commands(instruction.args))


# --------------------------------------------------------------------------------------------------- the lint


def test_base_image_is_a_pinned_cuda_runtime_tag(instructions):
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert bases, "the Dockerfile has no FROM"
    image, _, tag = bases[-1].partition(":")
    assert image == "nvidia/cuda", f"base {bases[-1]}: use an nvidia/cuda runtime image"
    assert "runtime" in tag.split("-"), f"base {bases[-1]}: use a *runtime* tag (not base or devel)"
    assert re.match(r"^\d+\.\d+\.\d+-", tag), f"base {bases[-1]}: pin the full CUDA version (e.g. 12.8.1-...)"
    assert "latest" not in tag and "@" not in image


def test_requirements_are_all_pinned():
    assert unpinned_requirements(REQUIREMENTS) == []


def test_every_pip_install_pins_its_packages(instructions):
    problems = []
    for run in _runs(instructions):
        for command in shell_commands(run.args):
            args = pip_install_args(command)
            if args is not None:
                problems += [f"line {run.line}: {p}" for p in unpinned_pip_arguments(args)]
    assert problems == []


def test_torch_is_installed_pinned_before_the_requirements(instructions):
    commands = [(run.line, pip_install_args(c)) for run in _runs(instructions) for c in shell_commands(run.args)]
    installs = [(line, args) for line, args in commands if args is not None]
    torch = [line for line, args in installs if any(a.startswith("torch==") for a in args)]
    requirements = [line for line, args in installs if "-r" in args]
    assert torch and requirements and torch[0] < requirements[0]


def test_apt_get_skips_recommends_and_removes_the_lists(instructions):
    apt_runs = [r for r in _runs(instructions) if any(c[:2] == ["apt-get", "install"] for c in shell_commands(r.args))]
    assert apt_runs, "no apt-get install: the image needs espeak-ng, ffmpeg, sox and git"
    for run in apt_runs:
        commands = shell_commands(run.args)
        assert ["apt-get", "update"] in commands, f"line {run.line}: apt-get update in the same RUN as the install"
        for command in commands:
            if command[:2] == ["apt-get", "install"]:
                assert "--no-install-recommends" in command, f"line {run.line}: add --no-install-recommends"
        assert "rm -rf /var/lib/apt/lists/*" in run.args, f"line {run.line}: remove /var/lib/apt/lists/* there"


def test_final_user_is_not_root_and_comes_after_the_installs(instructions):
    users = [(index, i) for index, i in enumerate(instructions) if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    last_index, last = users[-1]
    assert last.args.split(":")[0] not in {"root", "0"}, f"line {last.line}: USER {last.args} is root"
    installs = [index for index, i in enumerate(instructions) if i.keyword == "RUN" and _installs(i)]
    assert installs and max(installs) < last_index, "install everything before switching to the non-root user"


def test_runs_happen_in_a_workdir_the_user_owns(instructions):
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/work"
    assert any("chown" in i.args and "/work" in i.args for i in _runs(instructions))
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    for setting in ("HOME=", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "BENTOML_DO_NOT_TRACK=true"):
        assert setting in env, f"ENV {setting}... missing"


def test_entrypoint_is_the_narrator_console_script(instructions):
    entrypoints = [i.args for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["narrator"]  # exec form: signals reach the step
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "narrator" in scripts
    assert not [i for i in instructions if i.keyword == "HEALTHCHECK"]  # a batch image: nothing to probe


def test_every_copy_source_exists_in_the_build_context(instructions):
    patterns = dockerignore_patterns()
    for copy in (i for i in instructions if i.keyword in {"COPY", "ADD"}):
        parts = [p for p in shlex.split(copy.args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(copy.args)):
            continue  # from another stage, not the context
        for source in parts[:-1]:
            assert (REPO_ROOT / source).exists(), f"line {copy.line}: COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"line {copy.line}: COPY {source}: excluded by .dockerignore"


def test_dockerignore_excludes_the_venv_and_generated_data():
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "data", "runs", "demo", "mlruns", ".narrator-cache", ".pytest_cache",
                 "narrator/__pycache__"):
        assert ignored(path, patterns), f".dockerignore should exclude {path}"
    assert not ignored("cli/main.py", patterns)


def test_image_installs_every_tool_the_code_runs(instructions):
    """Each external program named in the code (shutil.which / subprocess argv) is known here and installed."""
    named = set()
    code = [*REPO_ROOT.glob("narrator/*.py"), *REPO_ROOT.glob("components/*.py"), *REPO_ROOT.glob("models/**/*.py"),
            *REPO_ROOT.glob("cli/*.py"), *REPO_ROOT.glob("pipelines/*.py"), *REPO_ROOT.glob("serving/*.py")]
    for path in code:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"shutil\.which\(\s*\"([\w.-]+)\"", text))
        named |= set(re.findall(r"subprocess\.\w+\(\s*\[\s*\"([\w.-]+)\"", text))
    assert named <= TOOL_PACKAGES.keys(), f"add {sorted(named - TOOL_PACKAGES.keys())} to TOOL_PACKAGES"
    apt = " ".join(c for r in _runs(instructions) for c in [r.args] if "apt-get install" in c)
    missing = {tool: package for tool, package in TOOL_PACKAGES.items() if f" {package} " not in f" {apt} "}
    assert not missing, f"the image's apt-get install lacks {missing}"


@pytest.mark.parametrize("tool", sorted(TOOL_PACKAGES))
def test_tool_exists_and_starts_here(tool):
    binary = shutil.which(tool)
    assert binary, f"{tool} is not on PATH (apt-get install {TOOL_PACKAGES[tool]})"
    flag = "-version" if tool in {"ffmpeg", "ffprobe"} else "--version"
    assert subprocess.run([binary, flag], capture_output=True, timeout=60).returncode == 0


def test_hadolint_passes():
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed here")
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------ commands exist and start


def narrator_script() -> Path:
    """The `narrator` console script of the environment running the tests (the venv's bin/narrator)."""
    beside = Path(sys.executable).with_name("narrator")
    found = beside if beside.exists() else (Path(shutil.which("narrator")) if shutil.which("narrator") else None)
    if found is None:
        pytest.fail(f"no `narrator` script beside {sys.executable} or on PATH; run `pip install --no-deps -e .`")
    return found


def check_commands_start(commands: list[list[str]], timeout_s: float = 120) -> list[str]:
    """Run each `narrator SUBCOMMAND ...` argv with `--help` appended and return the problems found.

    A command must start with `narrator` and its subcommands must exist: argparse prints the help of the
    (innermost) subcommand and exits 0 when they do, whatever the positional arguments are. The console script is
    run with this interpreter and the checkout first on PYTHONPATH, so the code under test answers (not an older
    install the script's shebang may point at).
    """
    script = narrator_script()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                        if p)}
    problems = []
    for argv in commands:
        if not argv or argv[0] != "narrator":
            problems.append(f"{shlex.join(argv)}: not a `narrator SUBCOMMAND ...` command")
            continue
        if len(argv) < 2 or argv[1].startswith("-"):
            problems.append(f"{shlex.join(argv)}: names no subcommand")
            continue
        result = subprocess.run([sys.executable, str(script), *argv[1:], "--help"], capture_output=True, text=True,
                                timeout=timeout_s, cwd=REPO_ROOT, env=env)
        if result.returncode != 0 or "usage:" not in result.stdout:
            problems.append(f"{shlex.join(argv)} --help: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    return problems


def dvc_commands(path: Path = REPO_ROOT / "dvc.yaml") -> list[list[str]]:
    """Every stage's `cmd:` of dvc.yaml as argv lists (a stage may list several commands)."""
    stages = yaml.safe_load(path.read_text())["stages"]
    commands = []
    for stage in stages.values():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        commands += [shlex.split(cmd) for cmd in cmds]
    return commands


def test_every_dvc_stage_runs_an_existing_narrator_subcommand():
    commands = dvc_commands()
    assert commands
    assert check_commands_start(commands) == []


def test_a_missing_subcommand_is_reported():
    problems = check_commands_start([["narrator", "no-such-step", "x"], ["python", "-m", "cli"]])
    assert len(problems) == 2


def test_console_script_points_at_an_importable_callable():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        function = getattr(importlib.import_module(module), attribute, None)
        assert callable(function), f"[project.scripts] {name} = {target!r}: not an importable callable"
