"""The ``rlay`` command line: broker, worker, up, status, rollout, conformance, keys, bench."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from rlay import protocol as P

DEFAULT_CPP_WORKER = "build/cpp/rlay_example_command"  # where the C++ SDK's CMake build puts it (README)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class OneLineError(click.ClickException):
    """An error said in one line (its first), with a hint where one helps; --debug shows the traceback."""

    def __init__(self, exc: BaseException, hint: str | None = None):
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        name = getattr(exc, "remote_type", None) or type(exc).__name__
        text = lines[0] if isinstance(exc, click.ClickException) else f"{name}: {lines[0]}"
        if hint is None and len(lines) > 1:
            hint = "`rlay --debug ...` shows the whole message, and the traceback"
        super().__init__(text + (f"\n  hint: {hint}" if hint else ""))


def hint_for(exc: BaseException) -> str | None:
    """The one hint an error's type suggests, if any."""
    import gymnasium.error

    if isinstance(exc, gymnasium.error.NameNotFound | gymnasium.error.VersionNotFound):
        return "`python -c 'import gymnasium; gymnasium.pprint_registry()'` lists the env ids gymnasium knows"
    if isinstance(exc, TimeoutError):
        return "`rlay status --broker ADDR` shows what the broker has, and what it waits for"
    return None


class Commands(click.Group):
    """rlay's commands: any error they raise is said in one line (``rlay --debug`` shows it whole)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except click.ClickException as exc:
            if DEBUG[0] or "\n" not in exc.format_message():
                raise
            raise OneLineError(exc) from None
        except Exception as exc:
            if DEBUG[0]:
                raise
            raise OneLineError(exc, hint_for(exc)) from None


DEBUG = [False]  # rlay --debug: errors with their tracebacks


@click.group(cls=Commands, context_settings=CONTEXT)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="[default: INFO for broker, worker and up; WARNING for rollout, status and bench]",
)
@click.option("--debug", is_flag=True, help="Show errors whole, with their tracebacks.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None, debug: bool) -> None:
    """rlay: a ZeroMQ broker between one RL trainer and many environment workers.

    \b
      trainer --(tcp 5555)--> broker --(tcp 5556)--> workers (envs)
    """
    DEBUG[0] = debug
    quiet = ctx.invoked_subcommand in ("rollout", "status", "bench")
    level = (log_level or ("WARNING" if quiet else "INFO")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- config -------------------------------------------------------------------------


def load_config(path: str) -> dict[str, Any]:
    """Read and check a deployment file (rlay/deployment.py); a bad one is a usage error naming it."""
    from rlay.deployment import ConfigError, read_deployment

    try:
        return read_deployment(path)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


class ThreadsParam(click.ParamType):
    """An int >= 1, or "auto" (None: the worker decides by timing its envs)."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value in ("auto", None):
            return None
        try:
            threads = int(value)
        except (TypeError, ValueError):
            threads = 0
        if threads < 1:
            self.fail(f"{value!r} is neither an integer >= 1 nor auto", param, ctx)
        return threads


def worker_group(
    env: str,
    num_workers: int,
    envs_per_worker: int,
    env_kwargs: dict | None,
    name: str | None,
    threads: int | None = None,
):
    from rlay.cluster import WorkerGroup
    from workers.loader import env_factory

    fn = env_factory(env, env_kwargs)
    return WorkerGroup(name or env, [fn] * (num_workers * envs_per_worker), envs_per_worker, threads)


def supervision(restart: bool, max_restarts: int):
    from rlay.cluster import Supervision

    return Supervision(max_restarts=max_restarts) if restart else None


restart_options = [
    click.option(
        "--restart/--no-restart",
        default=True,
        show_default=True,
        help="Restart worker processes that die (after 0.5 s, doubling up to 30 s).",
    ),
    click.option(
        "--max-restarts",
        default=5,
        show_default=True,
        type=click.IntRange(min=0),
        help="Restarts of one worker per minute before giving up on it.",
    ),
]


def with_options(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


class StopSignals:
    """Ctrl-C and SIGTERM, noted (``now``) rather than acted on. Installed before a deployment starts, so that
    one that comes while it starts stops it once started instead of leaving parts of it running."""

    def __init__(self) -> None:
        self.now = False
        self._event = threading.Event()
        self.install()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._note)
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, *_: Any) -> None:
        self.now = True
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a stop signal (from another thread); True if one came."""
        return self._event.wait(seconds)


def run_cluster(cluster, stop: StopSignals | None = None) -> None:
    """Wait on a cluster until Ctrl-C / SIGTERM or until its children are gone; then stop it all."""
    stop = stop or StopSignals()
    try:
        status = cluster.wait(lambda: stop.now)
    finally:
        cluster.stop()
    sys.exit(status)


def load_curve(keydir: str | None, role: str):
    """The CURVE keys of ``role`` in ``keydir`` (made by `rlay keys generate`), or None."""
    if not keydir:
        return None
    from rlay.security import Curve

    try:
        return Curve.from_dir(keydir, role)
    except (FileNotFoundError, ValueError) as exc:  # (ValueError: KeyFileError, a key file unfit for use)
        raise click.BadParameter(str(exc), param_hint="--curve") from None


def _heartbeat_interval_ignored(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    if value is not None:
        click.echo(
            f"Note: {param.opts[0]} is ignored: workers and trainers ping as often as the broker says "
            "(it announces its interval when they register or lease; set it with rlay broker "
            "--heartbeat-interval).",
            err=True,
        )


# Before protocol 5.3/5.5 announced the broker's interval, workers and trainers were told it by hand.
deprecated_heartbeat_option = click.option(
    "--heartbeat-interval", type=float, hidden=True, expose_value=False, callback=_heartbeat_interval_ignored
)

curve_option = click.option(
    "--curve",
    "curve_dir",
    type=click.Path(file_okay=False),
    help="Encrypt and authenticate with the CURVE keys in this directory (made by `rlay keys generate`).",
)


# -- commands -------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.option("--frontend", help=f"Address for trainers. [default: {P.DEFAULT_FRONTEND}]")
@click.option("--backend", help=f"Address for workers. [default: {P.DEFAULT_BACKEND}]")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file whose [broker] section sets the addresses, heartbeats, curve and max_message_size "
    "(the only way to set max_message_size here).",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(P.MIN_HEARTBEAT_INTERVAL, P.MAX_HEARTBEAT_INTERVAL),
    help="Seconds between the pings the broker expects from each peer; it announces them to every "
    f"worker and trainer, which ping that often. [default: {P.HEARTBEAT_INTERVAL}]",
)
@click.option(
    "--heartbeat-liveness",
    type=click.IntRange(1, P.MAX_HEARTBEAT_LIVENESS),
    help=f"Heartbeats a peer may miss before it counts as lost. [default: {P.HEARTBEAT_LIVENESS}]",
)
@click.option(
    "--metrics",
    "metrics_address",
    metavar="HOST:PORT",
    help="Serve the broker's metrics to Prometheus at http://HOST:PORT/metrics (also [broker] metrics).",
)
@click.option(
    "--no-metrics", is_flag=True, help="Measure nothing (to measure what measuring costs: rlay bench --scale)."
)
@curve_option
def broker(
    frontend: str | None,
    backend: str | None,
    config_path: str | None,
    heartbeat_interval: float | None,
    heartbeat_liveness: int | None,
    metrics_address: str | None,
    no_metrics: bool,
    curve_dir: str | None,
) -> None:
    """Run a broker in the foreground until Ctrl-C or SIGTERM."""
    from broker.broker import BindError, serve

    section = load_config(config_path).get("broker", {}) if config_path else {}
    try:
        serve(
            frontend or section.get("frontend", P.DEFAULT_FRONTEND),
            backend or section.get("backend", P.DEFAULT_BACKEND),
            **broker_settings(section, heartbeat_interval, heartbeat_liveness, curve_dir, metrics_address),
            metrics=not no_metrics,
        )
    except BindError as exc:
        raise click.ClickException(str(exc)) from None


def broker_settings(
    section: dict,
    heartbeat_interval: float | None = None,
    heartbeat_liveness: int | None = None,
    curve_dir: str | None = None,
    metrics_address: str | None = None,
) -> dict:
    """serve() keyword arguments from a [broker] section, command-line values first."""
    from broker.limits import Limits
    from rlay.deployment import LIMIT_KEYS

    return {
        "max_message_size": section.get("max_message_size", -1),
        "heartbeat_interval": heartbeat_interval or section.get("heartbeat_interval", P.HEARTBEAT_INTERVAL),
        "heartbeat_liveness": heartbeat_liveness or section.get("heartbeat_liveness", P.HEARTBEAT_LIVENESS),
        "curve": load_curve(curve_dir or section.get("curve"), "broker"),
        "limits": Limits(**{key: section[key] for key in LIMIT_KEYS if key in section}),
        "metrics_address": metrics_address or section.get("metrics"),
    }


@main.command(context_settings=CONTEXT)
@click.argument("env")
@click.option(
    "--broker",
    "broker_addr",
    default=P.DEFAULT_BACKEND,
    show_default=True,
    envvar="RLAY_BROKER",
    help="The broker's worker (back-end) address [env: RLAY_BROKER].",
)
@click.option(
    "--num-workers", "-p", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes to start."
)
@click.option(
    "--envs-per-worker",
    "-k",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Envs hosted by each worker process.",
)
@click.option("--env-kwargs", default=None, help="JSON object of keyword arguments for the env, e.g. '{\"g\": 9.81}'.")
@click.option("--name", default=None, help="Env id to register under. [default: ENV]")
@click.option(
    "--threads",
    "-t",
    default="auto",
    show_default=True,
    type=ThreadsParam(),
    help="Threads per worker stepping its envs concurrently (for envs that block); auto: one per env if its "
    "first steps show the envs wait more than they compute, else 1.",
)
@click.option("--register-timeout", default=60.0, show_default=True, help="Seconds to wait for the broker to answer.")
@deprecated_heartbeat_option
@with_options(restart_options)
@curve_option
def worker(
    env: str,
    broker_addr: str,
    num_workers: int,
    envs_per_worker: int,
    env_kwargs: str | None,
    name: str | None,
    threads: int,
    register_timeout: float,
    restart: bool,
    max_restarts: int,
    curve_dir: str | None,
) -> None:
    """Host envs for a broker. ENV is a gymnasium id or package.module:factory."""
    from rlay.cluster import Cluster

    kwargs = parse_env_kwargs(env_kwargs)
    cluster = Cluster(
        broker_addr,
        [worker_group(env, num_workers, envs_per_worker, kwargs, name, threads)],
        register_timeout=register_timeout,
        supervision=supervision(restart, max_restarts),
        curve=load_curve(curve_dir, "client"),
    )
    click.echo(f"rlay worker: {num_workers} process(es) x {envs_per_worker} env(s) of {name or env} -> {broker_addr}")
    run_cluster(cluster)


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--env-kwargs") from None
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--env-kwargs")
    return kwargs


@main.command(context_settings=CONTEXT)
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@with_options(restart_options)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Place every worker process and program instance on the Ray cluster at ADDRESS (alone: auto, the "
    "cluster this host joined) as actors; the broker stays here. Overrides [cluster] ray. Needs the ray extra.",
)
def up(config_path: str, restart: bool, max_restarts: int, ray_address: str | None) -> None:
    """Run the broker, workers and programs a TOML file lists, until Ctrl-C or SIGTERM."""
    from rlay import deployment
    from rlay.cluster import Cluster
    from rlay.errors import BrokerError
    from rlay.fleet import Fleet

    config = load_config(config_path)
    section = config.get("broker", {})
    frontend = section.get("frontend", P.DEFAULT_FRONTEND)
    backend = section.get("backend", P.DEFAULT_BACKEND)
    ray_address = ray_address or config.get("cluster", {}).get("ray")
    stop = StopSignals()
    programs = deployment.programs(config, config_path)
    launcher, groups = None, []
    if ray_address:  # every worker process is an instance too: one mechanism places and supervises both
        launcher = ray_launcher(ray_address)
        programs += deployment.worker_programs(config, taken={p.name for p in programs})
    else:
        groups = [
            worker_group(
                g["env"],
                g.get("num_workers", 1),
                g.get("envs_per_worker", 1),
                g.get("env_kwargs"),
                g.get("name"),
                None if g.get("threads", "auto") == "auto" else g["threads"],
            )
            for g in config.get("workers", [])
        ]
    curve = load_curve(section.get("curve"), "client")
    fleet = None
    if programs:
        fleet = Fleet(
            programs,
            backend,
            deployment.log_dir(config, config_path),
            supervision=supervision(restart, max_restarts),
            launcher=launcher,
            frontend=frontend,
            curve=curve,
        )
    try:
        cluster = Cluster(
            backend,
            groups,
            frontend=frontend,
            supervision=supervision(restart, max_restarts),
            broker_kwargs=broker_settings(section),
            curve=curve,
            fleet=fleet,
        )
    except BrokerError as exc:  # (its addresses are taken: no worker was started)
        raise click.ClickException(str(exc)) from None
    except ConnectionError as exc:  # (no Ray cluster at that address)
        raise click.ClickException(
            f"cannot reach the Ray cluster at {ray_address}: {exc} (a cluster made by `ray start` may want its "
            "token: RAY_AUTH_MODE=token, or --ray alone)"
        ) from None
    parts = []
    if groups:
        parts.append(f"{sum(len(g.env_fns) for g in groups)} env slot(s) in {len(cluster.workers)} worker process(es)")
    if fleet:
        where = f" on the Ray cluster at {ray_address}" if ray_address else ""
        parts.append(f"{sum(p.count for p in programs)} program instance(s){where} (logs in {fleet.log_dir})")
    click.echo(
        f"rlay up: broker on {frontend} (workers on {backend})"
        + (", " + ", ".join(parts) if parts else ", nothing else to run")
        + ". Ctrl-C stops everything."
    )
    if cluster.workers or programs:
        count = len(cluster.workers)
        timeout = max([60.0, *(p.register_timeout for p in programs)])
        threading.Thread(
            target=report_start, args=(frontend, curve, count, timeout, stop), name="rlay-up-progress", daemon=True
        ).start()
    run_cluster(cluster, stop)


def report_start(frontend: str, curve: Any, workers: int, timeout: float, stop: StopSignals) -> None:
    """`rlay up`'s progress while what it launched starts: a line every few seconds (from the broker's
    status) until every local worker process and every program instance has registered, or
    ``timeout`` s have passed (a program that never registers, such as a server, is said as such)."""
    from rlay.client import BrokerClient
    from rlay.progress import PLAIN_EVERY

    client = BrokerClient(frontend, curve=curve)
    start = time.monotonic()
    try:
        while not stop.now:
            try:
                head = client.request(P.STATUS, 5.0, "the broker's status")
            except Exception:  # (the broker is starting, or stopping: the next look will tell)
                head = {}
            if head:
                registered = sum(1 for w in head.get("workers", []) if w.get("program") is None)
                programs = head.get("programs") or []
                instances = sum(p["registered"] for p in programs), sum(p["count"] for p in programs)
                elapsed = time.monotonic() - start
                text = f"{registered}/{workers} worker process(es)" + (
                    f", {instances[0]}/{instances[1]} program instance(s)" if programs else ""
                )
                if registered >= workers and instances[0] >= instances[1]:
                    click.echo(f"rlay up: all registered in {elapsed:.1f} s: {text}", err=True)
                    return
                if elapsed > timeout:
                    click.echo(f"rlay up: after {elapsed:.0f} s, registered: {text}", err=True)
                    return
                click.echo(f"rlay up: starting, {elapsed:.0f} s: registered {text}", err=True)
            stop.wait(PLAIN_EVERY if time.monotonic() - start > 1 else 0.5)
    finally:
        client.close()


def ray_launcher(address: str):
    """A RayLauncher for the cluster at ``address``; a one-line usage error when Ray is not installed."""
    try:
        from rlay.ray_fleet import RayLauncher
    except ImportError as exc:
        raise click.ClickException(
            f"--ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'rlay[ray]'); {exc}"
        ) from None
    return RayLauncher(address)


@main.command(context_settings=CONTEXT)
@click.option(
    "--broker",
    "broker_addr",
    default=P.DEFAULT_FRONTEND,
    show_default=True,
    help="The broker's trainer (front-end) address.",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(min=0.2),
    default=None,
    metavar="SECONDS",
    help="Redraw every SECONDS, like top, with env-steps/s; Ctrl-C ends it.",
)
@curve_option
def status(broker_addr: str, timeout: float, as_json: bool, watch_s: float | None, curve_dir: str | None) -> None:
    """Show a broker's workers, hosts, env ids, slots, trainers and what they did: env steps, rates,
    latencies (p50/p99), the wait on the slowest worker, and failures."""
    from rlay.client import BrokerClient
    from rlay.errors import RlayError
    from rlay.status_view import KEYS, render

    client = BrokerClient(broker_addr, curve=load_curve(curve_dir, "client"))

    def ask() -> dict:
        try:
            head = client.request(P.STATUS, timeout, f"the status of the broker at {broker_addr}")
        except (RlayError, TimeoutError) as exc:
            raise click.ClickException(str(exc)) from None
        return {k: head[k] for k in KEYS if k in head}

    try:
        report = ask()
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        if watch_s is None:
            click.echo(render(report))
            return
        previous, seconds, taken = None, None, time.monotonic()
        # Ctrl-C ends the view even where SIGINT came in ignored (a shell starts background jobs so),
        # as `rlay broker` and `rlay up`, which install handlers of their own, stop on it anyway.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        while True:  # (until Ctrl-C)
            click.clear()
            click.echo(f"rlay status --watch {watch_s:g}: {time.strftime('%H:%M:%S')} (Ctrl-C to end)")
            click.echo(render(report, previous, seconds))
            time.sleep(watch_s)  # (the refresh period itself, not a synchronisation)
            now = time.monotonic()
            previous, seconds, report, taken = report, now - taken, ask(), now
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


@main.command(context_settings=CONTEXT)
@click.argument("env")
@click.option("--num-envs", "-n", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--env-steps",
    "-s",
    default=None,
    type=click.IntRange(min=1),
    help="Env steps in all, over every env (a vector step is NUM_ENVS of them). [default: 8000]",
)
@click.option(
    "--steps",
    "vector_steps",
    default=None,
    type=click.IntRange(min=1),
    help="The old spelling: vector steps, each stepping every env (--steps S is --env-steps S*NUM_ENVS).",
)
@click.option(
    "--broker", "broker_addr", default=None, help="Lease from the broker at this front-end address. [default: embedded]"
)
@click.option(
    "--envs-per-worker",
    "-k",
    default=None,
    type=click.IntRange(min=1),
    help="Embedded only: envs per local worker process. [default: one worker per core, but at least 16 envs per "
    "worker (all of them, if fewer)]",
)
@click.option("--env-kwargs", default=None, help="Embedded only: JSON object of env keyword arguments.")
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds any call may take.")
@click.option(
    "--on-worker-failure",
    type=click.Choice(["raise", "replace"]),
    default="raise",
    show_default=True,
    help="replace: envs of a lost worker move to free slots and end their episode as truncated.",
)
@deprecated_heartbeat_option
@curve_option
def rollout(
    env: str,
    num_envs: int,
    env_steps: int | None,
    vector_steps: int | None,
    broker_addr: str | None,
    envs_per_worker: int,
    env_kwargs: str | None,
    seed: int,
    timeout: float,
    on_worker_failure: str,
    curve_dir: str | None,
) -> None:
    """Random-policy rollout; prints env-steps/s and episode-return statistics, and its progress on
    the way (a bar on a terminal, a line every 5 s otherwise)."""
    import numpy as np

    import rlay
    from rlay.progress import Progress

    if env_steps is not None and vector_steps is not None:
        raise click.UsageError("give --env-steps or --steps (vector steps), not both")
    if vector_steps is not None:
        click.echo(
            f"note: --steps counts vector steps, each stepping all {num_envs} envs: this is "
            f"--env-steps {vector_steps * num_envs}",
            err=True,
        )
        env_steps = vector_steps * num_envs
    env_steps = 8000 if env_steps is None else env_steps
    steps = -(-env_steps // num_envs)  # vector steps: the last may take the count past env_steps

    kwargs = parse_env_kwargs(env_kwargs)
    vector_kwargs: dict[str, Any] = {"timeout": timeout, "on_worker_failure": on_worker_failure}
    if broker_addr is None:
        vector_kwargs["envs_per_worker"] = envs_per_worker
    elif curve_dir:
        vector_kwargs["curve"] = load_curve(curve_dir, "client")
    envs = rlay.make_vec(env, num_envs, broker=broker_addr, vector_kwargs=vector_kwargs, **kwargs)
    try:
        where = f"broker {broker_addr}" if broker_addr else f"embedded, {envs.envs_per_worker} env(s) per worker"
        click.echo(f"rollout: {env}, {num_envs} envs ({where}), {steps * num_envs} env steps, random policy")
        envs.action_space.seed(seed)
        envs.reset(seed=seed)
        running = np.zeros(num_envs)
        returns: list[float] = []
        progress = Progress(steps * num_envs, "env-steps", "rollout")
        start = time.perf_counter()
        try:
            for _ in range(steps):
                _, rewards, terminations, truncations, _ = envs.step(envs.action_space.sample())
                running += rewards  # NEXT_STEP autoreset: the reset step after an episode has reward 0
                for i in np.flatnonzero(terminations | truncations):
                    returns.append(float(running[i]))
                    running[i] = 0.0
                mean = f"{np.mean(returns[-100:]):.1f}" if returns else None
                progress.update(num_envs, episodes=len(returns), mean_return=mean)
        finally:
            progress.close()
        elapsed = time.perf_counter() - start
    finally:
        envs.close()
    total = num_envs * steps
    click.echo(f"{total} env-steps in {elapsed:.2f} s: {total / elapsed:,.0f} env-steps/s")
    if envs.envs_replaced:
        click.echo(f"{envs.envs_replaced} env(s) replaced after their worker was lost")
    if returns:
        r = np.asarray(returns)
        click.echo(
            f"{len(r)} episodes: return mean {r.mean():.2f} +- {r.std():.2f}, min {r.min():.2f}, max {r.max():.2f}"
        )
    else:
        click.echo("no episode finished")


@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--mode",
    type=click.Choice([P.COMMAND_MODE, P.PUSH_MODE]),
    default=P.COMMAND_MODE,
    show_default=True,
    help="The kind of worker under test.",
)
@click.option("--keep-logs", is_flag=True, help="Keep the worker's and broker's logs when every check passes.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def conformance(mode: str, keep_logs: bool, command: tuple[str, ...]) -> None:
    """Certify a worker implementation: rlay conformance -- CMD [ARGS...].

    \b
    CMD runs a worker (any language) hosting the conformance env, rlay/Conformance-v0
    (docs/protocol.md, Appendix B). It gets the broker's address in RLAY_BROKER, and in
    place of {broker} in ARGS. The suite checks registration, heartbeats, the answers to
    malformed requests, every result against SyncVectorEnv bit for bit (every autoreset
    mode, masked resets, first-ready stepping), env errors, stopping, broker restarts and
    disconnects, and prints a table. Exit status 1 if any check fails.
    """
    from rlay.conformance.suite import Suite

    if not Suite(list(command), mode, log=click.echo, keep_logs=keep_logs).run():
        sys.exit(1)


@main.group(context_settings=CONTEXT)
def keys() -> None:
    """CURVE keys for encrypted, authenticated brokers."""


@keys.command("generate", context_settings=CONTEXT)
@click.argument("keydir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace keys already in KEYDIR (locks out hosts that use them).")
def keys_generate(keydir: str, force: bool) -> None:
    """Write a broker keypair, a client keypair and KEYDIR/authorized/client.key.

    \b
    Broker host:          KEYDIR/broker.key_secret and KEYDIR/authorized/
    Worker/trainer hosts: KEYDIR/broker.key and KEYDIR/client.key_secret
    Then: rlay broker --curve KEYDIR, rlay worker ... --curve KEYDIR, and in a trainer
    RlayVectorEnv.remote(..., curve=rlay.security.Curve.from_dir(KEYDIR, "client")).
    Let in more clients by copying their public .key files into KEYDIR/authorized/
    (the broker reads it when it starts: restart it to admit them).
    """
    from rlay.security import generate_keys

    try:
        paths = generate_keys(keydir, overwrite=force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    for path in paths:
        click.echo(path)


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (the table goes to stderr).")
@click.option("--quick", is_flag=True, help="A short smoke run (CI): tiny durations, one round.")
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Interleaved rounds per workload; the median is reported.",
)
@click.option(
    "--seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds per implementation per round.",
)
@click.option(
    "--cpp-worker",
    type=click.Path(exists=True, dir_okay=False),
    default=lambda: DEFAULT_CPP_WORKER if os.path.exists(DEFAULT_CPP_WORKER) else None,
    help=f"The C++ example worker, for its round trip beside the Python worker's. [default: "
    f"{DEFAULT_CPP_WORKER}, if built]",
)
@click.option(
    "--scale",
    "scale_workers",
    default=None,
    metavar="W,W,...",
    help="Instead: one broker and W simulated workers of a trivial env, for each W (e.g. 10,100,1000): the "
    "broker's CPU per part, its idle CPU and its memory.",
)
def bench(
    as_json: bool, quick: bool, rounds: int, seconds: float, cpp_worker: str | None, scale_workers: str | None
) -> None:
    """RlayVectorEnv against gymnasium's SyncVectorEnv and AsyncVectorEnv, interleaved in one run.

    \b
    Workloads: CartPole-v1 x8 and x64; an env sleeping 1 ms per step x64;
    uint8[84,84,3] and uint8[1080,1920,4] observations x8 (also in GB/s, beside
    a bare pyzmq transfer and memcpy measured in the same run); and the round
    trip of one env: embedded, and through a broker process to a Python worker
    and to the C++ example worker, against a bare pyzmq round trip. With --scale:
    the broker alone, against many workers.
    Ratios within one run are what to compare: absolute speeds drift.
    """
    from rlay import bench as b

    if quick:
        rounds, seconds = 1, 0.05
    out = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    if scale_workers is not None:
        from rlay.bench_scale import run_scale

        try:
            counts = tuple(int(w) for w in scale_workers.split(","))
        except ValueError:
            raise click.BadParameter("a comma-separated list of worker counts", param_hint="--scale") from None
        rows = run_scale(counts, seconds=max(seconds, 0.5) * 3, log=out)
        if as_json:
            click.echo(json.dumps({"scale": rows}, indent=2))
        return
    out(b.HEADER)
    report = b.run(scale=seconds, rounds=rounds, latency_count=300 if quick else 3000, log=out, cpp_worker=cpp_worker)
    for entry in report["workloads"]:
        if "floor" in entry:
            out(b.format_floor(entry))
        if "rlay_gbps" in entry:
            out(b.format_bandwidth(entry))
    out(b.format_latency(report["latency"]))
    out(b.format_worker_cpu(report["worker_cpu_us"]))
    if as_json:
        click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
