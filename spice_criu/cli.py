# SPDX-License-Identifier: MIT
"""The `spice` command: criu's command line, so scripts can swap `criu` for `spice`.

Like criu (getopt_long), options may come before or after the action, every boolean has a `--no-`
form, and `-v` takes an optional attached level (`-v4`, `-vvvv`). `spice crit ...` is crit.
"""

from __future__ import annotations

import sys

from . import CRIU_VERSION
from .errors import SpiceError
from .log import log
from .record import Factory, Record

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable

ACTIONS = ("dump", "restore", "check", "swrk", "pre-dump", "service", "page-server", "lazy-pages", "dedup",
           "cpuinfo", "exec", "show")


class Options(Record):
    """criu's options, as dump/restore/check see them (also filled from RPC requests)."""

    action: str = ""
    args: tuple[str, ...] = ()
    images_dir: str = "."
    work_dir: str | None = None
    log_file: str | None = None
    verbosity: int = 2
    pidfile: str | None = None
    display_stats: bool = False
    tree: int | None = None
    leave_running: bool = False
    leave_stopped: bool = False
    shell_job: bool = False
    tcp_established: bool = False
    tcp_close: bool = False
    skip_in_flight: bool = False
    ext_unix_sk: bool = False
    file_locks: bool = False
    link_remap: bool = False
    timeout: int = 10
    ghost_limit: int = 1 << 20
    restore_detached: bool = False
    restore_sibling: bool = False
    root: str | None = None
    inherit_fd: list[str] = Factory(list)
    backend: str = "auto"
    record_working_set: bool = False
    record_timeout: float = 1.0
    feature: str | None = None
    external: list[str] = Factory(list)
    manage_cgroups: str | None = None  # None: criu's default, soft
    cgroup_root: list[str] = Factory(list)
    network_lock: str = "iptables"
    status_fd: int | None = None
    address: str | None = None
    #: CRIU's action-script points over RPC (notify_scripts): notify(action, pid) raises SpiceError
    #: when the client answers no; None (the CLI) makes run_script a no-op
    notify: Callable[[str, int | None], None] | None = None

    def run_script(self, action: str, pid: int | None = None) -> None:
        """An action-script point (pre-dump, post-dump, post-restore(pid), pre-resume...)."""
        if self.notify is not None:
            self.notify(action, pid)


def _verbosity(value: str | None) -> int:
    if value is None:
        return 2
    if value == "" or set(value) == {"v"}:
        return 2 + len(value) + (0 if value else 1)
    try:
        return int(value)
    except ValueError:
        raise SpiceError("cli", f"bad verbosity {value!r}") from None


def _size(value: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:].upper(), 1)
    try:
        return int(value[:-1] if mult > 1 else value) * mult
    except ValueError:
        raise SpiceError("cli", f"bad size {value!r}") from None


class Opt(Record):
    """One criu option. kind: str, int, float, bool (with a --no- form), flag (no value),
    optional (its value only attached: -x / -x=V / -v4), multi (repeatable), choice."""

    name: str
    longs: tuple[str, ...]
    short: str | None = None
    kind: str = "str"
    default: object = None
    help: str | None = None
    hidden: bool = False
    flag_value: str | None = None
    choices: tuple[str, ...] = ()


_O = Opt
#: criu's options, the single source of both the click command and the fast parser below
OPTIONS: tuple[Opt, ...] = (
    _O("images_dir", ("images-dir",), "D", default=".", help="directory with the images"),
    _O("work_dir", ("work-dir",), "W", help="directory for logs, pidfile and stats (default: images dir)"),
    _O("log_file", ("log-file",), "o", help="log file, relative to the work dir ('-' = stdout)"),
    _O("verbosity", ("verbosity",), "v", "optional", flag_value="", help="log level 0..4"),
    _O("pidfile", ("pidfile",), help="write the root pid here (O_EXCL)"),
    _O("tree", ("tree",), "t", "int", help="pid of the tree to dump"),
    _O("leave_running", ("leave-running",), "R", "bool", False),
    _O("leave_stopped", ("leave-stopped",), "s", "bool", False),
    _O("shell_job", ("shell-job",), "j", "bool", False),
    _O("tcp_established", ("tcp-established",), None, "bool", False),
    _O("tcp_close", ("tcp-close",), None, "bool", False),
    _O("ext_unix_sk", ("ext-unix-sk",), "x", "optional", flag_value="all"),
    _O("no_ext_unix_sk", ("no-ext-unix-sk",), None, "flag", False, hidden=True),
    _O("file_locks", ("file-locks",), "l", "bool", False),
    _O("link_remap", ("link-remap",), None, "bool", False),
    _O("timeout", ("timeout",), None, "int", 10, help="freeze timeout (s)"),
    _O("ghost_limit", ("ghost-limit",), default="1M"),
    _O("restore_detached", ("restore-detached", "daemon"), "d", "bool", False),
    _O("restore_sibling", ("restore-sibling",), "S", "bool", False),
    _O("root", ("root",), "r"),
    _O("inherit_fd", ("inherit-fd",), None, "multi", help="fd[N]:KEY"),
    _O("external", ("external",), None, "multi"),
    _O("manage_cgroups", ("manage-cgroups",), None, "optional", flag_value="soft",
       help="restore: put tasks back into their dumped cgroups: soft (default), none, ignore"),
    _O("cgroup_root", ("cgroup-root",), None, "multi", help="restore: [CTL:]/PATH the dumped top cgroup moves to"),
    _O("display_stats", ("display-stats",), None, "bool", False),
    _O("backend", ("backend",), None, "choice", "auto", choices=("auto", "ptrace", "kmod")),
    _O("record_working_set", ("record-working-set",), None, "bool", False),
    _O("record_timeout", ("record-timeout",), None, "float", 1.0, help="seconds to run while recording"),
    _O("feature", ("feature",)),
    _O("skip_in_flight", ("skip-in-flight",), None, "bool", False,
       help="dump: ignore TCP connections not accepted yet"),
    _O("network_lock", ("network-lock",), None, "choice", "iptables", choices=("iptables", "nftables", "skip")),
    _O("status_fd", ("status-fd",), None, "int"),
    _O("address", ("address",), help="service: the socket to listen on (default ./criu_service.socket)"),
    # accepted for compatibility with criu callers; they change nothing spice does
    _O("no_default_config", ("no-default-config",), None, "flag", False, hidden=True),
    _O("config", ("config",), hidden=True),
    _O("pre_dump_mode", ("pre-dump-mode",), hidden=True),
    _O("evasive_devices", ("evasive-devices",), None, "bool", False, hidden=True),
    _O("log_pid", ("log-pid",), None, "bool", False, hidden=True),
    _O("check_all", ("extra", "experimental", "all"), None, "flag", False, hidden=True),
    _O("version", ("version",), "V", "flag", False, help="print the CRIU version spice speaks"),
)
_TYPES = {"int": int, "float": float}


def _params() -> list:
    """The click parameters for OPTIONS (click is imported only when the fast parser gives up)."""
    import click

    params: list[click.Parameter] = [click.Argument(["action"], required=False), click.Argument(["args"], nargs=-1)]
    for o in OPTIONS:
        longs = [f"--{n}" for n in o.longs]
        decls = [f"-{o.short}"] if o.short else []
        kw: dict = {"help": o.help, "hidden": o.hidden, "default": o.default}
        if o.kind == "bool":
            decls += [f"{longs[0]}/--no-{o.longs[0]}", *longs[1:]]
        else:
            decls += longs
            if o.kind == "flag":
                kw["is_flag"] = True
            elif o.kind == "optional":
                kw.update(is_flag=False, flag_value=o.flag_value)
            elif o.kind == "multi":
                kw.update(multiple=True, default=())
            elif o.kind == "choice":
                kw["type"] = click.Choice(list(o.choices))
            elif o.kind in _TYPES:
                kw["type"] = _TYPES[o.kind]
        params.append(click.Option([*decls, o.name], **kw))
    return params


def _fast_parse(argv: list[str]) -> dict | None:
    """getopt_long over OPTIONS, giving what click would. None for anything unusual (help, an
    unknown option, a bad value, no action), which click then handles with its messages."""
    longs: dict[str, tuple[Opt, bool]] = {}
    shorts: dict[str, Opt] = {}
    kw: dict = {}
    for o in OPTIONS:
        kw[o.name] = () if o.kind == "multi" else o.default
        for n in o.longs:
            longs[n] = (o, True)
        if o.kind == "bool":
            longs[f"no-{o.longs[0]}"] = (o, False)
        if o.short:
            shorts[o.short] = o
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            positional += argv[i:]
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name not in longs:
                return None
            o, on = longs[name]
            if o.kind in ("bool", "flag"):
                if eq:
                    return None
                kw[o.name] = on
                continue
            if o.kind == "optional":
                value = val if eq else o.flag_value
            elif eq:
                value = val
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                return None
        elif a.startswith("-") and len(a) > 1:
            o = shorts.get(a[1])
            if o is None:
                return None
            rest = a[2:]
            if o.kind in ("bool", "flag"):
                if rest:
                    return None  # bundled short flags: leave them to click
                kw[o.name] = True
                continue
            if o.kind == "optional":
                value = rest or o.flag_value
            elif rest:
                value = rest
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                return None
        else:
            positional.append(a)
            continue
        if o.kind in _TYPES:
            try:
                value = _TYPES[o.kind](value)
            except ValueError:
                return None
        elif o.kind == "choice" and value not in o.choices:
            return None
        if o.kind == "multi":
            kw[o.name] = (*kw[o.name], value)
        else:
            kw[o.name] = value
    if not positional and not kw["version"]:
        return None
    kw["action"] = positional[0] if positional else None
    kw["args"] = tuple(positional[1:])
    return kw


def _options(kw: dict) -> Options:
    o = Options()
    o.action = kw["action"] or ""
    o.args = tuple(kw["args"])
    for name in (
        "images_dir work_dir log_file pidfile tree leave_running leave_stopped shell_job tcp_established "
        "tcp_close skip_in_flight file_locks link_remap timeout restore_detached restore_sibling root backend "
        "record_working_set record_timeout display_stats feature network_lock status_fd address manage_cgroups"
    ).split():
        setattr(o, name, kw[name])
    o.verbosity = _verbosity(kw["verbosity"])
    o.ext_unix_sk = bool(kw["ext_unix_sk"]) and not kw["no_ext_unix_sk"]
    o.ghost_limit = _size(kw["ghost_limit"])
    o.inherit_fd = list(kw["inherit_fd"])
    o.external = list(kw["external"])
    o.cgroup_root = list(kw["cgroup_root"])
    return o


def run_action(o: Options) -> int:
    import os

    if o.work_dir is None:
        o.work_dir = o.images_dir
    if o.action in ("dump", "restore"):
        # one-shot commands that leave by _quick_exit: the cyclic collector would only walk the
        # modules and image objects being built (~1.5 ms of a restore); what they drop is
        # acyclic and freed by reference counting
        import gc

        gc.disable()
        if not os.path.isdir(o.work_dir):
            raise SpiceError("cli", f"work directory {o.work_dir} does not exist")
        log.setup(o.verbosity, o.log_file, o.work_dir)
    if o.action == "dump":
        if o.tree is None:
            raise SpiceError("cli", "pid not specified (-t PID)")
        from .dump.run import dump

        return dump(o)
    if o.action == "restore":
        from .restore.run import restore

        return restore(o)
    if o.action == "check":
        from .check import check

        return check(o)
    if o.action == "swrk":
        if len(o.args) != 1 or not o.args[0].isdigit():
            print("Usage: criu swrk <fd>", file=sys.stderr)
            return 1
        from .rpc_criu import swrk

        return swrk(int(o.args[0]))
    if o.action == "service":
        from .rpc_service import serve

        return serve(o)
    if o.action == "pre-dump":
        raise SpiceError("cli", "pre-dump needs soft-dirty memory tracking, which this kernel lacks")
    raise SpiceError("cli", f"action {o.action} is not supported by spice")


def _criu_main(**kw) -> None:
    if kw["version"]:
        print("Version: {}.{}.{}".format(*CRIU_VERSION))
        sys.exit(0)
    action = kw["action"]
    if not action:
        import click

        click.echo(click.get_current_context().get_help())
        sys.exit(1)
    if action not in ACTIONS:
        raise SpiceError("cli", f"unknown action {action!r}")
    o = _options(kw)
    if o.action != "swrk" and o.args and not (o.action == "cpuinfo" and len(o.args) == 1):
        raise SpiceError("cli", f"excessive parameter(s) for command {o.action}: {' '.join(o.args)}")
    code = run_action(o)
    if o.action in ("dump", "restore"):
        _quick_exit(code)
    sys.exit(code)


def _quick_exit(code: int) -> None:
    """A one-shot dump or restore is complete: leave without the interpreter's teardown (freeing
    every module and object costs ~9 ms, a sizeable share of a small restore's wall time). All it
    wrote is closed already; what is still buffered is flushed here."""
    import os

    log.close()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def criu_command():
    """The click command (help, usage errors, anything the fast parser leaves alone)."""
    import click

    return click.Command(
        "spice",
        callback=_criu_main,
        params=_params(),
        help="criu-compatible checkpoint/restore: spice ACTION [OPTIONS] (dump, restore, check, swrk, crit ...)",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def fail(err: SpiceError) -> int:
    """Report a user-facing error the way criu does: one `Error (...)` line, exit 1."""
    log.error(err.where, err.message)
    if log.out is not sys.stderr:
        print(err.criu_line(), file=sys.stderr)
    log.close()
    return 1


def _click_main(args: list[str]) -> None:
    import click

    try:
        criu_command().main(args=args, prog_name="spice", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"Error (spice/cli): {e.format_message()}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "crit":
        from .images.crit import main as crit_main

        sys.exit(crit_main(args[1:]))
    try:
        kw = _fast_parse(args)
        if kw is not None:
            _criu_main(**kw)
        _click_main(args)
    except SpiceError as e:
        sys.exit(fail(e))
    except KeyboardInterrupt:
        sys.exit(1)
    except Exception as e:  # a bug, not bad input: still one criu-style line, the trace in the log
        import traceback

        log.debug(traceback.format_exc())
        sys.exit(fail(SpiceError("internal", f"{type(e).__name__}: {e}")))
    finally:
        log.close()


if __name__ == "__main__":
    main()
