"""`motif` command line: the engine without the HTTP service (embed, analyze, generate, models, bench, serve)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from motif.config import Settings

if TYPE_CHECKING:
    from motif.service.store import Database
from motif.engine.types import GenerationMode, GenerationParams, OutputFormat
from motif.errors import MotifError

app = typer.Typer(help="Motif: upload a piece of music, get more music like it.", no_args_is_help=True)
models_app = typer.Typer(help="Pre-fetch and inspect the configured models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
db_app = typer.Typer(help="The metadata database's schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="API keys (REQUIRE_API_KEY=true): each key sees only what it made.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as error:  # e.g. BROKER_URL with SQLite: say which setting, not a traceback
        console.print(f"[bold red]error:[/] invalid settings: {error}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    return settings


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(2)


@app.command()
def embed(
    file: Path,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole vector as JSON")] = False,
) -> None:
    """Embed FILE with CLAP: a deterministic 512-d unit vector."""
    from motif.audio import DecodeLimits, load_audio
    from motif.engine import Engine

    settings = _settings()
    try:
        decoded = load_audio(file, limits=DecodeLimits.from_settings(settings))
        engine = Engine(settings)
        vector = engine.embed_audio(decoded.samples, decoded.sample_rate)
    except MotifError as error:
        _fail(error)
    if as_json:
        doc = {"embedding": [round(float(v), 7) for v in vector], "model": settings.embedding_model,
               "dim": int(vector.size), "duration": decoded.duration}  # fmt: skip
        typer.echo(json.dumps(doc))
        return
    norm = np.linalg.norm(vector)
    typer.echo(f"{file}: {vector.size}-d CLAP vector from {settings.embedding_model}, norm {norm:.4f}")
    typer.echo("first values: " + " ".join(f"{v:+.4f}" for v in vector[:8]))


@app.command()
def analyze(file: Path) -> None:
    """Tempo, key, loudness and spectral shape of FILE."""
    from motif.analysis import analyze as run_analysis
    from motif.audio import DecodeLimits, load_audio

    settings = _settings()
    try:
        decoded = load_audio(file, limits=DecodeLimits.from_settings(settings))
    except MotifError as error:
        _fail(error)
    table = Table(title=str(file), show_header=False)
    for name, value in run_analysis(decoded.samples, decoded.sample_rate).to_dict().items():
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def generate(
    file: Path,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the audio")],
    mode: Annotated[GenerationMode | None, typer.Option(help="default: melody for melody models")] = None,
    duration: Annotated[float, typer.Option(min=5, max=120, help="seconds of new audio")] = 10.0,
    temperature: Annotated[float, typer.Option(min=0.1, max=2.0)] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, max=500)] = 250,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    cfg_coef: Annotated[float, typer.Option("--cfg", min=1.0, max=10.0)] = 3.0,
    prompt: Annotated[str | None, typer.Option(help="optional text to steer the music")] = None,
    seed: Annotated[int | None, typer.Option(help="same seed and parameters: same audio")] = None,
    fmt: Annotated[OutputFormat | None, typer.Option("--format", help="default: from the file name")] = None,
    start: Annotated[float | None, typer.Option(min=0, help="continuation: section start in FILE, s")] = None,
    end: Annotated[float | None, typer.Option(min=0, help="continuation: section end in FILE, s")] = None,
    include_prompt: Annotated[bool, typer.Option(help="continuation: the section, then its continuation")] = False,
    loop: Annotated[bool, typer.Option(help="a seamless loop of whole bars near --duration")] = False,
    bpm: Annotated[float | None, typer.Option(min=30, max=300, help="tempo hint (and the loop's tempo)")] = None,
    key: Annotated[str | None, typer.Option(help='key hint, e.g. "A minor"')] = None,
) -> None:
    """Generate new music like FILE and write it to OUTPUT (WAV 32 kHz unless --format or suffix says)."""
    from motif.audio import DecodeLimits, load_audio, write_audio
    from motif.engine import Engine

    settings = _settings()
    fmt = fmt or _format_from_suffix(output)
    params = GenerationParams(duration=duration, temperature=temperature, top_k=top_k, top_p=top_p,
                              cfg_coef=cfg_coef, mode=mode, prompt=prompt, seed=seed, format=fmt,
                              continuation_start=start, continuation_end=end, include_prompt=include_prompt,
                              loop=loop, bpm=bpm, key=key)  # fmt: skip
    try:
        decoded = load_audio(file, sample_rate=32_000, limits=DecodeLimits.from_settings(settings))
        with _progress() as progress:
            bar = progress.add_task("generating", total=100)
            result = Engine(settings).generate(decoded.samples, decoded.sample_rate, params,
                                               progress=lambda p: progress.update(bar, completed=p))  # fmt: skip
        write_audio(output, result.audio, result.sample_rate, fmt.value)
    except MotifError as error:
        _fail(error)
    similarity = "n/a" if result.similarity is None else f"{result.similarity:.3f}"
    seconds = result.audio.shape[0] / result.sample_rate
    typer.echo(f"wrote {output} ({seconds:g} s, mode {result.mode}, seed {result.seed}, similarity {similarity})")
    if result.description:
        typer.echo(f"description: {result.description}")


def _format_from_suffix(path: Path) -> OutputFormat:
    suffix = path.suffix.lower().lstrip(".")
    return OutputFormat(suffix) if suffix in {f.value for f in OutputFormat} else OutputFormat.WAV


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=console)  # fmt: skip


@models_app.command("list")
def models_list() -> None:
    """Show each configured model and whether it is loaded, cached, or missing."""
    from motif.engine import Engine

    table = Table("role", "model", "state", "detail")
    for state in Engine(_settings()).model_states():
        table.add_row(state.role, state.model_id, state.state, state.detail)
    Console().print(table)


@models_app.command("pull")
def models_pull() -> None:
    """Download (or build, for `tiny`) the configured models into the local cache, then load each once."""
    from motif.engine import Engine
    from motif.engine.models import TINY_EMBEDDING_IDS, TINY_GENERATION_IDS

    settings = _settings()
    for model_id in (settings.generation_model, settings.embedding_model):
        if model_id in TINY_GENERATION_IDS | TINY_EMBEDDING_IDS or Path(model_id).is_dir():
            continue
        from huggingface_hub import snapshot_download

        console.print(f"downloading {model_id} ...")
        try:
            path = snapshot_download(model_id)
        except Exception as error:  # the hub's errors are many; the message is what matters
            _fail(MotifError(f"could not download {model_id}: {error}"))
        console.print(f"  cached at {path}")
    engine = Engine(settings.model_copy(update={"allow_model_download": False}))
    try:
        engine.load()
    except MotifError as error:
        _fail(error)
    console.print("[green]all configured models load offline[/]")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="small shapes, for CI smoke")] = False,
    shape: Annotated[str, typer.Option(help="MusicGen architecture: small, medium, large, melody, stereo-small, ...")]
    = "small",
) -> None:  # fmt: skip
    """Benchmark the real architectures (random weights): baseline vs Motif, batching, CLAP, memory."""
    from motif import bench as bench_module

    sys.exit(bench_module.main([*(["--quick"] if quick else []), "--shape", shape]))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: HOST, else 127.0.0.1 (0.0.0.0 with API keys on)")] = None,
    port: Annotated[int | None, typer.Option(help="default: PORT")] = None,
) -> None:
    """Run the HTTP API (what start.sh runs)."""
    import uvicorn

    from motif.service.logs import configure_logging

    settings = Settings()
    configure_logging(settings)  # LOG_FORMAT for every logger, uvicorn's too, with secrets redacted
    bind = host or settings.bind_host
    if not settings.require_api_key and not _is_loopback(bind):
        console.print(f"[bold red]WARNING: serving on {bind} WITHOUT API KEYS: anyone who can reach this address "
                      "can read, generate and delete every track. Set REQUIRE_API_KEY=true (and create keys with "
                      "`motif keys create NAME`) or HOST=127.0.0.1.[/]")  # fmt: skip
    # uvicorn's access log would print raw paths with query strings (where secrets can hide) in its own
    # format: the app's request middleware logs each request instead (route template, status, duration).
    uvicorn.run("motif.service.api.app:create_app", factory=True, host=bind, port=port or settings.port,
                log_level=settings.log_level.lower(), log_config=None, access_log=False)  # fmt: skip


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: generation, embedding")] = "generation,embedding",
    concurrency: Annotated[int | None, typer.Option(min=1, help="task threads; default MAX_BATCH_SIZE")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name, default celery@HOST")] = None,
) -> None:
    """Run a Celery worker (BROKER_URL): loads the models once and runs jobs; generations share decode steps."""
    from motif.service.jobs import JobKind
    from motif.service.migrations import SchemaError
    from motif.service.remote_worker import run_worker

    settings = _settings()
    if not settings.broker_url:
        _fail(MotifError("`motif worker` needs BROKER_URL (redis://... or sqs://); without it `motif serve` "
                         "runs the jobs itself"))  # fmt: skip
    try:
        kinds = [JobKind(name.strip()) for name in queues.split(",") if name.strip()]
    except ValueError:
        _fail(MotifError(f"--queues takes generation and/or embedding, got {queues!r}"))
    try:
        run_worker(settings, kinds, concurrency or settings.max_batch_size, hostname)
    except SchemaError as error:
        _fail(error)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _database() -> Database:
    from motif.service.store import Database

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.resolved_database_url)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="default: the newest")] = "head") -> None:
    """Bring the schema to REVISION (run once per release before starting servers and workers)."""
    from motif.service.migrations import SchemaError, current, upgrade

    db = _database()
    try:
        before = upgrade(db.engine, revision)
    except SchemaError as error:
        _fail(error)
    typer.echo(f"schema {before or 'none'} -> {current(db.engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. 0001, or base (drops every table)")]) -> None:
    """Step the schema back to REVISION (before running an older Motif on this database)."""
    from motif.service.migrations import current, downgrade

    db = _database()
    downgrade(db.engine, revision)
    typer.echo(f"schema now {current(db.engine) or 'none'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest this Motif knows."""
    from motif.service.migrations import current, head

    typer.echo(f"database: {current(_database().engine) or 'none'}; this Motif: {head()}")


@keys_app.command("create")
def keys_create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="sees every tenant's data, /metrics, health details")] = False,
    rate_per_minute: Annotated[int | None, typer.Option(min=0, help="default: QUOTA_REQUESTS_PER_MINUTE")] = None,
    max_active: Annotated[int | None, typer.Option(min=0, help="default: QUOTA_ACTIVE_GENERATIONS")] = None,
    daily_seconds: Annotated[float | None, typer.Option(min=0, help="default: QUOTA_DAILY_AUDIO_SECONDS")] = None,
    stored_bytes: Annotated[int | None, typer.Option(min=0, help="default: QUOTA_STORED_BYTES")] = None,
) -> None:
    """Create a key; its secret is printed once, alone on the last line (store it now: only a hash is kept)."""
    from motif.service.keys import KeyCommandError, create_key

    db = _migrated_database()
    try:
        row, secret = create_key(db, name, admin, rate_per_minute=rate_per_minute, max_active_generations=max_active,
                                 daily_audio_seconds=daily_seconds, max_stored_bytes=stored_bytes)  # fmt: skip
    except KeyCommandError as error:
        _fail(error)
    console.print(f"created {'admin ' if admin else ''}key {row.name!r}; its secret (shown once) is on stdout")
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: name, admin, created, revoked (secrets are never shown again)."""
    from motif.service.keys import list_keys

    table = Table("name", "admin", "created", "revoked")
    for row in list_keys(_migrated_database()):
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else ""
        table.add_row(row.name, "yes" if row.is_admin else "", row.created_at.isoformat(timespec="seconds"), revoked)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(name: str) -> None:
    """Revoke a key: every process sharing the database refuses it from its next request."""
    from motif.service.keys import KeyCommandError, revoke_key

    try:
        revoke_key(_migrated_database(), name)
    except KeyCommandError as error:
        _fail(error)
    typer.echo(f"revoked {name}")


def _migrated_database() -> Database:
    """The database, upgraded first when AUTO_MIGRATE allows (as a server start would), else checked."""
    from motif.service.migrations import SchemaError

    db = _database()
    try:
        db.migrate() if _settings().auto_migrate else db.check_schema()
    except SchemaError as error:
        _fail(error)
    return db


if __name__ == "__main__":
    app()
