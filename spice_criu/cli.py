# SPDX-License-Identifier: MIT
"""The `spice` command: criu's command line, so scripts can swap `criu` for `spice`.

Like criu (getopt_long), options may come before or after the action, every boolean has a `--no-`
form, and `-v` takes an optional attached level (`-v4`, `-vvvv`). `spice crit ...` is crit.
"""

from __future__ import annotations

import sys

import click

from . import CRIU_VERSION
from .errors import SpiceError
from .log import log
from .record import Factory, Record

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
    network_lock: str = "iptables"
    status_fd: int | None = None


def _verbosity(value: str | None) -> int:
    if value is None:
        return 2
    if value == "" or set(value) == {"v"}:
        return 2 + len(value) + (0 if value else 1)
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"bad verbosity {value!r}") from None


def _size(value: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:].upper(), 1)
    return int(value[:-1] if mult > 1 else value) * mult



def _params() -> list[click.Parameter]:
    return [
        click.Argument(["action"], required=False),
        click.Argument(["args"], nargs=-1),
        click.Option(["-D", "--images-dir"], default=".", help="directory with the images"),
        click.Option(["-W", "--work-dir"], help="directory for logs, pidfile and stats (default: images dir)"),
        click.Option(["-o", "--log-file"], help="log file, relative to the work dir ('-' = stdout)"),
        click.Option(["-v", "--verbosity"], is_flag=False, flag_value="", default=None, help="log level 0..4"),
        click.Option(["--pidfile"], help="write the root pid here (O_EXCL)"),
        click.Option(["-t", "--tree"], type=int, help="pid of the tree to dump"),
        click.Option(["-R", "--leave-running/--no-leave-running"], default=False),
        click.Option(["-s", "--leave-stopped/--no-leave-stopped"], default=False),
        click.Option(["-j", "--shell-job/--no-shell-job"], default=False),
        click.Option(["--tcp-established/--no-tcp-established"], default=False),
        click.Option(["--tcp-close/--no-tcp-close"], default=False),
        click.Option(["-x", "--ext-unix-sk"], is_flag=False, flag_value="all", default=None),
        click.Option(["--no-ext-unix-sk", "no_ext_unix_sk"], is_flag=True, default=False, hidden=True),
        click.Option(["-l", "--file-locks/--no-file-locks"], default=False),
        click.Option(["--link-remap/--no-link-remap"], default=False),
        click.Option(["--timeout"], type=int, default=10, help="freeze timeout (s)"),
        click.Option(["--ghost-limit"], default="1M"),
        click.Option(["-d", "--restore-detached/--no-restore-detached", "--daemon"], default=False),
        click.Option(["-S", "--restore-sibling/--no-restore-sibling"], default=False),
        click.Option(["-r", "--root"]),
        click.Option(["--inherit-fd"], multiple=True, help="fd[N]:KEY"),
        click.Option(["--external"], multiple=True),
        click.Option(["--display-stats/--no-display-stats"], default=False),
        click.Option(["--backend"], type=click.Choice(["auto", "ptrace", "kmod"]), default="auto"),
        click.Option(["--record-working-set/--no-record-working-set"], default=False),
        click.Option(["--record-timeout"], type=float, default=1.0, help="seconds to run while recording"),
        click.Option(["--feature"]),
        click.Option(["--network-lock"], type=click.Choice(["iptables", "nftables", "skip"]), default="iptables"),
        click.Option(["--status-fd"], type=int),
        # accepted for compatibility with criu callers; they change nothing spice does
        click.Option(["--no-default-config"], is_flag=True, hidden=True),
        click.Option(["--config"], hidden=True),
        click.Option(["--pre-dump-mode"], hidden=True),
        click.Option(["--manage-cgroups"], is_flag=False, flag_value="soft", hidden=True),
        click.Option(["--evasive-devices/--no-evasive-devices"], hidden=True),
        click.Option(["--skip-in-flight/--no-skip-in-flight"], hidden=True),
        click.Option(["--log-pid/--no-log-pid"], hidden=True),
        click.Option(["--extra", "--experimental", "--all", "check_all"], is_flag=True, hidden=True),
        click.Option(["-V", "--version"], is_flag=True, help="print the CRIU version spice speaks"),
    ]


def _options(kw: dict) -> Options:
    o = Options()
    o.action = kw["action"] or ""
    o.args = tuple(kw["args"])
    for name in (
        "images_dir work_dir log_file pidfile tree leave_running leave_stopped shell_job tcp_established "
        "tcp_close file_locks link_remap timeout restore_detached restore_sibling root backend "
        "record_working_set record_timeout display_stats feature network_lock status_fd"
    ).split():
        setattr(o, name, kw[name])
    o.verbosity = _verbosity(kw["verbosity"])
    o.ext_unix_sk = bool(kw["ext_unix_sk"]) and not kw["no_ext_unix_sk"]
    o.ghost_limit = _size(kw["ghost_limit"])
    o.inherit_fd = list(kw["inherit_fd"])
    o.external = list(kw["external"])
    return o


def run_action(o: Options) -> int:
    import os

    if o.work_dir is None:
        o.work_dir = o.images_dir
    if o.action in ("dump", "restore"):
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
        from .rpc import serve_swrk

        return serve_swrk(int(o.args[0]))
    if o.action == "pre-dump":
        raise SpiceError("cli", "pre-dump needs soft-dirty memory tracking, which this kernel lacks")
    raise SpiceError("cli", f"action {o.action} is not supported by spice")


def _criu_main(**kw) -> None:
    if kw["version"]:
        print("Version: {}.{}.{}".format(*CRIU_VERSION))
        sys.exit(0)
    action = kw["action"]
    if not action:
        click.echo(click.get_current_context().get_help())
        sys.exit(1)
    if action not in ACTIONS:
        raise SpiceError("cli", f"unknown action {action!r}")
    o = _options(kw)
    if o.action != "swrk" and o.args and not (o.action == "cpuinfo" and len(o.args) == 1):
        raise SpiceError("cli", f"excessive parameter(s) for command {o.action}: {' '.join(o.args)}")
    sys.exit(run_action(o))


criu_command = click.Command(
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


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "crit":
        from .images.crit import main as crit_main

        sys.exit(crit_main(args[1:]))
    try:
        criu_command.main(args=args, prog_name="spice", standalone_mode=False)
    except SpiceError as e:
        sys.exit(fail(e))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"Error (spice/cli): {e.format_message()}", file=sys.stderr)
        sys.exit(1)
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
