"""One command-line style for every command: a Hydra main over the configs shipped in the
package (``retrieval/configs``, the repository's ``configs/``), so editable and wheel
installs read the same files and every setting is a ``key=value`` override.

Users add their own config folders through Hydra's search path, e.g.
``retrieval-train --config-dir my_configs dataset=my_set`` or
``hydra.searchpath=[file://my_configs]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import hydra
from omegaconf import DictConfig

from retrieval.tracking.resolvers import register_resolvers
from retrieval.utils.errors import exit_on_user_error

# Relative to this package: resolves to retrieval/configs in an editable and a wheel install.
CONFIG_PATH = "../configs"

register_resolvers()  # before any config is composed (the run directory uses them)


def translate_argv(argv: list[str], flags: Mapping[str, str], verbs: Mapping[str, str]) -> list[str]:
    """Words people type as flags or sub-commands (``--json``, ``build``) as the overrides
    they mean; everything else (Hydra's own flags included) passes through unchanged."""
    out = []
    for position, arg in enumerate(argv):
        if arg in flags:
            out.append(flags[arg])
        elif position == 0 and arg in verbs:
            out.append(verbs[arg])
        else:
            out.append(arg)
    return out


def hydra_command(
    config_name: str,
    job: Callable[[DictConfig], Any],
    flags: Mapping[str, str] | None = None,
    verbs: Mapping[str, str] | None = None,
) -> Callable[[], Any]:
    """A console-script ``main()`` that composes ``configs/<config_name>.yaml`` with the
    command line and runs ``job(cfg)``; a :class:`~retrieval.utils.errors.UserFacingError`
    becomes one paragraph on stderr and exit code 2. The job's return value is returned
    (Hydra's sweepers, Optuna among them, read it). ``main(cfg)`` runs the job on an
    already composed config."""

    def run_job(cfg: DictConfig) -> Any:
        register_resolvers()  # submitit jobs unpickle this function in a fresh process
        return job(cfg)

    entry = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
        exit_on_user_error(run_job)
    )

    def main(cfg: DictConfig | None = None) -> Any:
        if cfg is not None:  # a composed config (tests, notebooks): Hydra runs the job as it is
            return entry(cfg)
        sys.argv = [sys.argv[0], *translate_argv(sys.argv[1:], flags or {}, verbs or {})]
        return entry()

    main.__doc__ = f"Run the ``{config_name}`` command (configs/{config_name}.yaml)."
    return main
