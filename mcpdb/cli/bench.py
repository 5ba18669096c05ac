"""``mcpdb bench``: benchmarks that report mcpdb beside an anchor measured in the same run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mcpdb.cli.checkout import source_checkout
from mcpdb.cli.common import console
from mcpdb.cli.errors import CliError

app = typer.Typer(help="Benchmarks (results in benchmarks/RESULTS.md).", no_args_is_help=True)

# Every benchmark's --out.
OutFolder = Annotated[
    Path | None, typer.Option(help="Folder for results (default: benchmarks/runs/<time>).", show_default=False)
]


@app.command("raft")
def raft(seconds: float = typer.Option(8.0, help="Seconds per configuration.")) -> None:
    """pysyncobj's truncation of applied entries: stock vs mcpdb's guarded transport."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import raft_stress

    print(f"command: mcpdb bench raft --seconds {seconds:g}")
    print(raft_stress.report(seconds))


@app.command("kv")
def kv(
    duration: Annotated[float, typer.Option(help="Seconds of wrk load per scenario and system.")] = 20.0,
    connections: Annotated[
        int, typer.Option(help="wrk connections (one wrk thread each), spread over the 3 nodes.")
    ] = 32,
    trials: Annotated[int, typer.Option(help="Leader kills per system for the failover figure.")] = 3,
    durability: Annotated[str, typer.Option(help="mcpdb nodes' --durability: durable or fast.")] = "durable",
    out: OutFolder = None,
) -> None:
    """mcpdb vs etcd 3.4 on loopback, loaded by wrk: writes, linearizable reads, failover."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import kv as kv_bench

    if duration <= 0 or connections < 3 or trials < 1:
        raise CliError("--duration must be positive, --connections at least 3, --trials at least 1")
    if durability not in ("durable", "fast"):
        raise CliError(f"--durability must be 'durable' or 'fast', got {durability!r}")
    settings = kv_bench.KvSettings(duration, connections, trials, durability, out)
    folder = settings.folder()  # named by the start time
    try:
        kv_bench.require_tools()
    except RuntimeError as error:
        raise CliError(str(error)) from None
    results = _run_with_progress(settings, kv_bench.run)
    kv_bench.save(results, folder)
    console.print(_table(results))
    console.print(kv_bench.details(results), highlight=False)
    console.print(f"command: {results['command']}", soft_wrap=True, highlight=False)
    console.print(f"saved {folder}/results.json, results.md, kv.png")


@app.command("infer")
def infer(
    requests: Annotated[int, typer.Option(help="Requests per side of the throughput comparison.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per throughput request.")] = 64,
    sessions: Annotated[int, typer.Option(help="Sessions in the affinity comparison.")] = 8,
    turns: Annotated[int, typer.Option(help="Turns per session in the affinity comparison.")] = 6,
    weighted_requests: Annotated[int, typer.Option(help="Requests per policy in the weighted run.")] = 48,
    rounds: Annotated[int, typer.Option(help="Alternating raw and mcpdb rounds of the throughput comparison.")] = 3,
    out: OutFolder = None,
) -> None:
    """Chat through mcpdb vs raw llama-cpp-python; affinity vs round robin; weighted capacity 1:2."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import infer as infer_bench

    if min(requests, max_tokens, sessions, turns, weighted_requests, rounds) < 1:
        raise CliError("every count must be at least 1")
    settings = infer_bench.InferSettings(requests, max_tokens, sessions, turns, weighted_requests, rounds, out)
    folder = settings.folder()
    results = _run_with_progress(settings, infer_bench.run)
    infer_bench.save(results, folder)
    _report(
        "mcpdb inference: anchors measured in the same run",
        ("metric", "mcpdb", "anchor", "ratio", "target", "met"),
        infer_bench.rows(results),
        results,
        folder / "infer.png",
    )


@app.command("autoscale")
def autoscale(
    max_workers: Annotated[int, typer.Option(help="Most workers the autoscaler may run.")] = 2,
    cooldown: Annotated[float, typer.Option(help="Seconds between scaling changes.")] = 10.0,
    phases: Annotated[
        str, typer.Option(help="Load schedule: CLIENTSxSECONDS,... (concurrent chat clients per phase).")
    ] = "1x30,2x30,4x60,2x30,0x40",
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per request.")] = 24,
    out: OutFolder = None,
) -> None:
    """A load ramp against autoscaled workers, beside the same ramp on one fixed worker."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import autoscale as autoscale_bench

    try:
        schedule = autoscale_bench.AutoscaleSettings.parse_phases(phases)
    except ValueError as error:
        raise CliError(str(error)) from None
    if max_workers < 2 or cooldown < 0 or max_tokens < 1:
        raise CliError("--max-workers must be at least 2, --cooldown non-negative, --max-tokens at least 1")
    settings = autoscale_bench.AutoscaleSettings(max_workers, cooldown, schedule, max_tokens, out)
    folder = settings.folder()
    results = _run_with_progress(settings, autoscale_bench.run)
    autoscale_bench.save(results, folder)
    _report(
        "mcpdb autoscaling: a load ramp, autoscaled beside one fixed worker in the same run",
        ("metric", "autoscaled", "anchor (fixed)", "ratio"),
        autoscale_bench.rows(results),
        results,
        folder / "autoscale.png",
    )


@app.command("index")
def index(
    contexts: Annotated[int, typer.Option(help="Memories per corpus.")] = 100_000,
    out: OutFolder = None,
) -> None:
    """What the search index costs a write: contexts/s into the store beside SQLite FTS5, in process."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import index_cost

    if contexts < index_cost.BATCH:
        raise CliError(f"--contexts must be at least {index_cost.BATCH}")
    settings = index_cost.IndexSettings(contexts, out)
    folder = settings.folder()
    results = _run_with_progress(settings, index_cost.run)
    index_cost.save(results, folder)
    _report(
        "the search index's cost on writes, beside SQLite FTS5 in the same run",
        index_cost.COLUMNS,
        index_cost.rows(results),
        results,
        folder / "index.png",
    )


@app.command("retrieval")
def retrieval(
    users: Annotated[int, typer.Option(help="Users in the quality corpus (80 memories, 80 questions each).")] = 100,
    sizes: Annotated[str, typer.Option(help="Memories in the namespace for the latency runs, comma-separated.")] = (
        "10000,100000"
    ),
    queries: Annotated[int, typer.Option(help="Timed searches per size and mode.")] = 200,
    chat_users: Annotated[int, typer.Option(help="Users whose chats' prompts are assembled (80 questions each).")] = 10,
    chat_filler: Annotated[
        int, typer.Option(help="Small-talk memories beside each chat user's 80, in the second comparison (<= 400).")
    ] = 400,
    out: OutFolder = None,
    embedding_model: Annotated[
        Path | None,
        typer.Option(help="GGUF embedding model (default: the node's, all-MiniLM-L6-v2).", show_default=False),
    ] = None,
    freshness_seconds: Annotated[
        float,
        typer.Option(help="Seconds of each load phase timing writes until vector-searchable on 3 nodes (0: skip)."),
    ] = 30.0,
    live_chat_users: Annotated[
        int, typer.Option(help="Users whose conversations run on a real node with the model's replies (0: skip).")
    ] = 3,
    live_reply_tokens: Annotated[
        int, typer.Option(help="Each reply's token limit in the conversations on a real node.")
    ] = 128,
    live_long_exchanges: Annotated[
        int, typer.Option(help="Exchanges of one long conversation on that node, past its window (0: skip).")
    ] = 40,
) -> None:
    """How well search chooses memories (recall@1/@5, MRR beside FTS5 and brute force) and how fast."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import freshness, live_chats, memory_corpus
        from benchmarks import retrieval as retrieval_bench

    try:
        counts = tuple(int(size) for size in sizes.split(",") if size.strip())
    except ValueError:
        raise CliError(f"--sizes must be whole numbers separated by commas, not {sizes!r}") from None
    least = memory_corpus.MEMORIES_PER_USER
    if users < 1 or chat_users < 1 or queries < 3 or any(size < least for size in counts):
        raise CliError(
            f"--users and --chat-users must be at least 1, --queries at least 3, each of --sizes at least {least}"
        )
    if not 1 <= chat_filler <= memory_corpus.FILLERS:
        raise CliError(f"--chat-filler must be between 1 and {memory_corpus.FILLERS}")
    if freshness_seconds < 0:
        raise CliError("--freshness-seconds must be 0 (skip) or more")
    if live_chat_users < 0 or live_reply_tokens < 1 or not 0 <= live_long_exchanges <= memory_corpus.FILLERS:
        raise CliError(
            f"--live-chat-users must be 0 (skip) or more, --live-reply-tokens at least 1, "
            f"--live-long-exchanges between 0 (skip) and {memory_corpus.FILLERS}"
        )
    if embedding_model is not None and not embedding_model.is_file():
        raise CliError(f"--embedding-model {embedding_model}: no such file")
    settings = retrieval_bench.RetrievalSettings(
        users,
        counts,
        queries,
        chat_users,
        chat_filler,
        out,
        str(embedding_model) if embedding_model else None,
        freshness_seconds,
        live_chat_users,
        live_reply_tokens,
        live_long_exchanges,
    )
    folder = settings.folder()
    results = _run_with_progress(settings, retrieval_bench.run)
    retrieval_bench.save(results, folder)
    console.print(_simple_table("quality", retrieval_bench.QUALITY_COLUMNS, retrieval_bench.quality_rows(results)))
    console.print(_simple_table("chats", retrieval_bench.CHAT_COLUMNS, retrieval_bench.chat_rows(results)))
    console.print(
        _simple_table(
            "chats: facts told in turns that left the window",
            retrieval_bench.TOLD_COLUMNS,
            retrieval_bench.told_rows(results),
        )
    )
    if "live_chats" in results:
        console.print(
            _simple_table(
                "chats on a real node: the share of each prompt the KV cache held",
                live_chats.COLUMNS,
                live_chats.rows(results["live_chats"]),
            )
        )
        console.print(
            _simple_table(
                "a long conversation on that node: chats past the window",
                live_chats.LONG_COLUMNS,
                live_chats.long_rows(results["live_chats"]),
            )
        )
    if "freshness" in results:
        table = _simple_table(
            "time until a write is vector-searchable", freshness.COLUMNS, freshness.rows(results["freshness"])
        )
        console.print(table)
    _report(
        "search latency, in process",
        retrieval_bench.LATENCY_COLUMNS,
        retrieval_bench.latency_rows(results),
        results,
        folder / "retrieval.png",
    )


@app.command("scale")
def scale(
    contexts: Annotated[int, typer.Option(help="Records to load into each system (mcpdb contexts, etcd keys).")] = (
        1_000_000
    ),
    batch: Annotated[int, typer.Option(help="Records per batch (mcpdb: one batch request; etcd: one txn).")] = 500,
    loaders: Annotated[int, typer.Option(help="Client processes loading at once.")] = 3,
    compaction_entries: Annotated[
        int, typer.Option(help="Log entries between compactions, both systems (0: contexts/batch/2, at least 100).")
    ] = 0,
    phase_seconds: Annotated[
        float, typer.Option(help="Seconds the probe runs alone at the start and after each phase's action.")
    ] = 10.0,
    gather_runs: Annotated[int, typer.Option(help="Most timed gather() calls per namespace.")] = 30,
    values: Annotated[
        str,
        typer.Option(help="words: text search indexes; opaque: one 1 KiB token nothing indexes (etcd's bytes)."),
    ] = "words",
    out: OutFolder = None,
) -> None:
    """N 1 KiB contexts in mcpdb vs N 1 KiB keys in etcd 3.4: load, compaction, wiped follower, restart, gather."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import scale as scale_bench

    if contexts < 100 or not 1 <= batch <= 1000 or loaders < 1 or compaction_entries < 0:
        raise CliError(
            "--contexts must be at least 100, --batch 1-1000, --loaders at least 1, --compaction-entries >= 0"
        )
    if phase_seconds < 0 or gather_runs < 3:
        raise CliError("--phase-seconds must be non-negative, --gather-runs at least 3")
    if values not in ("words", "opaque"):
        raise CliError(f"--values must be words or opaque, not {values!r}")
    settings = scale_bench.ScaleSettings(
        contexts, batch, loaders, compaction_entries, phase_seconds, gather_runs, out, values
    )
    folder = settings.folder()
    try:
        scale_bench.require_tools()
    except RuntimeError as error:
        raise CliError(str(error)) from None
    results = _run_with_progress(settings, scale_bench.run)
    scale_bench.save(results, folder)
    console.print(_simple_table("probe per phase", scale_bench.PHASE_COLUMNS, scale_bench.phase_rows(results)))
    console.print(_table(results))
    console.print(scale_bench.details(results), highlight=False)
    console.print(f"command: {results['command']}", soft_wrap=True, highlight=False)
    console.print(f"saved {folder}/results.json, results.md, scale.png, mcpdb-<node>.log")


@app.command("flood")
def flood(
    seconds: Annotated[
        float, typer.Option(help="Seconds of each phase: the tenants alone, then beside the flood.")
    ] = 30.0,
    attackers: Annotated[int, typer.Option(help="Clients sending one namespace's batches without pause.")] = 28,
    processes: Annotated[int, typer.Option(help="Processes the attackers are spread over.")] = 2,
    out: OutFolder = None,
) -> None:
    """One tenant floods a 3-node cluster with batches: the other tenants' batches and small writes, beside
    the same clients without the flood."""
    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import flood as flood_bench
        from benchmarks.compare import cell, verdict

    if seconds <= 0 or attackers < 1 or processes < 1:
        raise CliError("--seconds must be positive, --attackers and --processes at least 1")
    settings = flood_bench.FloodSettings(seconds, attackers, processes, out)
    folder = settings.folder()
    results = _run_with_progress(settings, flood_bench.run)
    flood_bench.save(results, folder)
    columns = ("metric", "beside the flood", "alone", "flood/alone", "target", "met")
    rows = [
        [r["metric"], cell(r["mcpdb"]), cell(r["etcd"]), cell(r["ratio"]), r["target"], verdict(r["pass"])]
        for r in results["rows"]
    ]
    _report("a tenant's flood, 3 nodes on loopback", columns, rows, results, folder / "flood.png")


def _simple_table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _report(title: str, columns: tuple[str, ...], rows: list[list[str]], results: dict[str, Any], figure: Path) -> None:
    """A finished run: its table, the command that produced it, and where the files went."""
    console.print(_simple_table(title, columns, rows))
    console.print(f"command: {results['command']}", soft_wrap=True, highlight=False)
    console.print(f"saved {figure.parent}/results.json, results.md, {figure.name}")


def _run_with_progress(
    settings: Any, run: Callable[[Any, Callable[[str, float], None]], dict[str, Any]]
) -> dict[str, Any]:
    """Print the command, run the benchmark under a progress bar; its failures become one line."""
    console.print(f"command: {settings.command()}", soft_wrap=True, highlight=False)
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            steps = _Steps(progress, settings.expected_s())
            results = run(settings, steps)
            steps("done", 0)
    except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
        raise CliError(str(error) or repr(error)) from None
    return results


class _Steps:
    """The run's step callback: names the step and fills the bar by the steps' expected lengths."""

    def __init__(self, progress: Progress, total_s: float) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=total_s)
        self.previous_s = 0.0

    def __call__(self, label: str, seconds: float) -> None:
        self.progress.update(self.task, advance=self.previous_s, description=label)
        self.previous_s = seconds


def _table(results: dict[str, Any]) -> Table:
    from benchmarks.compare import cell, verdict  # loaded by kv() and scale() from the checkout

    table = Table(title="mcpdb vs etcd 3.4, 3 nodes each on loopback")
    for column in ("metric", "mcpdb", "etcd", "mcpdb/etcd", "target", "met"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    colors = {True: "green", False: "bold red", None: ""}
    for row in results["rows"]:
        met = verdict(row["pass"])
        table.add_row(
            row["metric"],
            cell(row["mcpdb"]),
            cell(row["etcd"]),
            cell(row["ratio"]),
            row["target"],
            f"[{colors[row['pass']]}]{met}[/]" if met else "",
        )
    return table
