"""The ``[astra]`` and ``[slurm]`` sections of luigi's configuration.

Where a setting comes from, first found wins: the ``luigi`` command line (``--astra-database-url``), then the
environment (``$ASTRA_DATABASE_URL``), then ``[astra]`` in luigi.cfg, then the default.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import sysconfig
import threading
import traceback
import types
from pathlib import Path
from urllib.parse import urlsplit

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import TaskClassNotFoundException

from astra.database.urls import mask_password

logger = logging.getLogger("luigi-interface")

#: Environment variable that overrides ``[astra] database_url`` (but not ``--astra-database-url``).
DATABASE_URL_ENV = "ASTRA_DATABASE_URL"

#: Where the embedded SQLite database lives when nothing else is configured.
DEFAULT_SQLITE_PATH = os.path.join("~", ".astra", "astra.db")


class astra(luigi.Config):  # noqa: N801 -- luigi names the config section after the class
    """Settings read from ``[astra]`` in luigi.cfg, or ``--astra-<name>`` on the luigi command line."""

    database_url = luigi.Parameter(
        default="",
        description="sqlite:///path or postgresql://user@host:port/dbname; $ASTRA_DATABASE_URL overrides luigi.cfg",
    )
    profile = luigi.Parameter(
        default="",
        description="sdssdb profile to connect with (host, user, port come from sdssdb.yml) when no URL is set",
    )
    dbname = luigi.Parameter(default="sdss5db", description="database name used with an sdssdb profile")
    lease = luigi.FloatParameter(
        default=120.0,
        description="seconds this worker's running tasks may go without a heartbeat before another worker takes them "
        "over (recorded in each task's row, so every worker goes by the holder's lease)",
    )
    batch_processes = luigi.IntParameter(
        default=1,
        description="processes that work a batch's items at once (a BatchTask's --processes beats this)",
    )
    synchronous_commit = luigi.BoolParameter(
        default=False,
        description="wait for the disk on each task's done record: true, and a crash of the database server loses "
        "none; false (the default), and it may lose the last fraction of a second of them, whose tasks then run "
        "again (as after any crash: nothing is ever recorded done that was not)",
    )
    sqlite_lock_timeout = luigi.FloatParameter(
        default=60.0,
        description="seconds a worker waits for an SQLite database's write lock while another process holds it (e.g. "
        "a task inside a long completion() block) before its statement fails with one line; readers never wait",
    )
    pooler = luigi.ChoiceParameter(
        default="auto",
        choices=["auto", "transaction", "session", "none"],
        var_type=str,
        description="what stands between astra and PostgreSQL: transaction (a pooler such as pgbouncer in "
        "transaction mode: nothing may outlive a transaction, so no statement is prepared), session or none (the "
        "session is kept: claims and finishes are prepared once per connection), or auto (the default): "
        "transaction if the server session differs from the one the connection was opened with, as behind pgbouncer",
    )
    reconnect_seconds = luigi.FloatParameter(
        default=60.0,
        description="seconds a process keeps trying to reopen a lost PostgreSQL connection (the server restarting) "
        "before the statement fails; once that wait was in vain, the process tries once each time, and the luigi "
        "run starts no more tasks",
    )
    idle_close = luigi.FloatParameter(
        default=60.0,
        description="seconds a process's database connection may stay unused before it is closed (it is opened "
        "again when next needed): an idle luigi worker or SLURM job holds no connection of the server's",
    )
    read_helpers = luigi.IntParameter(
        default=2,
        description="threads that read ahead for astra results on PostgreSQL, each on a connection of its own for "
        "as long as the command reads (0: none, the command reads alone on its one connection)",
    )
    executor = luigi.Parameter(
        default="local",
        description="where run() runs: in the luigi worker (local) or as a SLURM job (slurm; see [slurm])",
    )


class slurm(luigi.Config):  # noqa: N801 -- luigi names the config section after the class
    """Settings of the jobs the SLURM executor submits: ``[slurm]`` in luigi.cfg or ``--slurm-<name>``."""

    partition = luigi.Parameter(default="", description="sbatch --partition (empty: the cluster's default)")
    account = luigi.Parameter(default="", description="sbatch --account")
    qos = luigi.Parameter(default="", description="sbatch --qos")
    time = luigi.Parameter(default="", description="sbatch --time, e.g. 2:00:00 (SLURM counts whole minutes)")
    mem = luigi.Parameter(default="", description="sbatch --mem, e.g. 4G")
    cpus_per_task = luigi.IntParameter(default=0, description="sbatch --cpus-per-task (0: the cluster's default)")
    sbatch_args = luigi.Parameter(default="", description="more sbatch arguments, e.g. --gres=gpu:1 --exclusive")
    log_dir = luigi.Parameter(
        default=os.path.join("~", ".astra", "slurm"),
        description="where each job's stdout and stderr go (<task_id>-<job>.out/.err); must be visible to the nodes",
    )
    jobs = luigi.IntParameter(default=1, description="array elements (shares) a BatchTask is split into")
    max_running = luigi.IntParameter(
        default=0, description="array elements of a batch that run at once (sbatch --array=...%N; 0: no limit)"
    )
    poll = luigi.FloatParameter(
        default=1.0, description="seconds between two looks at the database for a job's record, and SLURM's first"
    )
    poll_max = luigi.FloatParameter(
        default=60.0, description="longest interval, in seconds, between two squeue calls (one for all jobs)"
    )


def settings() -> astra:
    """The current ``[astra]`` settings: read again whenever luigi.cfg's ``[astra]`` or the command line changes.

    Reading them means working out every parameter of the section from luigi.cfg and the command line, which costs
    about 0.1 ms: as much as a cold task's whole record on SQLite, and a claim reads them once per task.
    """
    global _read
    try:
        key = _settings_key()
        if _read is None or _read[0] != key:
            _refuse_unknown(key[1])
            read = astra()
            _refuse_out_of_range(read)
            _read = (key, read)
    except (ValueError, configparser.Error) as exc:  # luigi says only "Error when parsing ... of 'lease'"
        raise SettingError(_bad_setting() or f"astra: the [astra] settings cannot be read: {exc}") from None
    return _read[1]


_read: tuple[tuple, astra] | None = None


class SettingError(SystemExit):
    """An ``[astra]`` setting that does not parse (``lease = abc``). A SystemExit, as ``DatabaseNotReady`` is: luigi
    would turn it into a traceback under "error in complete()" for every task, and nothing can work without it."""


def _refuse_unknown(stored: tuple[tuple[str, str], ...], section_class: type[luigi.Config] = astra) -> None:
    """Stop at a name in ``[astra]`` (or ``section_class``'s section) that is no setting. luigi would warn and go on,
    printing its value: a line ``database_url postgresql://me:secret@host/db`` (its ``=`` forgotten: configparser
    splits it at the ``:``) showed the password; a misspelt ``database_url`` would record into the default database
    instead, and a misspelt ``[slurm] partition`` or ``mem`` would send every job where it cannot run, or kill it."""
    section, known = section_class.get_task_family(), {name for name, _ in section_class.get_params()}
    for name, _ in stored:
        if name.replace("-", "_") not in known:
            raise SettingError(
                f"astra: [{section}] in {_file_of(section, name)} has {name!r}, which is no astra setting (its '=' "
                f"missing, or a misspelt name?); known: {', '.join(sorted(known))}"
            )


#: The ``[astra]`` numbers that must be more than 0 and finite: a lease of 0 (or NaN, or infinity) is one that no one
#: can wait out, or a heartbeat loop without a pause. Every other number must be 0 or more (infinity: no limit); NaN
#: or a negative number is a slip (a busy timeout of NaN ms cannot even be computed), not a wish.
POSITIVE = ("lease",)


def _refuse_out_of_range(read: astra) -> None:
    """Stop at an ``[astra]`` number that parses but cannot be used (``lease = 0``, ``sqlite_lock_timeout = nan``):
    each task that met it failed with a traceback, or luigi's check of every task did."""
    for name, parameter in astra.get_params():
        value = getattr(read, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name in POSITIVE and not 0 < value < math.inf:
            wanted = "more than 0 (seconds), and finite"
        elif not value >= 0:  # NaN too
            wanted = "0 or more"
        else:
            continue
        default = parameter.serialize(parameter._default)
        raise SettingError(
            f"astra: {_where(name)} must be {wanted}; correct it, or leave it out for the default ({default})"
        )


def slurm_settings() -> slurm:
    """The ``[slurm]`` settings; :class:`SettingError` naming the first that does not parse (``jobs = abc``) or a
    name that is no setting (``partiton = gpu``)."""
    try:
        _refuse_unknown(_stored(luigi.configuration.get_config(), slurm.get_task_family()), slurm)
        return slurm()
    except (ValueError, configparser.Error) as exc:
        raise SettingError(_bad_setting(slurm) or f"astra: the [slurm] settings cannot be read: {exc}") from None


def _bad_setting(section_class: type[luigi.Config] = astra) -> str | None:
    """The line that names the first setting of ``section_class`` (``[astra]``) that does not parse, where it is and
    what it should be."""
    section = section_class.get_task_family()
    for name, parameter in section_class.get_params():
        value = command_line_value(name, section)
        where = f"--{section}-{name.replace('_', '-')} {value!r}"
        if not value:
            try:
                value = luigi.configuration.get_config().get(section, name)
            except (configparser.NoSectionError, configparser.NoOptionError, KeyError):
                continue
            except configparser.Error as exc:  # e.g. a ${VARIABLE} that is not set; the text may hold a URL
                reason = mask_password(str(exc).splitlines()[0])
                if isinstance(exc, configparser.InterpolationSyntaxError) and "'%'" in reason:
                    # luigi.cfg reads "%(name)s" as another setting's value; a percent-encoded password has a '%'
                    reason = "a '%' must be written '%%' in luigi.cfg (a percent-encoded password: p%%40ss for p@ss)"
                return f"astra: [{section}] {name} in {_file_of(section, name)} cannot be read: {reason}"
            where = _where(name, section)
        try:
            parameter.parse(value)
        except Exception:  # noqa: BLE001 -- each parameter class raises its own; the line says what is expected
            default = parameter.serialize(parameter._default).lower()  # luigi.cfg spells booleans true/false
            return f"astra: {where} {_expected(parameter)}; correct it, or leave it out for the default ({default})"
    return None


def _where(name: str, section: str = "astra") -> str:
    """Where ``[section] name`` was set, with its value as written: ``--astra-lease '0'`` on the command line, or
    ``[astra] lease = '0' in luigi.cfg``."""
    value = command_line_value(name, section)
    if value:
        return f"--{section}-{name.replace('_', '-')} {value!r}"
    value = luigi.configuration.get_config().get(section, name)
    return f"[{section}] {name} = {value!r} in {_file_of(section, name)}"


def _expected(parameter: luigi.Parameter) -> str:
    """What a value of ``parameter`` that does not parse is not, e.g. 'is not a number'."""
    if isinstance(parameter, luigi.ChoiceParameter):
        return f"is not one of {', '.join(sorted(parameter._choices))}"
    if isinstance(parameter, luigi.BoolParameter):
        return "is not true or false"
    if isinstance(parameter, luigi.IntParameter):
        return "is not a whole number"
    if isinstance(parameter, luigi.FloatParameter):
        return "is not a number"
    return "cannot be read"


def _file_of(section: str, name: str) -> str:
    """The file of luigi's configuration that sets ``[section] name`` (the last one luigi reads wins), or a general
    phrase if none does (a script set it in memory, or luigi reads TOML)."""
    for path in reversed(getattr(type(luigi.configuration.get_config()), "_config_paths", [])):
        found = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            found.read(path)
        except configparser.Error:
            continue
        if found.has_option(section, name):
            return path
    return "luigi's configuration"


def _settings_key() -> tuple:
    """Everything :class:`astra` is read from: the ``[astra]`` section of luigi.cfg and ``--astra-*`` options."""
    parser, section = luigi.configuration.get_config(), astra.get_task_family()
    stored = _stored(parser, section)
    command_line = CmdlineParser.get_instance()
    given = () if command_line is None else tuple(vars(command_line.known_args).get(f"{section}_{n}") for n in _NAMES)
    return id(parser), stored, given


_NAMES = astra.get_param_names()


def sources() -> tuple:
    """What decides the database, in a form that is cheap to make and compare (a few µs; :func:`settings` takes
    20): luigi's configuration and the ``luigi`` command line (the objects: a new run has new ones), ``[astra]`` as
    written, and $ASTRA_DATABASE_URL. Compare two with :func:`same_sources`."""
    parser = luigi.configuration.get_config()
    written = _stored(parser, astra.get_task_family(), raw=True)
    return parser, CmdlineParser.get_instance(), written, os.environ.get(DATABASE_URL_ENV, "")


def same_sources(one: tuple | None, other: tuple) -> bool:
    """Whether two :func:`sources` are the same (the parsers by identity: comparing a ConfigParser compares it all)."""
    return one is not None and one[0] is other[0] and one[1] is other[1] and one[2:] == other[2:]


def _stored(parser: object, section: str, raw: bool = False) -> tuple[tuple[str, str], ...]:
    """The names and values ``section`` of luigi's configuration holds, in its ini file or its TOML file (where luigi
    warns of no unknown name either: a misspelt ``databse_url`` recorded into the default database). ``raw``: the
    ini file's values as written (no ``%`` interpolation, which may fail)."""
    toml = _toml_sections(parser)
    if toml is not None:
        return tuple((name, repr(value)) for name, value in (toml.get(section) or {}).items())
    return tuple(parser.items(section, raw=raw)) if parser.has_section(section) else ()


def _toml_sections(parser: object) -> dict | None:
    """The sections of luigi's TOML parser, which keeps them apart from ConfigParser's; None for the ini parser."""
    sections = getattr(parser, "data", None)
    return sections if isinstance(sections, dict) else None


def database_url() -> str:
    """The configured database URL: ``--astra-database-url``, else $ASTRA_DATABASE_URL, else luigi.cfg, else ''.

    For the processes this one starts elsewhere (a batch's pool, a SLURM job), so a relative SQLite path is given as
    the file it meant here (:func:`sqlite_path`).
    """
    url = command_line_value("database_url") or os.environ.get(DATABASE_URL_ENV) or settings().database_url
    if url.startswith(SQLITE_PREFIX):
        return SQLITE_PREFIX + sqlite_path(url[len(SQLITE_PREFIX) :])
    return url


SQLITE_PREFIX = "sqlite:///"

#: The file each SQLite path as written (relative, or under ``~``) meant when this process first used it.
_sqlite_paths: dict[str, str] = {}


def sqlite_path(written: str) -> str:
    """The absolute path of the SQLite file ``written`` names: resolved once per process (and the processes forked
    from it). A task's run() may change the working directory; a relative path resolved again after that named
    another file, which a batch's pool processes opened (empty: every item's input "not complete") and a SLURM job
    recorded into."""
    path = _sqlite_paths.get(written)
    if path is None:
        path = _sqlite_paths[written] = os.path.abspath(os.path.expanduser(written))
    return path


def forget_sqlite_paths() -> None:
    """Resolve SQLite paths afresh (for :func:`astra.database.connection.reset`: tests change directory and HOME)."""
    _sqlite_paths.clear()


def command_line_value(name: str, section: str = "astra") -> str:
    """``--astra-<name>`` (``--<section>-<name>``) as given on the running ``luigi`` command line, or '' (luigi.Config
    cannot tell apart a value from the command line and one from luigi.cfg, and the environment must come between
    the two)."""
    parser = CmdlineParser.get_instance()
    if parser is None:
        return ""
    return getattr(parser.known_args, f"{section}_{name}", None) or ""


def command_line() -> dict | None:
    """The values of the running ``luigi`` command line (``--Item-band r``), for :func:`adopt_command_line`.

    They decide the parameters a task is not given, before luigi.cfg does, and so its identity: a new interpreter
    that works for this one (a batch's pool process, a SLURM job) must see them too. Only the values given, and
    only those JSON can carry: luigi takes an empty (or absent) one for none.
    """
    parser = CmdlineParser.get_instance()
    if parser is None:
        return None
    plain = (str, int, float, bool)
    values = {name: value for name, value in vars(parser.known_args).items() if value and isinstance(value, plain)}
    if values.get("astra_database_url"):
        values["astra_database_url"] = database_url()  # a relative SQLite path as it is meant here
    return values


def adopt_command_line(values: dict | None) -> None:
    """In a new interpreter: the luigi command line that :func:`command_line` gave (None: there was none)."""
    if values is None:
        return
    parser = object.__new__(CmdlineParser)  # as luigi's, without parsing (and importing) the arguments again
    parser.known_args = argparse.Namespace(**values)
    CmdlineParser._instance = parser


def luigi_config() -> dict[str, dict[str, str]] | None:
    """luigi's configuration as this process has it: its files, and whatever a script set in memory since.

    It decides the parameters a task is not given, and so identities, like the command line: a pool process must
    see it too (:func:`adopt_luigi_config`). None for luigi's TOML parser, which keeps no in-memory changes apart.
    """
    parser = luigi.configuration.get_config()
    if _toml_sections(parser) is not None:
        return None
    return {section: dict(parser.items(section, raw=True)) for section in parser.sections()}


def adopt_luigi_config(sections: dict[str, dict[str, str]] | None) -> None:
    """In a new interpreter: luigi's configuration as :func:`luigi_config` gave it, over what its files say."""
    parser = luigi.configuration.get_config()
    for section, options in (sections or {}).items():
        if not parser.has_section(section):
            parser.add_section(section)
        for option, value in options.items():
            parser.set(section, option, value)


def luigi_command_arguments() -> list[str] | None:
    """The arguments of the running ``luigi`` command, as luigi parses them; None when astra runs in anything else.

    luigi's command (its console script, or ``python -m luigi``) parses ``sys.argv[1:]``, and imports ``--module``
    (and so astra) while it does: before it has made its own parser available (CmdlineParser.get_instance()).
    """
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is not None and (program.name == "luigi" or program.parts[-2:] == ("luigi", "__main__.py")):
        return sys.argv[1:]
    return None


def scheduler_from_command_line() -> None:
    """Make a luigid named on the ``luigi`` command line the scheduler, whatever luigi.cfg says about
    ``[core] local_scheduler``: the command line wins, as it does for every other setting.

    luigi itself would keep the local scheduler and ignore ``--scheduler-host``. Called as astra is imported,
    which is before luigi reads ``[core]`` to choose its scheduler; ``--local-scheduler`` still wins over all.
    """
    arguments = luigi_command_arguments()
    if arguments is None:
        return
    options = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--scheduler-host", "--scheduler-port", "--scheduler-url"):
        options.add_argument(name)
    options.add_argument("--local-scheduler", action="store_true")
    given, _ = options.parse_known_args(arguments)
    if given.local_scheduler or not (given.scheduler_host or given.scheduler_port or given.scheduler_url):
        return
    parser = luigi.configuration.get_config()
    if not parser.has_section("core"):
        parser.add_section("core")
    parser.set("core", "local_scheduler", "false")


class SchedulerNotReady(SystemExit):
    """The luigi command cannot use the scheduler it would use; a SystemExit so that it stops with one line.

    Without this, luigi waits about a minute for a luigid that is not there and prints a long RPCError
    traceback; or it silently ignores ``--scheduler-host`` because luigi.cfg picks the local scheduler.
    """


#: Seconds to wait for luigid to accept a connection before saying that it is not there.
SCHEDULER_PROBE_SECONDS = 3.0

_scheduler_checked = False


def check_scheduler() -> None:
    """Stop the ``luigi`` command with one line if its scheduler cannot be what the user meant.

    Called once per process, when astra first opens the database (luigi asks ``complete()`` before its first
    request to the scheduler): no luigid answering where luigi will send its requests, or a luigid named on the
    command line while ``[core] local_scheduler = true`` in luigi.cfg would make luigi ignore it.
    """
    global _scheduler_checked
    parser = CmdlineParser.get_instance()
    if parser is None or _scheduler_checked:
        return
    _scheduler_checked = True  # forked workers inherit this: the parent has checked
    _sigterm_as_ctrl_c()
    args = parser.known_args
    core = luigi.interface.core()
    if core.local_scheduler:
        named = [
            f"--{option}"
            for option in ("scheduler-host", "scheduler-port", "scheduler-url")
            if getattr(args, f"core_{option.replace('-', '_')}", None) is not None
        ]
        if named and not getattr(args, "core_local_scheduler", False):
            raise SchedulerNotReady(
                f"astra: {' '.join(named)} names a luigid, but luigi.cfg says [core] local_scheduler = true, so "
                "luigi would not use it; set local_scheduler = false there (or in the file $LUIGI_CONFIG_PATH names)"
            )
        return
    url = core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"
    where = urlsplit(url)
    if where.scheme not in ("http", "https") or not where.hostname:
        return  # e.g. http+unix://: leave it to luigi
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        socket.create_connection((where.hostname, port), timeout=SCHEDULER_PROBE_SECONDS).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise SchedulerNotReady(
            f"astra: no luigid answers at {url} ({reason}); start one (luigid --port {port}), or run without "
            "it: add --local-scheduler, or set [core] local_scheduler = true in luigi.cfg"
        ) from None


def stop_asking_for_work() -> None:
    """Tell the luigi worker that runs this task to start no more: the database is gone, and each task would wait
    for it in vain. luigi's own SIGUSR1 (``Worker.handle_interrupt``): it finishes the tasks under way and the run
    ends with the rest pending. Sent only where that handler is installed (in the worker, and in the task processes
    it forks, which inherit it); anywhere else the signal would end the process."""
    worker = getattr(signal.getsignal(signal.SIGUSR1), "__self__", None)
    if worker is None or type(worker).__module__ != "luigi.worker":
        return
    pid = os.getpid() if multiprocessing.parent_process() is None else os.getppid()
    logger.error("astra: the database is gone, so this run starts no more tasks")
    os.kill(pid, signal.SIGUSR1)


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM to the ``luigi`` command acts as Ctrl-C does: luigi then stops the worker processes it forked (each
    gets SIGTERM), and the SLURM executor in them cancels their jobs. Left as it is, SIGTERM ends the luigi process
    at once, and its forked workers cannot tell that from SIGKILL (after which their jobs must run on)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


class DefinitionError(TypeError):
    """A task or output class that astra cannot use, found as the class is defined (e.g. a luigi parameter named
    ``version``). Raised while luigi imports ``--module``, so the hook below says it in one line."""


def users_frame(tb: types.TracebackType | None) -> traceback.FrameSummary | None:
    """The innermost frame of ``tb`` in the user's own code: in no file of astra's, Python's or an installed
    package's (luigi's script included). None if every frame is in one of those."""
    libraries = [os.path.dirname(os.path.abspath(__file__))]
    libraries += [sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")]
    prefixes = tuple(os.path.join(path, "") for path in libraries if path)
    ours = [frame for frame in traceback.extract_tb(tb) if not frame.filename.startswith(("<", *prefixes))]
    return ours[-1] if ours else None


def _astra_errors_in_one_line(previous_hook):
    """``sys.excepthook`` that says in one line what luigi meets before its own error handling starts: a task name
    no imported module defines, and a class that astra cannot use (:class:`DefinitionError`); and that the command
    was stopped, in place of the traceback of the KeyboardInterrupt luigi lets through.

    luigi parses its command line, importing ``--module``, outside any ``try`` of its own, so either would end in a
    traceback. Every other exception goes to the previous hook.
    """

    def hook(kind, exc, tb):
        if issubclass(kind, KeyboardInterrupt) and luigi_command_arguments() is not None:
            # Ctrl-C, or SIGTERM (scancel, kill; see _sigterm_as_ctrl_c): Python still exits with 130.
            print(
                "astra: stopped (Ctrl-C or SIGTERM); the tasks it was running are recorded as failed "
                "(KeyboardInterrupt), or done if they had just finished, and the next run runs those not done",
                file=sys.stderr,
            )
            return None
        if issubclass(kind, DefinitionError):
            frame = users_frame(tb)
            where = f"{frame.filename}, line {frame.lineno}: " if frame else ""
            print(f"astra: {where}{exc}", file=sys.stderr)
            return None
        if not issubclass(kind, TaskClassNotFoundException):
            return previous_hook(kind, exc, tb)
        first, *candidates = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = first.split(" Did you mean:")[0].split(" Candidates are:")[0].rstrip(".")  # luigi lists every task
        offer = f" (did you mean {', '.join(candidates[:5])}?)" if candidates and len(candidates) <= 5 else ""
        print(
            f"astra: luigi knows {first[0].lower()}{first[1:]}{offer}; check its name, and that --module names the "
            "module that defines it",
            file=sys.stderr,
        )
        return None

    return hook


sys.excepthook = _astra_errors_in_one_line(sys.excepthook)
